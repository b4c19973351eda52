//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong with digests, platforms, manifests and layouts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// A digest is not `algorithm:hex` of the right length.
    #[error("invalid digest `{digest}`: {message}")]
    InvalidDigest {
        /// The digest as given.
        digest: String,
        /// What is wrong.
        message: String,
    },
    /// A platform is not `os/architecture[/variant]`.
    #[error("invalid platform `{text}`: {message}")]
    InvalidPlatform {
        /// The platform as given.
        text: String,
        /// What is wrong.
        message: String,
    },
    /// Bytes did not hash to the digest they were stored or announced under.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was being read or written.
        what: String,
        /// The expected digest.
        expected: String,
        /// The digest of the bytes.
        actual: String,
    },
    /// A layout file is malformed.
    #[error("{path}: {message}")]
    Malformed {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Nothing by that name in a layout.
    #[error("{store}: no image named `{name}`")]
    NotFound {
        /// The layout's directory.
        store: PathBuf,
        /// The name looked for.
        name: String,
    },
    /// An index has no manifest for the platform asked for.
    #[error("{reference}: no image for platform {platform} (the index has: {available})")]
    NoPlatform {
        /// The image.
        reference: String,
        /// The platform asked for.
        platform: String,
        /// The platforms the index lists.
        available: String,
    },
    /// A manifest is of a kind strata cannot use, or is not a valid manifest.
    #[error("{reference}: {message}")]
    UnsupportedManifest {
        /// The image.
        reference: String,
        /// Why.
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
