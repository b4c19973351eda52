//! The small vocabulary strata's crates meet through, so that none of them needs another:
//!
//! - [`digest`]: `sha256:<hex>` digests, checked ([`validate_digest`]) and computed while
//!   bytes flow ([`Hasher`], [`HashingWriter`], [`HashingReader`]).
//! - [`Platform`]: an OS/architecture/variant triple, parsed and normalised once, that picks
//!   an image from an index.
//! - [`Manifest`]: image manifests and indexes read from untrusted JSON, checked once
//!   (digests valid, sizes numbers, documents bounded) and given as oci-spec's
//!   [`ImageManifest`] and [`ImageIndex`], whose [`Descriptor`]s carry typed [`Digest`]s and
//!   platforms. These oci-spec types are what crates pass each other; they are re-exported
//!   here, and the whole of oci-spec as [`spec`].
//! - [`Layout`]: an OCI image-layout directory with content-addressed, digest-verified blobs
//!   written atomically, a lock-protected `index.json`, and [`Layout::verify`].
//!
//! ```
//! use strata_oci::{Layout, Platform};
//!
//! let dir = tempfile::tempdir()?;
//! let layout = Layout::open(dir.path())?;
//! let blob = layout.write_blob_bytes(b"hello")?;
//! assert_eq!(blob.digest.to_string(), strata_oci::digest::sha256(b"hello"));
//! assert!(layout.has_blob(&blob.digest));
//!
//! let arm: Platform = "linux/aarch64".parse()?;
//! assert_eq!(arm.to_string(), "linux/arm64");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

pub mod digest;
mod error;
mod layout;
mod manifest;
mod platform;
mod verify;

pub use digest::{Hasher, HashingReader, HashingWriter, validate_digest};
pub use error::{Error, Result};
pub use layout::{BlobInfo, LayerBlob, Layout, REF_NAME};
pub use manifest::{
    DOCKER_LIST, DOCKER_MANIFEST, MAX_MANIFEST_SIZE, Manifest, OCI_INDEX, OCI_MANIFEST,
};
/// oci-spec, the OCI specifications' types, as this crate uses them.
pub use oci_spec::image as spec;
pub use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageManifest, MediaType};
pub use platform::Platform;
pub use verify::{Fault, LayoutReport};
