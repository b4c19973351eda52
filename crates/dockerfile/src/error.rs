//! The crate's error type: every error says where it is.

/// What went wrong, and where: every variant carries the 1-based line (and column where it is
/// known) of the offending text, so that a tool can print `Dockerfile:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The text is not a well-formed Dockerfile (directives, JSON arrays, heredocs, encoding).
    #[error("line {line}:{column}: {message}")]
    Syntax {
        /// The line of the offending text.
        line: usize,
        /// The column of the offending text (1 when only the line is known).
        column: usize,
        /// What is wrong, quoting the offending text.
        message: String,
    },
    /// An instruction is well formed but not valid: unknown instruction or flag, missing or
    /// extra arguments, a bad flag value.
    #[error("line {line}:{column}: {instruction}: {message}")]
    Instruction {
        /// The line where the instruction starts.
        line: usize,
        /// The column of the offending text (1 when only the line is known).
        column: usize,
        /// The instruction, upper case as the Dockerfile reference writes it.
        instruction: String,
        /// What is wrong, quoting the offending text.
        message: String,
    },
    /// Variable expansion failed (`${a:?}` on an unset variable, a bad substitution).
    #[error("line {line}: {message}")]
    Expansion {
        /// The line of the instruction being expanded.
        line: usize,
        /// What is wrong, quoting the word.
        message: String,
    },
    /// The stages do not form a valid build: unknown or duplicate stage, cycle, unknown target.
    #[error("line {line}: {message}")]
    Stage {
        /// The line of the instruction at fault (0 when the fault is not in the file, as for an
        /// unknown `--target`).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A `.dockerignore` pattern is malformed.
    #[error(".dockerignore line {line}: {message}")]
    Ignore {
        /// The line of the pattern.
        line: usize,
        /// What is wrong, quoting the pattern.
        message: String,
    },
}

impl Error {
    /// The 1-based line of the fault (0 when it is not in the file).
    pub fn line(&self) -> usize {
        match self {
            Error::Syntax { line, .. }
            | Error::Instruction { line, .. }
            | Error::Expansion { line, .. }
            | Error::Stage { line, .. }
            | Error::Ignore { line, .. } => *line,
        }
    }

    /// The 1-based column of the fault (1 when only the line is known).
    pub fn column(&self) -> usize {
        match self {
            Error::Syntax { column, .. } | Error::Instruction { column, .. } => *column,
            _ => 1,
        }
    }

    /// The message without the position, for tools that print the position themselves.
    pub fn message(&self) -> String {
        match self {
            Error::Syntax { message, .. }
            | Error::Expansion { message, .. }
            | Error::Stage { message, .. }
            | Error::Ignore { message, .. } => message.clone(),
            Error::Instruction {
                instruction,
                message,
                ..
            } => format!("{instruction}: {message}"),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
