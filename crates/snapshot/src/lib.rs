//! What a build step changed in a root filesystem, fast.
//!
//! - [`Scanner`] walks a tree on every core into a [`Snapshot`] (kind, mode, owner, size,
//!   nanosecond mtime, inode, link target, xattrs, and content hashes when asked), never
//!   following symlinks and skipping an [`IgnoreList`] of paths.
//! - [`diff`] turns two snapshots into a [`ChangeSet`]: added, modified and deleted paths, and
//!   the directories that became opaque, ordered parents first.
//! - [`overlay`] mounts a merged view over lower directories and reads the upper directory as
//!   the change set directly, at a cost proportional to the change.
//! - [`hash_context`] digests build-context files for cache keys, remembering hashes in a
//!   [`HashMemo`].
//!
//! ```
//! use strata_snapshot::{ChangeKind, Scanner, diff};
//!
//! let root = tempfile::tempdir().unwrap();
//! let before = Scanner::new(root.path()).scan()?;
//! std::fs::write(root.path().join("built"), "output").unwrap();
//! let after = Scanner::new(root.path()).scan()?;
//! let changes = diff(&before, &after);
//! assert_eq!(changes.summary(), [("built".to_owned(), ChangeKind::Added)]);
//! # Ok::<(), strata_snapshot::Error>(())
//! ```

#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod clone;
mod context;
mod diff;
mod error;
pub mod overlay;
mod scan;

pub use clone::{CloneReport, clone_tree, clone_tree_from_layers};
pub use context::{
    ContextDigest, FILES_LISTED, HashMemo, TreeEntry, Visit, Walk, hash_context,
    hash_context_with_owners, path_order, walk_tree,
};
pub use diff::{Change, ChangeKind, ChangeSet, changed, diff};
pub use error::{Error, Result};
pub use scan::{FileInfo, IgnoreList, Kind, Scanner, Snapshot, file_info, hash_file};
