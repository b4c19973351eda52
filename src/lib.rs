//! strata builds OCI container images from Dockerfiles without a daemon.
//!
//! [`Build`] takes a context (a directory, a tar archive, a git repository or an archive URL) and a Dockerfile, builds the
//! stages the target needs (independent stages at the same time), looks every layer step up
//! in the cache first, runs `RUN` steps in Linux namespaces, and returns an [`Image`] that
//! can be pushed to registries or written as an OCI layout or a docker-archive tarball.
//!
//! ```no_run
//! # async fn example() -> strata::Result<()> {
//! let image = strata::Build::new("path/to/context")
//!     .build_arg("VERSION", "1.2.3")
//!     .on_event(|event| eprintln!("{event:?}"))
//!     .run()
//!     .await?;
//! image.push("registry.example.com/team/app:1.2.3").await?;
//! image.write_oci_layout("out/app".as_ref(), "1.2.3")?;
//! # Ok(())
//! # }
//! ```
//!
//! The member crates are re-exported under short names; each is useful alone:
//!
//! | module | crate | job |
//! |---|---|---|
//! | [`dockerfile`] | `strata-dockerfile` | the Dockerfile language and `.dockerignore` |
//! | [`snapshot`] | `strata-snapshot` | what changed in a root filesystem |
//! | [`layer`] | `strata-layer` | OCI layers: writing, and safe extraction |
//! | [`registry`] | `strata-registry` | references, credentials, pull, push, local outputs |
//! | [`cache`] | `strata-cache` | cache keys and cache stores |
//! | [`sandbox`] | `strata-sandbox` | running a RUN step inside Linux namespaces |

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod archive;
mod build;
mod changes;
mod check;
pub mod config;
mod context;
mod delivery;
mod download;
mod engine;
mod error;
mod event;
pub mod failpoint;
mod git;
mod history;
mod image;
mod incontainer;
mod inplace;
mod layers;
mod objects;
mod options;
mod prune;
pub mod remote_cache;
mod state;

pub use build::Build;
pub use check::{StateCheck, StateFault, check_state};
pub use context::ContextSource;
pub use engine::{CACHE_KEYS_ANNOTATION, Secret, SnapshotMode};
pub use error::{Error, ErrorKind, Position, Result};
pub use event::{Event, EventSink};
pub use git::{GitSource, PullMethod, is_git_url, redact as redact_url};
pub use image::Image;
pub use incontainer::{Isolation, container_marker};
pub use options::{ImageSource, LayerStep};
pub use prune::{PruneOptions, PruneReport, prune_state};
pub use state::default_state_dir;

pub use strata_cache as cache;
pub use strata_dockerfile as dockerfile;
pub use strata_layer as layer;
pub use strata_oci as oci;
pub use strata_oci::Platform;
pub use strata_registry as registry;
pub use strata_sandbox as sandbox;
pub use strata_snapshot as snapshot;
