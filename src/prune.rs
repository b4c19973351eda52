//! [`prune_state`]: keeps a long-lived state directory (a CI runner's, for months) within a
//! size and an age, removing the least recently used things first.
//!
//! What can go, as units with a last-use time:
//! - a cache entry (`cache/entries/*.json`, touched on every hit) and, when nothing else
//!   needs it, its layer blob;
//! - a base image recorded in `index.json` (its manifest, config and layers); its last use is
//!   the newest access or change time of its manifest blob (reads update access times on
//!   the usual `relatime` mounts; on `noatime` mounts the order is the pull order);
//! - a cache-mount directory (`cache-mounts/<id>`), by its modification time;
//! - an extracted layer of the layer store (`layers/<hex>`), by its marker's time (every
//!   build that stacks the layer sets it).
//!
//! Blobs that no unit needs (the manifests and configs of built images, layers of entries
//! already gone) and the scratch of killed builds are always removed. Pruning takes the
//! state directory's lock exclusively: it never runs while a build, or an [`crate::Image`]
//! still in hand, uses the directory. Without [`PruneOptions::wait`] it then skips and says
//! so; with it, it waits for them (and new builds wait for the prune).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::state::{PRUNE_GATE, STATE_LOCK, open_lock};

/// What [`prune_state`] may keep.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    max_size: Option<u64>,
    max_age: Option<Duration>,
    wait: bool,
}

impl PruneOptions {
    /// No limits: only what nothing needs is removed.
    pub fn new() -> PruneOptions {
        PruneOptions::default()
    }

    /// Removes the least recently used units until the state takes at most `bytes`.
    pub fn max_size(mut self, bytes: u64) -> PruneOptions {
        self.max_size = Some(bytes);
        self
    }

    /// Removes every unit unused for longer than `age`.
    pub fn max_age(mut self, age: Duration) -> PruneOptions {
        self.max_age = Some(age);
        self
    }

    /// Waits for the builds using the directory to finish, instead of skipping (default:
    /// skip). New builds wait while such a prune is pending, so it is not starved; do not
    /// wait while this process holds an [`crate::Image`] of that directory (the prune would
    /// wait for it forever, and builds for the prune).
    pub fn wait(mut self, wait: bool) -> PruneOptions {
        self.wait = wait;
        self
    }
}

/// What [`prune_state`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// The state directory.
    pub dir: PathBuf,
    /// Nothing was done because builds were using the directory.
    pub skipped: bool,
    /// Bytes the directory took before.
    pub before: u64,
    /// Bytes it takes after.
    pub after: u64,
    /// Cache entries removed.
    pub cache_entries: usize,
    /// Base images removed from `index.json`.
    pub images: usize,
    /// Cache-mount directories removed.
    pub cache_mounts: usize,
    /// Extracted layers removed from the layer store.
    pub layers: usize,
    /// Blobs removed (those of removed units and those nothing needed).
    pub blobs: usize,
}

impl std::fmt::Display for PruneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.skipped {
            return write!(
                f,
                "prune of {} skipped: builds are using it",
                self.dir.display()
            );
        }
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        write!(
            f,
            "pruned {}: {:.1} MiB → {:.1} MiB (freed {:.1} MiB: {} cache entries, {} images, \
             {} cache mounts, {} extracted layers, {} blobs)",
            self.dir.display(),
            mib(self.before),
            mib(self.after),
            mib(self.before.saturating_sub(self.after)),
            self.cache_entries,
            self.images,
            self.cache_mounts,
            self.layers,
            self.blobs
        )
    }
}

/// A removable thing.
#[derive(Debug)]
enum Unit {
    Entry(PathBuf),
    Image(String),
    Mount(PathBuf),
    /// A directory of the layer store (the blob it came from is a unit of its own: a layer
    /// directory is only a copy, and one without its blob still serves overlays).
    Layer(PathBuf),
}

/// Prunes the state directory `dir` within `options`.
pub fn prune_state(dir: &Path, options: &PruneOptions) -> Result<PruneReport> {
    let mut report = PruneReport {
        dir: dir.to_owned(),
        ..PruneReport::default()
    };
    if !dir.join("oci-layout").is_file() {
        return Err(Error::Invalid(format!(
            "{} is not a strata state directory (no oci-layout)",
            dir.display()
        )));
    }
    let Some(locks) = lock_out_builds(dir, options.wait)? else {
        report.skipped = true;
        return Ok(report);
    };
    // No build runs now: their scratch is garbage.
    crate::state::sweep(&dir.join("tmp"));
    let mut sizes = Sizes::default();
    report.before = sizes.total(dir);

    let blobs = dir.join("blobs/sha256");
    let cache_blobs = dir.join("cache/blobs/sha256");
    let layout = strata_oci::Layout::open(dir)?;
    let units = units(dir, &layout, &blobs)?;
    let mut holders: HashMap<String, usize> = HashMap::new();
    for (_, _, held) in &units {
        for digest in held {
            *holders.entry(digest.clone()).or_default() += 1;
        }
    }
    // First, what nothing needs: it counts against the size and goes in any case.
    let keep = needed(&holders);
    report.blobs += remove_unneeded(&blobs, &keep) + remove_unneeded(&cache_blobs, &keep);
    let size = sizes.total(dir);
    let gone = choose(units, &mut holders, options, size, [&blobs, &cache_blobs]);
    let dropped = remove_units(gone, &mut report);
    if !dropped.is_empty() {
        layout.drop_entries(&dropped)?;
        report.images = dropped.len();
    }
    let keep = needed(&holders);
    report.blobs += remove_unneeded(&blobs, &keep) + remove_unneeded(&cache_blobs, &keep);
    remove_leftovers(dir, options);
    report.after = Sizes::default().total(dir);
    drop(locks);
    Ok(report)
}

/// Takes the prune gate (new builds then wait) and then the state lock exclusively (the
/// builds in progress have ended). `None` when they are held and `wait` is off.
fn lock_out_builds(dir: &Path, wait: bool) -> Result<Option<Vec<fs::File>>> {
    let how = if wait {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::NonBlockingLockExclusive
    };
    let mut locks = Vec::new();
    for name in [PRUNE_GATE, STATE_LOCK] {
        let lock = open_lock(dir, name)?;
        match rustix::fs::flock(&lock, how) {
            Ok(()) => locks.push(lock),
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(Error::io(dir.join(name))(e.into())),
        }
    }
    Ok(Some(locks))
}

/// The digests some unit still holds.
fn needed(holders: &HashMap<String, usize>) -> HashSet<String> {
    holders
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(d, _)| d.clone())
        .collect()
}

/// Everything that can go, each with its last use and the blobs it holds, oldest first:
/// cache entries, images the layout names, cache mounts, extracted layers.
fn units(
    dir: &Path,
    layout: &strata_oci::Layout,
    blobs: &Path,
) -> Result<Vec<(SystemTime, Unit, Vec<String>)>> {
    let mut units: Vec<(SystemTime, Unit, Vec<String>)> = Vec::new();
    for path in list(&dir.join("cache/entries")) {
        let used = modified(&path);
        let layer = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|e| e["layer"]["digest"].as_str().map(str::to_owned));
        units.push((used, Unit::Entry(path), layer.into_iter().collect()));
    }
    let index = layout.index()?;
    for entry in index.manifests() {
        let digest = entry.digest().as_ref();
        let used = last_use(&blob_path(blobs, digest));
        units.push((
            used,
            Unit::Image(digest.to_owned()),
            image_blobs(blobs, digest),
        ));
    }
    for path in list(&dir.join("cache-mounts")) {
        units.push((modified(&path), Unit::Mount(path), Vec::new()));
    }
    for path in list(&dir.join(crate::layers::LAYERS)) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        // The marker's time is the last use (every build that uses the layer sets it).
        units.push((
            modified(&path.join("diff_id")),
            Unit::Layer(path),
            Vec::new(),
        ));
    }
    units.sort_by_key(|unit| unit.0);
    Ok(units)
}

/// Which units go: those past the age limit, then the oldest until the rest fits the size
/// limit (`size` is the state's size now). `holders` counts down the blobs they release.
fn choose(
    units: Vec<(SystemTime, Unit, Vec<String>)>,
    holders: &mut HashMap<String, usize>,
    options: &PruneOptions,
    mut size: u64,
    blob_dirs: [&Path; 2],
) -> Vec<Unit> {
    let now = SystemTime::now();
    // What removing each unit frees, counted afresh (the walk before has seen every inode).
    let mut freeing = Sizes::default();
    let mut gone: Vec<Unit> = Vec::new();
    for (used, unit, held) in units {
        let too_old = options
            .max_age
            .is_some_and(|age| now.duration_since(used).unwrap_or_default() > age);
        let too_big = options.max_size.is_some_and(|max| size > max);
        if !(too_old || too_big) {
            continue;
        }
        let mut freed = match &unit {
            Unit::Mount(path) | Unit::Layer(path) => freeing.of_tree(path),
            Unit::Entry(path) => freeing.of_file(path),
            Unit::Image(_) => 0,
        };
        for digest in &held {
            if let Some(n) = holders.get_mut(digest) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    for dir in blob_dirs {
                        freed += freeing.of_file(&blob_path(dir, digest));
                    }
                }
            }
        }
        size = size.saturating_sub(freed);
        gone.push(unit);
    }
    gone
}

/// Removes the chosen units, counting them in `report`; returns the images to drop from
/// the layout's index.
fn remove_units(gone: Vec<Unit>, report: &mut PruneReport) -> Vec<String> {
    let mut dropped = Vec::new();
    for unit in gone {
        match unit {
            Unit::Entry(path) => {
                if fs::remove_file(&path).is_ok() {
                    report.cache_entries += 1;
                }
            }
            Unit::Mount(path) => {
                if fs::remove_dir_all(&path).is_ok() {
                    report.cache_mounts += 1;
                }
            }
            Unit::Layer(path) => {
                // The marker first: an entry half removed (a prune killed on the way) is
                // then never taken for a complete one.
                let _ = fs::remove_file(path.join("diff_id"));
                if fs::remove_dir_all(&path).is_ok() {
                    report.layers += 1;
                }
            }
            Unit::Image(digest) => dropped.push(digest),
        }
    }
    dropped
}

/// The locks of layer directories that are gone, and small records past the age limit.
fn remove_leftovers(dir: &Path, options: &PruneOptions) {
    let layers = dir.join(crate::layers::LAYERS);
    for path in list(&layers) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(hex) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".lock"))
            && !layers.join(hex).exists()
        {
            let _ = fs::remove_file(&path);
        }
    }
    let Some(age) = options.max_age else {
        return;
    };
    let now = SystemTime::now();
    for dir in [
        dir.join("copy-digests"),
        dir.join("cache/steps"),
        dir.join(crate::state::BLOB_SOURCES),
    ] {
        for path in list(&dir) {
            if now.duration_since(modified(&path)).unwrap_or_default() > age {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

/// Sizes by inode, so hard links (a layer in the layout and in the cache) count once.
#[derive(Default)]
struct Sizes {
    seen: HashSet<(u64, u64)>,
}

impl Sizes {
    fn of_file(&mut self, path: &Path) -> u64 {
        match fs::symlink_metadata(path) {
            Ok(meta) if self.seen.insert((meta.dev(), meta.ino())) => meta.blocks() * 512,
            _ => 0,
        }
    }

    fn of_tree(&mut self, root: &Path) -> u64 {
        let mut total = 0;
        let mut stack = vec![root.to_owned()];
        while let Some(path) = stack.pop() {
            total += self.of_file(&path);
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                stack.extend(list(&path));
            }
        }
        total
    }

    /// The whole directory, counted afresh.
    fn total(&mut self, dir: &Path) -> u64 {
        self.seen.clear();
        self.of_tree(dir)
    }
}

/// The entries of `dir`; none when it cannot be read (pruning takes what it can see).
fn list(dir: &Path) -> Vec<PathBuf> {
    crate::check::list(dir).unwrap_or_default()
}

fn modified(path: &Path) -> SystemTime {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The newer of a file's access and modification times.
fn last_use(path: &Path) -> SystemTime {
    let meta = fs::symlink_metadata(path);
    let accessed = meta.as_ref().ok().and_then(|m| m.accessed().ok());
    let changed = meta.as_ref().ok().and_then(|m| m.modified().ok());
    accessed.max(changed).unwrap_or(SystemTime::UNIX_EPOCH)
}

fn blob_path(blobs: &Path, digest: &str) -> PathBuf {
    blobs.join(digest.strip_prefix("sha256:").unwrap_or(digest))
}

/// The blobs an image recorded in `index.json` holds: its manifest (or index and the
/// child manifests present), configs and layers.
fn image_blobs(blobs: &Path, digest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![digest.to_owned()];
    while let Some(digest) = stack.pop() {
        if out.contains(&digest) {
            continue;
        }
        let path = blob_path(blobs, &digest);
        out.push(digest);
        let Some(manifest) = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            continue;
        };
        for child in manifest["manifests"].as_array().into_iter().flatten() {
            if let Some(d) = child["digest"].as_str()
                && path
                    .with_file_name(d.trim_start_matches("sha256:"))
                    .is_file()
            {
                stack.push(d.to_owned());
            }
        }
        if let Some(d) = manifest["config"]["digest"].as_str() {
            out.push(d.to_owned());
        }
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            if let Some(d) = layer["digest"].as_str() {
                out.push(d.to_owned());
            }
        }
    }
    out
}

/// Removes the blobs of `dir` not in `keep`; returns how many.
fn remove_unneeded(dir: &Path, keep: &HashSet<String>) -> usize {
    let mut removed = 0;
    for path in list(dir) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !keep.contains(&format!("sha256:{name}")) && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}
