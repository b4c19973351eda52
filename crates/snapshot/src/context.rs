//! Content digests of build-context files, for cache keys.
//!
//! A context digest changes when a file's contents, name, permission bits or symlink target
//! change, and only then: not for a new mtime, a new owner, or another walk order. Each file's
//! own digest comes with it, so that a cache miss can name the file that changed. A
//! [`HashMemo`] remembers file hashes by metadata, so hashing an unchanged context again
//! costs one metadata scan.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::scan::hash_file;

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
    /// Each included path with its own digest (`sha256:` of kind, mode, and contents or link
    /// target), in path order.
    pub files: Vec<(String, String)>,
}

/// File hashes remembered by metadata (size, mtime, ctime, inode), kept between runs in a file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashMemo {
    version: u32,
    entries: BTreeMap<String, MemoEntry>,
    #[serde(skip)]
    hits: u64,
    #[serde(skip)]
    misses: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MemoEntry {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    hash: String,
}

const MEMO_VERSION: u32 = 1;

impl HashMemo {
    /// An empty memo.
    pub fn new() -> HashMemo {
        HashMemo {
            version: MEMO_VERSION,
            ..HashMemo::default()
        }
    }

    /// Loads a memo. A missing file, a memo of another version, or a damaged one gives an
    /// empty memo: it is only a cache, and the next save replaces it.
    pub fn load(path: &Path) -> Result<HashMemo> {
        match fs::read(path) {
            Ok(bytes) => Ok(match serde_json::from_slice::<HashMemo>(&bytes) {
                Ok(memo) if memo.version == MEMO_VERSION => memo,
                _ => HashMemo::new(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMemo::new()),
            Err(e) => Err(Error::Io {
                path: path.to_owned(),
                source: e,
            }),
        }
    }

    /// Saves the memo through a temporary file renamed into place; nothing when no file was
    /// hashed since it was loaded and `path` exists (a rebuild where nothing changed writes
    /// nothing).
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.misses == 0 && path.is_file() {
            return Ok(());
        }
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Memo {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        fs::write(&tmp, bytes).map_err(Error::io(&tmp))?;
        fs::rename(&tmp, path).map_err(Error::io(path))
    }

    /// How many file hashes the memo answered, and how many it could not, since it was made.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

/// One path found in the walk, before hashing.
struct Found {
    full: PathBuf,
    kind: u8,
    mode: u32,
    /// A symlink's target, as its bytes.
    link: Option<Vec<u8>>,
    meta: fs::Metadata,
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
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    for start in paths {
        let start = start.trim_matches('/');
        walk(root, start, visit, &mut found)?;
    }
    // Hash the files the memo does not know, in parallel.
    let wanted: Vec<(&String, &Found)> = found
        .iter()
        .filter(|(_, f)| f.kind == b'f')
        .filter(|(path, f)| {
            memo.entries
                .get(*path)
                .is_none_or(|entry| !memo_matches(entry, &f.meta))
        })
        .collect();
    let hashed: Vec<(String, Result<[u8; 32]>)> = wanted
        .par_iter()
        .map(|(path, f)| ((*path).clone(), hash_file(&f.full)))
        .collect();
    memo.hits += found.values().filter(|f| f.kind == b'f').count() as u64 - hashed.len() as u64;
    memo.misses += hashed.len() as u64;
    for (path, hash) in hashed {
        let hash = hex::encode(hash?);
        if let Some(meta) = found.get(&path).map(|f| &f.meta) {
            memo.entries.insert(
                path,
                MemoEntry {
                    size: meta.len(),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    ctime: (meta.ctime(), meta.ctime_nsec()),
                    ino: meta.ino(),
                    hash,
                },
            );
        }
    }
    let mut files = Vec::with_capacity(found.len());
    let mut total = Sha256::new();
    for (path, f) in &found {
        let mut hasher = Sha256::new();
        hasher.update([f.kind]);
        hasher.update(f.mode.to_be_bytes());
        if owners {
            hasher.update(f.meta.uid().to_be_bytes());
            hasher.update(f.meta.gid().to_be_bytes());
        }
        match f.kind {
            b'f' => {
                let hash = memo
                    .entries
                    .get(path)
                    .map(|e| e.hash.as_str())
                    .unwrap_or_default();
                hasher.update(hash.as_bytes());
            }
            b'l' => hasher.update(f.link.as_deref().unwrap_or_default()),
            _ => {}
        }
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        total.update(path.as_bytes());
        total.update([0]);
        total.update(digest.as_bytes());
        total.update([b'\n']);
        files.push((path.clone(), digest));
    }
    Ok(ContextDigest {
        digest: format!("sha256:{}", hex::encode(total.finalize())),
        files,
    })
}

fn memo_matches(entry: &MemoEntry, meta: &fs::Metadata) -> bool {
    entry.size == meta.len()
        && entry.mtime == (meta.mtime(), meta.mtime_nsec())
        && entry.ctime == (meta.ctime(), meta.ctime_nsec())
        && entry.ino == meta.ino()
}

fn walk(
    root: &Path,
    start: &str,
    visit: &(dyn Fn(&str, bool) -> Visit + Sync),
    found: &mut BTreeMap<String, Found>,
) -> Result<()> {
    let mut stack = vec![start.to_owned()];
    while let Some(path) = stack.pop() {
        let full = if path.is_empty() {
            root.to_owned()
        } else {
            root.join(&path)
        };
        let meta = fs::symlink_metadata(&full).map_err(Error::io(&full))?;
        let is_dir = meta.is_dir();
        let decision = if path.is_empty() {
            Visit::Include
        } else {
            visit(&path, is_dir)
        };
        if decision == Visit::Prune {
            continue;
        }
        if is_dir {
            for entry in fs::read_dir(&full).map_err(Error::io(&full))? {
                let entry = entry.map_err(Error::io(&full))?;
                let name = entry.file_name();
                let name = name.to_str().ok_or_else(|| Error::NotUtf8 {
                    path: entry.path().display().to_string(),
                })?;
                stack.push(if path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{path}/{name}")
                });
            }
        }
        if decision == Visit::Exclude || path.is_empty() {
            continue;
        }
        let ft = meta.file_type();
        let (kind, link) = if is_dir {
            (b'd', None)
        } else if ft.is_symlink() {
            // The target's bytes: it need not be UTF-8.
            let target = fs::read_link(&full).map_err(Error::io(&full))?;
            (b'l', Some(target.into_os_string().into_vec()))
        } else if ft.is_file() {
            (b'f', None)
        } else {
            (b'o', None)
        };
        found.insert(
            path,
            Found {
                full,
                kind,
                mode: meta.mode() & 0o7777,
                link,
                meta,
            },
        );
    }
    Ok(())
}
