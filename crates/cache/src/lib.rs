//! Cache keys for build steps (with an explanation of every miss) and stores for the layers
//! the steps produced: a local directory and a registry repository.
//!
//! Status: not written yet (issue 8); this crate exposes no API so far.

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]
