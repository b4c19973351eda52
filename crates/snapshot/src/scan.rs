//! Scanning a directory tree into a snapshot, on every core, never following symlinks.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A socket (never put into layers).
    Socket,
}

impl Kind {
    /// The kind a `st_mode` (or `stx_mode`) value's file-type bits name; anything else
    /// (a socket, an unknown type) is [`Kind::Socket`], which never goes into a layer.
    pub(crate) fn from_mode(mode: u32) -> Kind {
        use rustix::fs::FileType;
        match FileType::from_raw_mode(mode) {
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::RegularFile => Kind::File,
            FileType::CharacterDevice => Kind::CharDevice,
            FileType::BlockDevice => Kind::BlockDevice,
            FileType::Fifo => Kind::Fifo,
            _ => Kind::Socket,
        }
    }
}

/// Everything a snapshot records about one path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileInfo {
    /// What it is.
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime_secs: i64,
    /// Modification time, nanoseconds.
    pub mtime_nanos: u32,
    /// Status-change time (seconds, nanoseconds): changes on every write and metadata change,
    /// even one that puts the modification time back.
    pub ctime: (i64, u32),
    /// Inode number.
    pub ino: u64,
    /// Device of the filesystem holding it.
    pub dev: u64,
    /// Number of hard links.
    pub nlink: u64,
    /// Device numbers (major, minor) of a device node.
    pub rdev: (u32, u32),
    /// Target of a symlink (any bytes: targets need not be UTF-8).
    pub link_target: Option<PathBuf>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// SHA-256 of a regular file's contents, when the scan was asked for it.
    pub content_hash: Option<[u8; 32]>,
    /// Birth time of a directory (seconds, nanoseconds) where the filesystem records it: tells
    /// a directory that was removed and made again from the same one, even when the inode
    /// number was reused.
    pub birth: Option<(i64, u32)>,
}

/// A snapshot of a tree: every path below the root (relative, `/`-separated) and what it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The scanned directory.
    pub root: PathBuf,
    /// Path (relative, no leading `/`; any bytes, since names need not be UTF-8) → info,
    /// sorted component by component.
    pub entries: BTreeMap<PathBuf, FileInfo>,
}

/// Paths never snapshotted: each is a path relative to the root, and covers itself and
/// everything below it (`proc` covers `proc/1`, not `procfoo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreList {
    prefixes: Vec<String>,
}

impl IgnoreList {
    /// An ignore list from paths (a leading `/` and trailing `/` are ignored).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(paths: I) -> IgnoreList {
        let prefixes = paths
            .into_iter()
            .map(|p| p.as_ref().trim_matches('/').to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        IgnoreList { prefixes }
    }

    /// Whether `path` (relative to the root) is ignored.
    pub fn contains(&self, path: impl AsRef<Path>) -> bool {
        let path = path.as_ref();
        self.prefixes.iter().any(|p| path.starts_with(p))
    }
}

/// Reads a path's extended attributes, sorted by name.
pub(crate) fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(len) => break len,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            // Filesystems without xattrs (and sockets, on some) have none.
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(path)(e.into())),
        }
        if names.len() > 1 << 20 {
            return Err(Error::io(path)(std::io::Error::other(
                "xattr names larger than 1 MiB",
            )));
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let mut value = vec![0u8; 256];
        loop {
            match rustix::fs::lgetxattr(path, name, &mut value) {
                Ok(n) => {
                    value.truncate(n);
                    break;
                }
                Err(rustix::io::Errno::RANGE) if value.len() < 1 << 20 => {
                    value.resize(value.len() * 4, 0)
                }
                // Removed between list and get.
                Err(rustix::io::Errno::NODATA) => {
                    value.clear();
                    break;
                }
                Err(e) => return Err(Error::io(path)(e.into())),
            }
        }
        out.push((name.to_owned(), value));
    }
    out.sort();
    Ok(out)
}

/// Describes one path (never following a symlink).
pub fn file_info(path: &Path, hash: bool) -> Result<FileInfo> {
    let meta = fs::symlink_metadata(path).map_err(Error::io(path))?;
    let kind = Kind::from_mode(meta.mode());
    let link_target = if kind == Kind::Symlink {
        Some(fs::read_link(path).map_err(Error::io(path))?)
    } else {
        None
    };
    let content_hash = if hash && kind == Kind::File {
        Some(hash_file(path)?)
    } else {
        None
    };
    let birth = if kind == Kind::Dir {
        birth_time(path)
    } else {
        None
    };
    Ok(FileInfo {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: if kind == Kind::Dir { 0 } else { meta.len() },
        mtime_secs: meta.mtime(),
        mtime_nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        ctime: (meta.ctime(), meta.ctime_nsec().clamp(0, 999_999_999) as u32),
        ino: meta.ino(),
        dev: meta.dev(),
        nlink: meta.nlink(),
        rdev: (
            rustix::fs::major(meta.rdev()),
            rustix::fs::minor(meta.rdev()),
        ),
        link_target,
        xattrs: read_xattrs(path)?,
        content_hash,
        birth,
    })
}

/// A path's birth time, when the filesystem keeps one.
fn birth_time(path: &Path) -> Option<(i64, u32)> {
    let statx = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        rustix::fs::StatxFlags::BTIME,
    )
    .ok()?;
    if statx.stx_mask & rustix::fs::StatxFlags::BTIME.bits() == 0 {
        return None;
    }
    Some((statx.stx_btime.tv_sec, statx.stx_btime.tv_nsec))
}

/// SHA-256 of a file's contents, streamed.
pub fn hash_file(path: &Path) -> Result<[u8; 32]> {
    thread_local! {
        // One buffer per thread: hashing 100,000 small files allocates nothing per file.
        static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 128 * 1024]);
    }
    let mut file = fs::File::open(path).map_err(Error::io(path))?;
    let mut hasher = Sha256::new();
    BUFFER.with_borrow_mut(|buffer| {
        loop {
            let n = file.read(buffer).map_err(Error::io(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        Ok::<(), Error>(())
    })?;
    Ok(hasher.finalize().into())
}

/// Scans trees into [`Snapshot`]s.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::create_dir_all(dir.path().join("etc")).unwrap();
/// std::fs::write(dir.path().join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
/// std::fs::create_dir_all(dir.path().join("proc/1")).unwrap();
///
/// let snapshot = strata_snapshot::Scanner::new(dir.path()).ignore(["/proc"]).scan()?;
/// assert!(snapshot.entries.contains_key(std::path::Path::new("etc/hosts")));
/// assert!(!snapshot.entries.keys().any(|p| p.starts_with("proc")));
/// # Ok::<(), strata_snapshot::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Scanner {
    root: PathBuf,
    ignore: IgnoreList,
    hash: bool,
}

impl Scanner {
    /// A scanner of the tree at `root`: no ignores, no content hashes.
    pub fn new(root: impl Into<PathBuf>) -> Scanner {
        Scanner {
            root: root.into(),
            ignore: IgnoreList::default(),
            hash: false,
        }
    }

    /// Paths never snapshotted (see [`IgnoreList`]).
    pub fn ignore<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, paths: I) -> Scanner {
        self.ignore = IgnoreList::new(paths);
        self
    }

    /// Also hash the contents of every regular file.
    pub fn hash_contents(mut self, hash: bool) -> Scanner {
        self.hash = hash;
        self
    }

    /// Walks the tree on every core (one task per directory) and returns the snapshot.
    pub fn scan(&self) -> Result<Snapshot> {
        let found: Mutex<Vec<(PathBuf, FileInfo)>> = Mutex::new(Vec::new());
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        rayon::scope(|scope| self.walk(scope, PathBuf::new(), &found, &failure));
        if let Some(error) = failure.into_inner().ok().flatten() {
            return Err(error);
        }
        let entries = found.into_inner().unwrap_or_default().into_iter().collect();
        Ok(Snapshot {
            root: self.root.clone(),
            entries,
        })
    }

    fn walk<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        relative: PathBuf,
        found: &'s Mutex<Vec<(PathBuf, FileInfo)>>,
        failure: &'s Mutex<Option<Error>>,
    ) {
        let result = (|| -> Result<()> {
            let dir = self.root.join(&relative);
            let mut batch = Vec::new();
            for entry in fs::read_dir(&dir).map_err(Error::io(&dir))? {
                let entry = entry.map_err(Error::io(&dir))?;
                let path = relative.join(entry.file_name());
                if self.ignore.contains(&path) {
                    continue;
                }
                let info = file_info(&entry.path(), self.hash)?;
                if info.kind == Kind::Dir {
                    let child = path.clone();
                    scope.spawn(move |scope| self.walk(scope, child, found, failure));
                }
                batch.push((path, info));
            }
            if let Ok(mut found) = found.lock() {
                found.extend(batch);
            }
            Ok(())
        })();
        if let Err(error) = result
            && let Ok(mut slot) = failure.lock()
        {
            slot.get_or_insert(error);
        }
    }
}
