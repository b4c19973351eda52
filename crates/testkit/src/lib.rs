//! Test kit for strata: real parts for real tests.
//!
//! strata's integration tests talk to the reference OCI registry, the `docker-registry` program
//! from Debian's package of that name, never to a mock. This crate starts one on a free loopback
//! port with a temporary storage directory ([`TestRegistry`]), optionally behind HTTP basic auth
//! or TLS with a freshly generated CA; makes build contexts ([`ContextBuilder`]); and builds a
//! real base image from Debian's `busybox-static` ([`busybox_rootfs`], [`push_busybox_image`]),
//! pushed with plain HTTP calls so that it does not depend on strata's own registry crate.
//!
//! A missing program is an error naming the Debian package to install, never a silent skip.
//!
//! ```no_run
//! use strata_testkit::TestRegistry;
//!
//! let registry = TestRegistry::builder().basic_auth("alice", "secret").tls().start()?;
//! let client = registry.client();
//! let digest = client.push_blob("demo/app", b"hello")?;
//! assert_eq!(client.get_blob("demo/app", &digest)?, b"hello");
//! // The registry process stops when `registry` is dropped.
//! # Ok::<(), strata_testkit::Error>(())
//! ```

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod busybox;
mod client;
mod context;
mod error;
mod fs;
mod git;
mod hostile;
mod objects;
mod platforms;
mod program;
mod registry;
mod tls;
mod xfs;

pub use busybox::{BaseImage, busybox_rootfs, push_busybox_image};
pub use client::RegistryClient;
pub use context::ContextBuilder;
pub use error::Error;
pub use fs::{files_containing, set_mtime};
pub use git::{GitServer, SshServer, commit_files, git};
pub use hostile::{HostileServer, Reply, Request};
pub use objects::{AZURITE_ACCOUNT, AZURITE_KEY, ObjectKind, ObjectServer, test_tools};
pub use platforms::push_platform_index;
pub use program::find_program;
pub use registry::{RegistryBuilder, TestRegistry};
pub use xfs::Xfs;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
