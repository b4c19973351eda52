//! Where cache entries live: the [`CacheStore`] trait and the local-directory store.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::key::{CacheKey, KeyInputs};

/// The layer a cached step produced: the vocabulary's layer, whose serde form is what
/// cache entries hold.
pub type CachedLayer = strata_oci::LayerBlob;

/// What a step produced: its layer (none for steps that only change the config) and the
/// config changes it made, under its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The key. Its inputs are there when the engine records an entry; a store keeps only
    /// the digest (the inputs that explain a later miss are kept by `remember`).
    pub key: CacheKey,
    /// The layer, if the step made one.
    pub layer: Option<CachedLayer>,
    /// The config changes the step made (the engine's own format).
    pub config: serde_json::Value,
    /// When the entry was made, in seconds since the epoch (0: now, when recorded).
    pub created_unix: u64,
}

/// Looks up and records cache entries.
pub trait CacheStore {
    /// The entry for `key` (a key digest), if there is a live one.
    fn lookup(&self, key: &str) -> Result<Option<CacheEntry>>;
    /// Records an entry; `layer_blob` is the file holding the layer blob, when there is one.
    fn record(&self, entry: &CacheEntry, layer_blob: Option<&Path>) -> Result<()>;
    /// Opens a cached layer blob (a registry store downloads it first when needed).
    fn open_layer(&self, layer: &CachedLayer) -> Result<File>;
    /// Remembers the inputs of the step known as `step` (a name the engine gives it, such as
    /// `stage/index`), so that the next build can explain a miss.
    fn remember(&self, step: &str, key: &CacheKey) -> Result<()>;
    /// The inputs remembered for `step` by an earlier build.
    fn recall(&self, step: &str) -> Result<Option<KeyInputs>>;
}

/// A cache in a local directory: `entries/`, `blobs/sha256/`, `steps/`, `tmp/`. Entries are
/// written through a temporary file and renamed, so several builds can share the directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    max_bytes: Option<u64>,
    ttl: Option<Duration>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn file_name(key: &str) -> String {
    // Keys are digests; anything else is hashed into a safe file name.
    match key.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) => {
            hex.to_ascii_lowercase()
        }
        _ => hex::encode(Sha256::digest(key.as_bytes())),
    }
}

impl LocalStore {
    /// A store in `root` (created when missing), with no size limit and no TTL.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalStore> {
        let root = root.into();
        for dir in ["entries", "blobs/sha256", "steps", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(Error::io(&path))?;
        }
        Ok(LocalStore {
            root,
            max_bytes: None,
            ttl: None,
        })
    }

    /// Evicts the least recently used entries once their layers exceed `bytes`.
    pub fn max_bytes(mut self, bytes: Option<u64>) -> LocalStore {
        self.max_bytes = bytes;
        self
    }

    /// Entries older than `ttl` are misses (and removed).
    pub fn ttl(mut self, ttl: Option<Duration>) -> LocalStore {
        self.ttl = ttl;
        self
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.root
            .join("entries")
            .join(format!("{}.json", file_name(key)))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(file_name(digest))
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(Error::io(&tmp_dir))?;
        tmp.write_all(bytes).map_err(Error::io(tmp.path()))?;
        tmp.persist(path).map_err(|e| Error::io(path)(e.error))?;
        Ok(())
    }

    fn read_entry(&self, path: &Path) -> Result<Option<CacheEntry>> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Damaged {
                    path: path.to_owned(),
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                path: path.to_owned(),
                error: e,
            }),
        }
    }

    fn expired(&self, entry: &CacheEntry) -> bool {
        self.ttl
            .is_some_and(|ttl| now_unix().saturating_sub(entry.created_unix) > ttl.as_secs())
    }

    /// Removes entries (least recently used first) until the layers of the rest fit in the
    /// size limit, and blobs no remaining entry needs.
    fn evict(&self) -> Result<()> {
        let Some(limit) = self.max_bytes else {
            return Ok(());
        };
        let dir = self.root.join("entries");
        let mut entries = Vec::new();
        for file in fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let Ok(file) = file else { continue };
            let path = file.path();
            let used = file
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            // Another build may have removed it meanwhile; a damaged one goes first.
            match self.read_entry(&path) {
                Ok(Some(entry)) => entries.push((used, path, entry.layer)),
                Ok(None) => {}
                Err(_) => entries.push((UNIX_EPOCH, path, None)),
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let mut total: u64 = entries
            .iter()
            .filter_map(|e| e.2.as_ref())
            .map(|l| l.size)
            .sum();
        let mut evicted = 0;
        while total > limit && evicted < entries.len() {
            let (_, path, layer) = &entries[evicted];
            let _ = fs::remove_file(path);
            total -= layer.as_ref().map_or(0, |l| l.size);
            evicted += 1;
        }
        let kept: std::collections::HashSet<&str> = entries[evicted..]
            .iter()
            .filter_map(|e| e.2.as_ref())
            .map(|l| l.digest.as_ref())
            .collect();
        for (_, _, layer) in &entries[..evicted] {
            if let Some(layer) = layer
                && !kept.contains(layer.digest.as_ref())
            {
                let _ = fs::remove_file(self.blob_path(layer.digest.as_ref()));
            }
        }
        Ok(())
    }
}

impl CacheStore for LocalStore {
    fn lookup(&self, key: &str) -> Result<Option<CacheEntry>> {
        let path = self.entry_path(key);
        let Some(entry) = self.read_entry(&path)? else {
            return Ok(None);
        };
        if entry.key.digest != key {
            return Err(Error::Damaged {
                path,
                message: format!("holds the entry of {}", entry.key.digest),
            });
        }
        if self.expired(&entry) {
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        if let Some(layer) = &entry.layer
            && !self.blob_path(layer.digest.as_ref()).is_file()
        {
            // The layer was evicted by another build: the entry is useless.
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        // Mark it used, for least-recently-used eviction.
        if let Ok(file) = File::options().write(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        Ok(Some(entry))
    }

    fn record(&self, entry: &CacheEntry, layer_blob: Option<&Path>) -> Result<()> {
        if let (Some(layer), Some(source)) = (&entry.layer, layer_blob) {
            let target = self.blob_path(layer.digest.as_ref());
            if !target.is_file() {
                // A hard link costs nothing on the same filesystem; otherwise copy through tmp.
                if fs::hard_link(source, &target).is_err() && !target.is_file() {
                    let tmp_dir = self.root.join("tmp");
                    let tmp =
                        tempfile::NamedTempFile::new_in(&tmp_dir).map_err(Error::io(&tmp_dir))?;
                    fs::copy(source, tmp.path()).map_err(Error::io(source))?;
                    tmp.persist(&target)
                        .map_err(|e| Error::io(&target)(e.error))?;
                }
            }
        }
        // The entry is stored without the key's inputs (`remember` keeps those, once per
        // step): a lookup then reads a few hundred bytes, not every file a COPY listed.
        let entry = CacheEntry {
            key: CacheKey {
                digest: entry.key.digest.clone(),
                inputs: KeyInputs::default(),
            },
            layer: entry.layer.clone(),
            config: entry.config.clone(),
            created_unix: match entry.created_unix {
                0 => now_unix(),
                at => at,
            },
        };
        let bytes = serde_json::to_vec(&entry).map_err(|e| Error::Damaged {
            path: self.entry_path(&entry.key.digest),
            message: e.to_string(),
        })?;
        self.write_atomic(&self.entry_path(&entry.key.digest), &bytes)?;
        self.evict()
    }

    fn open_layer(&self, layer: &CachedLayer) -> Result<File> {
        let path = self.blob_path(layer.digest.as_ref());
        File::open(&path).map_err(Error::io(path))
    }

    /// Writes the inputs (`steps/<name>.json`) and, beside them, the key they make
    /// (`steps/<name>.key`): when the step is remembered with that key already (a cache hit
    /// of an unchanged step), nothing is written, however many files its inputs list.
    fn remember(&self, step: &str, key: &CacheKey) -> Result<()> {
        let name = file_name(step);
        let steps = self.root.join("steps");
        let path = steps.join(format!("{name}.json"));
        let key_path = steps.join(format!("{name}.key"));
        if path.is_file() && fs::read(&key_path).is_ok_and(|k| k == key.digest.as_bytes()) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&key.inputs).map_err(|e| Error::Damaged {
            path: path.clone(),
            message: e.to_string(),
        })?;
        // The key file goes last: a crash between the two leaves inputs without their key,
        // which the next build simply writes again.
        let _ = fs::remove_file(&key_path);
        self.write_atomic(&path, &bytes)?;
        self.write_atomic(&key_path, key.digest.as_bytes())
    }

    fn recall(&self, step: &str) -> Result<Option<KeyInputs>> {
        let path = self
            .root
            .join("steps")
            .join(format!("{}.json", file_name(step)));
        match fs::read(&path) {
            // A damaged record only loses an explanation.
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { path, error: e }),
        }
    }
}

/// One thing [`LocalStore::verify`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFault {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
    /// Whether it was removed because repair was asked for.
    pub repaired: bool,
}

/// What [`LocalStore::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreReport {
    /// Entries read.
    pub entries: usize,
    /// Layer blobs hashed.
    pub blobs: usize,
    /// Damaged entries, entries whose layer is missing, blobs that do not match their name.
    pub faults: Vec<StoreFault>,
    /// Temporary files a killed writer left (not corrupt, only space).
    pub leftovers: Vec<PathBuf>,
}

impl LocalStore {
    /// Hashes every layer blob and reads every entry: an entry must parse, be filed under
    /// its own key, and have its layer. With `repair`, what is broken is removed (a lookup
    /// then misses, and the step runs again).
    pub fn verify(&self, repair: bool) -> Result<StoreReport> {
        let mut report = StoreReport::default();
        let fault = |path: PathBuf, message: String| {
            let repaired = repair && fs::remove_file(&path).is_ok();
            StoreFault {
                path,
                message,
                repaired,
            }
        };
        let mut good_blobs = std::collections::HashSet::new();
        for path in list(&self.root.join("blobs/sha256"))? {
            report.blobs += 1;
            let name = path
                .file_name()
                .map(|n| format!("sha256:{}", n.to_string_lossy()))
                .unwrap_or_default();
            let actual = hash_file(&path)?;
            if actual == name {
                good_blobs.insert(name);
            } else {
                report.faults.push(fault(
                    path,
                    format!("holds content that hashes to {actual}"),
                ));
            }
        }
        for path in list(&self.root.join("entries"))? {
            report.entries += 1;
            let entry = match self.read_entry(&path) {
                Ok(Some(entry)) => entry,
                Ok(None) => continue,
                Err(e) => {
                    report.faults.push(fault(path, e.to_string()));
                    continue;
                }
            };
            if path != self.entry_path(&entry.key.digest) {
                let message = format!("holds the entry of {}", entry.key.digest);
                report.faults.push(fault(path, message));
                continue;
            }
            if let Some(layer) = &entry.layer
                && !good_blobs.contains(layer.digest.as_ref() as &str)
            {
                let message = format!("its layer {} is missing or damaged", layer.digest);
                report.faults.push(fault(path, message));
            }
        }
        report.leftovers = list(&self.root.join("tmp"))?;
        Ok(report)
    }
}

fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            Ok(paths)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::Io {
            path: dir.to_owned(),
            error: e,
        }),
    }
}

fn hash_file(path: &Path) -> Result<String> {
    let file = File::open(path).map_err(Error::io(path))?;
    let (digest, _) = strata_oci::digest::sha256_of_reader(file).map_err(Error::io(path))?;
    Ok(digest)
}
