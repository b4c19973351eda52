//! Overlayfs: the upper directory of a mount is the change set, read directly.
//!
//! A step runs on a merged view of the stage's layers (lower directories, read-only) and a
//! fresh upper directory; everything the step changes lands in the upper directory, deletions
//! as whiteouts (character devices 0/0) and replaced directories marked opaque
//! (`trusted.overlay.opaque` or, in a user namespace, `user.overlay.opaque`). Reading the upper
//! directory costs what the step changed, not the size of the root filesystem.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::diff::{Change, ChangeKind, ChangeSet, changed};
use crate::error::{Error, Result};
use crate::scan::{FileInfo, Kind, file_info};

/// The xattrs overlayfs keeps for itself; never part of a change.
pub(crate) fn is_overlay_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.")
}

/// Whether this process is in a user namespace other than the first (rootless, or a
/// container with its own user namespace). There overlayfs is mounted with `userxattr`: it
/// keeps its attributes as `user.overlay.*`, since `trusted.*` needs root of the first
/// namespace.
pub fn in_user_namespace() -> bool {
    static NESTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NESTED.get_or_init(|| {
        fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| {
            let fields: Vec<&str> = map.split_whitespace().collect();
            fields != ["0", "0", "4294967295"]
        })
    })
}

/// Whether overlayfs can be used here, and why not when it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaySupport {
    /// A test mount succeeded.
    pub usable: bool,
    /// Why it did not, in words a user can act on.
    pub reason: Option<String>,
}

/// Tries a small overlay mount in a temporary directory.
pub fn probe() -> OverlaySupport {
    let unusable = |reason: String| OverlaySupport {
        usable: false,
        reason: Some(reason),
    };
    match fs::read_to_string("/proc/filesystems") {
        Ok(list)
            if list
                .lines()
                .any(|l| l.split_whitespace().last() == Some("overlay")) => {}
        Ok(_) => {
            return unusable("the kernel has no overlay filesystem (modprobe overlay)".to_owned());
        }
        Err(e) => return unusable(format!("/proc/filesystems: {e}")),
    }
    let dir = match tempfile::Builder::new()
        .prefix("strata-overlay-probe-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => return unusable(format!("no temporary directory: {e}")),
    };
    let result = (|| -> Result<()> {
        let [lower, upper, work, merged] =
            ["lower", "upper", "work", "merged"].map(|d| dir.path().join(d));
        for d in [&lower, &upper, &work, &merged] {
            fs::create_dir(d).map_err(Error::io(d))?;
        }
        let mount = OverlayMount::mount(&[lower], &upper, &work, &merged)?;
        drop(mount);
        Ok(())
    })();
    // The mount is gone; dropping `dir` removes the probe's directories.
    drop(dir);
    match result {
        Ok(()) => OverlaySupport {
            usable: true,
            reason: None,
        },
        Err(Error::OverlayUnavailable { reason }) => unusable(reason),
        Err(e) => unusable(e.to_string()),
    }
}

/// Escapes a path for overlay mount options (`,` and `:` separate options and lower dirs).
fn escape(path: &Path) -> Result<String> {
    let text = path.to_str().ok_or_else(|| Error::NotUtf8 {
        path: path.display().to_string(),
    })?;
    Ok(text
        .replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace(':', "\\:"))
}

/// A mount error in words a user can act on.
fn mount_error(e: rustix::io::Errno, merged: &Path) -> Error {
    Error::OverlayUnavailable {
        reason: match e {
            rustix::io::Errno::PERM | rustix::io::Errno::ACCESS => {
                "mounting needs root, or a user namespace on Linux 5.11 or later".to_owned()
            }
            other => format!("mount at {}: {other}", merged.display()),
        },
    }
}

/// Mounts a stack too deep for one page of options: `fsopen`, one `lowerdir+` per layer
/// (top-most first, as in `lowerdir=`), `fsmount`, and `move_mount` onto `merged`.
fn mount_deep(lowers: &[PathBuf], writable: Option<(&Path, &Path)>, merged: &Path) -> Result<()> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create,
        fsconfig_set_string, fsmount, fsopen, move_mount,
    };
    let step = |what: &str, e: rustix::io::Errno| match e {
        rustix::io::Errno::PERM | rustix::io::Errno::ACCESS => mount_error(e, merged),
        rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS => Error::OverlayUnavailable {
            reason: format!(
                "{} lower directories need the `lowerdir+` option of the new mount API \
                 (Linux 6.8 or later): {what}: {e}",
                lowers.len()
            ),
        },
        other => Error::OverlayUnavailable {
            reason: format!(
                "overlay of {} layers at {}: {what}: {other}",
                lowers.len(),
                merged.display()
            ),
        },
    };
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| step("fsopen", e))?;
    if in_user_namespace() {
        rustix::mount::fsconfig_set_flag(&fs, "userxattr").map_err(|e| step("userxattr", e))?;
    }
    for lower in lowers {
        fsconfig_set_string(&fs, "lowerdir+", lower.as_path()).map_err(|e| step("lowerdir+", e))?;
    }
    if let Some((upper, work)) = writable {
        fsconfig_set_string(&fs, "upperdir", upper).map_err(|e| step("upperdir", e))?;
        fsconfig_set_string(&fs, "workdir", work).map_err(|e| step("workdir", e))?;
    }
    fsconfig_create(&fs).map_err(|e| step("create", e))?;
    let attrs = if writable.is_some() {
        MountAttrFlags::empty()
    } else {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    };
    let mount =
        fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(|e| step("fsmount", e))?;
    move_mount(
        &mount,
        "",
        rustix::fs::CWD,
        merged,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| step("move_mount", e))
}

/// A mounted overlay, unmounted when dropped.
#[derive(Debug)]
pub struct OverlayMount {
    merged: PathBuf,
    mounted: bool,
}

impl OverlayMount {
    /// Mounts `lowers` (the top-most first) under `upper` at `merged`, with `work` as the
    /// work directory (same filesystem as `upper`, empty).
    ///
    /// A stack whose options do not fit in one page (about 40 lower directories under a
    /// long state path) is mounted through the new mount API, one `lowerdir+` per layer
    /// (Linux 6.8 and later); overlayfs itself takes up to 500 lower directories.
    pub fn mount(
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        merged: &Path,
    ) -> Result<OverlayMount> {
        Self::mount_with(lowers, Some((upper, work)), merged)
    }

    /// Mounts `lowers` (the top-most first, at least two) read-only at `merged`: the
    /// merged view of a stack of layers, with nowhere to write.
    pub fn mount_readonly(lowers: &[PathBuf], merged: &Path) -> Result<OverlayMount> {
        Self::mount_with(lowers, None, merged)
    }

    fn mount_with(
        lowers: &[PathBuf],
        writable: Option<(&Path, &Path)>,
        merged: &Path,
    ) -> Result<OverlayMount> {
        if lowers.is_empty() || (writable.is_none() && lowers.len() < 2) {
            return Err(Error::OverlayUnavailable {
                reason: "an overlay needs a lower directory (two without an upper one)".to_owned(),
            });
        }
        let lowerdir = lowers
            .iter()
            .map(|l| escape(l))
            .collect::<Result<Vec<_>>>()?
            .join(":");
        let mut options = format!("lowerdir={lowerdir}");
        if let Some((upper, work)) = writable {
            options.push_str(&format!(
                ",upperdir={},workdir={}",
                escape(upper)?,
                escape(work)?
            ));
        }
        if in_user_namespace() {
            options.push_str(",userxattr");
        }
        if options.len() >= 4096 {
            mount_deep(lowers, writable, merged)?;
        } else {
            let data = std::ffi::CString::new(options).map_err(|_| Error::OverlayUnavailable {
                reason: "a directory path contains a NUL byte".to_owned(),
            })?;
            rustix::mount::mount(
                "overlay",
                merged,
                "overlay",
                rustix::mount::MountFlags::empty(),
                Some(data.as_c_str()),
            )
            .map_err(|e| mount_error(e, merged))?;
        }
        Ok(OverlayMount {
            merged: merged.to_owned(),
            mounted: true,
        })
    }

    /// The merged view.
    pub fn merged(&self) -> &Path {
        &self.merged
    }

    /// Unmounts now, reporting failure (dropping unmounts too, ignoring failure). When
    /// another process has a file or directory open below the merged view (`EBUSY`, say a
    /// backup or an indexer walking the state directory), the mount is detached instead: it
    /// leaves the namespace at once and goes away when the last user lets go.
    pub fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        match rustix::mount::unmount(&self.merged, rustix::mount::UnmountFlags::empty()) {
            Err(rustix::io::Errno::BUSY) => {
                rustix::mount::unmount(&self.merged, rustix::mount::UnmountFlags::DETACH)
            }
            other => other,
        }
        .map_err(|e| Error::io(&self.merged)(e.into()))
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = rustix::mount::unmount(&self.merged, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// The version of `path` the merged view of `lowers` (top first) shows, if any: the top-most
/// lower that has it, unless a whiteout, a non-directory or an opaque directory on its way
/// hides it.
fn in_lowers(lowers: &[PathBuf], path: &Path) -> Result<Option<(PathBuf, FileInfo)>> {
    for lower in lowers {
        let candidate = lower.join(path);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) => {
                if meta.file_type().is_char_device() && meta.rdev() == 0 {
                    return Ok(None);
                }
                return Ok(Some((candidate.clone(), file_info(&candidate, false)?)));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                if hidden_below(lower, path)? {
                    return Ok(None);
                }
            }
            Err(e) => {
                return Err(Error::Io {
                    path: candidate,
                    error: e,
                });
            }
        }
    }
    Ok(None)
}

/// Whether something in `lower` on the way to `path` hides the layers below it: a whiteout,
/// a non-directory, or an opaque directory.
fn hidden_below(lower: &Path, path: &Path) -> Result<bool> {
    let mut at = lower.to_owned();
    let components: Vec<_> = path.components().collect();
    for component in &components[..components.len().saturating_sub(1)] {
        at.push(component);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {
                if is_opaque(&file_info(&at, false)?) {
                    return Ok(true);
                }
            }
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(Error::Io { path: at, error: e });
            }
        }
    }
    Ok(false)
}

fn is_opaque(info: &FileInfo) -> bool {
    info.xattrs.iter().any(|(name, value)| {
        (name == "trusted.overlay.opaque" || name == "user.overlay.opaque") && value == b"y"
    })
}

/// The change set an overlay's upper directory holds, relative to its lower directories (top
/// first). Costs a walk of the upper directory and one lookup in the lowers per changed path.
pub fn upper_changes(upper: &Path, lowers: &[PathBuf]) -> Result<ChangeSet> {
    let mut changes = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = upper.join(&relative);
        for entry in fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let entry = entry.map_err(Error::io(&dir))?;
            // Any bytes: names need not be UTF-8, and the layer carries them exactly.
            let path = relative.join(entry.file_name());
            let full = entry.path();
            let mut info = file_info(&full, false)?;
            if info.kind == Kind::CharDevice && info.rdev == (0, 0) {
                // A whiteout: deleted, unless nothing below had it (created and removed again).
                if in_lowers(lowers, &path)?.is_some() {
                    changes.push(Change {
                        path,
                        kind: ChangeKind::Deleted,
                        info: None,
                        source: None,
                        hardlink_to: None,
                    });
                }
                continue;
            }
            let opaque = info.kind == Kind::Dir && is_opaque(&info);
            info.xattrs.retain(|(name, _)| !is_overlay_xattr(name));
            let lower = in_lowers(lowers, &path)?;
            let replaced = opaque
                && lower
                    .as_ref()
                    .is_some_and(|(_, before)| before.kind == Kind::Dir);
            let kind = match &lower {
                None => Some(ChangeKind::Added),
                Some(_) if replaced => Some(ChangeKind::Modified),
                Some((_, before)) => {
                    // Copy-up leaves lower metadata on parents of changed paths and on files
                    // whose metadata was set to what it was: those did not change. (A lower
                    // that was once an upper directory has overlay attributes of its own.)
                    let mut before = before.clone();
                    before.xattrs.retain(|(name, _)| !is_overlay_xattr(name));
                    let before = &before;
                    let mut comparable = info.clone();
                    // (A copied-up inode is new, so its status-change time says nothing.)
                    (
                        comparable.ino,
                        comparable.dev,
                        comparable.nlink,
                        comparable.birth,
                        comparable.ctime,
                    ) = (
                        before.ino,
                        before.dev,
                        before.nlink,
                        before.birth,
                        before.ctime,
                    );
                    changed(before, &comparable).then_some(ChangeKind::Modified)
                }
            };
            if replaced {
                changes.push(Change {
                    path: path.clone(),
                    kind: ChangeKind::Opaque,
                    info: None,
                    source: None,
                    hardlink_to: None,
                });
            }
            if info.kind == Kind::Dir {
                stack.push(path.clone());
            }
            let Some(kind) = kind else { continue };
            changes.push(Change {
                source: (info.kind == Kind::File).then(|| full.clone()),
                path,
                kind,
                info: Some(info),
                hardlink_to: None,
            });
        }
    }
    Ok(ChangeSet { changes }.finish())
}
