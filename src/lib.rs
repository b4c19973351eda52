//! strata builds OCI container images from Dockerfiles without a daemon.
//!
//! It is a family of crates, each useful on its own; this root package composes them. The
//! builder API that runs a whole build (`strata::Build`) is not written yet (issue 9); until it
//! lands this crate re-exports the member crates under short names:
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

pub use strata_cache as cache;
pub use strata_dockerfile as dockerfile;
pub use strata_layer as layer;
pub use strata_registry as registry;
pub use strata_sandbox as sandbox;
pub use strata_snapshot as snapshot;
