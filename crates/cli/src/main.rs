//! `strata`: builds OCI images from Dockerfiles without a daemon, with Kaniko's executor
//! flags.
//!
//! ```sh
//! strata build --context . --destination registry.example.com/app:1
//! strata --context . --no-push          # no subcommand: the same as `strata build`
//! /kaniko/executor --context dir:///workspace --destination …   # invoked as `executor`
//! strata dockerfile Dockerfile          # the syntax tree and stages as JSON
//! strata state check | repair | prune --max-size 20G
//! ```
//!
//! Exit codes: 0 success, 1 a build (or check) failed, with the Dockerfile position where
//! there is one, 2 a usage error naming the flag.

mod cli;
mod display;
mod dockerfile;
mod executor;
mod state;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command};

/// The version and the commit the binary was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("STRATA_COMMIT"),
    ")"
);

/// How a command failed: the exit code follows from the kind.
#[derive(Debug)]
pub enum Failure {
    /// A flag or argument is wrong (exit 2).
    Usage(String),
    /// The work itself failed (exit 1).
    Build(String),
}

impl From<strata::Error> for Failure {
    fn from(e: strata::Error) -> Failure {
        Failure::Build(error_chain(&e))
    }
}

/// An error and its sources, joined by `: ` (strata's errors print a cause either in their
/// own message or as a source, never both, so each is said once).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The arguments with `build` put first where the user left the subcommand out: none given,
/// a flag first, or the binary invoked as Kaniko's `executor`.
fn with_subcommand(mut args: Vec<OsString>) -> Vec<OsString> {
    let invoked_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name().map(|n| n.to_owned()));
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let is_subcommand = cli::SUBCOMMANDS.contains(&first);
    let top_level = matches!(first, "--help" | "-h" | "--version" | "-V");
    let as_executor = invoked_as.is_some_and(|n| n == "executor");
    let needs_build = if as_executor {
        first != "version" && first != "build"
    } else {
        !is_subcommand && !top_level
    };
    if needs_build {
        args.insert(1.min(args.len()), OsString::from("build"));
    }
    args
}

fn main() -> ExitCode {
    let raw: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(with_subcommand(raw.clone())) {
        Ok(cli) => cli,
        // Help and version go to stdout with 0; usage errors to stderr with 2, naming the flag.
        Err(e) => e.exit(),
    };
    // An ordinary user with subordinate ids builds as root of a user namespace of its own.
    if matches!(cli.command, Command::Build(_) | Command::State(_))
        && let Some(code) = strata::sandbox::enter_user_namespace(&raw)
    {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let outcome = match cli.command {
        Command::Build(args) => executor::run(*args),
        Command::Dockerfile(args) => dockerfile::run(&args),
        Command::State(args) => state::run(&args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "strata", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(|e| Failure::Build(format!("writing the man page: {e}"))),
        Command::Version => {
            println!("strata {VERSION}");
            Ok(())
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("strata: error: {message}");
            eprintln!("Run `strata build --help` for the flags.");
            ExitCode::from(2)
        }
        Err(Failure::Build(message)) => {
            eprintln!("strata: error: {message}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        with_subcommand(list.iter().map(OsString::from).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn build_is_the_default_subcommand_and_the_executor_name() {
        assert_eq!(args(&["strata"]), ["strata", "build"]);
        assert_eq!(
            args(&["strata", "--context", "."]),
            ["strata", "build", "--context", "."]
        );
        assert_eq!(
            args(&["strata", "state", "check"]),
            ["strata", "state", "check"]
        );
        assert_eq!(args(&["strata", "--help"]), ["strata", "--help"]);
        assert_eq!(
            args(&["/kaniko/executor", "--help"]),
            ["/kaniko/executor", "build", "--help"]
        );
        assert_eq!(
            args(&["/kaniko/executor", "version"]),
            ["/kaniko/executor", "version"]
        );
        assert_eq!(
            args(&["/kaniko/executor", "-c", "dir:///workspace"]),
            ["/kaniko/executor", "build", "-c", "dir:///workspace"]
        );
    }

    #[test]
    fn the_definitions_are_consistent() {
        Cli::command().debug_assert();
    }
}
