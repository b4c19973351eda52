//! Content digests of build-context files, for cache keys.
//!
//! A context digest changes when a file's contents, name, permission bits or symlink target
//! change, and only then: not for a new mtime, a new owner, or another walk order. Each file's
//! own digest comes with it, so that a cache miss can name the file that changed (in a
//! context of more than [`FILES_LISTED`] files, the directory it is in). A
//! [`HashMemo`] remembers file hashes by metadata, so hashing an unchanged context again
//! costs one metadata scan.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::Mutex;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::scan::{Kind, hash_file};

/// What to do with a path met while hashing (decided by the caller, from `.dockerignore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Hash it (and, for a directory, look inside).
    Include,
    /// Leave it out, but look inside a directory (an exception may re-include something).
    Exclude,
    /// Leave it and everything below it out.
    Prune,
}

/// The digest of a set of context files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextDigest {
    /// `sha256:` over every included path and its own digest, in path order.
    pub digest: String,
    /// What a cache miss names, at most [`FILES_LISTED`] of them, in path order. Up to that
    /// many paths: each path with its own digest (`sha256:` of kind, mode, and contents or
    /// link target). Beyond it, the paths are grouped by their first components, as deep as
    /// the limit allows: a group is named `a/b/**` (the path `a/b` and everything below
    /// it) and its digest covers its members' paths and digests; a path shallower than the
    /// groups stays on its own. Every path counts, so two sets with the same listing have
    /// the same contents.
    pub files: Vec<(String, String)>,
}

/// The most entries a [`ContextDigest`] lists: a context of a million files gives a cache
/// key (and the record that explains its misses) of at most this many entries.
pub const FILES_LISTED: usize = 10_000;

/// File hashes remembered by metadata (size, mtime, ctime, inode), kept between runs in a file.
///
/// The file is binary, a record per file (about 100 bytes), so that loading the memo of a
/// 100,000-file context takes milliseconds. A file that is gone from a directory hashed
/// again is forgotten.
///
/// Saving costs what changed: the entries hashed or forgotten since the load are appended,
/// as one checksummed block, to a journal beside the memo ([`HashMemo::journal_path`]),
/// which loading replays; the memo is rewritten whole (and the journal removed) only when the
/// journal has grown to an eighth of it. A block that does not check out (a torn append)
/// ends the replay. Losing entries only costs hashing again: an entry is used only while the
/// file's size, times and inode are the same.
///
/// In memory, about 100 bytes a file: the paths in one buffer, in path order, beside
/// fixed-size records (a million files take about 100 MB). A walk, in path order too, finds
/// its files in one merge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashMemo {
    entries: Table,
    hits: u64,
    misses: u64,
    /// Paths hashed since the load, and paths forgotten (files that are gone): what the next
    /// save appends. Kept only while they fit in a journal: past that (`overflow`), the next
    /// save rewrites the memo whole, and a cold build of a million files does not hold
    /// their names twice.
    changed: Vec<String>,
    dropped: Vec<String>,
    overflow: bool,
    /// Records in the memo file and in its journal when loaded, and whether the memo file
    /// was whole (else the next save rewrites it).
    loaded: (u64, u64),
    whole: bool,
}

/// The journal's first bytes.
const JOURNAL_MAGIC: &[u8; 16] = b"strata-memo-log\x01";
/// Journal operations.
const PUT: u8 = 1;
const DROP: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemoEntry {
    size: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
    ino: u64,
    hash: [u8; 32],
}

/// Paths and their entries, in path order (bytes): the paths one after another in `names`,
/// each row holding where its path ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Table {
    names: String,
    rows: Vec<(usize, MemoEntry)>,
}

impl Table {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn name(&self, row: usize) -> &str {
        let start = match row {
            0 => 0,
            _ => self.rows[row - 1].0,
        };
        self.names.get(start..self.rows[row].0).unwrap_or_default()
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &MemoEntry)> {
        (0..self.rows.len()).map(|row| (self.name(row), &self.rows[row].1))
    }

    /// The row of `path`.
    fn find(&self, path: &str) -> Option<usize> {
        let row = self.lower_bound(path);
        (row < self.rows.len() && self.name(row) == path).then_some(row)
    }

    /// The first row whose path is not before `path`.
    fn lower_bound(&self, path: &str) -> usize {
        let (mut lo, mut hi) = (0, self.rows.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.name(mid) < path {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The rows of `start` and of every path below it (every row for the root, `""`).
    fn below(&self, start: &str) -> impl Iterator<Item = usize> {
        let (own, range) = if start.is_empty() {
            (None, 0..self.rows.len())
        } else {
            // Below `start` is from `start/` up to `start0` ('0' follows '/').
            let from = self.lower_bound(&format!("{start}/"));
            let to = self.lower_bound(&format!("{start}0"));
            (self.find(start), from..to)
        };
        own.into_iter().chain(range)
    }

    fn get(&self, path: &str) -> Option<&MemoEntry> {
        self.find(path).map(|row| &self.rows[row].1)
    }

    /// Adds `path` after every path already there (the caller keeps the order: an error
    /// otherwise).
    fn push(&mut self, path: &str, entry: MemoEntry) -> std::result::Result<(), String> {
        if let Some(last) = self.rows.len().checked_sub(1)
            && self.name(last) >= path
        {
            return Err(format!("`{path}` out of order"));
        }
        self.names.push_str(path);
        self.rows.push((self.names.len(), entry));
        Ok(())
    }

    /// The table with `changes` (in path order; `None` removes) applied: in place when
    /// every change is to a path already there, else rebuilt in one merge.
    fn apply(&mut self, changes: Vec<(&str, Option<MemoEntry>)>) {
        let in_place: Option<Vec<(usize, MemoEntry)>> = changes
            .iter()
            .map(|(path, entry)| Some((self.find(path)?, (*entry)?)))
            .collect();
        if let Some(updates) = in_place {
            for (row, entry) in updates {
                self.rows[row].1 = entry;
            }
            return;
        }
        let mut merged = Table {
            names: String::with_capacity(self.names.len()),
            rows: Vec::with_capacity(self.rows.len() + changes.len()),
        };
        let mut changes = changes.into_iter().peekable();
        let add = |table: &mut Table, path: &str, entry: MemoEntry| {
            table.names.push_str(path);
            table.rows.push((table.names.len(), entry));
        };
        for (path, entry) in self.iter() {
            // Changes before this path, and to it (replaced or removed).
            let mut replaced = false;
            while let Some((next, change)) = changes.next_if(|(next, _)| *next <= path) {
                replaced |= next == path;
                if let Some(change) = change {
                    add(&mut merged, next, change);
                }
            }
            if !replaced {
                add(&mut merged, path, *entry);
            }
        }
        for (path, change) in changes {
            if let Some(change) = change {
                add(&mut merged, path, change);
            }
        }
        *self = merged;
    }
}

/// The memo file's first bytes: a name and the format's version.
const MEMO_MAGIC: &[u8; 16] = b"strata-memo\0\0\0\0\x02";
/// A record after its path: size, mtime, ctime, inode, hash.
const RECORD: usize = 8 + 12 + 12 + 8 + 32;

impl HashMemo {
    /// An empty memo.
    pub fn new() -> HashMemo {
        HashMemo::default()
    }

    /// Loads a memo. A missing file, a memo of another version, or a damaged one gives an
    /// empty memo: it is only a cache, and the next save replaces it.
    pub fn load(path: &Path) -> Result<HashMemo> {
        let mut memo = match fs::read(path) {
            Ok(bytes) => match HashMemo::decode(&bytes) {
                Ok(memo) => memo,
                Err(_) => HashMemo::new(),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMemo::new(),
            Err(e) => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    source: e,
                });
            }
        };
        if !memo.whole {
            // No memo, or a damaged one: start over (the next save writes it whole).
            return Ok(memo);
        }
        let journal = HashMemo::journal_path(path);
        match fs::read(&journal) {
            Ok(bytes) => {
                // Replayed as far as it checks out; a block that does not makes the next
                // save rewrite the memo whole (and drop the journal), so that appends never
                // go on behind it.
                if memo.replay(&bytes).is_err() {
                    memo.whole = false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(journal)(e)),
        }
        Ok(memo)
    }

    /// The journal of the memo file `path`: `path` with the extension `journal`.
    pub fn journal_path(path: &Path) -> std::path::PathBuf {
        path.with_extension("journal")
    }

    /// Whether the file at `path` is a memo this version reads, and its journal (when there
    /// is one) a journal whose every block checks out: what a state check asks. The error
    /// names the file at fault.
    pub fn check(path: &Path) -> Result<()> {
        let bytes = fs::read(path).map_err(Error::io(path))?;
        let mut memo = HashMemo::decode(&bytes).map_err(|message| Error::Memo {
            path: path.to_owned(),
            message,
        })?;
        let journal = HashMemo::journal_path(path);
        match fs::read(&journal) {
            Ok(bytes) => memo.replay(&bytes).map_err(|message| Error::Memo {
                path: journal,
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(journal)(e)),
        }
    }

    /// Applies the journal `bytes`, block after block, up to the first that does not check
    /// out (which is the error).
    fn replay(&mut self, bytes: &[u8]) -> std::result::Result<(), String> {
        // Applied at once, in path order (the last operation on a path wins), however far
        // the blocks check out.
        let mut changes = std::collections::BTreeMap::new();
        let replayed = self.replay_into(bytes, &mut changes);
        self.entries.apply(
            changes
                .iter()
                .map(|(path, e)| (path.as_str(), *e))
                .collect(),
        );
        replayed
    }

    fn replay_into(
        &mut self,
        bytes: &[u8],
        changes: &mut std::collections::BTreeMap<String, Option<MemoEntry>>,
    ) -> std::result::Result<(), String> {
        let mut rest = bytes
            .strip_prefix(JOURNAL_MAGIC.as_slice())
            .ok_or("not a memo journal of this version")?;
        while !rest.is_empty() {
            // Two builds that start a journal at once both write its first bytes.
            if let Some(after) = rest.strip_prefix(JOURNAL_MAGIC.as_slice()) {
                rest = after;
                continue;
            }
            let head = rest.get(..8).ok_or("a block cut short")?;
            let ops = u32::from_le_bytes(head[..4].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default()) as usize;
            let body = rest.get(8..8 + len).ok_or("a block cut short")?;
            let sum = rest.get(8 + len..8 + len + 32).ok_or("a block cut short")?;
            let mut hasher = Sha256::new();
            hasher.update(head);
            hasher.update(body);
            if hasher.finalize().as_slice() != sum {
                return Err("a block does not match its checksum".to_owned());
            }
            let mut at = 0usize;
            for _ in 0..ops {
                let op = *body.get(at).ok_or("a block's operations cut short")?;
                at += 1;
                match op {
                    PUT => {
                        let (path, entry) = read_record(body, &mut at)?;
                        changes.insert(path, Some(entry));
                    }
                    DROP => {
                        let path = read_path(body, &mut at)?;
                        changes.insert(path, None);
                    }
                    _ => return Err("an unknown journal operation".to_owned()),
                }
                self.loaded.1 += 1;
            }
            if at != body.len() {
                return Err("bytes after a block's operations".to_owned());
            }
            rest = &rest[8 + len + 32..];
        }
        Ok(())
    }

    fn decode(bytes: &[u8]) -> std::result::Result<HashMemo, String> {
        let body = bytes
            .strip_prefix(MEMO_MAGIC.as_slice())
            .ok_or("not a memo of this version")?;
        let count = body.get(..8).ok_or("cut short")?;
        let count = u64::from_le_bytes(count.try_into().unwrap_or_default());
        // Every record takes at least its fixed part: a count that cannot fit is damage, and
        // never an allocation this size.
        if count > (bytes.len() / RECORD) as u64 {
            return Err("more records than bytes".to_owned());
        }
        let mut entries = Table {
            names: String::with_capacity(bytes.len().saturating_sub(count as usize * RECORD)),
            rows: Vec::with_capacity(count as usize),
        };
        let records = &body[8..];
        let mut at = 0usize;
        for _ in 0..count {
            let (path, entry) = read_record(records, &mut at)?;
            entries.push(&path, entry)?;
        }
        if at != records.len() {
            return Err("bytes after the last record".to_owned());
        }
        Ok(HashMemo {
            entries,
            loaded: (count, 0),
            whole: true,
            ..HashMemo::default()
        })
    }

    /// Saves what changed since the load: nothing when no file was hashed or forgotten and
    /// `path` exists (a rebuild where nothing changed writes nothing); else one block
    /// appended to the journal; or, when there is no whole memo file yet or the journal has
    /// grown to an eighth of it, the whole memo through a temporary file renamed into place,
    /// and the journal removed.
    pub fn save(&self, path: &Path) -> Result<()> {
        let ops = (self.changed.len() + self.dropped.len()) as u64;
        if ops == 0 && !self.overflow && path.is_file() {
            return Ok(());
        }
        if !self.overflow && self.whole && path.is_file() && ops <= self.journal_room() {
            match self.append(path) {
                // A block too large for its length field: the memo is written whole.
                Err(Error::Memo { .. }) => {}
                other => return other,
            }
        }
        let mut bytes =
            Vec::with_capacity(24 + self.entries.len() * (RECORD + 4) + self.entries.names.len());
        bytes.extend_from_slice(MEMO_MAGIC);
        bytes.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (path, e) in self.entries.iter() {
            write_record(&mut bytes, path, e);
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        fs::write(&tmp, bytes).map_err(Error::io(&tmp))?;
        fs::rename(&tmp, path).map_err(Error::io(path))?;
        // Everything the journal held is in the memo now.
        let journal = HashMemo::journal_path(path);
        match fs::remove_file(&journal) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(journal)(e)),
            _ => Ok(()),
        }
    }

    /// How many more operations the journal takes before the memo is rewritten whole: an
    /// eighth of the memo, or 1,024.
    fn journal_room(&self) -> u64 {
        (self.loaded.0 / 8).max(1024).saturating_sub(self.loaded.1)
    }

    /// Notes `path` as hashed (`dropped`: forgotten) since the load, while the journal has
    /// room for it; past that, the next save rewrites the memo whole and nothing is noted.
    fn note(&mut self, path: &str, dropped: bool) {
        if self.overflow {
            return;
        }
        if (self.changed.len() + self.dropped.len()) as u64 >= self.journal_room() {
            self.overflow = true;
            self.changed = Vec::new();
            self.dropped = Vec::new();
            return;
        }
        match dropped {
            true => self.dropped.push(path.to_owned()),
            false => self.changed.push(path.to_owned()),
        }
    }

    /// Appends this run's changes to the journal as one block, in one write.
    fn append(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let mut body = Vec::with_capacity(self.changed.len() * (RECORD + 45));
        let mut ops = 0u32;
        for name in &self.dropped {
            // Forgotten, and not hashed again since.
            if self.entries.find(name).is_none() {
                body.push(DROP);
                write_path(&mut body, name);
                ops += 1;
            }
        }
        for name in &self.changed {
            if let Some(entry) = self.entries.get(name) {
                body.push(PUT);
                write_record(&mut body, name, entry);
                ops += 1;
            }
        }
        let journal = HashMemo::journal_path(path);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .map_err(Error::io(&journal))?;
        let fresh = file.metadata().map_err(Error::io(&journal))?.len() == 0;
        let len = u32::try_from(body.len()).map_err(|_| Error::Memo {
            path: journal.clone(),
            message: "a journal block over 4 GiB".to_owned(),
        })?;
        let mut block = Vec::with_capacity(16 + 8 + body.len() + 32);
        if fresh {
            block.extend_from_slice(JOURNAL_MAGIC);
        }
        let head_at = block.len();
        block.extend_from_slice(&ops.to_le_bytes());
        block.extend_from_slice(&len.to_le_bytes());
        block.extend_from_slice(&body);
        let sum = Sha256::digest(&block[head_at..]);
        block.extend_from_slice(&sum);
        file.write_all(&block).map_err(Error::io(&journal))
    }

    /// How many files the memo knows.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it knows no file.
    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    /// How many file hashes the memo answered, and how many it could not, since it was made.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

/// Appends `path` (length first) to `out`.
fn write_path(out: &mut Vec<u8>, path: &str) {
    out.extend_from_slice(&(path.len() as u32).to_le_bytes());
    out.extend_from_slice(path.as_bytes());
}

/// Appends the record of `path` to `out`: its path, then size, mtime, ctime, inode, hash.
fn write_record(out: &mut Vec<u8>, path: &str, e: &MemoEntry) {
    write_path(out, path);
    out.extend_from_slice(&e.size.to_le_bytes());
    for (secs, nanos) in [e.mtime, e.ctime] {
        out.extend_from_slice(&secs.to_le_bytes());
        out.extend_from_slice(&nanos.to_le_bytes());
    }
    out.extend_from_slice(&e.ino.to_le_bytes());
    out.extend_from_slice(&e.hash);
}

/// The path at `*at` in `bytes`, `*at` moved past it.
fn read_path(bytes: &[u8], at: &mut usize) -> std::result::Result<String, String> {
    let len = bytes.get(*at..*at + 4).ok_or("cut short")?;
    let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
    let start = *at + 4;
    let name = bytes.get(start..start + len).ok_or("cut short")?;
    let name = std::str::from_utf8(name).map_err(|_| "a path is not UTF-8".to_owned())?;
    *at = start + len;
    Ok(name.to_owned())
}

/// The record at `*at` in `bytes` ([`write_record`]'s form), `*at` moved past it.
fn read_record(bytes: &[u8], at: &mut usize) -> std::result::Result<(String, MemoEntry), String> {
    let path = read_path(bytes, at)?;
    let r = bytes.get(*at..*at + RECORD).ok_or("cut short")?;
    *at += RECORD;
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    let time = |b: &[u8]| {
        (
            i64::from_le_bytes(b[..8].try_into().unwrap_or_default()),
            u32::from_le_bytes(b[8..12].try_into().unwrap_or_default()),
        )
    };
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&r[40..72]);
    Ok((
        path,
        MemoEntry {
            size: u64_of(&r[..8]),
            mtime: time(&r[8..20]),
            ctime: time(&r[20..32]),
            ino: u64_of(&r[32..40]),
            hash,
        },
    ))
}

/// One path [`walk_tree`] found: what a context digest, its memo and a copy need of it, no
/// more (a few dozen bytes, where `fs::Metadata` takes about 150).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// The path, relative to the walked root.
    pub path: String,
    /// What it is.
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, u32),
    /// Status-change time (seconds, nanoseconds).
    pub ctime: (i64, u32),
    /// Device of the filesystem holding it.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Number of hard links.
    pub nlink: u32,
    /// A symlink's target, as its bytes.
    pub link: Option<Vec<u8>>,
}

impl TreeEntry {
    /// The entry for `path` from metadata read elsewhere (`link` for a symlink's target).
    pub fn from_metadata(path: String, meta: &fs::Metadata, link: Option<Vec<u8>>) -> TreeEntry {
        use std::os::unix::fs::MetadataExt;
        let kind = Kind::from_mode(meta.mode());
        let nanos = |n: i64| u32::try_from(n).unwrap_or(0);
        TreeEntry {
            path,
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.len(),
            mtime: (meta.mtime(), nanos(meta.mtime_nsec())),
            ctime: (meta.ctime(), nanos(meta.ctime_nsec())),
            dev: meta.dev(),
            ino: meta.ino(),
            nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
            link,
        }
    }

    fn matches(&self, entry: &MemoEntry) -> bool {
        entry.size == self.size
            && entry.mtime == self.mtime
            && entry.ctime == self.ctime
            && entry.ino == self.ino
    }

    /// The kind as the digest spells it (unchanged since digests were first written).
    fn kind_byte(&self) -> u8 {
        match self.kind {
            Kind::File => b'f',
            Kind::Dir => b'd',
            Kind::Symlink => b'l',
            _ => b'o',
        }
    }
}

/// Hashes `paths` (relative to `root`; directories recursively) into a [`ContextDigest`],
/// asking `visit` about every path met below them, and using `memo` for file contents.
///
/// ```
/// use strata_snapshot::{HashMemo, Visit, hash_context};
///
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::create_dir(dir.path().join("src")).unwrap();
/// std::fs::write(dir.path().join("src/main.rs"), "fn main() {}").unwrap();
/// std::fs::write(dir.path().join("src/notes.md"), "ignored").unwrap();
/// let visit = |path: &str, _is_dir: bool| if path.ends_with(".md") { Visit::Exclude } else { Visit::Include };
///
/// let mut memo = HashMemo::new();
/// let first = hash_context(dir.path(), &["src".to_owned()], &visit, &mut memo)?;
/// assert_eq!(first.files.len(), 2); // src and src/main.rs
/// let again = hash_context(dir.path(), &["src".to_owned()], &visit, &mut memo)?;
/// assert_eq!(first, again);
/// assert_eq!(memo.stats(), (1, 1)); // the second run hashed nothing
/// # Ok::<(), strata_snapshot::Error>(())
/// ```
pub fn hash_context(
    root: &Path,
    paths: &[String],
    visit: &(dyn Fn(&str, bool) -> Visit + Sync),
    memo: &mut HashMemo,
) -> Result<ContextDigest> {
    hash_paths(root, paths, visit, memo, false)
}

/// [`hash_context`], with each path's owner (uid and gid) in its digest too: for trees whose
/// owners are copied along (another stage's files, which `COPY --from` copies with their
/// owners), where a build context's are not.
pub fn hash_context_with_owners(
    root: &Path,
    paths: &[String],
    visit: &(dyn Fn(&str, bool) -> Visit + Sync),
    memo: &mut HashMemo,
) -> Result<ContextDigest> {
    hash_paths(root, paths, visit, memo, true)
}

fn hash_paths(
    root: &Path,
    paths: &[String],
    visit: &(dyn Fn(&str, bool) -> Visit + Sync),
    memo: &mut HashMemo,
    owners: bool,
) -> Result<ContextDigest> {
    let mut found: Vec<TreeEntry> = Vec::new();
    for start in paths {
        let start = start.trim_matches('/');
        let part = walk_tree(root, start, visit)?;
        if found.is_empty() {
            found = part;
        } else {
            found.extend(part);
        }
    }
    // Path order (as bytes); a path given twice (overlapping sources) counts once.
    if paths.len() > 1 {
        found.par_sort_unstable_by(|a, b| a.path.cmp(&b.path));
        found.dedup_by(|a, b| a.path == b.path);
    }
    // Each file found, with the memo's row for its path: one merge, both in path order.
    let table = &memo.entries;
    let mut rows: Vec<Option<usize>> = Vec::with_capacity(found.len());
    let mut at = 0;
    for f in &found {
        while at < table.len() && table.name(at) < f.path.as_str() {
            at += 1;
        }
        let known = f.kind == Kind::File && at < table.len() && table.name(at) == f.path;
        rows.push(known.then_some(at));
    }
    // Hash the files the memo does not know (or knows with other metadata), in parallel.
    let wanted: Vec<usize> = (0..found.len())
        .filter(|&i| found[i].kind == Kind::File)
        .filter(|&i| rows[i].is_none_or(|row| !found[i].matches(&table.rows[row].1)))
        .collect();
    let hashed: Vec<(usize, [u8; 32])> = wanted
        .par_iter()
        .map(|&i| Ok((i, hash_file(&root.join(&found[i].path))?)))
        .collect::<Result<_>>()?;
    let files_found = found.iter().filter(|f| f.kind == Kind::File).count();
    memo.hits += (files_found - hashed.len()) as u64;
    memo.misses += hashed.len() as u64;
    // Each path's own digest, in parallel.
    let digests: Vec<[u8; 32]> = found
        .par_iter()
        .enumerate()
        .map(|(i, f)| {
            let mut hasher = Sha256::new();
            hasher.update([f.kind_byte()]);
            hasher.update(f.mode.to_be_bytes());
            if owners {
                hasher.update(f.uid.to_be_bytes());
                hasher.update(f.gid.to_be_bytes());
            }
            match f.kind {
                Kind::File => {
                    let hash = match hashed.binary_search_by_key(&i, |(at, _)| *at) {
                        Ok(at) => Some(&hashed[at].1),
                        Err(_) => rows[i].map(|row| &table.rows[row].1.hash),
                    };
                    if let Some(hash) = hash {
                        let mut hex = [0u8; 64];
                        // (64 bytes for 32: the length always fits.)
                        if hex::encode_to_slice(hash, &mut hex).is_ok() {
                            hasher.update(hex);
                        }
                    }
                }
                Kind::Symlink => hasher.update(f.link.as_deref().unwrap_or_default()),
                _ => {}
            }
            hasher.finalize().into()
        })
        .collect();
    // Files the memo knows below the paths walked that the walk did not find are gone (or
    // ignored now): forgotten, so that the memo does not grow with every deleted file.
    let mut matched = vec![false; table.len()];
    for row in rows.iter().flatten() {
        matched[*row] = true;
    }
    let mut gone: Vec<String> = Vec::new();
    let mut starts: Vec<&str> = paths.iter().map(|p| p.trim_matches('/')).collect();
    starts.sort_unstable();
    starts.dedup();
    for start in &starts {
        for row in table.below(start) {
            if !matched[row] {
                matched[row] = true;
                gone.push(table.name(row).to_owned());
            }
        }
    }
    gone.sort_unstable();
    drop(rows);
    // The memo's changes, in path order: what was hashed, and what is gone.
    let mut changes: Vec<(&str, Option<MemoEntry>)> = Vec::with_capacity(hashed.len() + gone.len());
    let mut gone_iter = gone.iter().peekable();
    for (i, hash) in &hashed {
        let f = &found[*i];
        while let Some(path) = gone_iter.next_if(|p| p.as_str() < f.path.as_str()) {
            changes.push((path, None));
        }
        let entry = MemoEntry {
            size: f.size,
            mtime: f.mtime,
            ctime: f.ctime,
            ino: f.ino,
            hash: *hash,
        };
        changes.push((&f.path, Some(entry)));
    }
    changes.extend(gone_iter.map(|p| (p.as_str(), None)));
    for (path, entry) in &changes {
        memo.note(path, entry.is_none());
    }
    memo.entries.apply(changes);
    let mut total = Sha256::new();
    for (f, digest) in found.iter().zip(&digests) {
        put_member(&mut total, &f.path, digest);
    }
    Ok(ContextDigest {
        digest: sha256_text(&total.finalize()),
        files: listing(&found, &digests, FILES_LISTED),
    })
}

/// One path and its digest, as the whole and a group hash them.
fn put_member(hasher: &mut Sha256, path: &str, digest: &[u8; 32]) {
    let mut text = [0u8; 71];
    text[..7].copy_from_slice(b"sha256:");
    // (71 bytes for `sha256:` and 64 hex digits: the length always fits.)
    let _ = hex::encode_to_slice(digest, &mut text[7..]);
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(text);
    hasher.update([b'\n']);
}

/// The listing of [`ContextDigest::files`]: each path, or groups by leading components
/// when there are more than `limit` paths.
fn listing(found: &[TreeEntry], digests: &[[u8; 32]], limit: usize) -> Vec<(String, String)> {
    if found.len() <= limit {
        return found
            .iter()
            .zip(digests)
            .map(|(f, d)| (f.path.clone(), sha256_text(d)))
            .collect();
    }
    // A path's group at depth `depth`: its first `depth` components (all of it when it
    // has no more).
    let key = |path: &str, depth: usize| -> usize {
        path.match_indices('/')
            .nth(depth - 1)
            .map_or(path.len(), |(at, _)| at)
    };
    let count = |depth: usize| -> usize {
        let mut seen = std::collections::HashSet::new();
        for f in found {
            seen.insert(&f.path[..key(&f.path, depth)]);
            if seen.len() > limit {
                break;
            }
        }
        seen.len()
    };
    let deepest = found
        .iter()
        .map(|f| f.path.matches('/').count() + 1)
        .max()
        .unwrap_or(1);
    let mut hashers: std::collections::BTreeMap<&str, (Sha256, usize)> =
        std::collections::BTreeMap::new();
    if count(1) > limit {
        // Too many even at the top (a flat directory): one group for everything.
        let all = hashers.entry("").or_insert_with(|| (Sha256::new(), 0));
        for (f, d) in found.iter().zip(digests) {
            put_member(&mut all.0, &f.path, d);
        }
    } else {
        // As deep as the limit allows.
        let mut depth = 1;
        while depth < deepest && count(depth + 1) <= limit {
            depth += 1;
        }
        for (f, d) in found.iter().zip(digests) {
            let group = hashers
                .entry(&f.path[..key(&f.path, depth)])
                .or_insert_with(|| (Sha256::new(), 0));
            put_member(&mut group.0, &f.path, d);
            group.1 += 1;
        }
    }
    let mut files: Vec<(String, String)> = hashers
        .into_iter()
        .map(|(prefix, (hasher, members))| {
            // A group of only the path itself is listed as that path, with its own digest.
            if members == 1
                && let Some(at) = found.binary_search_by(|f| f.path.as_str().cmp(prefix)).ok()
            {
                return (prefix.to_owned(), sha256_text(&digests[at]));
            }
            let name = if prefix.is_empty() {
                "**".to_owned()
            } else {
                format!("{prefix}/**")
            };
            (name, sha256_text(&hasher.finalize()))
        })
        .collect();
    files.sort();
    files
}

/// `sha256:` and the hex of a digest, in one allocation.
fn sha256_text(digest: &[u8]) -> String {
    let mut text = String::with_capacity(7 + 2 * digest.len());
    text.push_str("sha256:");
    for byte in digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        text.push(HEX[usize::from(byte >> 4)] as char);
        text.push(HEX[usize::from(byte & 0xf)] as char);
    }
    text
}

/// Everything below `start` (itself included unless it is the root) that `visit` lets in,
/// in path order (paths relative to `root`): one task per directory, each reading its
/// entries with `statx` relative to the directory, asking only for the fields a
/// [`TreeEntry`] keeps.
pub fn walk_tree(
    root: &Path,
    start: &str,
    visit: &(dyn Fn(&str, bool) -> Visit + Sync),
) -> Result<Vec<TreeEntry>> {
    let full = if start.is_empty() {
        root.to_owned()
    } else {
        root.join(start)
    };
    let stat = rustix::fs::statx(
        rustix::fs::CWD,
        &full,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        STATX_FIELDS,
    )
    .map_err(|e| Error::io(&full)(e.into()))?;
    let is_dir = file_kind(&stat) == Kind::Dir;
    let decision = if start.is_empty() {
        Visit::Include
    } else {
        visit(start, is_dir)
    };
    let mut out = Vec::new();
    if decision == Visit::Prune {
        return Ok(out);
    }
    if decision == Visit::Include && !start.is_empty() {
        let link = if file_kind(&stat) == Kind::Symlink {
            let target = fs::read_link(&full).map_err(Error::io(&full))?;
            Some(target.into_os_string().into_vec())
        } else {
            None
        };
        out.push(found(start.to_owned(), &stat, link));
    }
    if !is_dir {
        return Ok(out);
    }
    let results: Mutex<Vec<Vec<TreeEntry>>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    rayon::scope(|scope| {
        walk_dir(scope, root, start.to_owned(), visit, &results, &failure);
    });
    if let Some(error) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(error);
    }
    let parts = results.into_inner().unwrap_or_else(|e| e.into_inner());
    out.reserve_exact(parts.iter().map(Vec::len).sum());
    for part in parts {
        out.extend(part);
    }
    out.par_sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

const STATX_FIELDS: rustix::fs::StatxFlags = rustix::fs::StatxFlags::TYPE
    .union(rustix::fs::StatxFlags::MODE)
    .union(rustix::fs::StatxFlags::UID)
    .union(rustix::fs::StatxFlags::GID)
    .union(rustix::fs::StatxFlags::INO)
    .union(rustix::fs::StatxFlags::SIZE)
    .union(rustix::fs::StatxFlags::MTIME)
    .union(rustix::fs::StatxFlags::CTIME)
    .union(rustix::fs::StatxFlags::NLINK);

fn file_kind(stat: &rustix::fs::Statx) -> Kind {
    Kind::from_mode(u32::from(stat.stx_mode))
}

fn found(path: String, stat: &rustix::fs::Statx, link: Option<Vec<u8>>) -> TreeEntry {
    TreeEntry {
        path,
        kind: file_kind(stat),
        mode: u32::from(stat.stx_mode) & 0o7777,
        uid: stat.stx_uid,
        gid: stat.stx_gid,
        size: stat.stx_size,
        mtime: (stat.stx_mtime.tv_sec, stat.stx_mtime.tv_nsec),
        ctime: (stat.stx_ctime.tv_sec, stat.stx_ctime.tv_nsec),
        dev: rustix::fs::makedev(stat.stx_dev_major, stat.stx_dev_minor),
        ino: stat.stx_ino,
        nlink: stat.stx_nlink,
        link,
    }
}

/// Reads one directory (`rel`, below `root`), records what `visit` lets in, and walks its
/// subdirectories as tasks of their own.
fn walk_dir<'s>(
    scope: &rayon::Scope<'s>,
    root: &'s Path,
    rel: String,
    visit: &'s (dyn Fn(&str, bool) -> Visit + Sync),
    results: &'s Mutex<Vec<Vec<TreeEntry>>>,
    failure: &'s Mutex<Option<Error>>,
) {
    let full = if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(&rel)
    };
    let fail = |error: Error| {
        if let Ok(mut slot) = failure.lock() {
            slot.get_or_insert(error);
        }
    };
    if failure.lock().is_ok_and(|f| f.is_some()) {
        return;
    }
    let dir = match rustix::fs::open(
        &full,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => return fail(Error::io(&full)(e.into())),
    };
    let mut entries = match rustix::fs::Dir::read_from(&dir) {
        Ok(entries) => entries,
        Err(e) => return fail(Error::io(&full)(e.into())),
    };
    let mut here = Vec::new();
    for entry in entries.by_ref() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => return fail(Error::io(&full)(e.into())),
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let Ok(name_text) = name.to_str() else {
            return fail(Error::NotUtf8 {
                path: full
                    .join(OsStr::from_bytes(name.to_bytes()))
                    .display()
                    .to_string(),
            });
        };
        let path = if rel.is_empty() {
            name_text.to_owned()
        } else {
            let mut path = String::with_capacity(rel.len() + 1 + name_text.len());
            path.push_str(&rel);
            path.push('/');
            path.push_str(name_text);
            path
        };
        let stat = match rustix::fs::statx(
            &dir,
            name,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            STATX_FIELDS,
        ) {
            Ok(stat) => stat,
            Err(e) => return fail(Error::io(full.join(name_text))(e.into())),
        };
        let kind = file_kind(&stat);
        let decision = visit(&path, kind == Kind::Dir);
        if decision == Visit::Prune {
            continue;
        }
        if decision == Visit::Include {
            let link = if kind == Kind::Symlink {
                match rustix::fs::readlinkat(&dir, name, Vec::new()) {
                    Ok(target) => Some(target.into_bytes()),
                    Err(e) => return fail(Error::io(full.join(name_text))(e.into())),
                }
            } else {
                None
            };
            here.push(found(path.clone(), &stat, link));
        }
        if kind == Kind::Dir {
            scope.spawn(move |scope| walk_dir(scope, root, path, visit, results, failure));
        }
    }
    if !here.is_empty()
        && let Ok(mut results) = results.lock()
    {
        results.push(here);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> TreeEntry {
        TreeEntry {
            path: path.to_owned(),
            kind: if path.ends_with(".txt") {
                Kind::File
            } else {
                Kind::Dir
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: (0, 0),
            ctime: (0, 0),
            dev: 0,
            ino: 0,
            nlink: 1,
            link: None,
        }
    }

    /// Paths in path order, each with a digest made from its name and `salt`.
    fn tree(paths: &[&str], changed: &str) -> (Vec<TreeEntry>, Vec<[u8; 32]>) {
        let mut paths = paths.to_vec();
        paths.sort();
        let digests = paths
            .iter()
            .map(|p| {
                let salt: &[u8] = if *p == changed { b"new" } else { b"old" };
                Sha256::new()
                    .chain_update(p)
                    .chain_update(salt)
                    .finalize()
                    .into()
            })
            .collect();
        (paths.into_iter().map(entry).collect(), digests)
    }

    #[test]
    fn a_listing_groups_paths_as_deep_as_its_limit_allows() {
        let mut paths = vec!["README.txt", "a", "a/b", "b", "b/c", "b/c/d"];
        let names: Vec<String> = (0..4)
            .flat_map(|n| [format!("a/b/{n}.txt"), format!("b/c/d/{n}.txt")])
            .collect();
        paths.extend(names.iter().map(String::as_str));
        // Few enough paths: each on its own.
        let (found, digests) = tree(&paths, "");
        assert_eq!(listing(&found, &digests, 100).len(), paths.len());
        // Limit 6: depth 2 gives README.txt, a, a/b, b, b/c (5); depth 3 would give 13.
        let grouped = listing(&found, &digests, 6);
        let names: Vec<&str> = grouped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["README.txt", "a", "a/b/**", "b", "b/c/**"]);
        // One changed file changes its group only.
        let (found2, digests2) = tree(&paths, "b/c/d/2.txt");
        let changed: Vec<&str> = grouped
            .iter()
            .zip(listing(&found2, &digests2, 6))
            .filter(|(a, b)| **a != *b)
            .map(|(a, _)| a.0.as_str())
            .collect();
        assert_eq!(changed, ["b/c/**"]);
        // Limit 2: even the top has three groups (README.txt, a, b): one for everything.
        let all = listing(&found, &digests, 2);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "**");
        assert_ne!(all[0].1, listing(&found2, &digests2, 2)[0].1);
    }

    fn memo_entry(n: u8) -> MemoEntry {
        MemoEntry {
            size: u64::from(n),
            mtime: (0, 0),
            ctime: (0, 0),
            ino: 0,
            hash: [n; 32],
        }
    }

    fn table(paths: &[&str]) -> Table {
        let mut table = Table::default();
        for (n, path) in paths.iter().enumerate() {
            table.push(path, memo_entry(n as u8)).unwrap();
        }
        table
    }

    #[test]
    fn the_memo_table_merges_changes_in_path_order() {
        let mut t = table(&["a", "a.b", "a/x", "a/y", "b"]);
        assert!(t.push("a", memo_entry(9)).is_err(), "out of order");
        // Updates of known paths only: in place.
        t.apply(vec![("a/x", Some(memo_entry(7)))]);
        assert_eq!(t.get("a/x"), Some(&memo_entry(7)));
        // New paths and removals: merged.
        t.apply(vec![
            ("0", Some(memo_entry(1))),
            ("a.b", None),
            ("a/w", Some(memo_entry(2))),
            ("a/y", None),
            ("c", Some(memo_entry(3))),
        ]);
        let names: Vec<&str> = t.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["0", "a", "a/w", "a/x", "b", "c"]);
        assert_eq!(t.get("a/x"), Some(&memo_entry(7)));
        assert_eq!(t.get("a.b"), None);
        // What is below a start: itself and `start/…`, not `a.b` or `ab`.
        let t = table(&["a", "a.b", "a/x", "a/y/z", "ab", "b"]);
        let below: Vec<&str> = t.below("a").map(|row| t.name(row)).collect();
        assert_eq!(below, ["a", "a/x", "a/y/z"]);
        assert_eq!(t.below("").count(), 6);
        assert_eq!(t.below("zz").count(), 0);
    }

    #[test]
    fn a_group_of_one_deeper_path_is_still_a_group() {
        // `x/y.txt` without `x` itself (a source below it): its group is `x/**`, and a
        // path named like a group cannot be mistaken for one.
        let (found, digests) = tree(&["x/y.txt", "z/1.txt", "z/2.txt", "q.txt"], "");
        let listed = listing(&found, &digests, 3);
        let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["q.txt", "x/**", "z/**"]);
    }
}
