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
    /// What a cache miss names, at most [`FILES_LISTED`] entries. Up to that many paths:
    /// each path with its own digest (`sha256:` of kind, mode, and contents or link
    /// target). Beyond it, each path no more than one component below the shallowest
    /// source stays on its own, and what lies deeper is grouped under that path: `a/**`
    /// (everything below `a`, not `a` itself), whose digest covers its members' paths and
    /// digests. Past [`FILES_LISTED`] entries even so, one entry `**` whose digest is
    /// [`ContextDigest::digest`]. Every path counts, so two sets with the same listing have
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
            if path_order(self.name(mid), path).is_lt() {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The rows of `start` and of every path below it (every row for the root, `""`): one
    /// run of rows, since a path's contents come right after it.
    fn below<'t>(&'t self, start: &'t str) -> impl Iterator<Item = usize> + 't {
        let from = if start.is_empty() {
            0
        } else {
            self.lower_bound(start)
        };
        (from..self.rows.len()).take_while(move |&row| {
            let name = self.name(row);
            start.is_empty()
                || name == start
                || (name.starts_with(start) && name.as_bytes().get(start.len()) == Some(&b'/'))
        })
    }

    fn get(&self, path: &str) -> Option<&MemoEntry> {
        self.find(path).map(|row| &self.rows[row].1)
    }

    /// Adds `path` after every path already there (the caller keeps the order: an error
    /// otherwise).
    fn push(&mut self, path: &str, entry: MemoEntry) -> std::result::Result<(), String> {
        if let Some(last) = self.rows.len().checked_sub(1)
            && !path_order(self.name(last), path).is_lt()
        {
            return Err(format!("`{path}` out of order"));
        }
        self.names.push_str(path);
        self.rows.push((self.names.len(), entry));
        Ok(())
    }

    /// The table with `puts` (added or replaced) and without `gone` (both in path order):
    /// in place when `puts` are all paths already there and nothing is gone, else rebuilt
    /// in one merge (taken whole when the table is empty).
    fn apply(&mut self, puts: Table, gone: &[String], all_known: bool) {
        if gone.is_empty() && all_known {
            for (path, entry) in puts.iter() {
                if let Some(row) = self.find(path) {
                    self.rows[row].1 = *entry;
                }
            }
            return;
        }
        if self.rows.is_empty() {
            *self = puts;
            return;
        }
        let mut merged = Table {
            names: String::with_capacity(self.names.len() + puts.names.len()),
            rows: Vec::with_capacity(self.rows.len() + puts.len()),
        };
        let add = |table: &mut Table, path: &str, entry: MemoEntry| {
            table.names.push_str(path);
            table.rows.push((table.names.len(), entry));
        };
        let mut puts_iter = puts.iter().peekable();
        let mut gone = gone.iter().peekable();
        for (path, entry) in self.iter() {
            // Puts before this path, and to it (which replace it).
            let mut replaced = false;
            while let Some((next, put)) =
                puts_iter.next_if(|(next, _)| !path_order(next, path).is_gt())
            {
                replaced |= next == path;
                add(&mut merged, next, *put);
            }
            while gone.next_if(|g| path_order(g, path).is_lt()).is_some() {}
            if gone.next_if(|g| g.as_str() == path).is_some() || replaced {
                continue;
            }
            add(&mut merged, path, *entry);
        }
        for (path, put) in puts_iter {
            add(&mut merged, path, *put);
        }
        *self = merged;
    }
}

/// The memo file's first bytes: a name and the format's version.
/// Version 3: records in [`path_order`] (version 2 had byte order).
const MEMO_MAGIC: &[u8; 16] = b"strata-memo\0\0\0\0\x03";
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
        let mut memo = match HashMemo::read_file(path)? {
            Some(Ok(memo)) => memo,
            // Damaged, or of another version.
            Some(Err(_)) | None => HashMemo::new(),
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
        let mut memo = HashMemo::read_file(path)?
            .ok_or_else(|| Error::io(path)(std::io::Error::from(std::io::ErrorKind::NotFound)))?
            .map_err(|message| Error::Memo {
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
        let mut changes = std::collections::HashMap::new();
        let replayed = self.replay_into(bytes, &mut changes);
        let mut changes: Vec<(String, Option<MemoEntry>)> = changes.into_iter().collect();
        changes.sort_unstable_by(|a, b| path_order(&a.0, &b.0));
        let mut puts = Table::default();
        let mut gone = Vec::new();
        let mut all_known = true;
        for (path, change) in changes {
            match change {
                Some(entry) => {
                    all_known &= self.entries.find(&path).is_some();
                    // (Sorted and unique: always in order.)
                    let _ = puts.push(&path, entry);
                }
                None => gone.push(path),
            }
        }
        self.entries.apply(puts, &gone, all_known);
        replayed
    }

    fn replay_into(
        &mut self,
        bytes: &[u8],
        changes: &mut std::collections::HashMap<String, Option<MemoEntry>>,
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

    /// Reads a memo file of `len` bytes, a record at a time (never the whole file in
    /// memory beside the table it becomes).
    fn decode(mut file: impl std::io::Read, len: u64) -> std::result::Result<HashMemo, String> {
        let mut exact = |buffer: &mut Vec<u8>, n: usize| {
            buffer.resize(n, 0);
            file.read_exact(buffer)
                .map_err(|e| format!("cut short ({e})"))
        };
        let mut buffer = Vec::with_capacity(4096);
        exact(&mut buffer, MEMO_MAGIC.len() + 8)?;
        if buffer[..MEMO_MAGIC.len()] != MEMO_MAGIC[..] {
            return Err("not a memo of this version".to_owned());
        }
        let count = u64::from_le_bytes(buffer[16..24].try_into().unwrap_or_default());
        // Every record takes at least its fixed part: a count that cannot fit is damage, and
        // never an allocation this size.
        if count > len / RECORD as u64 {
            return Err("more records than bytes".to_owned());
        }
        let names = usize::try_from(len.saturating_sub(count * (RECORD as u64 + 4))).unwrap_or(0);
        let mut entries = Table {
            names: String::with_capacity(names),
            rows: Vec::with_capacity(count as usize),
        };
        let mut read = (MEMO_MAGIC.len() + 8) as u64;
        for _ in 0..count {
            exact(&mut buffer, 4)?;
            let path_len = u32::from_le_bytes(buffer[..4].try_into().unwrap_or_default()) as usize;
            if read + 4 + path_len as u64 + RECORD as u64 > len {
                return Err("a record runs past the end".to_owned());
            }
            let head = [buffer[0], buffer[1], buffer[2], buffer[3]];
            exact(&mut buffer, path_len + RECORD)?;
            buffer.splice(..0, head);
            let mut at = 0;
            let (path, entry) = read_record(&buffer, &mut at)?;
            entries.push(&path, entry)?;
            read += (4 + path_len + RECORD) as u64;
        }
        if read != len {
            return Err("bytes after the last record".to_owned());
        }
        Ok(HashMemo {
            entries,
            loaded: (count, 0),
            whole: true,
            ..HashMemo::default()
        })
    }

    /// Opens and reads the memo file at `path` ([`HashMemo::decode`]); `None` when there
    /// is none.
    fn read_file(path: &Path) -> Result<Option<std::result::Result<HashMemo, String>>> {
        let file = match fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path)(e)),
        };
        let len = file.metadata().map_err(Error::io(path))?.len();
        Ok(Some(HashMemo::decode(
            std::io::BufReader::with_capacity(1 << 20, file),
            len,
        )))
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
        // Written through a buffer to a temporary file renamed into place: never the whole
        // memo in memory twice.
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(&tmp)?);
            out.write_all(MEMO_MAGIC)?;
            out.write_all(&(self.entries.len() as u64).to_le_bytes())?;
            let mut record = Vec::with_capacity(4096);
            for (path, e) in self.entries.iter() {
                record.clear();
                write_record(&mut record, path, e);
                out.write_all(&record)?;
            }
            // (Not synced: a memo lost in a crash costs only hashing again.)
            out.flush()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&tmp)(e));
        }
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
    let mut starts: Vec<&str> = paths.iter().map(|p| p.trim_matches('/')).collect();
    starts.sort_unstable();
    starts.dedup();
    let mut walk = ordered_walk(root, &starts, visit)?;
    let depth = listing_depth(&starts);
    let mut listing = Listing::new(depth, FILES_LISTED);
    let mut total = Sha256::new();
    let table = &memo.entries;
    let mut matched = vec![false; table.len()];
    let mut at = 0;
    // What the memo learns: files hashed (in path order), and how many it did not know.
    let mut puts = Table::default();
    let mut unknown = 0usize;
    let (mut hits, mut misses) = (0u64, 0u64);
    loop {
        let chunk: Vec<TreeEntry> = walk.by_ref().take(4096).collect::<Result<_>>()?;
        if chunk.is_empty() {
            break;
        }
        // Each file with the memo's row for its path: a merge, both in path order.
        let mut rows: Vec<Option<usize>> = Vec::with_capacity(chunk.len());
        for f in &chunk {
            while at < table.len() && path_order(table.name(at), &f.path).is_lt() {
                at += 1;
            }
            let known = f.kind == Kind::File && at < table.len() && table.name(at) == f.path;
            if known {
                matched[at] = true;
            }
            rows.push(known.then_some(at));
        }
        // Hash what the memo does not know (or knows with other metadata), in parallel.
        let wanted: Vec<usize> = (0..chunk.len())
            .filter(|&i| chunk[i].kind == Kind::File)
            .filter(|&i| rows[i].is_none_or(|row| !chunk[i].matches(&table.rows[row].1)))
            .collect();
        let hashed: Vec<(usize, [u8; 32])> = wanted
            .par_iter()
            .map(|&i| Ok((i, hash_file(&root.join(&chunk[i].path))?)))
            .collect::<Result<_>>()?;
        let files = chunk.iter().filter(|f| f.kind == Kind::File).count();
        hits += (files - hashed.len()) as u64;
        misses += hashed.len() as u64;
        // Each path's own digest, in parallel; the whole and the listing in path order.
        let digests: Vec<[u8; 32]> = chunk
            .par_iter()
            .enumerate()
            .map(|(i, f)| {
                let hash = match hashed.binary_search_by_key(&i, |(at, _)| *at) {
                    Ok(at) => Some(&hashed[at].1),
                    Err(_) => rows[i].map(|row| &table.rows[row].1.hash),
                };
                own_digest(f, hash, owners)
            })
            .collect();
        for (f, digest) in chunk.iter().zip(&digests) {
            put_member(&mut total, &f.path, digest);
            listing.add(&f.path, digest);
        }
        for (i, hash) in hashed {
            let f = &chunk[i];
            unknown += usize::from(rows[i].is_none());
            let entry = MemoEntry {
                size: f.size,
                mtime: f.mtime,
                ctime: f.ctime,
                ino: f.ino,
                hash,
            };
            puts.push(&f.path, entry).map_err(|message| Error::Memo {
                path: root.join(&f.path),
                message,
            })?;
        }
    }
    drop(walk);
    forget_gone(memo, &starts, matched, puts, unknown);
    memo.hits += hits;
    memo.misses += misses;
    let digest = sha256_text(&total.finalize());
    Ok(ContextDigest {
        files: listing.finish(&digest),
        digest,
    })
}

/// The entries below `starts`, in path order: one start as it is walked; several gathered,
/// sorted, and a path met twice (overlapping sources) counted once.
fn ordered_walk<'a>(
    root: &'a Path,
    starts: &[&'a str],
    visit: &'a (dyn Fn(&str, bool) -> Visit + Sync),
) -> Result<Box<dyn Iterator<Item = Result<TreeEntry>> + 'a>> {
    Ok(match starts {
        [start] => Box::new(Walk::new(root, start, visit)?),
        _ => {
            let mut all = Vec::new();
            for start in starts {
                all.extend(walk_tree(root, start, visit)?);
            }
            all.par_sort_unstable_by(|a, b| path_order(&a.path, &b.path));
            all.dedup_by(|a, b| a.path == b.path);
            Box::new(all.into_iter().map(Ok))
        }
    })
}

/// How deep the listing goes: files are listed one by one up to the limit, else by their
/// first components below the shallowest start.
fn listing_depth(starts: &[&str]) -> usize {
    1 + starts
        .iter()
        .map(|s| {
            if s.is_empty() {
                0
            } else {
                s.split('/').count()
            }
        })
        .min()
        .unwrap_or(0)
}

/// Writes what a pass learnt into the memo: the files hashed (`puts`), and the files it
/// knew below `starts` that the walk did not find (not `matched`), which are gone (or
/// ignored now) and forgotten, so that the memo does not grow with every deleted file.
fn forget_gone(
    memo: &mut HashMemo,
    starts: &[&str],
    mut matched: Vec<bool>,
    puts: Table,
    unknown: usize,
) {
    let table = &memo.entries;
    let mut gone: Vec<String> = Vec::new();
    for start in starts {
        for row in table.below(start) {
            if !matched[row] {
                matched[row] = true;
                gone.push(table.name(row).to_owned());
            }
        }
    }
    gone.sort_unstable_by(|a, b| path_order(a, b));
    drop(matched);
    for (path, _) in puts.iter() {
        memo.note(path, false);
    }
    for path in &gone {
        memo.note(path, true);
    }
    memo.entries.apply(puts, &gone, unknown == 0);
}

/// A path's own digest: its kind, mode (and with `owners`, its owner), and a file's content
/// hash or a link's target.
fn own_digest(f: &TreeEntry, hash: Option<&[u8; 32]>, owners: bool) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([f.kind_byte()]);
    hasher.update(f.mode.to_be_bytes());
    if owners {
        hasher.update(f.uid.to_be_bytes());
        hasher.update(f.gid.to_be_bytes());
    }
    match f.kind {
        Kind::File => {
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
}

/// [`ContextDigest::files`], built as paths come in path order: each path while there are no
/// more than `limit`; past that, each path of at most `depth` components on its own and
/// the rest grouped by their first `depth` components (`a/b/**`, a group's members are
/// contiguous in path order); past `limit` groups, one group `**` for all (whose digest is
/// the whole's).
struct Listing {
    depth: usize,
    limit: usize,
    /// Each path and its digest, while there are no more than `limit`.
    each: Vec<(String, [u8; 32])>,
    grouped: bool,
    groups: Vec<(String, String)>,
    /// The group being hashed: its prefix and its members so far.
    open: Option<(String, Sha256)>,
    too_many: bool,
}

impl Listing {
    fn new(depth: usize, limit: usize) -> Listing {
        Listing {
            depth,
            limit,
            each: Vec::new(),
            grouped: false,
            groups: Vec::new(),
            open: None,
            too_many: false,
        }
    }

    fn add(&mut self, path: &str, digest: &[u8; 32]) {
        if !self.grouped {
            self.each.push((path.to_owned(), *digest));
            if self.each.len() > self.limit {
                self.grouped = true;
                for (path, digest) in std::mem::take(&mut self.each) {
                    self.group(&path, &digest);
                }
            }
            return;
        }
        self.group(path, digest);
    }

    fn group(&mut self, path: &str, digest: &[u8; 32]) {
        if self.too_many {
            return;
        }
        match path.match_indices('/').nth(self.depth - 1) {
            None => {
                self.close();
                self.groups.push((path.to_owned(), sha256_text(digest)));
            }
            Some((at, _)) => {
                let prefix = &path[..at];
                if self.open.as_ref().is_none_or(|(open, _)| open != prefix) {
                    self.close();
                    self.open = Some((prefix.to_owned(), Sha256::new()));
                }
                if let Some((_, hasher)) = &mut self.open {
                    put_member(hasher, path, digest);
                }
            }
        }
        if self.groups.len() > self.limit {
            self.too_many = true;
            self.groups = Vec::new();
            self.open = None;
        }
    }

    fn close(&mut self) {
        if let Some((prefix, hasher)) = self.open.take() {
            self.groups
                .push((format!("{prefix}/**"), sha256_text(&hasher.finalize())));
        }
    }

    /// The listing; `whole` is the digest of everything.
    fn finish(mut self, whole: &str) -> Vec<(String, String)> {
        if !self.grouped {
            return self
                .each
                .into_iter()
                .map(|(path, digest)| (path, sha256_text(&digest)))
                .collect();
        }
        self.close();
        if self.too_many || self.groups.len() > self.limit {
            return vec![("**".to_owned(), whole.to_owned())];
        }
        self.groups
    }
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

/// The order of paths in a walk, a layer and the memo: component by component, so that a
/// directory's contents come right after it (`a`, `a/x`, `a.b`), which is byte order with
/// `/` before every other byte.
pub fn path_order(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |c: u8| if c == b'/' { 0 } else { c };
    a.bytes().map(key).cmp(b.bytes().map(key))
}

/// Everything below `start` (itself included unless it is the root) that `visit` lets in,
/// in [`path_order`] (paths relative to `root`). [`Walk`], gathered.
pub fn walk_tree(
    root: &Path,
    start: &str,
    visit: &(dyn Fn(&str, bool) -> Visit + Sync),
) -> Result<Vec<TreeEntry>> {
    Walk::new(root, start, visit)?.collect()
}

/// How many directories a [`Walk`] reads ahead of the one it gives entries from.
const READ_AHEAD: usize = 16;
/// A directory with more entries than this has their metadata read in parallel.
const PARALLEL_STAT: usize = 512;

/// The entries below a start, in [`path_order`], one at a time: a million files are never
/// held at once. Directories are read ahead on the rayon pool (`READ_AHEAD`, 16, of them, so
/// memory is a few directories' worth), each with one `getdents` pass and a `statx` per
/// entry relative to the directory, asking only for the fields a [`TreeEntry`] keeps.
/// `visit` is asked about every path met, before its directory is read: a pruned directory
/// is never opened.
pub struct Walk<'v> {
    root: std::sync::Arc<Path>,
    visit: &'v (dyn Fn(&str, bool) -> Visit + Sync),
    /// The start itself, when it is given.
    first: Option<TreeEntry>,
    /// The directories being given, innermost last: each one's entries (what `visit` let
    /// in or looks inside), the next to give, and how far read-ahead has looked.
    frames: Vec<Frame>,
    /// Directories asked for ahead, by path.
    ahead: std::collections::HashMap<String, std::sync::mpsc::Receiver<Result<Vec<TreeEntry>>>>,
    done: bool,
}

struct Frame {
    entries: Vec<(TreeEntry, Visit)>,
    next: usize,
    looked: usize,
}

impl<'v> Walk<'v> {
    /// A walk of `start` (relative to `root`; empty for `root` itself).
    pub fn new(
        root: &Path,
        start: &str,
        visit: &'v (dyn Fn(&str, bool) -> Visit + Sync),
    ) -> Result<Walk<'v>> {
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
        let mut walk = Walk {
            root: std::sync::Arc::from(root),
            visit,
            first: None,
            frames: Vec::new(),
            ahead: std::collections::HashMap::new(),
            done: decision == Visit::Prune,
        };
        if walk.done {
            return Ok(walk);
        }
        if decision == Visit::Include && !start.is_empty() {
            let link = if file_kind(&stat) == Kind::Symlink {
                let target = fs::read_link(&full).map_err(Error::io(&full))?;
                Some(target.into_os_string().into_vec())
            } else {
                None
            };
            walk.first = Some(found(start.to_owned(), &stat, link));
        }
        if is_dir {
            let listing = read_listing(&walk.root, start)?;
            walk.open(listing);
        }
        Ok(walk)
    }

    /// Makes `listing` the innermost directory, `visit` asked about each entry.
    fn open(&mut self, listing: Vec<TreeEntry>) {
        let entries = listing
            .into_iter()
            .filter_map(|entry| {
                let decision = (self.visit)(&entry.path, entry.kind == Kind::Dir);
                (decision != Visit::Prune).then_some((entry, decision))
            })
            .collect();
        self.frames.push(Frame {
            entries,
            next: 0,
            looked: 0,
        });
        self.read_ahead();
    }

    /// Asks for the next directories to come, innermost first, up to [`READ_AHEAD`].
    fn read_ahead(&mut self) {
        // Inside the pool itself, waiting on a task of the pool could wait forever.
        if rayon::current_thread_index().is_some() {
            return;
        }
        for frame in self.frames.iter_mut().rev() {
            while self.ahead.len() < READ_AHEAD && frame.looked < frame.entries.len() {
                let (entry, _) = &frame.entries[frame.looked];
                frame.looked += 1;
                if entry.kind != Kind::Dir {
                    continue;
                }
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                let root = std::sync::Arc::clone(&self.root);
                let rel = entry.path.clone();
                rayon::spawn(move || {
                    // (The walk may be gone: nobody to tell.)
                    let _ = tx.send(read_listing(&root, &rel));
                });
                self.ahead.insert(entry.path.clone(), rx);
            }
            if self.ahead.len() >= READ_AHEAD {
                break;
            }
        }
    }

    /// The listing of `rel`: read ahead, or read now.
    fn listing(&mut self, rel: &str) -> Result<Vec<TreeEntry>> {
        match self.ahead.remove(rel) {
            Some(rx) => rx.recv().unwrap_or_else(|_| read_listing(&self.root, rel)),
            None => read_listing(&self.root, rel),
        }
    }
}

impl Iterator for Walk<'_> {
    type Item = Result<TreeEntry>;

    fn next(&mut self) -> Option<Result<TreeEntry>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        while !self.done {
            let Some(frame) = self.frames.last_mut() else {
                self.done = true;
                break;
            };
            let Some((entry, decision)) = frame.entries.get_mut(frame.next) else {
                self.frames.pop();
                continue;
            };
            frame.next += 1;
            let decision = *decision;
            // Taken out (what is left behind is an empty name, never looked at again).
            let entry = std::mem::replace(entry, found_empty());
            if entry.kind == Kind::Dir {
                // Its contents come right after it.
                match self.listing(&entry.path) {
                    Ok(listing) => self.open(listing),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            if decision == Visit::Include {
                return Some(Ok(entry));
            }
        }
        None
    }
}

/// A placeholder left where an entry was taken from its frame.
fn found_empty() -> TreeEntry {
    TreeEntry {
        path: String::new(),
        kind: Kind::Fifo,
        mode: 0,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: (0, 0),
        ctime: (0, 0),
        dev: 0,
        ino: 0,
        nlink: 0,
        link: None,
    }
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

/// Every entry of the directory `rel` (below `root`), sorted by name: one `getdents` pass,
/// then a `statx` (and for a link, a `readlink`) of each relative to the directory, in
/// parallel for a large directory.
fn read_listing(root: &Path, rel: &str) -> Result<Vec<TreeEntry>> {
    let full = if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(rel)
    };
    let dir = rustix::fs::open(
        &full,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io(&full)(e.into()))?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir).map_err(|e| Error::io(&full)(e.into()))? {
        let entry = entry.map_err(|e| Error::io(&full)(e.into()))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        names.push(name.to_owned());
    }
    names.sort_unstable();
    let one = |name: &std::ffi::CString| -> Result<TreeEntry> {
        let Ok(name_text) = name.to_str() else {
            return Err(Error::NotUtf8 {
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
            path.push_str(rel);
            path.push('/');
            path.push_str(name_text);
            path
        };
        let stat = rustix::fs::statx(
            &dir,
            name.as_c_str(),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            STATX_FIELDS,
        )
        .map_err(|e| Error::io(full.join(name_text))(e.into()))?;
        let link = if file_kind(&stat) == Kind::Symlink {
            let target = rustix::fs::readlinkat(&dir, name.as_c_str(), Vec::new())
                .map_err(|e| Error::io(full.join(name_text))(e.into()))?;
            Some(target.into_bytes())
        } else {
            None
        };
        Ok(found(path, &stat, link))
    };
    if names.len() > PARALLEL_STAT {
        names.par_iter().map(one).collect()
    } else {
        names.iter().map(one).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing of `paths` (sorted into path order) at `depth` and `limit`, each path's
    /// digest made from its name, and `changed`'s from something else.
    fn list(paths: &[&str], changed: &str, depth: usize, limit: usize) -> Vec<(String, String)> {
        let mut paths = paths.to_vec();
        paths.sort_by(|a, b| path_order(a, b));
        let mut listing = Listing::new(depth, limit);
        let mut whole = Sha256::new();
        for path in paths {
            let salt: &[u8] = if path == changed { b"new" } else { b"old" };
            let digest: [u8; 32] = Sha256::new()
                .chain_update(path)
                .chain_update(salt)
                .finalize()
                .into();
            put_member(&mut whole, path, &digest);
            listing.add(path, &digest);
        }
        listing.finish(&sha256_text(&whole.finalize()))
    }

    #[test]
    fn a_listing_groups_paths_below_its_depth_past_its_limit() {
        let mut paths = vec!["README.txt", "a", "a/b", "b", "b/c", "b/c/d", "b.txt"];
        let names: Vec<String> = (0..4)
            .flat_map(|n| [format!("a/b/{n}.txt"), format!("b/c/d/{n}.txt")])
            .collect();
        paths.extend(names.iter().map(String::as_str));
        // Few enough paths: each on its own.
        assert_eq!(list(&paths, "", 1, 100).len(), paths.len());
        // Past the limit: the top's paths on their own, what is below them by directory.
        let grouped = list(&paths, "", 1, 6);
        let names: Vec<&str> = grouped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["README.txt", "a", "a/**", "b", "b/**", "b.txt"]);
        // One changed file changes its group only.
        let changed: Vec<&str> = grouped
            .iter()
            .zip(list(&paths, "b/c/d/2.txt", 1, 6))
            .filter(|(a, b)| **a != *b)
            .map(|(a, _)| a.0.as_str())
            .collect();
        assert_eq!(changed, ["b/**"]);
        // Depth 2 (a start one level down): groups one level deeper.
        let names: Vec<String> = list(&paths, "", 2, 8).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "README.txt",
                "a",
                "a/b",
                "a/b/**",
                "b",
                "b/c",
                "b/c/**",
                "b.txt"
            ]
        );
        // More groups than the limit: one for everything, the whole's digest.
        let all = list(&paths, "", 1, 2);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "**");
        assert_ne!(all[0].1, list(&paths, "b/c/d/2.txt", 1, 2)[0].1);
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

    fn table(paths: &[(&str, u8)]) -> Table {
        let mut table = Table::default();
        for (path, n) in paths {
            table.push(path, memo_entry(*n)).unwrap();
        }
        table
    }

    #[test]
    fn the_memo_table_keeps_path_order_and_merges_changes() {
        let mut t = table(&[("a", 0), ("a/x", 1), ("a/y", 2), ("a.b", 3), ("b", 4)]);
        assert!(t.push("a.a", memo_entry(9)).is_err(), "out of order");
        // Updates of known paths only: in place.
        t.apply(table(&[("a/x", 7)]), &[], true);
        assert_eq!(t.get("a/x"), Some(&memo_entry(7)));
        // New paths and removals: merged.
        t.apply(
            table(&[("0", 1), ("a/w", 2), ("a/x", 8), ("c", 3)]),
            &["a/y".to_owned(), "a.b".to_owned()],
            false,
        );
        let names: Vec<&str> = t.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["0", "a", "a/w", "a/x", "b", "c"]);
        assert_eq!(t.get("a/x"), Some(&memo_entry(8)));
        assert_eq!(t.get("a.b"), None);
        // What is below a start: itself and `start/…`, not `a.b` or `ab`.
        let t = table(&[
            ("a", 0),
            ("a/x", 0),
            ("a/y/z", 0),
            ("a.b", 0),
            ("ab", 0),
            ("b", 0),
        ]);
        let below: Vec<&str> = t.below("a").map(|row| t.name(row)).collect();
        assert_eq!(below, ["a", "a/x", "a/y/z"]);
        assert_eq!(t.below("").count(), 6);
        assert_eq!(t.below("zz").count(), 0);
        // An empty table takes what it is given.
        let mut empty = Table::default();
        empty.apply(table(&[("a", 1)]), &[], false);
        assert_eq!(empty.len(), 1);
    }

    #[test]
    fn path_order_puts_a_directory_s_contents_right_after_it() {
        let mut paths = vec!["a.b", "a/x", "a", "a-b", "a/x/y", "ab", "a b"];
        paths.sort_by(|a, b| path_order(a, b));
        assert_eq!(paths, ["a", "a/x", "a/x/y", "a b", "a-b", "a.b", "ab"]);
    }
}
