//! Instruction flags (`--name=value`), checked per instruction as BuildKit's `BFlags` does.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    String,
    Strings,
}

/// The flags one instruction accepts, and what was given.
pub(crate) struct Flags {
    allowed: &'static [(&'static str, Kind)],
    values: BTreeMap<&'static str, Vec<String>>,
}

impl Flags {
    /// Parses `given` (as written, with their `--`) against the flags `allowed`.
    pub(crate) fn parse(
        given: &[String],
        allowed: &'static [(&'static str, Kind)],
    ) -> Result<Flags, String> {
        let mut values: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for arg in given {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(format!("arg should start with -- : {arg}"));
            };
            let (name, value) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (body, None),
            };
            let Some(&(known, kind)) = allowed.iter().find(|(n, _)| *n == name) else {
                let mut message = format!("unknown flag: --{name}");
                if let Some(hint) =
                    crate::suggest::closest(name, allowed.iter().map(|(n, _)| *n), true)
                {
                    message.push_str(&format!(" (did you mean {hint}?)"));
                } else if !allowed.is_empty() {
                    let names: Vec<String> =
                        allowed.iter().map(|(n, _)| format!("--{n}")).collect();
                    message.push_str(&format!(" (allowed here: {})", names.join(", ")));
                }
                return Err(message);
            };
            if values.contains_key(known) && kind != Kind::Strings {
                return Err(format!("duplicate flag specified: --{name}"));
            }
            let value = match kind {
                Kind::Bool => match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("true") => "true".to_owned(),
                    Some("false") => "false".to_owned(),
                    Some("") => return Err(format!("missing a value on flag: --{name}")),
                    Some(other) => {
                        return Err(format!(
                            "expecting boolean value for flag --{name}, not: {other}"
                        ));
                    }
                },
                Kind::String | Kind::Strings => match value {
                    Some(value) => value.to_owned(),
                    None => return Err(format!("missing a value on flag: --{name}")),
                },
            };
            values.entry(known).or_default().push(value);
        }
        Ok(Flags { allowed, values })
    }

    pub(crate) fn string(&self, name: &str) -> Option<String> {
        debug_assert!(self.allowed.iter().any(|(n, _)| *n == name));
        self.values.get(name).and_then(|v| v.last().cloned())
    }

    pub(crate) fn strings(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    pub(crate) fn bool(&self, name: &str) -> Option<bool> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(|v| v == "true")
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

pub(crate) const FROM: &[(&str, Kind)] = &[("platform", Kind::String)];
pub(crate) const RUN: &[(&str, Kind)] = &[
    ("mount", Kind::Strings),
    ("network", Kind::String),
    ("security", Kind::String),
];
pub(crate) const COPY: &[(&str, Kind)] = &[
    ("from", Kind::String),
    ("chown", Kind::String),
    ("chmod", Kind::String),
    ("link", Kind::Bool),
    ("parents", Kind::Bool),
    ("exclude", Kind::Strings),
];
pub(crate) const ADD: &[(&str, Kind)] = &[
    ("chown", Kind::String),
    ("chmod", Kind::String),
    ("link", Kind::Bool),
    ("checksum", Kind::String),
    ("keep-git-dir", Kind::Bool),
    ("exclude", Kind::Strings),
    ("unpack", Kind::Bool),
];
pub(crate) const HEALTHCHECK: &[(&str, Kind)] = &[
    ("interval", Kind::String),
    ("timeout", Kind::String),
    ("start-period", Kind::String),
    ("start-interval", Kind::String),
    ("retries", Kind::String),
];
pub(crate) const NONE: &[(&str, Kind)] = &[];
