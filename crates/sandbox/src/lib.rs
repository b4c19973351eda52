//! Runs a build step's command inside a root filesystem, isolated with Linux namespaces.
//!
//! Status: this crate is being built (tracked in issue 7) and exposes no API yet.
//! Nothing here pretends to work: the first release of its API lands with that issue.

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]
