//! The API on platforms without Linux namespaces: everything says so.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::step::{Cancel, Mode, Outcome, Step, Stream};

const WHY: &str = "build steps run in Linux namespaces";

/// See the Linux documentation of this item.
pub const MAX_LINE: usize = 64 * 1024;

/// Whether something works here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// It works.
    Yes,
    /// It does not, and why.
    No(String),
}

/// What [`probe`] found: nothing works on this platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Namespaces, of any kind.
    pub namespaces: Support,
}

/// Reports that this platform has no namespaces.
pub fn probe() -> Probe {
    Probe {
        namespaces: Support::No(WHY.to_owned()),
    }
}

/// Reports that this platform cannot run steps.
pub fn run_in_place(
    _step: &crate::Step,
    _cancel: &crate::Cancel,
    _on_output: impl FnMut(crate::Stream, &[u8]),
) -> crate::Result<crate::Outcome> {
    Err(crate::Error::Unsupported(WHY))
}

/// Configures a [`Sandbox`].
#[derive(Debug, Clone, Default)]
pub struct SandboxBuilder;

impl SandboxBuilder {
    /// Accepted and ignored: nothing runs here.
    pub fn mode(self, _mode: Mode) -> SandboxBuilder {
        self
    }

    /// Accepted and ignored: nothing runs here.
    pub fn scratch_dir(self, _dir: impl Into<PathBuf>) -> SandboxBuilder {
        self
    }

    /// Always [`Error::Unsupported`].
    pub fn build(self) -> Result<Sandbox> {
        Err(Error::Unsupported(WHY))
    }
}

/// Runs steps: not on this platform.
#[derive(Debug, Clone)]
pub struct Sandbox;

impl Sandbox {
    /// Always [`Error::Unsupported`].
    pub fn new() -> Result<Sandbox> {
        Err(Error::Unsupported(WHY))
    }

    /// Configures a sandbox.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder
    }

    /// Always [`Error::Unsupported`].
    pub fn run(&self, _: &Step, _: &Cancel, _: impl FnMut(Stream, &[u8])) -> Result<Outcome> {
        Err(Error::Unsupported(WHY))
    }
}

/// Off Linux there are no user namespaces: the program goes on as it is.
pub fn enter_user_namespace(_args: &[std::ffi::OsString]) -> Option<i32> {
    None
}
