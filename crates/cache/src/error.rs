//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong with cache keys and stores.
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
    /// A cache entry on disk is damaged.
    #[error("{path}: damaged cache entry: {message}")]
    Damaged {
        /// The entry file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The registry store could not read or write an entry.
    #[error("cache repository {repository}: {message}")]
    Remote {
        /// The repository.
        repository: String,
        /// What went wrong (the registry's answer).
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
