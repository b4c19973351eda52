//! The Dockerfile language as BuildKit's `docker/dockerfile:1` frontend defines it.
//!
//! Three stages, as in BuildKit: [`parse`] turns text into a syntax tree ([`Dockerfile`] of
//! [`Node`]s with line numbers; the parser knows nothing of meaning), and the [`shell`] lexer
//! expands variables with BuildKit's rules.
//!
//! ```
//! let file = strata_dockerfile::parse("FROM busybox\nENV GREETING=\"hello world\"\nCMD [\"sh\"]\n")?;
//! assert_eq!(file.nodes.len(), 3);
//! assert_eq!(file.nodes[1].args, ["GREETING", "\"hello world\"", "="]);
//! assert!(file.nodes[2].json);
//! # Ok::<(), strata_dockerfile::Error>(())
//! ```
//!
//! Status (issue 3): the parser and the shell lexer are here; typed instructions, stages and
//! `.dockerignore` are being built.

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod ast;
mod error;
mod parser;
mod pattern;
pub mod shell;

pub use ast::{Directives, Dockerfile, Heredoc, Node, Warning};
pub use error::{Error, Result};
pub use parser::{parse, parse_bytes};
