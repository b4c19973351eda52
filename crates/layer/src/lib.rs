//! OCI image layers: written from a set of entries, and extracted safely when untrusted.
//!
//! [`LayerWriter`] turns [`Entry`]s (files streamed from disk, directories, links, devices,
//! whiteouts) into a layer in one streaming pass: a PAX tar in a deterministic order, compressed
//! with gzip on every core (pigz-style, standard gzip output) or zstd, hashed twice on the way
//! (the `diff_id` of the tar and the digest of the compressed bytes), into any [`std::io::Write`].
//! Memory stays at a few MiB per core whatever the layer's size.
//!
//! [`Extractor`] applies a layer onto a directory the way a container runtime does (whiteouts,
//! opaque directories, links, owners, modes, times, xattrs), treating every layer as hostile:
//! names are cleaned and refused when they could escape, parents are resolved inside the
//! target, digests are verified as the bytes flow, and [`Extractor::unpack`] makes a
//! directory appear whole or not at all.
//!
//! ```
//! use strata_layer::{Entry, EntryKind, Extractor, LayerWriter, Metadata};
//!
//! let entries = vec![Entry {
//!     path: "hello.txt".into(),
//!     kind: EntryKind::Bytes(b"hi\n".to_vec()),
//!     metadata: Metadata { mode: 0o644, ..Default::default() },
//! }];
//! let mut blob = Vec::new();
//! let layer = LayerWriter::new().write(entries, &mut blob)?;
//!
//! let target = tempfile::tempdir().unwrap();
//! let report = Extractor::new()
//!     .expect_digest(Some(layer.descriptor.digest().to_string()))
//!     .apply(blob.as_slice(), target.path())?;
//! assert_eq!(report.diff_id, layer.diff_id.to_string());
//! assert_eq!(std::fs::read(target.path().join("hello.txt")).unwrap(), b"hi\n");
//! # Ok::<(), strata_layer::Error>(())
//! ```

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod compression;
mod entry;
mod error;
mod extract;
mod gzip;
mod read;
mod tar_format;
mod write;

pub use compression::{Codec, Compression};
pub use entry::{Entry, EntryKind, Metadata, Mtime, OPAQUE_MARKER, WHITEOUT_PREFIX};
pub use error::{Error, Result};
pub use extract::{ExtractReport, Extractor, WhiteoutMode};
pub use read::{EntryHeader, ReadKind};
pub use write::{LayerInfo, LayerWriter};
