//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong scanning, diffing or mounting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// A name in the tree cannot be represented (not UTF-8).
    #[error("{path}: file names must be UTF-8 to go into a layer")]
    NotUtf8 {
        /// The path, lossily decoded.
        path: String,
    },
    /// Overlayfs cannot be used here.
    #[error("overlayfs is not usable here: {reason}")]
    OverlayUnavailable {
        /// Why.
        reason: String,
    },
    /// The hash memo file is unreadable.
    #[error("{path}: not a hash memo: {message}")]
    Memo {
        /// The memo file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |error| Error::Io { path, error }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
