//! The Dockerfile language as BuildKit's `docker/dockerfile:1` frontend defines it.
//!
//! Three stages, as in BuildKit: [`parse`] turns text into a syntax tree ([`Dockerfile`] of
//! [`Node`]s with line numbers; the parser knows nothing of meaning); a [`Plan`] resolves the
//! stages for one build (global `ARG`s, `FROM` bases, the dependency graph, the stages the
//! target needs) and types each stage's instructions ([`Instruction`]: flags checked, words
//! expanded by the [`shell`] lexer with BuildKit's rules, `ARG`/`ENV` scoping applied).
//!
//! ```
//! let file = strata_dockerfile::parse("FROM busybox\nENV GREETING=\"hello world\"\nCMD [\"sh\"]\n")?;
//! assert_eq!(file.nodes.len(), 3);
//! assert_eq!(file.nodes[1].args, ["GREETING", "\"hello world\"", "="]);
//! assert!(file.nodes[2].json);
//! # Ok::<(), strata_dockerfile::Error>(())
//! ```
//!
//! [`Dockerignore`] implements `.dockerignore` matching with moby's semantics.

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod ast;
mod error;
mod flags;
mod ignore;
mod instructions;
mod mount;
mod parser;
mod pattern;
pub use pattern::{has_wildcards, match_path};
pub mod shell;
mod stages;
mod suggest;

pub use ast::{Directives, Dockerfile, Heredoc, Node, Warning};
pub use error::{Error, Result};
pub use ignore::{Dockerignore, IgnorePattern, ignore_file_for};
pub use instructions::{
    Add, ArgDecl, CommandLine, Copy, Healthcheck, InlineFile, Instruction, Located, Network, Run,
    Security,
};
pub use mount::{Mount, MountType, Sharing};
pub use parser::{parse, parse_bytes};
pub use stages::{Base, PROXY_ARGS, Plan, PlanOptions, Stage, Step, StepId};
/// The platform type every strata crate shares (`strata-oci`'s).
pub use strata_oci::Platform;
