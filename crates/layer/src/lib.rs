//! OCI image layers: tarballs written from a set of entries (whiteouts, deterministic order,
//! gzip or zstd, digests in one streaming pass) and safe extraction of untrusted layers.
//!
//! Status: this crate is being built (tracked in issue 4) and exposes no API yet.
//! Nothing here pretends to work: the first release of its API lands with that issue.

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]
