//! The Dockerfile language as BuildKit's `docker/dockerfile:1` frontend defines it: parser
//! directives, heredocs, every instruction and flag, variable expansion and stages, plus
//! `.dockerignore` matching.
//!
//! Status: this crate is being built (tracked in issue 3) and exposes no API yet.
//! Nothing here pretends to work: the first release of its API lands with that issue.

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]
