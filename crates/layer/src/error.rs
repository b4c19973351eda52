//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong writing or reading a layer. Variants name the entry, path or
/// digest at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a source file or writing the output failed.
    #[error("{path}: {error}")]
    Io {
        /// The path at fault (`<output>` or `<input>` for the streams).
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// An entry given to the writer is not valid (bad path, hardlink to nothing).
    #[error("entry `{path}`: {message}")]
    InvalidEntry {
        /// The entry's path inside the image.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The layer is not a well-formed tar stream.
    #[error("malformed layer at byte {offset}: {message}")]
    Malformed {
        /// Offset in the uncompressed tar stream.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// An entry of an untrusted layer was refused (path escape, device, absurd size).
    #[error("layer entry `{path}` refused: {message}")]
    Refused {
        /// The entry's name as written in the layer (lossily decoded).
        path: String,
        /// Why.
        message: String,
    },
    /// The layer's bytes do not have the digest they were announced with.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The announced digest.
        expected: String,
        /// The digest of the bytes read.
        actual: String,
    },
    /// Compression or decompression failed.
    #[error("{codec}: {message}")]
    Codec {
        /// `gzip` or `zstd`.
        codec: &'static str,
        /// What the codec said.
        message: String,
    },
    /// A digest or descriptor could not be built.
    #[error("descriptor: {0}")]
    Descriptor(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |error| Error::Io { path, error }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
