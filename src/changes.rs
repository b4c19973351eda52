//! Where two leaves meet: a snapshot's change set becomes a layer's entries.

use strata_layer::{Entry, EntryKind, Metadata, Mtime};
use strata_snapshot::{ChangeKind, ChangeSet, FileInfo, Kind};

use crate::error::{Error, Result};

/// The layer entries for a change set. Sockets are left out, as every builder does.
pub(crate) fn entries(changes: &ChangeSet) -> Result<Vec<Entry>> {
    let mut out = Vec::with_capacity(changes.changes.len());
    for change in &changes.changes {
        let entry = match change.kind {
            ChangeKind::Deleted => Entry {
                path: change.path.clone(),
                kind: EntryKind::Whiteout,
                metadata: Metadata::default(),
            },
            ChangeKind::Opaque => Entry {
                path: change.path.clone(),
                kind: EntryKind::OpaqueDir,
                metadata: Metadata::default(),
            },
            ChangeKind::Added | ChangeKind::Modified => {
                let info = change.info.as_ref().ok_or_else(|| {
                    Error::Invalid(format!(
                        "change of {} has no file information",
                        change.path.display()
                    ))
                })?;
                let kind = match (&change.hardlink_to, info.kind) {
                    (Some(target), Kind::File) => EntryKind::Hardlink {
                        target: target.clone(),
                    },
                    (_, Kind::File) => EntryKind::File {
                        source: change.source.clone().ok_or_else(|| {
                            Error::Invalid(format!(
                                "changed file {} has no source",
                                change.path.display()
                            ))
                        })?,
                        size: info.size,
                    },
                    (_, Kind::Dir) => EntryKind::Dir,
                    (_, Kind::Symlink) => EntryKind::Symlink {
                        target: info.link_target.clone().unwrap_or_default(),
                    },
                    (_, Kind::CharDevice) => EntryKind::CharDevice {
                        major: info.rdev.0,
                        minor: info.rdev.1,
                    },
                    (_, Kind::BlockDevice) => EntryKind::BlockDevice {
                        major: info.rdev.0,
                        minor: info.rdev.1,
                    },
                    (_, Kind::Fifo) => EntryKind::Fifo,
                    (_, Kind::Socket) => continue,
                };
                Entry {
                    path: change.path.clone(),
                    kind,
                    metadata: metadata(info),
                }
            }
        };
        out.push(entry);
    }
    Ok(out)
}

fn metadata(info: &FileInfo) -> Metadata {
    Metadata {
        mode: info.mode & 0o7777,
        uid: info.uid,
        gid: info.gid,
        uname: None,
        gname: None,
        mtime: Mtime {
            secs: info.mtime_secs,
            nanos: info.mtime_nanos,
        },
        xattrs: info.xattrs.clone(),
    }
}
