//! Never redo a build step whose inputs have not changed, and say why when it must.
//!
//! A [`CacheKey`] is a digest over everything that can change a step's result — the parent
//! step's key (or the base image), the instruction, the build args and environment it sees,
//! its flags, and the contents of the files it copies — and records those inputs, so that
//! [`explain`] can tell a user which one differed when a step misses. A [`CacheStore`] keeps
//! what steps produced; [`LocalStore`] is one in a local directory, safe with several builds
//! at once, with a size limit (least recently used first out) and a TTL.
//!
//! The store that keeps entries in a repository of an OCI registry (Kaniko's `--cache-repo`)
//! joins this crate and `strata-registry`, so it lives in the `strata` package
//! (`strata::remote_cache::RegistryStore`).
//!
//! ```
//! use strata_cache::{CacheEntry, CacheStore, KeyBuilder, LocalStore};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = LocalStore::open(dir.path())?;
//! let key = KeyBuilder::new(&KeyBuilder::base_image("sha256:aaaa", "linux/amd64")).instruction("ENV A=1").build();
//! assert!(store.lookup(&key.digest)?.is_none());
//! let entry = CacheEntry { key: key.clone(), layer: None, config: serde_json::json!({"Env": ["A=1"]}), created_unix: 0 };
//! store.record(&entry, None)?;
//! assert_eq!(store.lookup(&key.digest)?.unwrap().config["Env"][0], "A=1");
//! # Ok::<(), strata_cache::Error>(())
//! ```

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod error;
mod key;
mod store;

pub use error::{Error, Result};
pub use key::{
    CacheKey, Change, InputKind, KEY_FORMAT, KeyBuilder, KeyInputs, MissReason, explain,
};
pub use store::{CacheEntry, CacheStore, CachedLayer, LocalStore, StoreFault, StoreReport};
