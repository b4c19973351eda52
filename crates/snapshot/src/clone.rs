//! A private, writable copy of a tree, with everything a root filesystem holds: owners,
//! modes (set-id bits included), nanosecond times, extended attributes, symbolic links,
//! devices and FIFOs, and hard links between its files. It is what a walk-mode step runs in
//! when the tree comes from the layer store: each file is a reflink where the filesystem
//! can (copy-on-write, no data copied), else a real copy; never a hard link to the source,
//! which a step could then change through the shared inode.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use std::os::fd::OwnedFd;

use rustix::fs::{
    AtFlags, CWD, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags,
};

use crate::error::{Error, Result};
use crate::scan::read_xattrs;

/// What [`clone_tree`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneReport {
    /// Entries made (the root not counted).
    pub entries: u64,
    /// Files whose data was shared with the source (reflinks).
    pub reflinked: u64,
    /// Files whose data was copied.
    pub copied: u64,
    /// Bytes of the copied files.
    pub bytes_copied: u64,
}

/// Copies the tree `from` into `to`, an empty directory (which gets `from`'s owner, mode,
/// times and extended attributes). Symbolic links are copied as links, never followed; the
/// extended attributes overlayfs keeps for itself are left out. Directories are copied in
/// parallel.
pub fn clone_tree(from: &Path, to: &Path) -> Result<CloneReport> {
    clone_tree_from_layers(from, to, &[])
}

/// [`clone_tree`] of an overlay's merged view `from`, whose lower directories are `layers`
/// (the top-most first): each regular file's data is cloned from the layer file the view
/// shows, since a reflink cannot cross from the overlay to the filesystem below it. A layer
/// file is used only when it is the one the view shows (the top-most layer holding the
/// path, reached without following any symbolic link, with the view's inode, size and
/// modification time); else the data is copied through the view.
pub fn clone_tree_from_layers(from: &Path, to: &Path, layers: &[PathBuf]) -> Result<CloneReport> {
    let root = fs::symlink_metadata(from).map_err(Error::io(from))?;
    if !root.is_dir() {
        return Err(Error::io(from)(std::io::Error::other("not a directory")));
    }
    let mut work = Work {
        from: from.to_owned(),
        ..Work::default()
    };
    for layer in layers {
        let dir = rustix::fs::open(
            layer,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(layer)(e.into()))?;
        work.layers.push(dir);
    }
    let work = work;
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    rayon::scope(|scope| copy_dir(scope, &work, &failure, from.to_owned(), to.to_owned()));
    if let Some(error) = failure.into_inner().ok().flatten() {
        return Err(error);
    }
    // Files with several links: the first of each inode is copied, the others linked to it.
    let linked = std::mem::take(&mut *work.linked.lock().map_err(|_| poisoned(to))?);
    let mut first: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for (source, target, meta) in linked {
        let inode = (meta.dev(), meta.ino());
        match first.get(&inode) {
            Some(copy) => fs::hard_link(copy, &target).map_err(Error::io(&target))?,
            None => {
                copy_file(&source, &target, &meta, &work)?;
                first.insert(inode, target);
            }
        }
        work.entries.fetch_add(1, Ordering::Relaxed);
    }
    // Directories last, deepest first: their modes may forbid writing into them, and
    // writing into them changes their times.
    let mut dirs = std::mem::take(&mut *work.dirs.lock().map_err(|_| poisoned(to))?);
    dirs.sort_by(|a, b| b.1.cmp(&a.1));
    for (source, target, meta) in &dirs {
        finish(source, target, meta)?;
    }
    finish(from, to, &root)?;
    Ok(CloneReport {
        entries: work.entries.into_inner(),
        reflinked: work.reflinked.into_inner(),
        copied: work.copied.into_inner(),
        bytes_copied: work.bytes.into_inner(),
    })
}

fn poisoned(to: &Path) -> Error {
    Error::io(to)(std::io::Error::other("a copying thread panicked"))
}

#[derive(Default)]
struct Work {
    /// The root copied from, and the layer directories under it when it is a merged view.
    from: PathBuf,
    layers: Vec<OwnedFd>,
    /// Directories made: (source, target, metadata).
    dirs: Mutex<Vec<(PathBuf, PathBuf, fs::Metadata)>>,
    /// Files with more than one link, left for one sequential pass.
    linked: Mutex<Vec<(PathBuf, PathBuf, fs::Metadata)>>,
    entries: AtomicU64,
    reflinked: AtomicU64,
    copied: AtomicU64,
    bytes: AtomicU64,
}

/// Copies the entries of the directory `from` into `to` (made already), one task per
/// subdirectory.
fn copy_dir<'s>(
    scope: &rayon::Scope<'s>,
    work: &'s Work,
    failure: &'s Mutex<Option<Error>>,
    from: PathBuf,
    to: PathBuf,
) {
    let result = (|| -> Result<()> {
        for entry in fs::read_dir(&from).map_err(Error::io(&from))? {
            if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                return Ok(());
            }
            let entry = entry.map_err(Error::io(&from))?;
            let source = entry.path();
            let target = to.join(entry.file_name());
            let meta = fs::symlink_metadata(&source).map_err(Error::io(&source))?;
            let kind = FileType::from_raw_mode(meta.mode());
            match kind {
                FileType::Directory => {
                    fs::create_dir(&target).map_err(Error::io(&target))?;
                    // Writable by us until `finish` gives it its own mode.
                    rustix::fs::chmod(&target, Mode::from_raw_mode(0o700))
                        .map_err(|e| Error::io(&target)(e.into()))?;
                    let (next_from, next_to) = (source.clone(), target.clone());
                    if let Ok(mut dirs) = work.dirs.lock() {
                        dirs.push((source, target, meta));
                    }
                    scope.spawn(move |scope| copy_dir(scope, work, failure, next_from, next_to));
                }
                FileType::RegularFile if meta.nlink() > 1 => {
                    if let Ok(mut linked) = work.linked.lock() {
                        linked.push((source, target, meta));
                    }
                    continue;
                }
                FileType::RegularFile => copy_file(&source, &target, &meta, work)?,
                FileType::Symlink => {
                    let link = fs::read_link(&source).map_err(Error::io(&source))?;
                    std::os::unix::fs::symlink(&link, &target).map_err(Error::io(&target))?;
                    finish(&source, &target, &meta)?;
                }
                FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice => {
                    rustix::fs::mknodat(
                        CWD,
                        &target,
                        kind,
                        Mode::from_raw_mode(0o600),
                        meta.rdev(),
                    )
                    .map_err(|e| Error::io(&target)(e.into()))?;
                    finish(&source, &target, &meta)?;
                }
                // A socket is a process's, not the tree's.
                _ => continue,
            }
            work.entries.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    })();
    if let Err(error) = result
        && let Ok(mut failure) = failure.lock()
        && failure.is_none()
    {
        *failure = Some(error);
    }
}

/// Copies one regular file's data, a reflink where the filesystem allows it, then gives it
/// `meta`'s owner, mode, extended attributes and times.
fn copy_file(source: &Path, target: &Path, meta: &fs::Metadata, work: &Work) -> Result<()> {
    let mut input = match layer_file(source, meta, work) {
        Some(file) => file,
        None => File::open(source).map_err(Error::io(source))?,
    };
    let mut output = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .map_err(Error::io(target))?;
    if meta.len() > 0 {
        if rustix::fs::ioctl_ficlone(&output, &input).is_ok() {
            work.reflinked.fetch_add(1, Ordering::Relaxed);
        } else {
            // `copy_file_range` underneath: in the kernel, no round trip through here.
            let n = std::io::copy(&mut input, &mut output).map_err(Error::io(target))?;
            work.copied.fetch_add(1, Ordering::Relaxed);
            work.bytes.fetch_add(n, Ordering::Relaxed);
        }
    }
    drop(output);
    finish(source, target, meta)
}

/// The file of the top-most layer that holds `source`'s path, when it is the file the view
/// shows (`meta`): opened beneath the layer directory without following any link.
fn layer_file(source: &Path, meta: &fs::Metadata, work: &Work) -> Option<File> {
    let relative = source.strip_prefix(&work.from).ok()?;
    for layer in &work.layers {
        match rustix::fs::openat2(
            layer,
            relative,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
        ) {
            Ok(fd) => {
                let file = File::from(fd);
                let found = file.metadata().ok()?;
                let same = found.is_file()
                    && found.ino() == meta.ino()
                    && found.len() == meta.len()
                    && (found.mtime(), found.mtime_nsec()) == (meta.mtime(), meta.mtime_nsec());
                return same.then_some(file);
            }
            // Not in this layer: the next one down.
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Gives `target` the owner, mode, extended attributes and times `source` has (`meta`),
/// without following a symbolic link. The mode comes after the owner: changing the owner
/// clears set-id bits.
fn finish(source: &Path, target: &Path, meta: &fs::Metadata) -> Result<()> {
    let fail = |e: rustix::io::Errno| Error::io(target)(e.into());
    let is_link = meta.file_type().is_symlink();
    rustix::fs::chownat(
        CWD,
        target,
        Some(rustix::fs::Uid::from_raw(meta.uid())),
        Some(rustix::fs::Gid::from_raw(meta.gid())),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(fail)?;
    if !is_link {
        rustix::fs::chmod(target, Mode::from_raw_mode(meta.mode() & 0o7777)).map_err(fail)?;
    }
    for (name, value) in read_xattrs(source)? {
        if crate::overlay::is_overlay_xattr(&name) {
            continue;
        }
        rustix::fs::lsetxattr(target, name.as_str(), &value, XattrFlags::empty()).map_err(fail)?;
    }
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(CWD, target, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    #[test]
    fn a_clone_keeps_what_a_root_filesystem_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        fs::create_dir_all(from.join("usr/bin")).unwrap();
        fs::create_dir(&to).unwrap();
        fs::write(from.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(
            from.join("usr/bin/tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        fs::write(from.join("usr/a"), b"linked").unwrap();
        fs::hard_link(from.join("usr/a"), from.join("usr/bin/b")).unwrap();
        std::os::unix::fs::symlink("../usr/bin/tool", from.join("usr/link")).unwrap();
        fs::create_dir(from.join("locked")).unwrap();
        fs::write(from.join("locked/inside"), b"x").unwrap();
        fs::set_permissions(from.join("locked"), fs::Permissions::from_mode(0o500)).unwrap();
        rustix::fs::mknodat(
            CWD,
            from.join("pipe"),
            FileType::Fifo,
            Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        let report = clone_tree(&from, &to).unwrap();
        assert_eq!(report.entries, 9);

        for path in [
            "usr",
            "usr/bin",
            "usr/bin/tool",
            "usr/a",
            "usr/link",
            "locked",
            "pipe",
        ] {
            let (a, b) = (
                fs::symlink_metadata(from.join(path)).unwrap(),
                fs::symlink_metadata(to.join(path)).unwrap(),
            );
            assert_eq!(a.mode(), b.mode(), "{path}");
            assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "{path}");
            assert_eq!(
                (a.mtime(), a.mtime_nsec()),
                (b.mtime(), b.mtime_nsec()),
                "{path}"
            );
            assert_ne!(a.ino(), b.ino(), "{path} is a copy, not the source's inode");
        }
        assert_eq!(fs::read(to.join("usr/bin/b")).unwrap(), b"linked");
        assert_eq!(
            fs::metadata(to.join("usr/a")).unwrap().ino(),
            fs::metadata(to.join("usr/bin/b")).unwrap().ino(),
            "hard links stay linked to each other"
        );
        assert_eq!(
            fs::read_link(to.join("usr/link")).unwrap(),
            Path::new("../usr/bin/tool")
        );
        assert!(
            fs::symlink_metadata(to.join("pipe"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(fs::read(to.join("locked/inside")).unwrap(), b"x");
        // Writing the copy leaves the source alone.
        fs::write(to.join("usr/a"), b"changed").unwrap();
        assert_eq!(fs::read(from.join("usr/a")).unwrap(), b"linked");
    }
}
