//! The crate's error type. Credentials never appear in it.

use std::path::PathBuf;

/// What can go wrong with references, credentials, registries and local image stores.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference is not valid.
    #[error("invalid image reference `{reference}`: {message}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// A filesystem operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
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
    /// A local image store or credentials file is malformed.
    #[error("{path}: {message}")]
    Malformed {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Nothing by that name in a local store.
    #[error("{store}: no image named `{name}`")]
    NotFound {
        /// The store (a directory).
        store: PathBuf,
        /// The name looked for.
        name: String,
    },
    /// A registry refused or failed a request.
    #[error("{reference}: {message}")]
    Registry {
        /// The reference (and blob, where one was involved).
        reference: String,
        /// What the registry or the connection said, with the HTTP status where there was one.
        message: String,
        /// The HTTP status of the response at fault, when there was one (401: not
        /// authenticated, 403: not allowed, 404: no such thing, 429 and 5xx: try later).
        status: Option<u16>,
        /// Whether trying again later may succeed (connection trouble, a timeout, 408, 429,
        /// 5xx), after strata's own retries gave up.
        retryable: bool,
    },
    /// The image has no manifest for the platform asked for.
    #[error("{reference}: no image for platform {platform} (the index has: {available})")]
    NoPlatform {
        /// The reference.
        reference: String,
        /// The platform asked for.
        platform: String,
        /// The platforms the index lists.
        available: String,
    },
    /// The manifest is of a kind strata cannot use.
    #[error("{reference}: {message}")]
    UnsupportedManifest {
        /// The reference.
        reference: String,
        /// Why.
        message: String,
    },
    /// A credential helper failed.
    #[error("credential helper `docker-credential-{helper}` for {registry}: {message}")]
    CredentialHelper {
        /// The helper's name.
        helper: String,
        /// The registry credentials were asked for.
        registry: String,
        /// What happened (never the secret).
        message: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |error| Error::Io { path, error }
    }

    /// An error of the registry at `reference` with no HTTP status, not worth retrying.
    pub(crate) fn registry(reference: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Registry {
            reference: reference.into(),
            message: message.into(),
            status: None,
            retryable: false,
        }
    }

    /// The HTTP status of the registry response that caused this error, when one did.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Registry { status, .. } => *status,
            _ => None,
        }
    }

    /// Whether the same request may succeed later (connection trouble, timeouts, 408, 429,
    /// 5xx): worth a retry of the whole operation.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Registry {
                retryable: true,
                ..
            }
        )
    }
}

/// Errors of the layout store and of manifest and platform checks keep their meaning here:
/// a missing name is still [`Error::NotFound`], a bad digest [`Error::InvalidReference`].
impl From<strata_oci::Error> for Error {
    fn from(error: strata_oci::Error) -> Error {
        use strata_oci::Error as E;
        match error {
            E::Io { path, error } => Error::Io { path, error },
            E::InvalidDigest { digest, message } => Error::InvalidReference {
                reference: digest,
                message,
            },
            E::InvalidPlatform { text, message } => Error::InvalidReference {
                reference: text,
                message,
            },
            E::DigestMismatch {
                what,
                expected,
                actual,
            } => Error::DigestMismatch {
                what,
                expected,
                actual,
            },
            E::Malformed { path, message } => Error::Malformed { path, message },
            E::NotFound { store, name } => Error::NotFound { store, name },
            E::NoPlatform {
                reference,
                platform,
                available,
            } => Error::NoPlatform {
                reference,
                platform,
                available,
            },
            E::UnsupportedManifest { reference, message } => {
                Error::UnsupportedManifest { reference, message }
            }
            other => Error::Malformed {
                path: std::path::PathBuf::new(),
                message: other.to_string(),
            },
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
