//! Cache keys for build steps (with an explanation of every miss) and stores for the layers
//! the steps produced: a local directory and a registry repository.
//!
//! Status: this crate is being built (tracked in issue 8) and exposes no API yet.
//! Nothing here pretends to work: the first release of its API lands with that issue.

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]
