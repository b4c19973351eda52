//! The test kit's error type.

use std::path::PathBuf;

/// Everything that can go wrong while setting up real test parts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program the tests need is not installed.
    #[error(
        "`{program}` was not found on PATH: install Debian's `{package}` package \
         (apt-get install -y {package}), or run scripts/test, which installs it"
    )]
    MissingProgram {
        /// The program looked for.
        program: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// A filesystem operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The registry process did not come up.
    #[error("docker-registry did not start: {reason}\n--- registry log (last lines) ---\n{log}")]
    RegistryStart {
        /// Why the start was judged failed.
        reason: String,
        /// The last lines the registry printed.
        log: String,
    },
    /// Generating the TLS certificate or the htpasswd entry failed.
    #[error("generating test credentials failed: {0}")]
    Credentials(String),
    /// An HTTP exchange with the registry failed or answered something unexpected.
    #[error("{method} {url}: {message}")]
    Http {
        /// The HTTP method.
        method: &'static str,
        /// The URL requested.
        url: String,
        /// The status and body excerpt, or the transport error.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |error| Error::Io { path, error }
    }
}
