//! Cache keys: a digest over everything that can change a step's result, and a record of
//! those inputs, so that a miss can say which one differed.
//!
//! The key of a step chains from its parent's key (the first step's parent is the base image:
//! its manifest digest and platform), then covers the instruction in canonical form after
//! expansion, the build args and environment the step can see, its flags, and for COPY/ADD
//! the content digest of every source file (not their times). The encoding is versioned
//! ([`KEY_FORMAT`]): a new format gives new keys, so an old entry can never be hit by a
//! different meaning.
//!
//! Format 1: SHA-256 over a sequence of fields, each written as its length in bytes (8 bytes,
//! big-endian) followed by its UTF-8 bytes: the format name, the parent, the instruction, then
//! for each section in the order `arg`, `env`, `flag`, `file`: the section name, the number of
//! pairs in decimal, and each name and value, sorted by name (byte order).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata_oci::Hasher;

/// The version of the key encoding, hashed into every key.
pub const KEY_FORMAT: &str = "strata-cache-key/1";

/// Everything a key was computed from, by kind and name, in canonical order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInputs {
    /// The parent step's key, or for the first step the base image (`image <digest> <platform>`).
    pub parent: String,
    /// The instruction, canonical and expanded.
    pub instruction: String,
    /// Build args the step sees.
    pub build_args: BTreeMap<String, String>,
    /// Environment the step sees.
    pub env: BTreeMap<String, String>,
    /// Flags (`chown`, `chmod`, `link`, `mount`, `network`, ...) with their values.
    pub flags: BTreeMap<String, String>,
    /// Source files (COPY/ADD, bind mounts) and their content digests.
    pub files: BTreeMap<String, String>,
}

/// A step's cache key with the inputs it was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// `sha256:<hex>` over [`KEY_FORMAT`] and every input.
    pub digest: String,
    /// The inputs.
    pub inputs: KeyInputs,
}

/// Builds a [`CacheKey`].
///
/// ```
/// use strata_cache::KeyBuilder;
///
/// let base = KeyBuilder::base_image("sha256:aaaa", "linux/amd64");
/// let key = KeyBuilder::new(&base)
///     .instruction("COPY src /app/src")
///     .file("src/main.rs", "sha256:1111")
///     .build();
/// let other = KeyBuilder::new(&base)
///     .instruction("COPY src /app/src")
///     .file("src/main.rs", "sha256:2222")
///     .build();
/// assert_ne!(key.digest, other.digest);
/// let reasons = strata_cache::explain(&key.inputs, &other.inputs);
/// assert_eq!(reasons.len(), 1);
/// assert_eq!(reasons[0].to_string(), "file src/main.rs changed");
/// ```
#[derive(Debug, Clone, Default)]
pub struct KeyBuilder {
    inputs: KeyInputs,
}

impl KeyBuilder {
    /// The parent of a stage's first step: its base image.
    pub fn base_image(manifest_digest: &str, platform: &str) -> String {
        format!("image {manifest_digest} {platform}")
    }

    /// A key chained from `parent` (a parent key's digest, or [`KeyBuilder::base_image`]).
    pub fn new(parent: &str) -> KeyBuilder {
        KeyBuilder {
            inputs: KeyInputs {
                parent: parent.to_owned(),
                ..KeyInputs::default()
            },
        }
    }

    /// The instruction in canonical form, after expansion.
    pub fn instruction(mut self, text: &str) -> KeyBuilder {
        self.inputs.instruction = text.to_owned();
        self
    }

    /// A build arg the step sees.
    pub fn build_arg(mut self, name: &str, value: &str) -> KeyBuilder {
        self.inputs
            .build_args
            .insert(name.to_owned(), value.to_owned());
        self
    }

    /// An environment variable the step sees.
    pub fn env(mut self, name: &str, value: &str) -> KeyBuilder {
        self.inputs.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// A flag and its value.
    pub fn flag(mut self, name: &str, value: &str) -> KeyBuilder {
        self.inputs.flags.insert(name.to_owned(), value.to_owned());
        self
    }

    /// A source file and its content digest.
    pub fn file(mut self, path: &str, digest: &str) -> KeyBuilder {
        self.inputs.files.insert(path.to_owned(), digest.to_owned());
        self
    }

    /// Source files and their content digests, at once (a context digest's listing: at most
    /// its 10,000 entries, whatever the number of files).
    pub fn files(mut self, files: impl IntoIterator<Item = (String, String)>) -> KeyBuilder {
        if self.inputs.files.is_empty() {
            self.inputs.files = files.into_iter().collect();
        } else {
            self.inputs.files.extend(files);
        }
        self
    }

    /// The key.
    pub fn build(self) -> CacheKey {
        CacheKey {
            digest: digest_of(&self.inputs),
            inputs: self.inputs,
        }
    }
}

/// Hashes the inputs: every field length-prefixed, so that no two different input sets can
/// encode to the same bytes.
fn digest_of(inputs: &KeyInputs) -> String {
    let mut hasher = Hasher::new();
    let mut put = |text: &str| {
        hasher.update(&(text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
    };
    put(KEY_FORMAT);
    put(&inputs.parent);
    put(&inputs.instruction);
    for (section, map) in [
        ("arg", &inputs.build_args),
        ("env", &inputs.env),
        ("flag", &inputs.flags),
        ("file", &inputs.files),
    ] {
        put(section);
        put(&map.len().to_string());
        for (name, value) in map {
            put(name);
            put(value);
        }
    }
    hasher.finish()
}

/// One input of a cache key, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum InputKind {
    /// A build arg the step sees.
    BuildArg,
    /// An environment variable the step sees.
    Env,
    /// A flag of the instruction (`--chown`, a mount, the network, ...).
    Flag,
    /// A file the step copies or mounts (a path in the context, or a group of them).
    File,
}

impl InputKind {
    fn noun(self) -> &'static str {
        match self {
            InputKind::BuildArg => "build arg",
            InputKind::Env => "env",
            InputKind::Flag => "flag",
            InputKind::File => "file",
        }
    }
}

/// How an input changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// It is new.
    Added,
    /// Its value differs.
    Changed,
    /// It is gone.
    Removed,
}

/// Why a step missed the cache: one difference from the last build of the same step, or a
/// reason the cache was not asked. Serialises tagged by `reason`; `Display` gives the words
/// a user reads (`file src/main.rs changed`). Never carries a value, only names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum MissReason {
    /// The base image is another image (another digest).
    BaseImageChanged,
    /// The step now starts its stage from a base image (before, an earlier step preceded it).
    NowFromBaseImage,
    /// An earlier step of the stage changed, so this one's parent key did.
    EarlierStepChanged,
    /// The instruction's text changed.
    InstructionChanged {
        /// The instruction as it was.
        was: String,
    },
    /// A build arg, environment variable, flag or file was added, changed or removed.
    Input {
        /// Which kind of input.
        kind: InputKind,
        /// Its name (a path for files).
        name: String,
        /// How.
        change: Change,
    },
    /// The build turned the cache off for steps of this instruction.
    CacheOff {
        /// `RUN`, `COPY` or `ADD`.
        instruction: String,
    },
}

impl std::fmt::Display for MissReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MissReason::BaseImageChanged => f.write_str("base image digest changed"),
            MissReason::NowFromBaseImage => {
                f.write_str("the step now starts the stage from a base image")
            }
            MissReason::EarlierStepChanged => f.write_str("an earlier step changed"),
            MissReason::InstructionChanged { was } => {
                write!(f, "instruction changed (was `{was}`)")
            }
            MissReason::Input { kind, name, change } => {
                let change = match change {
                    Change::Added => "added",
                    Change::Changed => "changed",
                    Change::Removed => "removed",
                };
                write!(f, "{} {name} {change}", kind.noun())
            }
            MissReason::CacheOff { instruction } => {
                write!(f, "the cache is off for {instruction} steps")
            }
        }
    }
}

/// How `current` differs from `previous`: what a user reads to learn why a step missed the
/// cache. Empty when they are the same.
pub fn explain(previous: &KeyInputs, current: &KeyInputs) -> Vec<MissReason> {
    let mut reasons = Vec::new();
    if previous.parent != current.parent {
        reasons.push(if current.parent.starts_with("image ") {
            if previous.parent.starts_with("image ") {
                MissReason::BaseImageChanged
            } else {
                MissReason::NowFromBaseImage
            }
        } else {
            MissReason::EarlierStepChanged
        });
    }
    if previous.instruction != current.instruction {
        reasons.push(MissReason::InstructionChanged {
            was: previous.instruction.clone(),
        });
    }
    for (kind, before, now) in [
        (
            InputKind::BuildArg,
            &previous.build_args,
            &current.build_args,
        ),
        (InputKind::Env, &previous.env, &current.env),
        (InputKind::Flag, &previous.flags, &current.flags),
        (InputKind::File, &previous.files, &current.files),
    ] {
        let input = |name: &str, change| MissReason::Input {
            kind,
            name: name.to_owned(),
            change,
        };
        for (name, value) in now {
            match before.get(name) {
                None => reasons.push(input(name, Change::Added)),
                Some(old) if old != value => reasons.push(input(name, Change::Changed)),
                Some(_) => {}
            }
        }
        for name in before.keys().filter(|n| !now.contains_key(*n)) {
            reasons.push(input(name, Change::Removed));
        }
    }
    reasons
}
