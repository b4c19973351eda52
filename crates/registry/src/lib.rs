//! Image references, credentials, pull and push against OCI registries, and the OCI layout and
//! docker-archive outputs.
//!
//! Status: this crate is being built (tracked in issue 6) and exposes no API yet.
//! Nothing here pretends to work: the first release of its API lands with that issue.

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]
