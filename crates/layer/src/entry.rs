//! What goes into a layer: entries with a path inside the image, a kind and metadata.

use std::cmp::Ordering;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// When a file was last modified: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mtime {
    /// Whole seconds (negative before 1970).
    pub secs: i64,
    /// Nanoseconds, below 1,000,000,000.
    pub nanos: u32,
}

impl Mtime {
    /// A time in whole seconds.
    pub fn from_secs(secs: i64) -> Mtime {
        Mtime { secs, nanos: 0 }
    }
}

/// Ownership, permissions and times of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Metadata {
    /// Permission bits including setuid (0o4000), setgid (0o2000) and sticky (0o1000).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// User name, where known.
    pub uname: Option<String>,
    /// Group name, where known.
    pub gname: Option<String>,
    /// Modification time.
    pub mtime: Mtime,
    /// Extended attributes (`security.capability`, `user.*`, ...), sorted by name when written.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file whose contents are streamed from `source` on disk; `size` is checked
    /// against the file when it is read.
    File {
        /// Where the contents are read from.
        source: PathBuf,
        /// The size in bytes.
        size: u64,
    },
    /// A regular file with inline contents (small files: heredocs, generated configs).
    Bytes(Vec<u8>),
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink {
        /// The link's target, as written (any bytes but NUL: Linux names need not be UTF-8).
        target: PathBuf,
    },
    /// A hard link to another entry of the same layer (its path inside the image).
    Hardlink {
        /// The path of the entry it links to.
        target: PathBuf,
    },
    /// A character device.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// The path was deleted: written as `dir/.wh.name`.
    Whiteout,
    /// The directory's lower contents are hidden: written as `dir/.wh..wh..opq`.
    OpaqueDir,
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The path inside the image, relative (`etc/passwd`), `/`-separated, no `.` or `..`.
    /// Any bytes but NUL: file names on Linux need not be UTF-8, and the layer carries them
    /// exactly.
    pub path: PathBuf,
    /// What it is.
    pub kind: EntryKind,
    /// Its metadata (ignored for whiteouts, which are written as empty root-owned files).
    pub metadata: Metadata,
}

/// The prefix of whiteout file names.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of the opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

impl Entry {
    /// The name this entry has in the tar stream, as bytes (whiteouts get their `.wh.` name).
    pub(crate) fn tar_name(&self) -> Vec<u8> {
        let path = self.path.as_os_str().as_bytes();
        match self.kind {
            EntryKind::Whiteout => {
                let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
                    Some(at) => (&path[..=at], &path[at + 1..]),
                    None => (&path[..0], path),
                };
                [dir, WHITEOUT_PREFIX.as_bytes(), name].concat()
            }
            EntryKind::OpaqueDir => [path, b"/", OPAQUE_MARKER.as_bytes()].concat(),
            _ => path.to_vec(),
        }
    }
}

/// Checks that `path` is a clean relative path inside the image.
pub(crate) fn validate_path(path: &Path) -> Result<()> {
    let fail = |message: &str| {
        Err(Error::InvalidEntry {
            path: path.display().to_string(),
            message: message.to_owned(),
        })
    };
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return fail("empty path");
    }
    if bytes.starts_with(b"/") {
        return fail("absolute path (paths inside a layer are relative to the root)");
    }
    if bytes.contains(&0) {
        return fail("path contains a NUL byte");
    }
    for component in bytes.split(|b| *b == b'/') {
        match component {
            b"" => return fail("empty path component (`//` or a trailing `/`)"),
            b"." | b".." => return fail("`.` or `..` component"),
            c if c.len() > 255 => return fail("a path component is longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

/// Where an entry sorts within its directory: the opaque marker first, then whiteouts, then
/// everything else by name.
fn rank(entry: &Entry) -> u8 {
    match entry.kind {
        EntryKind::OpaqueDir => 0,
        EntryKind::Whiteout => 1,
        _ => 2,
    }
}

/// The deterministic order of a layer: component by component (so parents come before their
/// children), and within a directory the opaque marker, then whiteouts, then names in byte
/// order.
pub(crate) fn compare(a: &Entry, b: &Entry) -> Ordering {
    // An entry is its parent's components, its rank and its name; an opaque marker belongs
    // inside its directory: compare it as `path/` + rank 0. (No allocation: a sort of a
    // million entries compares twenty million times.)
    fn parent_and_name(e: &Entry) -> (Option<&[u8]>, u8, &[u8]) {
        let path = e.path.as_os_str().as_bytes();
        match e.kind {
            EntryKind::OpaqueDir => (Some(path), 0, &[]),
            _ => match path.iter().rposition(|b| *b == b'/') {
                Some(at) => (Some(&path[..at]), rank(e), &path[at + 1..]),
                None => (None, rank(e), path),
            },
        }
    }
    let (pa, ra, na) = parent_and_name(a);
    let (pb, rb, nb) = parent_and_name(b);
    let mut ia = pa.into_iter().flat_map(|p| p.split(|b| *b == b'/'));
    let mut ib = pb.into_iter().flat_map(|p| p.split(|b| *b == b'/'));
    // Walk the common directory prefix.
    loop {
        match (ia.next(), ib.next()) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => return x.cmp(y),
            (None, None) => return (ra, na).cmp(&(rb, nb)),
            // `a` is directly in a directory that is an ancestor of `b`'s parent: compare
            // `a`'s name with `b`'s next component.
            (None, Some(next)) => {
                return if ra < 2 {
                    Ordering::Less
                } else {
                    na.cmp(next).then(Ordering::Less)
                };
            }
            (Some(next), None) => {
                return if rb < 2 {
                    Ordering::Greater
                } else {
                    next.cmp(nb).then(Ordering::Greater)
                };
            }
        }
    }
}
