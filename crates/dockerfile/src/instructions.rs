//! Syntax tree → typed instructions, with flags checked and words expanded.
//!
//! An [`Instruction`] is plain data the engine executes: flags parsed into fields, `RUN` mounts
//! into [`Mount`]s, durations into [`Duration`]s, and every word BuildKit expands already
//! expanded (`ENV`, `LABEL`, `ARG`, `COPY`/`ADD` paths and flags, `WORKDIR`, `USER`,
//! `VOLUME`, `EXPOSE`, `STOPSIGNAL`, mount options). Command text (`RUN`, `CMD`,
//! `ENTRYPOINT`, `SHELL`, `HEALTHCHECK`) is left for the shell, as in BuildKit.

use std::time::Duration;

use serde::Serialize;

use crate::ast::{Heredoc, Node};
use crate::error::{Error, Result};
use crate::flags::{self, Flags};
use crate::mount::{Mount, parse_mount};
use crate::shell::{Env, Lexer};

/// A command in exec form (argv) or shell form (text run through the stage's `SHELL`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandLine {
    /// `["prog", "arg"]`: run as is.
    Exec(Vec<String>),
    /// `prog arg`: run as `SHELL + [text]`.
    Shell(String),
}

/// A file written inline with a here-document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InlineFile {
    /// The delimiter, which is also the file's name in `COPY <<NAME /dest`.
    pub name: String,
    /// The content: leading tabs removed for `<<-`, variables expanded when the delimiter was
    /// unquoted and the instruction is `COPY`/`ADD` (for `RUN` the shell expands them).
    pub data: String,
    /// Whether the delimiter was unquoted.
    pub expand: bool,
}

/// The network a `RUN` sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The builder's default (the host's network, as `docker build` does).
    #[default]
    Default,
    /// No network.
    None,
    /// The host's network, asked for explicitly.
    Host,
}

/// `RUN --security`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// The normal sandbox.
    #[default]
    Sandbox,
    /// All capabilities (`--security=insecure`).
    Insecure,
}

/// `RUN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    /// The command.
    pub command: CommandLine,
    /// Here-documents: when the command is just `<<EOF`, the first one is the script.
    pub files: Vec<InlineFile>,
    /// `--mount`s.
    pub mounts: Vec<Mount>,
    /// `--network`.
    pub network: Network,
    /// `--security`.
    pub security: Security,
    /// The build args in scope at this step (declared with `ARG`, plus the predefined proxy
    /// args when given), which the command sees as environment variables.
    pub build_args: Vec<(String, String)>,
}

/// `COPY` (and the common part of `ADD`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copy {
    /// Source paths or patterns, expanded (not yet matched against the context).
    pub sources: Vec<String>,
    /// Sources written inline as here-documents.
    pub files: Vec<InlineFile>,
    /// The destination, expanded; a trailing `/` means a directory.
    pub dest: String,
    /// `--from`: a stage name or index, or an image reference.
    pub from: Option<String>,
    /// `--chown`: `user[:group]`, names or ids.
    pub chown: Option<String>,
    /// `--chmod`: octal or symbolic.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
}

/// `ADD`: a [`Copy`](struct@Copy) that can also fetch URLs and unpack archives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Add {
    /// What `ADD` shares with `COPY` (`from` is always `None`).
    #[serde(flatten)]
    pub copy: Copy,
    /// `--checksum` of a URL source.
    pub checksum: Option<String>,
    /// `--keep-git-dir`.
    pub keep_git_dir: bool,
    /// `--unpack`: `None` means the default (unpack local archives, not URLs).
    pub unpack: Option<bool>,
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    /// `HEALTHCHECK [options] CMD ...`.
    Check {
        /// The command.
        test: CommandLine,
        /// `--interval`.
        interval: Option<Duration>,
        /// `--timeout`.
        timeout: Option<Duration>,
        /// `--start-period`.
        start_period: Option<Duration>,
        /// `--start-interval`.
        start_interval: Option<Duration>,
        /// `--retries`.
        retries: Option<u32>,
    },
}

/// One `ARG` declaration after expansion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    /// The name.
    pub name: String,
    /// The value in effect: the build arg given for it, else its default, else (inside a stage)
    /// the value of the global `ARG` of the same name; `None` when it has none.
    pub value: Option<String>,
}

/// A typed instruction of a stage (`FROM` starts a stage; see [`crate::Stage`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "instruction", rename_all = "lowercase")]
pub enum Instruction {
    /// `RUN`.
    Run(Run),
    /// `CMD`.
    Cmd {
        /// The default command.
        command: CommandLine,
    },
    /// `ENTRYPOINT`.
    Entrypoint {
        /// The entrypoint.
        command: CommandLine,
    },
    /// `SHELL` (always exec form).
    Shell {
        /// The shell and its arguments.
        shell: Vec<String>,
    },
    /// `ENV`.
    Env {
        /// Name/value pairs in order.
        vars: Vec<(String, String)>,
    },
    /// `LABEL`.
    Label {
        /// Name/value pairs in order.
        labels: Vec<(String, String)>,
    },
    /// `MAINTAINER` (deprecated).
    Maintainer {
        /// The author text.
        name: String,
    },
    /// `EXPOSE`.
    Expose {
        /// Ports as `port[/proto]` or ranges.
        ports: Vec<String>,
    },
    /// `ADD`.
    Add(Add),
    /// `COPY`.
    Copy(Copy),
    /// `VOLUME`.
    Volume {
        /// Mount points.
        paths: Vec<String>,
    },
    /// `USER`.
    User {
        /// `user[:group]`, names or ids.
        user: String,
    },
    /// `WORKDIR`.
    Workdir {
        /// The path; relative paths resolve against the previous `WORKDIR`.
        path: String,
    },
    /// `ARG`.
    Arg {
        /// The declarations.
        args: Vec<ArgDecl>,
    },
    /// `ONBUILD`.
    Onbuild {
        /// The trigger as text, as image configs store it.
        trigger: String,
    },
    /// `STOPSIGNAL`.
    Stopsignal {
        /// The signal name or number.
        signal: String,
    },
    /// `HEALTHCHECK`.
    Healthcheck {
        /// The check, or `NONE`.
        check: Healthcheck,
    },
}

/// An instruction with the lines it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Located<T> {
    /// The first line.
    pub start_line: usize,
    /// The last line (continuations and heredocs included).
    pub end_line: usize,
    /// The instruction.
    #[serde(flatten)]
    pub value: T,
}

/// Context for turning one node into an instruction.
pub(crate) struct Context<'a> {
    pub(crate) escape: char,
    pub(crate) env: &'a dyn Env,
    pub(crate) build_args: Vec<(String, String)>,
    /// Whether the build was given a value for this build argument (`--build-arg`): then an
    /// `ARG`'s default is never evaluated (its `${VAR:?message}` must not fail the build).
    pub(crate) given: &'a dyn Fn(&str) -> bool,
}

struct Checker<'a> {
    node: &'a Node,
    name: String,
}

impl<'a> Checker<'a> {
    fn error(&self, message: impl Into<String>) -> Error {
        Error::Instruction {
            line: self.node.start_line,
            column: 1,
            instruction: self.name.clone(),
            message: message.into(),
        }
    }

    fn flags(&self, allowed: &'static [(&'static str, flags::Kind)]) -> Result<Flags> {
        Flags::parse(&self.node.flags, allowed).map_err(|message| {
            // Point at the flag's text where it is on the first line.
            let column = self
                .node
                .flags
                .iter()
                .find_map(|f| {
                    let name = f.split('=').next().unwrap_or(f);
                    message
                        .contains(name.trim_start_matches('-'))
                        .then(|| self.node.original.find(name))
                        .flatten()
                })
                .map_or(1, |at| at + 1);
            Error::Instruction {
                line: self.node.start_line,
                column,
                instruction: self.name.clone(),
                message,
            }
        })
    }

    fn at_least(&self, n: usize) -> Result<()> {
        if self.node.args.len() < n {
            let what = if n == 1 {
                "one argument".to_owned()
            } else {
                format!("{n} arguments")
            };
            return Err(self.error(format!("{} requires at least {what}", self.name)));
        }
        Ok(())
    }

    fn exactly_one(&self) -> Result<&'a str> {
        match self.node.args.as_slice() {
            [one] => Ok(one),
            _ => Err(self.error(format!("{} requires exactly one argument", self.name))),
        }
    }
}

fn command_line(node: &Node) -> CommandLine {
    if node.json {
        CommandLine::Exec(node.args.clone())
    } else {
        CommandLine::Shell(node.args.first().cloned().unwrap_or_default())
    }
}

/// Parses a Go duration (`1h30m`, `500ms`, `10s`).
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    (total < 1e12).then(|| Duration::from_secs_f64(total))
}

impl Context<'_> {
    fn lexer(&self) -> Lexer {
        Lexer::new(self.escape)
    }

    fn expand(&self, checker: &Checker<'_>, word: &str) -> Result<String> {
        self.lexer()
            .process_word(word, self.env)
            .map_err(|e| Error::Expansion {
                line: checker.node.start_line,
                message: format!("{}: expanding `{word}`: {e}", checker.name),
            })
    }

    fn expand_opt(&self, checker: &Checker<'_>, word: Option<String>) -> Result<Option<String>> {
        word.map(|w| self.expand(checker, &w)).transpose()
    }

    fn inline_file(
        &self,
        checker: &Checker<'_>,
        heredoc: &Heredoc,
        expand: bool,
    ) -> Result<InlineFile> {
        let text = heredoc.text();
        // BuildKit expands only variables in a heredoc's content: quotes stay as written,
        // and the escape character is always `\\`, whatever the file's escape directive.
        let data = if expand && heredoc.expand {
            Lexer::new('\\')
                .skip_quotes(true)
                .process_word(&text, self.env)
                .map_err(|e| Error::Expansion {
                    line: checker.node.start_line,
                    message: format!(
                        "{}: expanding heredoc `{}`: {e}",
                        checker.name, heredoc.name
                    ),
                })?
        } else {
            text
        };
        Ok(InlineFile {
            name: heredoc.name.clone(),
            data,
            expand: heredoc.expand,
        })
    }

    fn copy(&self, checker: &Checker<'_>, flags: &Flags) -> Result<Copy> {
        let node = checker.node;
        if node.args.len() < 2 {
            return Err(checker.error(format!(
                "{} requires at least two arguments, but only {} provided: the destination could not be determined",
                checker.name,
                if node.args.is_empty() { "none was" } else { "one was" }
            )));
        }
        let (dest, sources) = node
            .args
            .split_last()
            .ok_or_else(|| checker.error("no destination"))?;
        let mut paths = Vec::new();
        let mut files = Vec::new();
        for source in sources {
            let heredoc = (!node.json)
                .then(|| {
                    node.heredocs
                        .iter()
                        .find(|h| is_heredoc_word(source, &h.name))
                })
                .flatten();
            match heredoc {
                Some(heredoc) => files.push(self.inline_file(checker, heredoc, true)?),
                None => paths.push(self.expand(checker, source)?),
            }
        }
        Ok(Copy {
            sources: paths,
            files,
            dest: self.expand(checker, dest)?,
            from: None,
            chown: self.expand_opt(checker, flags.string("chown"))?,
            chmod: self.expand_opt(checker, flags.string("chmod"))?,
            link: flags.bool("link").unwrap_or(false),
            parents: false,
            exclude: flags
                .strings("exclude")
                .iter()
                .map(|p| self.expand(checker, p))
                .collect::<Result<_>>()?,
        })
    }

    fn key_values(&self, checker: &Checker<'_>) -> Result<Vec<(String, String)>> {
        checker.at_least(1)?;
        let mut pairs = Vec::new();
        for triple in checker.node.args.chunks(3) {
            let [key, value, _] = triple else {
                return Err(checker.error("malformed name/value list"));
            };
            let key = self.expand(checker, key)?;
            if key.is_empty() {
                return Err(checker.error(format!("{} names can not be blank", checker.name)));
            }
            pairs.push((key, self.expand(checker, value)?));
        }
        Ok(pairs)
    }

    /// Turns one syntax node (not `FROM`) into a typed, expanded instruction.
    ///
    /// Long on purpose: one short match arm per instruction, the whole dispatch table in one
    /// place (as BuildKit's is); split up, the table would be scattered.
    pub(crate) fn instruction(
        &self,
        node: &Node,
        arg_values: &dyn Fn(&str, Option<String>) -> Option<String>,
    ) -> Result<Instruction> {
        let checker = Checker {
            node,
            name: node.instruction.to_uppercase(),
        };
        let plain = |checker: &Checker<'_>| checker.flags(flags::NONE);
        Ok(match node.instruction.as_str() {
            "run" => {
                let flags = checker.flags(flags::RUN)?;
                checker.at_least(1)?;
                let mut mounts = Vec::new();
                for (index, spec) in flags.strings("mount").iter().enumerate() {
                    let mut expand = |v: &str| {
                        self.lexer()
                            .process_word(v, self.env)
                            .map_err(|e| e.message)
                    };
                    mounts.push(
                        parse_mount(spec, index, &mut expand)
                            .map_err(|e| checker.error(format!("--mount={spec}: {e}")))?,
                    );
                }
                let network = match flags.string("network").as_deref() {
                    None | Some("default") => Network::Default,
                    Some("none") => Network::None,
                    Some("host") => Network::Host,
                    Some(other) => {
                        return Err(checker.error(format!(
                            "unsupported network mode \"{other}\" (default, none, host)"
                        )));
                    }
                };
                let security = match flags.string("security").as_deref() {
                    None | Some("sandbox") => Security::Sandbox,
                    Some("insecure") => Security::Insecure,
                    Some(other) => {
                        return Err(checker.error(format!(
                            "unsupported security mode \"{other}\" (sandbox, insecure)"
                        )));
                    }
                };
                let files = node
                    .heredocs
                    .iter()
                    .map(|h| self.inline_file(&checker, h, false))
                    .collect::<Result<_>>()?;
                Instruction::Run(Run {
                    command: command_line(node),
                    files,
                    mounts,
                    network,
                    security,
                    build_args: self.build_args.clone(),
                })
            }
            "cmd" | "entrypoint" => {
                plain(&checker)?;
                let command = command_line(node);
                if node.instruction == "cmd" {
                    Instruction::Cmd { command }
                } else {
                    Instruction::Entrypoint { command }
                }
            }
            "shell" => {
                plain(&checker)?;
                if !node.json {
                    return Err(checker.error("SHELL requires the arguments to be in JSON form"));
                }
                checker.at_least(1)?;
                Instruction::Shell {
                    shell: node.args.clone(),
                }
            }
            "env" => {
                plain(&checker)?;
                Instruction::Env {
                    vars: self.key_values(&checker)?,
                }
            }
            "label" => {
                plain(&checker)?;
                Instruction::Label {
                    labels: self.key_values(&checker)?,
                }
            }
            "maintainer" => {
                plain(&checker)?;
                Instruction::Maintainer {
                    name: checker.exactly_one()?.to_owned(),
                }
            }
            "expose" => {
                plain(&checker)?;
                checker.at_least(1)?;
                let mut ports = Vec::new();
                for arg in &node.args {
                    for port in self.expand(&checker, arg)?.split_whitespace() {
                        if !valid_port(port) {
                            return Err(checker.error(format!(
                                "invalid port `{port}`: expected PORT[-PORT][/tcp|udp|sctp]"
                            )));
                        }
                        ports.push(port.to_owned());
                    }
                }
                Instruction::Expose { ports }
            }
            "copy" => {
                let flags = checker.flags(flags::COPY)?;
                let mut copy = self.copy(&checker, &flags)?;
                let from = flags.string("from");
                if let Some(from) = from.as_deref().filter(|f| f.contains('$')) {
                    // As BuildKit: the source stage or image is named, never computed.
                    return Err(checker.error(format!(
                        "--from={from}: variable expansion is not supported for --from, define \
                         a new stage with FROM using ARG from global scope as a workaround"
                    )));
                }
                copy.from = from;
                copy.parents = flags.bool("parents").unwrap_or(false);
                Instruction::Copy(copy)
            }
            "add" => {
                let flags = checker.flags(flags::ADD)?;
                let copy = self.copy(&checker, &flags)?;
                Instruction::Add(Add {
                    copy,
                    checksum: self.expand_opt(&checker, flags.string("checksum"))?,
                    keep_git_dir: flags.bool("keep-git-dir").unwrap_or(false),
                    unpack: flags.bool("unpack"),
                })
            }
            "volume" => {
                plain(&checker)?;
                checker.at_least(1)?;
                let mut paths = Vec::new();
                for arg in &node.args {
                    let path = self.expand(&checker, arg)?;
                    if path.trim().is_empty() {
                        return Err(checker.error("VOLUME specified can not be an empty string"));
                    }
                    paths.push(path);
                }
                Instruction::Volume { paths }
            }
            "user" => {
                plain(&checker)?;
                Instruction::User {
                    user: self.expand(&checker, checker.exactly_one()?)?,
                }
            }
            "workdir" => {
                plain(&checker)?;
                Instruction::Workdir {
                    path: self.expand(&checker, checker.exactly_one()?)?,
                }
            }
            "stopsignal" => {
                plain(&checker)?;
                Instruction::Stopsignal {
                    signal: self.expand(&checker, checker.exactly_one()?)?,
                }
            }
            "arg" => {
                plain(&checker)?;
                checker.at_least(1)?;
                let mut args = Vec::new();
                for word in &node.args {
                    let (name, default) = match word.split_once('=') {
                        Some((name, value)) => (name, Some(value)),
                        None => (word.as_str(), None),
                    };
                    let name = self.expand(&checker, name)?;
                    if name.is_empty() {
                        return Err(checker.error(format!("invalid ARG name in `{word}`")));
                    }
                    let default = match default {
                        Some(text) if !(self.given)(&name) => Some(self.expand(&checker, text)?),
                        _ => None,
                    };
                    let value = arg_values(&name, default);
                    args.push(ArgDecl { name, value });
                }
                Instruction::Arg { args }
            }
            "onbuild" => {
                plain(&checker)?;
                let Some(trigger) = &node.onbuild else {
                    return Err(checker.error("ONBUILD requires at least one argument"));
                };
                match trigger.instruction.as_str() {
                    "onbuild" => {
                        return Err(
                            checker.error("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
                        );
                    }
                    "from" | "maintainer" => {
                        return Err(checker.error(format!(
                            "{} isn't allowed as an ONBUILD trigger",
                            trigger.instruction.to_uppercase()
                        )));
                    }
                    _ => {}
                }
                // The trigger must itself be valid.
                self.instruction(trigger, arg_values)?;
                // The trigger with its here-documents, so that the image built on top reads
                // the whole instruction.
                let mut text = trigger.original.trim().to_owned();
                for heredoc in &node.heredocs {
                    text.push('\n');
                    text.push_str(&heredoc.content);
                    if !heredoc.content.is_empty() && !heredoc.content.ends_with('\n') {
                        text.push('\n');
                    }
                    text.push_str(&heredoc.name);
                }
                Instruction::Onbuild { trigger: text }
            }
            "healthcheck" => {
                let flags = checker.flags(flags::HEALTHCHECK)?;
                checker.at_least(1)?;
                let kind = node.args[0].to_uppercase();
                match kind.as_str() {
                    "NONE" => {
                        if node.args.len() > 1 {
                            return Err(checker.error("HEALTHCHECK NONE takes no arguments"));
                        }
                        if !flags.is_empty() {
                            return Err(checker.error("HEALTHCHECK NONE takes no options"));
                        }
                        Instruction::Healthcheck {
                            check: Healthcheck::None,
                        }
                    }
                    "CMD" => {
                        let rest = &node.args[1..];
                        if rest.is_empty() || (!node.json && rest[0].trim().is_empty()) {
                            return Err(checker.error("missing command after HEALTHCHECK CMD"));
                        }
                        let test = if node.json {
                            CommandLine::Exec(rest.to_vec())
                        } else {
                            CommandLine::Shell(rest[0].clone())
                        };
                        let duration = |name: &str| -> Result<Option<Duration>> {
                            let Some(text) = flags.string(name) else {
                                return Ok(None);
                            };
                            let value = parse_duration(&text).ok_or_else(|| {
                                checker.error(format!("--{name}: invalid duration `{text}`"))
                            })?;
                            if !value.is_zero() && value < Duration::from_millis(1) {
                                return Err(
                                    checker.error(format!("--{name} cannot be less than 1ms"))
                                );
                            }
                            Ok(Some(value))
                        };
                        let retries = match flags.string("retries") {
                            None => None,
                            Some(text) => Some(text.parse::<u32>().map_err(|_| {
                                checker.error(format!(
                                    "--retries: `{text}` is not a non-negative integer"
                                ))
                            })?),
                        };
                        Instruction::Healthcheck {
                            check: Healthcheck::Check {
                                test,
                                interval: duration("interval")?,
                                timeout: duration("timeout")?,
                                start_period: duration("start-period")?,
                                start_interval: duration("start-interval")?,
                                retries,
                            },
                        }
                    }
                    other => {
                        return Err(checker
                            .error(format!("unknown type `{other}` in HEALTHCHECK (try CMD)")));
                    }
                }
            }
            "from" => {
                return Err(checker.error("FROM starts a stage and is not an instruction of one"));
            }
            other => {
                return Err(Error::Instruction {
                    line: node.start_line,
                    column: 1,
                    instruction: other.to_uppercase(),
                    message: crate::suggest::with_hint(
                        format!("unknown instruction: {}", other.to_uppercase()),
                        &other.to_uppercase(),
                        [
                            "ADD",
                            "ARG",
                            "CMD",
                            "COPY",
                            "ENTRYPOINT",
                            "ENV",
                            "EXPOSE",
                            "FROM",
                            "HEALTHCHECK",
                            "LABEL",
                            "MAINTAINER",
                            "ONBUILD",
                            "RUN",
                            "SHELL",
                            "STOPSIGNAL",
                            "USER",
                            "VOLUME",
                            "WORKDIR",
                        ],
                        false,
                    ),
                });
            }
        })
    }
}

/// Whether a source word names a heredoc (`<<EOF`, `<<-"EOF"`).
fn is_heredoc_word(word: &str, name: &str) -> bool {
    let Some(rest) = word
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix("<<")
    else {
        return false;
    };
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    rest.trim_matches(['"', '\'']) == name
}

fn valid_port(port: &str) -> bool {
    let (range, proto) = match port.split_once('/') {
        Some((range, proto)) => (range, Some(proto)),
        None => (port, None),
    };
    let number = |s: &str| {
        !s.is_empty()
            && s.len() <= 5
            && s.chars().all(|c| c.is_ascii_digit())
            && s.parse::<u32>().is_ok_and(|n| n <= 65535)
    };
    let range_ok = match range.split_once('-') {
        Some((a, b)) => number(a) && number(b),
        None => number(range),
    };
    range_ok
        && proto.is_none_or(|p| matches!(p.to_ascii_lowercase().as_str(), "tcp" | "udp" | "sctp"))
}
