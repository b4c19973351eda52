//! How strata names images, finds credentials, and stores images on disk.
//!
//! - [`Reference`]: image references parsed and normalised exactly as Docker does.
//! - [`Credentials`]: credentials from Docker's config (helpers included), containers auth
//!   files, or the caller; secrets never show in `Debug` output or errors.
//! - [`Layout`], [`Manifest`], [`Platform`]: the OCI vocabulary of `strata-oci`, re-exported
//!   because this crate's API speaks it.
//! - [`RegistryClient`]: pulls into and pushes from a layout, streaming, digests verified;
//!   failed requests are retried with backoff, after `Retry-After` when a registry sends one.
//! - [`write_docker_archive`]: the tarball `docker load` and `podman load` take.
//!
//! ```
//! use strata_registry::Reference;
//!
//! let r: Reference = "ghcr.io/acme/tool:1.2".parse()?;
//! assert_eq!(r.registry(), "ghcr.io");
//! assert_eq!(r.repository(), "acme/tool");
//! # Ok::<(), strata_registry::Error>(())
//! ```

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod archive;
mod auth;
mod client;
mod error;
mod fetch;
mod http;
mod progress;
mod reference;
mod target;

pub use archive::write_docker_archive;
pub use auth::{Credential, Credentials, DockerConfig};
pub use client::{ClientBuilder, PulledImage, PushReport, RegistryClient, TlsSettings};
pub use error::{Error, Result};
pub use fetch::{DEFAULT_DOWNLOAD_LIMIT, Fetched};
pub use progress::{Direction, PROGRESS_STEP, ProgressSink, Transfer};
pub use reference::{DOCKER_HUB, Reference, is_loopback_host};
pub use target::Target;
// The OCI vocabulary the registry's API speaks, from the crate every strata crate shares.
pub use strata_oci::{
    BlobInfo, DOCKER_LIST, DOCKER_MANIFEST, Descriptor, Digest, Fault, ImageIndex, ImageManifest,
    Layout, LayoutReport, MAX_MANIFEST_SIZE, Manifest, MediaType, OCI_INDEX, OCI_MANIFEST,
    Platform, REF_NAME, spec, validate_digest,
};
