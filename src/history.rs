//! The `created_by` text of an image's history entries, as BuildKit's Dockerfile frontend
//! writes it, so `docker history` and tools that compare images read the same lines for an
//! image built by strata as for one built by BuildKit.
//!
//! Each instruction is written from what it did rather than as it was written: `RUN` as the
//! command line it ran (`RUN /bin/sh -c make # buildkit`, `RUN ls` for `RUN ["ls"]`), `COPY`
//! without `--from`, `--link` or `--exclude`, `EXPOSE` as its sorted port list, `CMD` and
//! `ENTRYPOINT` as quoted argument lists. The one departure: `ARG` keeps the text as written,
//! and `RUN` lacks BuildKit's `|N NAME=value` prefix, so a build argument's value never
//! reaches the image (see the README).

use strata_dockerfile::{Copy, Instruction};

use crate::config::RuntimeConfig;
use crate::error::Result;

/// The entry of a `RUN` that ran `argv`.
pub(crate) fn run(argv: &[String]) -> String {
    format!("RUN {} # buildkit", argv.join(" "))
}

/// The entry of a `COPY` (or `ADD`, when `add`).
pub(crate) fn copy(copy: &Copy, add: bool) -> String {
    let mut text = String::from(if add { "ADD" } else { "COPY" });
    if copy.parents {
        text.push_str(" --parents");
    }
    if let Some(chown) = &copy.chown {
        text.push_str(" --chown=");
        text.push_str(chown);
    }
    if let Some(chmod) = &copy.chmod {
        text.push_str(" --chmod=");
        text.push_str(chmod);
    }
    for source in &copy.sources {
        text.push(' ');
        text.push_str(source);
    }
    for file in &copy.files {
        text.push_str(" <<");
        text.push_str(&file.name);
    }
    text.push(' ');
    text.push_str(&copy.dest);
    text
}

/// The entry of a `WORKDIR` that made (or found) `dir`, an absolute path.
pub(crate) fn workdir(dir: &str) -> String {
    format!("WORKDIR {dir}")
}

/// The entry of an instruction that changes only the config, read from `config` after the
/// instruction changed it. `None` for `ONBUILD`, which BuildKit records in the config only.
pub(crate) fn config_step(
    instruction: &Instruction,
    config: &RuntimeConfig,
    original: &str,
) -> Result<Option<String>> {
    let pairs = |keyword: &str, pairs: &[(String, String)]| {
        let mut text = keyword.to_owned();
        for (k, v) in pairs {
            text.push(' ');
            text.push_str(k);
            text.push('=');
            text.push_str(v);
        }
        text
    };
    Ok(Some(match instruction {
        Instruction::Env { vars } => pairs("ENV", vars),
        Instruction::Label { labels } => pairs("LABEL", labels),
        Instruction::Maintainer { name } => format!("MAINTAINER {name}"),
        Instruction::Expose { ports } => {
            // BuildKit sorts the ports as written, then spells each out (`80/tcp`).
            let mut written: Vec<&String> = ports.iter().collect();
            written.sort();
            let mut specs = Vec::new();
            for port in written {
                specs.extend(crate::engine::expose(port)?);
            }
            format!("EXPOSE [{}]", specs.join(" "))
        }
        Instruction::Volume { paths } => format!("VOLUME [{}]", paths.join(" ")),
        Instruction::User { user } => format!("USER {user}"),
        Instruction::Cmd { .. } => format!("CMD {}", go_quoted_list(config.cmd.as_deref())),
        Instruction::Entrypoint { .. } => {
            format!(
                "ENTRYPOINT {}",
                go_quoted_list(config.entrypoint.as_deref())
            )
        }
        Instruction::Shell { shell } => format!("SHELL [{}]", shell.join(" ")),
        Instruction::Stopsignal { signal } => format!("STOPSIGNAL {signal}"),
        Instruction::Healthcheck { .. } => {
            format!("HEALTHCHECK {}", healthcheck(config.healthcheck.as_ref()))
        }
        Instruction::Onbuild { .. } => return Ok(None),
        // As written: a value given by --build-arg stays out of the image.
        Instruction::Arg { .. } => original.to_owned(),
        Instruction::Run(_) | Instruction::Copy(_) | Instruction::Add(_) => original.to_owned(),
        Instruction::Workdir { path } => workdir(path),
    }))
}

/// A list as Go's `%q` prints a `[]string`: `["/bin/sh" "-c" "echo hi"]`.
fn go_quoted_list(items: Option<&[String]>) -> String {
    let quoted: Vec<String> = items
        .unwrap_or_default()
        .iter()
        .map(|s| go_quote(s))
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// A string as Go's `strconv.Quote` writes it.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The config's healthcheck as Go's `%+v` prints Docker's `HealthcheckConfig`:
/// `{Test:[CMD-SHELL curl -f http://localhost/] Interval:5m0s Timeout:3s StartPeriod:0s
/// StartInterval:0s Retries:3}`.
fn healthcheck(check: Option<&serde_json::Value>) -> String {
    let null = serde_json::Value::Null;
    let check = check.unwrap_or(&null);
    let test: Vec<&str> = check["Test"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let nanos = |name: &str| check[name].as_u64().unwrap_or(0);
    format!(
        "{{Test:[{}] Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
        test.join(" "),
        go_duration(nanos("Interval")),
        go_duration(nanos("Timeout")),
        go_duration(nanos("StartPeriod")),
        go_duration(nanos("StartInterval")),
        check["Retries"].as_u64().unwrap_or(0),
    )
}

/// A duration as Go's `time.Duration.String` writes it: `0s`, `1.5s`, `5m0s`, `1h0m0s`,
/// `250ms`.
fn go_duration(nanos: u64) -> String {
    if nanos == 0 {
        return "0s".to_owned();
    }
    // A whole part and a fraction of `digits` digits, trailing zeros dropped.
    let decimal = |whole: u64, fraction: u64, digits: usize| {
        let fraction = format!("{fraction:0digits$}");
        let fraction = fraction.trim_end_matches('0');
        if fraction.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{fraction}")
        }
    };
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", decimal(nanos / 1_000, nanos % 1_000, 3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", decimal(nanos / 1_000_000, nanos % 1_000_000, 6));
    }
    let secs = nanos / 1_000_000_000;
    let seconds = format!("{}s", decimal(secs % 60, nanos % 1_000_000_000, 9));
    let (hours, minutes) = (secs / 3600, secs / 60 % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}")
    } else {
        seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_writes_them() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(300_000_000_000), "5m0s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(250_000_000), "250ms");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_duration(7), "7ns");
    }

    #[test]
    fn strings_quote_as_go_quotes_them() {
        assert_eq!(go_quote("echo \"hi\"\n"), "\"echo \\\"hi\\\"\\n\"");
        assert_eq!(go_quote("a\\b\u{1}"), "\"a\\\\b\\x01\"");
        assert_eq!(go_quote("ünï"), "\"ünï\"");
        assert_eq!(
            go_quoted_list(Some(&["/bin/sh".to_owned(), "-c".to_owned()])),
            "[\"/bin/sh\" \"-c\"]"
        );
        assert_eq!(go_quoted_list(None), "[]");
    }
}
