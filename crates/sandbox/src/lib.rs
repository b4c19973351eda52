//! Runs a build step's command inside a root filesystem, isolated with Linux namespaces.
//!
//! A [`Step`] names a root directory (a plain directory, or the merged view of an overlay
//! mount), a command, and the environment, working directory, user, hostname, network and
//! `RUN --mount`s it runs with. A [`Sandbox`] runs it: the command gets new mount, PID, UTS
//! and IPC namespaces (a network namespace with `--network=none`, and a user namespace
//! mapping the caller to root when the process is not privileged), `pivot_root` into the
//! root, a fresh `/proc`, a minimal `/dev`, a read-only `/sys`, its own `/etc/hosts` and
//! `/etc/resolv.conf`, and Docker's default capability set. Output comes back line by line
//! while the command runs; when it ends, every process it left behind is killed and every
//! mount disappears, and the root holds only what the command wrote.
//!
//! ```no_run
//! use strata_sandbox::{Cancel, Sandbox, Step};
//!
//! let sandbox = Sandbox::new()?;
//! let step = Step::shell("/var/lib/rootfs", ["/bin/sh", "-c"], "echo hello from $(hostname)")
//!     .env("PATH", "/bin")
//!     .workdir("/tmp");
//! let outcome = sandbox.run(&step, &Cancel::new(), |_stream, line| {
//!     println!("{}", String::from_utf8_lossy(line));
//! })?;
//! assert!(outcome.status.success());
//! # Ok::<(), strata_sandbox::Error>(())
//! ```
//!
//! [`probe`] says which isolation this machine allows, with the reason when something is
//! missing, so that a caller can choose a mode or tell its user what to change.
//!
//! Linux only: elsewhere the crate compiles and every run returns
//! [`Error::Unsupported`].

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod error;
mod step;
#[cfg(target_os = "linux")]
mod user;

#[cfg(target_os = "linux")]
mod child;
#[cfg(target_os = "linux")]
mod idmap;
#[cfg(target_os = "linux")]
mod inplace;
#[cfg(target_os = "linux")]
mod probe;
#[cfg(target_os = "linux")]
mod reexec;
#[cfg(target_os = "linux")]
mod root;
#[cfg(target_os = "linux")]
mod sandbox;
#[cfg(not(target_os = "linux"))]
mod unsupported;

pub use error::{Error, Result};
#[cfg(target_os = "linux")]
pub use idmap::UserNamespaceMap;
#[cfg(target_os = "linux")]
pub use inplace::run_in_place;
#[cfg(target_os = "linux")]
pub use probe::{Probe, Support, probe};
#[cfg(target_os = "linux")]
pub use reexec::{ENV as USERNS_ENV, enter_user_namespace};
#[cfg(target_os = "linux")]
pub use root::resolve_in_root;
#[cfg(target_os = "linux")]
pub use sandbox::{MAX_LINE, Sandbox, SandboxBuilder};
pub use step::{
    Cancel, DEFAULT_HOSTNAME, DEFAULT_PATH, ExitStatus, Isolation, Mode, Mount, MountKind, Network,
    Outcome, Sharing, Step, Stream,
};
#[cfg(not(target_os = "linux"))]
pub use unsupported::{
    MAX_LINE, Probe, Sandbox, SandboxBuilder, Support, enter_user_namespace, probe, run_in_place,
};
#[cfg(target_os = "linux")]
pub use user::chown_ids;
