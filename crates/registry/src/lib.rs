//! Image references, credentials, pull and push against OCI registries, and the OCI layout and
//! docker-archive outputs.
//!
//! Status: not written yet (issue 6); this crate exposes no API so far.

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]
