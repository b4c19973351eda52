//! `strata::Error`: every crate's errors, with the Dockerfile position where there is one.

use std::path::PathBuf;

/// Where in the Dockerfile something went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The Dockerfile's path, or `Dockerfile` for text given inline.
    pub file: String,
    /// The first line of the instruction (1-based).
    pub line: usize,
    /// The stage, by name or index.
    pub stage: String,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} (stage {})", self.file, self.line, self.stage)
    }
}

/// Everything that can make a build fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Dockerfile could not be read, parsed or planned.
    #[error("{}", dockerfile_message(file, source))]
    Dockerfile {
        /// The Dockerfile's path.
        file: String,
        /// What the parser said (it carries line and column).
        source: strata_dockerfile::Error,
    },
    /// An instruction failed; `source` says why.
    #[error("{position}: {source}")]
    Step {
        /// Where.
        position: Position,
        /// Why.
        source: Box<Error>,
    },
    /// A `RUN` command exited non-zero or was killed.
    #[error("`{command}` failed with {status}{}", tail(.output))]
    RunFailed {
        /// The command as written.
        command: String,
        /// How it ended.
        status: strata_sandbox::ExitStatus,
        /// Its last lines of output.
        output: Vec<String>,
    },
    /// A file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The build context is not usable, or an instruction tried to leave it.
    #[error("build context: {0}")]
    Context(String),
    /// An instruction is valid but asks for something this build cannot do.
    #[error("{0}")]
    Invalid(String),
    /// A feature strata does not implement yet: named, never silently ignored.
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// Talking to a registry or reading an image store failed.
    #[error(transparent)]
    Registry(#[from] strata_registry::Error),
    /// Writing or extracting a layer failed.
    #[error(transparent)]
    Layer(#[from] strata_layer::Error),
    /// Scanning a filesystem or hashing the context failed.
    #[error(transparent)]
    Snapshot(#[from] strata_snapshot::Error),
    /// The cache store failed.
    #[error(transparent)]
    Cache(#[from] strata_cache::Error),
    /// Running a step's command failed to start or was stopped.
    #[error(transparent)]
    Sandbox(#[from] strata_sandbox::Error),
    /// The build was cancelled (another stage failed, or the build's future was dropped)
    /// before this step started.
    #[error("cancelled")]
    Cancelled,
    /// A background task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// `FILE:LINE:COL: message`, the way compilers and linters write positions.
fn dockerfile_message(file: &str, error: &strata_dockerfile::Error) -> String {
    use strata_dockerfile::Error as E;
    match error {
        E::Syntax {
            line,
            column,
            message,
        } => format!("{file}:{line}:{column}: {message}"),
        E::Instruction {
            line,
            column,
            instruction,
            message,
        } => {
            format!("{file}:{line}:{column}: {instruction}: {message}")
        }
        E::Expansion { line, message } | E::Stage { line, message } if *line > 0 => {
            format!("{file}:{line}: {message}")
        }
        other => format!("{file}: {other}"),
    }
}

fn tail(output: &[String]) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; last output:\n  {}", output.join("\n  "))
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// The Dockerfile position of the failing instruction, when the error has one.
    pub fn position(&self) -> Option<&Position> {
        match self {
            Error::Step { position, .. } => Some(position),
            _ => None,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
