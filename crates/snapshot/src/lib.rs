//! Filesystem snapshots of a root filesystem and the change set between two of them, from a
//! parallel walk or from an overlayfs upper directory, plus build-context hashing for cache keys.
//!
//! Status: this crate is being built (tracked in issue 5) and exposes no API yet.
//! Nothing here pretends to work: the first release of its API lands with that issue.

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]
