//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can stop a step from running to completion. A command that runs and exits
/// with a non-zero status is not an error: its status is in the [`Outcome`](crate::Outcome).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This platform has no namespaces (the crate only runs steps on Linux).
    #[error("running build steps is unsupported on this platform: {0}")]
    Unsupported(&'static str),
    /// A file or directory on the host could not be used.
    #[error("{path}: {error}")]
    Io {
        /// The host path at fault.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The step description is not valid (relative mount target, NUL byte, empty command).
    #[error("invalid step: {0}")]
    InvalidStep(String),
    /// A path inside the root filesystem could not be resolved or created.
    #[error("`{path}` in the root filesystem: {reason}")]
    Path {
        /// The path as the step named it, inside the root.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The user or group the step asked for does not exist in the root filesystem.
    #[error("user `{user}`: {reason}")]
    User {
        /// The `USER` value as written (`name`, `uid`, `name:group`, `uid:gid`).
        user: String,
        /// What is wrong.
        reason: String,
    },
    /// The namespaces could not be created; the message says what to change.
    #[error("cannot create the step's namespaces: {error}{hint}")]
    Namespaces {
        /// What `clone` said.
        error: std::io::Error,
        /// A sentence on what to change, starting with `; `, or empty.
        hint: String,
    },
    /// Mapping the caller to root in the user namespace failed.
    #[error("cannot map user ids into the user namespace: {0}")]
    IdMap(String),
    /// One step of setting up the isolated root (a mount, pivot_root, hostname) failed.
    #[error("setting up the step's root: {action}: {error}")]
    Setup {
        /// What was being done, e.g. `mount proc on /proc`.
        action: String,
        /// What the kernel said.
        error: std::io::Error,
    },
    /// The command could not be started inside the root.
    #[error("cannot run `{program}`: {reason}")]
    Exec {
        /// `argv[0]`.
        program: String,
        /// What went wrong, e.g. `executable file not found in $PATH`.
        reason: String,
    },
    /// The step ran longer than its timeout; its processes were killed.
    #[error("the command did not finish within {0:?} and was killed")]
    TimedOut(Duration),
    /// The caller cancelled the step; its processes were killed.
    #[error("the step was cancelled and its processes were killed")]
    Cancelled,
    /// The child process ended without telling how (killed from outside, protocol broken).
    #[error("the step's init process ended unexpectedly: {0}")]
    Lost(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |error| Error::Io { path, error }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
