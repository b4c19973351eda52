//! The change set between two snapshots.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::scan::{FileInfo, Kind, Snapshot};

/// How a path changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    /// It did not exist before.
    Added,
    /// It existed, and its kind, contents or metadata changed.
    Modified,
    /// It was deleted (a whiteout). Paths below a deleted directory are not listed.
    Deleted,
    /// The directory was replaced: nothing of its old contents is visible (an opaque
    /// whiteout). The directory itself is listed as well, as added or modified, and its new
    /// contents as added.
    Opaque,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The path, relative to the root (any bytes: names need not be UTF-8).
    pub path: PathBuf,
    /// How it changed.
    pub kind: ChangeKind,
    /// What is there now (`None` for deletions and opaque markers).
    pub info: Option<FileInfo>,
    /// Where to read the contents of a regular file from.
    pub source: Option<PathBuf>,
    /// For a file that shares its inode with a file listed earlier in this change set: that
    /// file's path (write it as a hard link).
    pub hardlink_to: Option<PathBuf>,
}

/// What changed between two snapshots, ordered parents first, deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// The changes.
    pub changes: Vec<Change>,
}

impl ChangeSet {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes as (path, kind) pairs, for comparisons and messages (a name that is not
    /// UTF-8 is shown with replacement characters here; the changes themselves keep its bytes).
    pub fn summary(&self) -> Vec<(String, ChangeKind)> {
        self.changes
            .iter()
            .map(|c| (c.path.to_string_lossy().into_owned(), c.kind))
            .collect()
    }

    /// Sorts parents first (component-wise), the opaque marker right after its directory,
    /// and links files that share an inode.
    pub(crate) fn finish(mut self) -> ChangeSet {
        self.changes.sort_by(|a, b| {
            // Paths compare component by component, so parents come first.
            (&a.path, a.kind == ChangeKind::Opaque).cmp(&(&b.path, b.kind == ChangeKind::Opaque))
        });
        let mut first_of_inode: HashMap<(u64, u64), PathBuf> = HashMap::new();
        for change in &mut self.changes {
            let Some(info) = &change.info else { continue };
            if info.kind != Kind::File || info.nlink < 2 {
                continue;
            }
            match first_of_inode.get(&(info.dev, info.ino)) {
                Some(first) => change.hardlink_to = Some(first.clone()),
                None => {
                    first_of_inode.insert((info.dev, info.ino), change.path.clone());
                }
            }
        }
        self
    }
}

/// Whether a path's contents or metadata changed, by the rules of Kaniko's default snapshot
/// mode: kind, size, mtime, mode, owner, link target, device numbers, xattrs, the inode of
/// anything but a directory (a file replaced by rename), and the content hash when both
/// snapshots have one.
pub fn changed(old: &FileInfo, new: &FileInfo) -> bool {
    if old.kind != new.kind
        || old.mode != new.mode
        || old.uid != new.uid
        || old.gid != new.gid
        || old.mtime_secs != new.mtime_secs
        || old.mtime_nanos != new.mtime_nanos
        || old.xattrs != new.xattrs
    {
        return true;
    }
    if new.kind == Kind::Dir {
        return false;
    }
    // The status-change time catches a write that put the size and modification time back.
    // Not for directories (it moves with every entry added or removed, which their own
    // entries show), nor when only the link count changed (a new hard link elsewhere).
    if old.size != new.size
        || (old.ctime != new.ctime && old.nlink == new.nlink)
        || old.link_target != new.link_target
        || old.rdev != new.rdev
        || (old.ino, old.dev) != (new.ino, new.dev)
    {
        return true;
    }
    matches!((old.content_hash, new.content_hash), (Some(a), Some(b)) if a != b)
}

/// Whether two snapshots of a directory are of the same directory (not one removed and made
/// again): same inode, and same birth time where the filesystem keeps one.
fn same_directory(before: &FileInfo, after: &FileInfo) -> bool {
    (before.ino, before.dev) == (after.ino, after.dev)
        && match (before.birth, after.birth) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

fn parent(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

/// The change set that turns `old` into `new`.
///
/// ```
/// use strata_snapshot::{ChangeKind, Scanner, diff};
///
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("keep"), "same").unwrap();
/// std::fs::write(dir.path().join("gone"), "bye").unwrap();
/// let before = Scanner::new(dir.path()).scan()?;
/// std::fs::remove_file(dir.path().join("gone")).unwrap();
/// std::fs::write(dir.path().join("new"), "hello").unwrap();
/// let after = Scanner::new(dir.path()).scan()?;
///
/// let changes = diff(&before, &after);
/// assert_eq!(changes.summary(), [("gone".to_owned(), ChangeKind::Deleted), ("new".to_owned(), ChangeKind::Added)]);
/// # Ok::<(), strata_snapshot::Error>(())
/// ```
pub fn diff(old: &Snapshot, new: &Snapshot) -> ChangeSet {
    // Directories whose old contents are entirely gone: deleted, replaced by a non-directory,
    // or replaced by another directory (a different inode: `rm -rf d && mkdir d`).
    let mut hidden: BTreeMap<&Path, ()> = BTreeMap::new();
    let mut changes = Vec::new();
    for (path, before) in &old.entries {
        if before.kind != Kind::Dir {
            continue;
        }
        match new.entries.get(path) {
            Some(after) if after.kind == Kind::Dir && same_directory(before, after) => {}
            Some(after) if after.kind == Kind::Dir => {
                hidden.insert(path, ());
                changes.push(Change {
                    path: path.clone(),
                    kind: ChangeKind::Opaque,
                    info: None,
                    source: None,
                    hardlink_to: None,
                });
            }
            _ => {
                hidden.insert(path, ());
            }
        }
    }
    let under_hidden = |path: &Path| {
        let mut at = parent(path);
        while let Some(dir) = at {
            if hidden.contains_key(dir) {
                return true;
            }
            at = parent(dir);
        }
        false
    };
    for path in old.entries.keys() {
        if new.entries.contains_key(path) || under_hidden(path) {
            continue;
        }
        changes.push(Change {
            path: path.clone(),
            kind: ChangeKind::Deleted,
            info: None,
            source: None,
            hardlink_to: None,
        });
    }
    for (path, after) in &new.entries {
        if after.kind == Kind::Socket {
            continue;
        }
        let kind = match old.entries.get(path) {
            None => ChangeKind::Added,
            Some(_) if under_hidden(path) => ChangeKind::Added,
            // A replaced directory is listed with its opaque marker.
            Some(before) if changed(before, after) || hidden.contains_key(path.as_path()) => {
                ChangeKind::Modified
            }
            Some(_) => continue,
        };
        changes.push(Change {
            path: path.clone(),
            kind,
            info: Some(after.clone()),
            source: (after.kind == Kind::File).then(|| new.root.join(path)),
            hardlink_to: None,
        });
    }
    ChangeSet { changes }.finish()
}
