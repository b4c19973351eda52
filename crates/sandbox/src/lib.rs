//! Runs a build step's command inside a root filesystem, isolated with Linux namespaces.
//!
//! Status: not written yet (issue 7); this crate exposes no API so far.

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]
