//! `RUN --mount=...` specifications, parsed as BuildKit's `runmount` does.

use serde::Serialize;

/// What a `RUN --mount` mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A directory or file from the context, a stage or an image (read-only by default).
    Bind,
    /// A persistent cache directory.
    Cache,
    /// An empty tmpfs.
    Tmpfs,
    /// A secret file, never part of the image.
    Secret,
    /// An SSH agent socket.
    Ssh,
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Many writers at once (the default).
    Shared,
    /// A private copy when the cache is in use.
    Private,
    /// One user at a time; others wait.
    Locked,
}

/// One `--mount` of a `RUN`, with BuildKit's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// The kind of mount.
    #[serde(rename = "type")]
    pub kind: MountType,
    /// Where it appears inside the container.
    pub target: String,
    /// The path in the source (context, stage, image or cache), when given.
    pub source: Option<String>,
    /// The stage or image the source comes from, when not the context.
    pub from: Option<String>,
    /// Whether the mount is read-only.
    pub readonly: bool,
    /// The cache, secret or ssh id.
    pub id: Option<String>,
    /// Sharing mode of a cache mount.
    pub sharing: Sharing,
    /// File mode (octal) of a cache directory, secret or ssh socket.
    pub mode: Option<u32>,
    /// Owner uid of a cache directory, secret or socket.
    pub uid: Option<u32>,
    /// Owner gid of a cache directory, secret or socket.
    pub gid: Option<u32>,
    /// Whether a missing secret or ssh agent fails the step.
    pub required: bool,
    /// Size limit of a tmpfs in bytes.
    pub size: Option<u64>,
    /// For a secret: the environment variable to expose it as, instead of (or besides) a file.
    pub env: Option<String>,
}

/// Splits a CSV record (quotes group, `""` is a quote inside quotes).
fn csv_fields(spec: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = spec.chars().peekable();
    let mut quoted = false;
    while let Some(ch) = chars.next() {
        match (quoted, ch) {
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (false, '"') => quoted = true,
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (_, ch) => field.push(ch),
        }
    }
    if quoted {
        return Err(format!("unterminated quote in mount `{spec}`"));
    }
    fields.push(field);
    Ok(fields)
}

fn parse_bool(key: &str, value: Option<&str>) -> Result<bool, String> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(format!("invalid value for {key}: {other}")),
    }
}

fn parse_u32(key: &str, value: &str, radix: u32) -> Result<u32, String> {
    u32::from_str_radix(value, radix).map_err(|_| format!("invalid value for {key}: {value}"))
}

/// Parses a size such as `64m`, `1g`, `1024` into bytes.
fn parse_size(value: &str) -> Result<u64, String> {
    let lower = value.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let n: f64 = digits
        .parse()
        .map_err(|_| format!("invalid size: {value}"))?;
    let scale: f64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("invalid size: {value}")),
    };
    let bytes = n * scale;
    if !(0.0..1.0e18).contains(&bytes) {
        return Err(format!("invalid size: {value}"));
    }
    Ok(bytes as u64)
}

/// Parses one `--mount` value; `expand` expands each value (variables in mount options are
/// expanded, as in BuildKit). `index` numbers ssh mounts for their default target.
///
/// Long on purpose: one short match arm per mount option, then one check per mount type.
pub(crate) fn parse_mount(
    spec: &str,
    index: usize,
    expand: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Mount, String> {
    let mut kind = MountType::Bind;
    let mut target = None;
    let mut source = None;
    let mut from = None;
    let mut readonly: Option<bool> = None;
    let mut id = None;
    let mut sharing = None;
    let mut mode = None;
    let mut uid = None;
    let mut gid = None;
    let mut required = false;
    let mut size = None;
    let mut env = None;
    for field in csv_fields(spec)? {
        if field.is_empty() {
            continue;
        }
        let raw = field.split_once('=').map(|(_, v)| v);
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(expand(v)?)),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let need = |value: Option<String>| {
            value.ok_or_else(|| format!("invalid field '{field}' must be a key=value pair"))
        };
        match key.as_str() {
            "type" => {
                kind = match need(value)?.as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    other => {
                        return Err(crate::suggest::with_hint(
                            format!("unsupported mount type \"{other}\""),
                            other,
                            ["bind", "cache", "tmpfs", "secret", "ssh"],
                            true,
                        ));
                    }
                }
            }
            "target" | "dst" | "destination" => target = Some(need(value)?),
            "source" | "src" => source = Some(need(value)?),
            "from" if raw.is_some_and(|v| v.contains('$')) => {
                // As BuildKit: the stage or image a mount reads from is named, never computed
                // (a variable would make the stage graph depend on expansion).
                return Err(format!(
                    "from={}: 'from' doesn't support variable expansion, define alias stage \
                     instead",
                    raw.unwrap_or_default()
                ));
            }
            "from" => from = Some(need(value)?),
            "readonly" | "ro" => readonly = Some(parse_bool(&key, value.as_deref())?),
            "readwrite" | "rw" => readonly = Some(!parse_bool(&key, value.as_deref())?),
            "required" => required = parse_bool(&key, value.as_deref())?,
            "id" => id = Some(need(value)?),
            "sharing" => {
                sharing = Some(match need(value)?.as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    other => return Err(format!("unsupported sharing value \"{other}\"")),
                })
            }
            "mode" => mode = Some(parse_u32("mode", &need(value)?, 8)?),
            "uid" => uid = Some(parse_u32("uid", &need(value)?, 10)?),
            "gid" => gid = Some(parse_u32("gid", &need(value)?, 10)?),
            "size" => size = Some(parse_size(&need(value)?)?),
            "env" => env = Some(need(value)?),
            _ => {
                return Err(crate::suggest::with_hint(
                    format!("unexpected key '{key}' in '{field}'"),
                    &key,
                    [
                        "type",
                        "target",
                        "source",
                        "from",
                        "readonly",
                        "readwrite",
                        "required",
                        "id",
                        "sharing",
                        "mode",
                        "uid",
                        "gid",
                        "size",
                        "env",
                    ],
                    true,
                ));
            }
        }
    }
    if from.is_some() && !matches!(kind, MountType::Bind | MountType::Cache) {
        return Err(format!("'from' is not supported for {kind:?} mounts").to_lowercase());
    }
    if sharing.is_some() && kind != MountType::Cache {
        return Err("'sharing' is only supported for cache mounts".to_owned());
    }
    if size.is_some() && kind != MountType::Tmpfs {
        return Err("'size' is only supported for tmpfs mounts".to_owned());
    }
    if env.is_some() && kind != MountType::Secret {
        return Err("'env' is only supported for secret mounts".to_owned());
    }
    let target = match kind {
        MountType::Secret => {
            if id.is_none() {
                let from_target = target
                    .as_deref()
                    .and_then(|t: &str| t.rsplit('/').next())
                    .filter(|s| !s.is_empty());
                id = from_target.map(str::to_owned);
            }
            match (&target, &id) {
                (Some(t), _) => t.clone(),
                (None, Some(id)) if env.is_none() => format!("/run/secrets/{id}"),
                (None, Some(_)) => String::new(),
                (None, None) => return Err("secret mount requires an id or a target".to_owned()),
            }
        }
        MountType::Ssh => {
            id.get_or_insert_with(|| "default".to_owned());
            target.unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{index}"))
        }
        _ => match target {
            Some(t) if !t.is_empty() => t,
            _ => return Err("mount target must be specified".to_owned()),
        },
    };
    if kind == MountType::Cache && id.is_none() {
        // The target as a clean path: `/tmp/a/` and `/tmp/a` are one cache (BuildKit's rule).
        id = Some(crate::ignore::clean_path(&target));
    }
    let readonly = readonly.unwrap_or(matches!(
        kind,
        MountType::Bind | MountType::Secret | MountType::Ssh
    ));
    if matches!(kind, MountType::Secret) && mode.is_none() {
        mode = Some(0o400);
    }
    if matches!(kind, MountType::Ssh) && mode.is_none() {
        mode = Some(0o600);
    }
    Ok(Mount {
        kind,
        target,
        source,
        from,
        readonly,
        id,
        sharing: sharing.unwrap_or(Sharing::Shared),
        mode,
        uid,
        gid,
        required,
        size,
        env,
    })
}
