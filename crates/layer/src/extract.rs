//! Applying untrusted layers to a directory, safely.
//!
//! Every entry name is cleaned first: `./` prefixes and `.` components are dropped, and a name
//! that is absolute, has a `..` component, holds a NUL byte or is absurdly long is refused.
//! Parent directories are then resolved inside the target the way a container runtime resolves
//! them: component by component with `lstat`, following symlinks as if the target were `/`
//! (an absolute link or a `..` that would climb above the target stays at the target's root),
//! so no entry, link or whiteout can reach anything outside the target. The final component is
//! never followed: whatever is there is replaced.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::compression::Codec;
use crate::entry::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::error::{Error, Result};
use crate::read::{EntryHeader, ReadKind, TarReader};
use strata_oci::HashingReader;

/// The longest entry name accepted.
const MAX_NAME: usize = 4096;
/// Symlinks followed while resolving one path before giving up, as the kernel does.
const MAX_SYMLINK_HOPS: usize = 40;

/// What to do with whiteout entries (`.wh.name` and `.wh..wh..opq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutMode {
    /// Delete what they name from the target (applying a layer onto the layers below it).
    #[default]
    Apply,
    /// Keep them as the empty files they are (a layer stored on its own).
    Keep,
    /// Turn them into overlayfs whiteouts: a 0/0 character device, and the
    /// `trusted.overlay.opaque` attribute (needs root).
    Overlay,
    /// The same with the `user.overlay.opaque` attribute, for overlays mounted with the
    /// `userxattr` option (root of a user namespace, rootless).
    OverlayUser,
}

/// Options for extracting layers; cheap to clone and reuse.
#[derive(Debug, Clone, Default)]
pub struct Extractor {
    whiteouts: WhiteoutMode,
    allow_devices: bool,
    ownership: Option<bool>,
    expected_digest: Option<String>,
    expected_diff_id: Option<String>,
    media_type: Option<String>,
    protected: Vec<PathBuf>,
    parents_like: Option<PathBuf>,
}

/// What an extraction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// `sha256:` digest of the bytes read (compressed).
    pub digest: String,
    /// `sha256:` digest of the uncompressed tar.
    pub diff_id: String,
    /// Bytes read.
    pub compressed_size: u64,
    /// Bytes of tar.
    pub uncompressed_size: u64,
    /// Entries applied.
    pub entries: u64,
    /// Owners recorded but not applied (not running as root): path, uid, gid.
    pub ownership_not_applied: Vec<(String, u64, u64)>,
    /// Things that did not stop the extraction (an xattr the filesystem refused).
    pub warnings: Vec<String>,
    /// Entries and whiteouts left out because they fall on a protected path
    /// ([`Extractor::protect`]).
    pub skipped: Vec<String>,
}

enum Decoder<R: Read> {
    Gzip(Box<flate2::bufread::MultiGzDecoder<BufReader<R>>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<R>>>),
    Plain(BufReader<R>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Plain(d) => d.read(buf),
        }
    }
}

impl<R: Read> Decoder<R> {
    fn into_inner(self) -> BufReader<R> {
        match self {
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
            Decoder::Plain(d) => d,
        }
    }
}

fn refused(header: &EntryHeader, message: impl Into<String>) -> Error {
    Error::Refused {
        path: header.display_name(),
        message: message.into(),
    }
}

/// Cleans an entry name into components; refuses names that could leave the root.
fn clean_name(header: &EntryHeader, name: &[u8]) -> Result<Vec<OsString>> {
    if name.len() > MAX_NAME {
        return Err(refused(
            header,
            format!("name longer than {MAX_NAME} bytes"),
        ));
    }
    if name.contains(&0) {
        return Err(refused(header, "name contains a NUL byte"));
    }
    if name.starts_with(b"/") {
        return Err(refused(
            header,
            "absolute name (layer paths are relative to the root)",
        ));
    }
    let mut components = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(refused(header, "name has a `..` component")),
            p if p.len() > 255 => {
                return Err(refused(header, "a name component is longer than 255 bytes"));
            }
            p => components.push(OsStr::from_bytes(p).to_owned()),
        }
    }
    Ok(components)
}

struct Applier<'a> {
    options: &'a Extractor,
    root: PathBuf,
    as_root: bool,
    created: HashSet<PathBuf>,
    dirs: Vec<(PathBuf, u32, i64, u32)>,
    /// Directories created to hold entries, with the lower tree's time for them
    /// ([`Extractor::parents_like`]).
    implicit_times: Vec<(PathBuf, SystemTime)>,
    /// Directories of lower layers whose contents this layer changed, with their mtime
    /// before, restored at the end: a layer that does not list a directory leaves its times
    /// as the lower layer had them, as the merged view of an overlay shows them.
    touched: std::collections::HashMap<PathBuf, SystemTime>,
    cache: Option<(Vec<OsString>, PathBuf)>,
    report: ExtractReport,
    buffer: Vec<u8>,
}

impl Applier<'_> {
    /// Resolves the directory `components` inside the root, creating missing directories
    /// when `create`; `None` when it does not exist and `create` is false.
    fn resolve_dir(
        &mut self,
        header: &EntryHeader,
        components: &[OsString],
        create: bool,
    ) -> Result<Option<PathBuf>> {
        if let Some((cached, real)) = &self.cache
            && cached.as_slice() == components
        {
            return Ok(Some(real.clone()));
        }
        let mut todo: VecDeque<OsString> = components.iter().cloned().collect();
        let mut real: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(component) = todo.pop_front() {
            if component == ".." {
                real.pop();
                continue;
            }
            if component == "." || component.is_empty() {
                continue;
            }
            let path = self.join(&real).join(&component);
            if self.protected(&path) {
                // Never written through: the caller skips the entry.
                return Ok(None);
            }
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => real.push(component),
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(refused(
                            header,
                            "too many levels of symbolic links in its parent",
                        ));
                    }
                    let target = fs::read_link(&path).map_err(Error::io(&path))?;
                    let mut next: VecDeque<OsString> = target
                        .as_os_str()
                        .as_bytes()
                        .split(|b| *b == b'/')
                        .map(|p| OsStr::from_bytes(p).to_owned())
                        .collect();
                    if target.is_absolute() {
                        real.clear();
                    }
                    next.extend(todo);
                    todo = next;
                }
                Ok(_) => {
                    return Err(refused(
                        header,
                        format!(
                            "its parent `{}` is not a directory",
                            path.strip_prefix(&self.root).unwrap_or(&path).display()
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    self.note_parent(&self.join(&real));
                    fs::create_dir(&path).map_err(Error::io(&path))?;
                    self.created.insert(path.clone());
                    real.push(component);
                    let relative: PathBuf = real.iter().collect();
                    self.like_lower(&path, &relative)?;
                }
                Err(e) => return Err(Error::Io { path, error: e }),
            }
        }
        let resolved = self.join(&real);
        self.cache = Some((components.to_vec(), resolved.clone()));
        Ok(Some(resolved))
    }

    /// Records the mtime of an existing directory before this layer changes its contents.
    fn note_parent(&mut self, dir: &Path) {
        if self.created.contains(dir) || self.touched.contains_key(dir) {
            return;
        }
        if let Ok(modified) = fs::symlink_metadata(dir).and_then(|m| m.modified()) {
            self.touched.insert(dir.to_owned(), modified);
        }
    }

    /// Whether `path` (inside the root) is at or below a protected path.
    fn protected(&self, path: &Path) -> bool {
        let relative = path.strip_prefix(&self.root).unwrap_or(path);
        self.options
            .protected
            .iter()
            .any(|p| relative.starts_with(p))
    }

    /// Whether a protected path lies strictly below `path`.
    fn holds_protected(&self, path: &Path) -> bool {
        let relative = path.strip_prefix(&self.root).unwrap_or(path);
        self.options
            .protected
            .iter()
            .any(|p| p.starts_with(relative) && p.as_path() != relative)
    }

    fn skip(&mut self, header: &EntryHeader) {
        self.report.skipped.push(header.display_name());
    }

    /// Removes `path` and what is below it, except protected paths and the directories that
    /// lead to them. Returns whether `path` itself is gone.
    fn remove_around(&mut self, path: &Path) -> Result<bool> {
        if self.protected(path) {
            return Ok(false);
        }
        if !self.holds_protected(path) {
            self.remove(path)?;
            return Ok(true);
        }
        self.cache = None;
        let children = match fs::read_dir(path) {
            Ok(children) => children,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(Error::io(path)(e)),
        };
        for child in children {
            let child = child.map_err(Error::io(path))?.path();
            self.remove_around(&child)?;
        }
        Ok(false)
    }

    fn join(&self, components: &[OsString]) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(components);
        path
    }

    /// Removes whatever is at `path` (never following a symlink).
    fn remove(&mut self, path: &Path) -> Result<()> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => {
                self.cache = None;
                fs::remove_dir_all(path).map_err(Error::io(path))
            }
            Ok(_) => fs::remove_file(path).map_err(Error::io(path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io {
                path: path.to_owned(),
                error: e,
            }),
        }
    }

    fn apply<R: Read>(&mut self, header: &EntryHeader, tar: &mut TarReader<R>) -> Result<()> {
        let components = clean_name(header, &header.name)?;
        let Some((name, parent)) = components.split_last() else {
            // The root itself (`./`): its metadata only.
            if header.kind == ReadKind::Dir {
                self.dirs.push((
                    self.root.clone(),
                    header.mode,
                    header.mtime_secs,
                    header.mtime_nanos,
                ));
            }
            return Ok(());
        };
        let name_bytes = name.as_bytes();
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(header, parent, name, hidden);
        }
        if self.protected(&self.join(&components)) {
            self.skip(header);
            return Ok(());
        }
        let Some(dir) = self.resolve_dir(header, parent, true)? else {
            // The parent leads onto a protected path.
            self.skip(header);
            return Ok(());
        };
        let target = dir.join(name);
        if self.protected(&target) {
            self.skip(header);
            return Ok(());
        }
        self.note_parent(&dir);
        let existing = fs::symlink_metadata(&target).ok();
        match header.kind {
            ReadKind::Dir => {
                if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                    if !self.remove_around(&target)? {
                        self.skip(header);
                        return Ok(());
                    }
                    fs::create_dir(&target).map_err(Error::io(&target))?;
                }
                self.created.insert(target.clone());
                self.owner_and_xattrs(header, &target)?;
                self.dirs
                    .push((target, header.mode, header.mtime_secs, header.mtime_nanos));
                return Ok(());
            }
            _ => {
                if existing.is_some() && !self.remove_around(&target)? {
                    // A directory that holds a protected path stays a directory.
                    self.skip(header);
                    return Ok(());
                }
            }
        }
        match header.kind {
            ReadKind::File => self.write_file(header, tar, &target)?,
            ReadKind::Symlink => self.write_symlink(header, &target)?,
            ReadKind::Hardlink => self.write_hardlink(header, &target)?,
            ReadKind::CharDevice | ReadKind::BlockDevice => self.write_device(header, &target)?,
            ReadKind::Fifo => {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &target,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(header.mode),
                    0,
                )
                .map_err(|e| Error::io(&target)(e.into()))?;
                self.owner_and_xattrs(header, &target)?;
                self.set_times_nofollow(header, &target);
            }
            ReadKind::Dir => {}
        }
        self.created.insert(target);
        Ok(())
    }

    /// A regular file's data, streamed from the archive into a file created 0600 (never
    /// through a symlink), then its owner, mode and time.
    fn write_file<R: Read>(
        &mut self,
        header: &EntryHeader,
        tar: &mut TarReader<R>,
        target: &Path,
    ) -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(target)
            .map_err(Error::io(target))?;
        loop {
            let n = tar.read_data(&mut self.buffer)?;
            if n == 0 {
                break;
            }
            file.write_all(&self.buffer[..n])
                .map_err(Error::io(target))?;
        }
        self.owner_and_xattrs(header, target)?;
        // After chown, which clears setuid and setgid bits (and before nothing that
        // needs the final mode: the file was created 0600 and is ours).
        file.set_permissions(fs::Permissions::from_mode(header.mode))
            .map_err(Error::io(target))?;
        file.set_modified(system_time(header.mtime_secs, header.mtime_nanos))
            .map_err(Error::io(target))?;
        Ok(())
    }

    fn write_symlink(&mut self, header: &EntryHeader, target: &Path) -> Result<()> {
        if header.link.is_empty() || header.link.len() > MAX_NAME || header.link.contains(&0) {
            return Err(refused(header, "bad symlink target"));
        }
        std::os::unix::fs::symlink(OsStr::from_bytes(&header.link), target)
            .map_err(Error::io(target))?;
        self.cache = None;
        self.owner_and_xattrs(header, target)?;
        self.set_times_nofollow(header, target);
        Ok(())
    }

    /// A hard link to an entry already extracted, resolved inside the root.
    fn write_hardlink(&mut self, header: &EntryHeader, target: &Path) -> Result<()> {
        let link = clean_name(header, &header.link)?;
        let Some((link_name, link_parent)) = link.split_last() else {
            return Err(refused(header, "hard link to the root"));
        };
        let source = self
            .resolve_dir(header, link_parent, false)?
            .map(|dir| dir.join(link_name))
            .filter(|p| !self.protected(p))
            .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
            .ok_or_else(|| {
                refused(
                    header,
                    format!(
                        "hard link to `{}`, which does not exist",
                        String::from_utf8_lossy(&header.link)
                    ),
                )
            })?;
        fs::hard_link(&source, target).map_err(Error::io(target))?;
        Ok(())
    }

    /// A device node, when allowed and permitted; a warning when the kernel says no.
    fn write_device(&mut self, header: &EntryHeader, target: &Path) -> Result<()> {
        if !self.options.allow_devices {
            return Err(refused(
                header,
                "device nodes are not allowed (Extractor::allow_devices)",
            ));
        }
        let file_type = if header.kind == ReadKind::CharDevice {
            rustix::fs::FileType::CharacterDevice
        } else {
            rustix::fs::FileType::BlockDevice
        };
        let dev = rustix::fs::makedev(header.device.0, header.device.1);
        match rustix::fs::mknodat(
            rustix::fs::CWD,
            target,
            file_type,
            rustix::fs::Mode::from_raw_mode(header.mode),
            dev,
        ) {
            Ok(()) => {
                self.owner_and_xattrs(header, target)?;
                self.set_times_nofollow(header, target);
            }
            // Not permitted here (a user namespace, a container without CAP_MKNOD):
            // the node is left out of the tree with a warning. A device of a base
            // image is replaced by the runtime's /dev when a container runs, and the
            // layer itself, which keeps it, is not rewritten.
            Err(rustix::io::Errno::PERM) => {
                self.report.warnings.push(format!(
                    "{}: device node {}:{} not created (not permitted here)",
                    header.display_name(),
                    header.device.0,
                    header.device.1
                ));
            }
            Err(e) => return Err(Error::io(target)(e.into())),
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        header: &EntryHeader,
        parent: &[OsString],
        name: &OsStr,
        hidden: &[u8],
    ) -> Result<()> {
        let opaque = name.as_bytes() == OPAQUE_MARKER.as_bytes();
        match self.options.whiteouts {
            WhiteoutMode::Keep => {
                let dir = self
                    .resolve_dir(header, parent, true)?
                    .ok_or_else(|| refused(header, "parent could not be created"))?;
                let target = dir.join(name);
                self.remove(&target)?;
                File::create(&target).map_err(Error::io(&target))?;
                self.created.insert(target);
            }
            WhiteoutMode::Overlay | WhiteoutMode::OverlayUser => {
                let dir = self
                    .resolve_dir(header, parent, true)?
                    .ok_or_else(|| refused(header, "parent could not be created"))?;
                if opaque {
                    let name = if self.options.whiteouts == WhiteoutMode::OverlayUser {
                        "user.overlay.opaque"
                    } else {
                        "trusted.overlay.opaque"
                    };
                    rustix::fs::lsetxattr(&dir, name, b"y", rustix::fs::XattrFlags::empty())
                        .map_err(|e| Error::io(&dir)(e.into()))?;
                } else {
                    let target = dir.join(OsStr::from_bytes(hidden));
                    self.remove(&target)?;
                    rustix::fs::mknodat(
                        rustix::fs::CWD,
                        &target,
                        rustix::fs::FileType::CharacterDevice,
                        rustix::fs::Mode::empty(),
                        0,
                    )
                    .map_err(|e| Error::io(&target)(e.into()))?;
                    self.created.insert(target);
                }
            }
            WhiteoutMode::Apply => {
                // Nothing to delete below a directory that does not exist.
                let Some(dir) = self.resolve_dir(header, parent, false)? else {
                    return Ok(());
                };
                if opaque {
                    let children = match fs::read_dir(&dir) {
                        Ok(children) => children,
                        Err(e) => {
                            return Err(Error::Io {
                                path: dir,
                                error: e,
                            });
                        }
                    };
                    for child in children {
                        let child = child.map_err(Error::io(&dir))?.path();
                        if !self.created.contains(&child) {
                            self.remove_around(&child)?;
                        }
                    }
                } else {
                    if hidden.is_empty() {
                        return Err(refused(header, "whiteout without a name"));
                    }
                    let target = dir.join(OsStr::from_bytes(hidden));
                    if self.protected(&target) || self.holds_protected(&target) {
                        self.skip(header);
                    }
                    if !self.created.contains(&target) {
                        self.remove_around(&target)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn owner_and_xattrs(&mut self, header: &EntryHeader, path: &Path) -> Result<()> {
        if self.as_root {
            let (uid, gid) = (
                u32::try_from(header.uid).ok(),
                u32::try_from(header.gid).ok(),
            );
            if uid.is_none() || gid.is_none() {
                return Err(refused(header, "owner id out of range"));
            }
            std::os::unix::fs::lchown(path, uid, gid).map_err(Error::io(path))?;
        } else if header.uid != 0 || header.gid != 0 {
            let relative = path
                .strip_prefix(&self.root)
                .unwrap_or(path)
                .display()
                .to_string();
            self.report
                .ownership_not_applied
                .push((relative, header.uid, header.gid));
        }
        for (key, value) in &header.xattrs {
            if let Err(e) =
                rustix::fs::lsetxattr(path, key.as_str(), value, rustix::fs::XattrFlags::empty())
            {
                self.report.warnings.push(format!(
                    "{}: xattr {key} not set: {e}",
                    header.display_name()
                ));
            }
        }
        Ok(())
    }

    fn set_times_nofollow(&mut self, header: &EntryHeader, path: &Path) {
        let time = rustix::fs::Timespec {
            tv_sec: header.mtime_secs,
            tv_nsec: i64::from(header.mtime_nanos),
        };
        let times = rustix::fs::Timestamps {
            last_access: time,
            last_modification: time,
        };
        if let Err(e) = rustix::fs::utimensat(
            rustix::fs::CWD,
            path,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        ) {
            self.report
                .warnings
                .push(format!("{}: times not set: {e}", header.display_name()));
        }
    }

    /// Directory modes and times, deepest first, once nothing more is written into them.
    /// A directory created to hold entries takes the lower tree's metadata for it, when asked
    /// ([`Extractor::parents_like`]); its time is set at the end, after its entries.
    fn like_lower(&mut self, path: &Path, relative: &Path) -> Result<()> {
        let Some(lower) = &self.options.parents_like else {
            return Ok(());
        };
        let Ok(meta) = fs::symlink_metadata(lower.join(relative)) else {
            return Ok(());
        };
        if !meta.is_dir() {
            return Ok(());
        }
        use std::os::unix::fs::MetadataExt;
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(Error::io(path))?;
        if self.as_root {
            std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
                .map_err(Error::io(path))?;
        }
        if let Ok(modified) = meta.modified() {
            self.implicit_times.push((path.to_owned(), modified));
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<()> {
        // Lower directories first: an explicit entry of this layer for the same directory (the
        // root's `./`) then wins.
        for (path, modified) in std::mem::take(&mut self.touched) {
            if self.created.contains(&path) {
                continue;
            }
            // A directory removed later in the layer has nothing to restore.
            if let Ok(dir) = File::open(&path) {
                dir.set_modified(modified).map_err(Error::io(&path))?;
            }
        }
        let explicit: HashSet<PathBuf> = self.dirs.iter().map(|d| d.0.clone()).collect();
        for (path, mode, secs, nanos) in self.dirs.drain(..).rev() {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(Error::io(&path))?;
            let dir = File::open(&path).map_err(Error::io(&path))?;
            dir.set_modified(system_time(secs, nanos))
                .map_err(Error::io(&path))?;
        }
        for (path, modified) in std::mem::take(&mut self.implicit_times) {
            // A directory the layer did list got its own time above.
            if explicit.contains(&path) {
                continue;
            }
            if let Ok(dir) = File::open(&path) {
                dir.set_modified(modified).map_err(Error::io(&path))?;
            }
        }
        Ok(())
    }
}

fn system_time(secs: i64, nanos: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::new(secs.unsigned_abs(), 0))
            .unwrap_or(UNIX_EPOCH)
            + Duration::from_nanos(u64::from(nanos))
    }
}

impl Extractor {
    /// Defaults: whiteouts applied, devices refused, ownership applied when running as root.
    pub fn new() -> Self {
        Self::default()
    }

    /// What to do with whiteouts.
    pub fn whiteouts(mut self, mode: WhiteoutMode) -> Self {
        self.whiteouts = mode;
        self
    }

    /// Whether character and block devices may be created (refused by default).
    pub fn allow_devices(mut self, allow: bool) -> Self {
        self.allow_devices = allow;
        self
    }

    /// Whether to apply owners: `None` (the default) applies them when running as root and
    /// records them in the report otherwise.
    pub fn ownership(mut self, apply: Option<bool>) -> Self {
        self.ownership = apply;
        self
    }

    /// The digest the layer's bytes must have (`sha256:...`); checked as they flow.
    pub fn expect_digest(mut self, digest: Option<String>) -> Self {
        self.expected_digest = digest;
        self
    }

    /// The digest the uncompressed tar must have (the image config's `diff_id`).
    pub fn expect_diff_id(mut self, diff_id: Option<String>) -> Self {
        self.expected_diff_id = diff_id;
        self
    }

    /// The layer's media type, which decides the decompression; without it the magic bytes
    /// decide.
    pub fn media_type(mut self, media_type: Option<String>) -> Self {
        self.media_type = media_type;
        self
    }

    /// Paths inside the target (relative, `/`-separated) that are never written, replaced or
    /// deleted, nor written through: entries at or below them are skipped (and listed in
    /// [`ExtractReport::skipped`]), whiteouts remove what is around them, and a directory
    /// that holds one is never replaced by a file. For a layer applied onto a live root
    /// filesystem whose mount points (`/proc`, volumes, the builder's own directory) must
    /// stay as they are.
    pub fn protect<I, S>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<Path>,
    {
        for path in paths {
            let relative: PathBuf = path
                .as_ref()
                .components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .collect();
            if !relative.as_os_str().is_empty() {
                self.protected.push(relative);
            }
        }
        self
    }

    /// Gives a directory the layer does not list, created only to hold its entries, the mode,
    /// owner and modification time of the same directory under `lower` when there is one:
    /// what an overlay's copy-up does, for a directory of overlay-style changes extracted
    /// over the lower tree it belongs to (squashing layers). Without it, such directories
    /// get 0755 and root.
    pub fn parents_like(mut self, lower: impl Into<PathBuf>) -> Self {
        self.parents_like = Some(lower.into());
        self
    }

    /// Removes everything below `root` except the protected paths ([`Extractor::protect`])
    /// and the directories that lead to them: the start of a fresh root filesystem on a live
    /// one. Symbolic links are removed, never followed.
    pub fn clear(&self, root: &Path) -> Result<()> {
        let holds = |relative: &Path| {
            self.protected
                .iter()
                .any(|p| p.starts_with(relative) && p.as_path() != relative)
        };
        let mut stack = vec![PathBuf::new()];
        while let Some(relative) = stack.pop() {
            let dir = root.join(&relative);
            for child in fs::read_dir(&dir).map_err(Error::io(&dir))? {
                let child = child.map_err(Error::io(&dir))?;
                let inner = relative.join(child.file_name());
                if self.protected.iter().any(|p| inner.starts_with(p)) {
                    continue;
                }
                let path = child.path();
                let meta = fs::symlink_metadata(&path).map_err(Error::io(&path))?;
                if meta.is_dir() && holds(&inner) {
                    stack.push(inner);
                } else if meta.is_dir() {
                    fs::remove_dir_all(&path).map_err(Error::io(&path))?;
                } else {
                    fs::remove_file(&path).map_err(Error::io(&path))?;
                }
            }
        }
        Ok(())
    }

    fn decoder<R: Read>(&self, reader: R) -> Result<Decoder<R>> {
        let mut buffered = BufReader::with_capacity(256 * 1024, reader);
        let codec = match self.media_type.as_deref().and_then(Codec::from_media_type) {
            Some(codec) => codec,
            None => Codec::sniff(buffered.fill_buf().map_err(Error::io("<layer>"))?),
        };
        Ok(match codec {
            Codec::Gzip => Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(buffered))),
            Codec::Zstd => Decoder::Zstd(Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered).map_err(|e| Error::Codec {
                    codec: "zstd",
                    message: e.to_string(),
                })?,
            )),
            Codec::None => Decoder::Plain(buffered),
        })
    }

    /// Applies a layer onto `root` (which must exist), verifying digests as the bytes flow.
    ///
    /// A bad entry stops the extraction with an error naming it; what came before it stays
    /// applied, and nothing outside `root` is ever touched. For a target that must appear
    /// whole or not at all, use [`Extractor::unpack`].
    pub fn apply(&self, reader: impl Read, root: &Path) -> Result<ExtractReport> {
        let as_root = self
            .ownership
            .unwrap_or_else(|| rustix::process::geteuid().is_root());
        let root = fs::canonicalize(root).map_err(Error::io(root))?;
        let mut applier = Applier {
            options: self,
            root,
            as_root,
            created: HashSet::new(),
            dirs: Vec::new(),
            implicit_times: Vec::new(),
            touched: std::collections::HashMap::new(),
            cache: None,
            report: ExtractReport::default(),
            buffer: vec![0u8; 256 * 1024],
        };
        let raw = HashingReader::new(reader);
        let decoder = self.decoder(raw)?;
        let mut tar = TarReader::new(HashingReader::new(decoder));
        while let Some(header) = tar.next_entry()? {
            applier.apply(&header, &mut tar)?;
            applier.report.entries += 1;
        }
        applier.finish_dirs()?;
        let mut report = std::mem::take(&mut applier.report);
        self.finish_digests(tar, &mut report)?;
        Ok(report)
    }

    /// Drains what follows the archive, then checks both digests.
    fn finish_digests<R: Read>(
        &self,
        tar: TarReader<HashingReader<Decoder<HashingReader<R>>>>,
        report: &mut ExtractReport,
    ) -> Result<()> {
        let mut uncompressed = tar.into_inner();
        io::copy(&mut uncompressed, &mut io::sink()).map_err(Error::io("<layer>"))?;
        report.uncompressed_size = uncompressed.hasher.count();
        report.diff_id = uncompressed.hasher.finish();
        let mut raw = uncompressed.inner.into_inner();
        io::copy(&mut raw, &mut io::sink()).map_err(Error::io("<layer>"))?;
        let raw = raw.into_inner();
        report.compressed_size = raw.hasher.count();
        report.digest = raw.hasher.finish();
        if let Some(expected) = &self.expected_digest
            && *expected != report.digest
        {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                actual: report.digest.clone(),
            });
        }
        if let Some(expected) = &self.expected_diff_id
            && *expected != report.diff_id
        {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                actual: report.diff_id.clone(),
            });
        }
        Ok(())
    }

    /// Extracts a layer into `dest`, which must not exist yet: into a staging directory beside
    /// it first, renamed into place only once every entry is applied and the digests match.
    /// On any error nothing is left behind. When another process unpacked the same layer to
    /// `dest` meanwhile, its copy is kept and this one discarded.
    pub fn unpack(&self, reader: impl Read, dest: &Path) -> Result<ExtractReport> {
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let staging = tempfile::Builder::new()
            .prefix(".strata-unpack-")
            .tempdir_in(parent)
            .map_err(Error::io(parent))?;
        fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))
            .map_err(Error::io(staging.path()))?;
        let report = self.apply(reader, staging.path())?;
        let staged = staging.keep();
        match fs::rename(&staged, dest) {
            Ok(()) => Ok(report),
            Err(e) => {
                let _ = fs::remove_dir_all(&staged);
                if dest.is_dir() {
                    Ok(report)
                } else {
                    Err(Error::Io {
                        path: dest.to_owned(),
                        error: e,
                    })
                }
            }
        }
    }

    /// Lists a layer's entries without extracting anything; digests are checked as in
    /// [`Extractor::apply`].
    pub fn list(&self, reader: impl Read) -> Result<(Vec<EntryHeader>, ExtractReport)> {
        let raw = HashingReader::new(reader);
        let decoder = self.decoder(raw)?;
        let mut tar = TarReader::new(HashingReader::new(decoder));
        let mut entries = Vec::new();
        while let Some(header) = tar.next_entry()? {
            entries.push(header);
        }
        let mut report = ExtractReport {
            entries: entries.len() as u64,
            ..ExtractReport::default()
        };
        self.finish_digests(tar, &mut report)?;
        Ok((entries, report))
    }
}
