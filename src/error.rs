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
///
/// Match on [`Error::kind`] (and read [`Error::position`], [`Error::exit_code`],
/// [`Error::http_status`], [`Error::is_retryable`]) rather than on the message: the variants
/// may grow, and messages are for people.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Dockerfile could not be read, parsed or planned.
    #[error("{}", dockerfile_message(file, error))]
    Dockerfile {
        /// The Dockerfile's path.
        file: String,
        /// What the parser said (it carries line and column).
        error: strata_dockerfile::Error,
    },
    /// An instruction failed; `source` says why.
    #[error("{position}: {error}")]
    Step {
        /// Where.
        position: Position,
        /// Why.
        error: Box<Error>,
    },
    /// A `RUN` command exited non-zero or was killed.
    #[error("process \"{command}\" did not complete successfully: {status}{}", tail(.output))]
    RunFailed {
        /// The command as written.
        command: String,
        /// How it ended.
        status: strata_sandbox::ExitStatus,
        /// Its last lines of output.
        output: Vec<String>,
    },
    /// A file or directory could not be used.
    #[error("{path}: {error}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The build context is not usable, or an instruction tried to leave it.
    #[error("build context: {0}")]
    Context(String),
    /// An instruction is valid but asks for something this build cannot do.
    #[error("{0}")]
    Invalid(String),
    /// Fetching a remote source (a git repository, an archive URL, an object-store object)
    /// failed; `kind` says how ([`ErrorKind::Auth`], [`ErrorKind::NotFound`], …).
    #[error("{location}: {message}")]
    Fetch {
        /// The source, without credentials.
        location: String,
        /// What kind of failure.
        kind: ErrorKind,
        /// What went wrong.
        message: String,
    },
    /// A feature strata does not implement yet: named, never silently ignored.
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// Talking to a registry or reading an image store failed.
    #[error(transparent)]
    Registry(#[from] strata_registry::Error),
    /// The state directory's image layout, a manifest or a platform is not usable.
    #[error(transparent)]
    Oci(#[from] strata_oci::Error),
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

/// What kind of failure an [`Error`] is, for callers that act on it: retry, ask for
/// credentials, show the Dockerfile line, report a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The Dockerfile could not be read, parsed or planned ([`Error::position`] may be
    /// `None`; the message has `FILE:LINE:COL`).
    Dockerfile,
    /// A `RUN` command exited non-zero or was killed ([`Error::exit_code`]).
    StepFailed,
    /// A registry refused credentials (HTTP 401) or access (403).
    Auth,
    /// A registry, a layout or a build context has no such image, blob or file (HTTP 404).
    NotFound,
    /// A registry or the network failed otherwise ([`Error::http_status`],
    /// [`Error::is_retryable`]).
    Registry,
    /// A file or directory could not be used (the path is in the message).
    Io,
    /// The build context is not usable, or an instruction tried to leave it.
    Context,
    /// Something strata does not implement yet.
    Unsupported,
    /// The build was cancelled.
    Cancelled,
    /// Anything else that input or state made invalid: a layer, a cache entry, an
    /// instruction's arguments.
    Invalid,
    /// A bug or a panic in a background task.
    Internal,
}

impl Error {
    /// What kind of failure this is (for a failed instruction, the kind of its cause).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Step { error, .. } => error.kind(),
            Error::Dockerfile { .. } => ErrorKind::Dockerfile,
            Error::RunFailed { .. } => ErrorKind::StepFailed,
            Error::Io { .. } => ErrorKind::Io,
            Error::Context(_) => ErrorKind::Context,
            Error::Fetch { kind, .. } => *kind,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::Task(_) => ErrorKind::Internal,
            Error::Invalid(_) => ErrorKind::Invalid,
            Error::Registry(e) => match e {
                strata_registry::Error::NotFound { .. }
                | strata_registry::Error::NoPlatform { .. } => ErrorKind::NotFound,
                strata_registry::Error::Io { .. } => ErrorKind::Io,
                strata_registry::Error::CredentialHelper { .. } => ErrorKind::Auth,
                strata_registry::Error::Registry { .. } => match e.http_status() {
                    Some(401 | 403) => ErrorKind::Auth,
                    Some(404) => ErrorKind::NotFound,
                    _ => ErrorKind::Registry,
                },
                strata_registry::Error::InvalidReference { .. } => ErrorKind::Invalid,
                _ => ErrorKind::Registry,
            },
            Error::Oci(e) => match e {
                strata_oci::Error::Io { .. } => ErrorKind::Io,
                strata_oci::Error::NotFound { .. } | strata_oci::Error::NoPlatform { .. } => {
                    ErrorKind::NotFound
                }
                _ => ErrorKind::Invalid,
            },
            Error::Layer(strata_layer::Error::Io { .. }) => ErrorKind::Io,
            Error::Layer(_) => ErrorKind::Invalid,
            Error::Snapshot(strata_snapshot::Error::Io { .. }) => ErrorKind::Io,
            Error::Snapshot(_) => ErrorKind::Invalid,
            Error::Cache(_) => ErrorKind::Invalid,
            Error::Sandbox(e) => match e {
                strata_sandbox::Error::Io { .. } => ErrorKind::Io,
                strata_sandbox::Error::Cancelled => ErrorKind::Cancelled,
                strata_sandbox::Error::Unsupported(_) => ErrorKind::Unsupported,
                strata_sandbox::Error::Exec { .. }
                | strata_sandbox::Error::TimedOut(_)
                | strata_sandbox::Error::Lost(_) => ErrorKind::StepFailed,
                _ => ErrorKind::Invalid,
            },
        }
    }

    /// The exit code of the `RUN` command that failed, when it exited (rather than being
    /// killed by a signal).
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Error::Step { error, .. } => error.exit_code(),
            Error::RunFailed {
                status: strata_sandbox::ExitStatus::Code(code),
                ..
            } => Some(*code),
            _ => None,
        }
    }

    /// The HTTP status of the registry response that caused this error, when one did.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Step { error, .. } => error.http_status(),
            Error::Registry(e) => e.http_status(),
            _ => None,
        }
    }

    /// Whether running the same build again later may succeed: a registry or network failure
    /// that strata's own retries could not get past (connection trouble, timeouts, 408, 429,
    /// 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Step { error, .. } => error.is_retryable(),
            Error::Registry(e) => e.is_retryable(),
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |error| Error::Io { path, error }
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
