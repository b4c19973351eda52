//! The state directory: a valid OCI image layout holding every blob (base images, layers,
//! configs, manifests), the cache, cache-mount directories and per-build scratch space.
//!
//! ```text
//! blobs/sha256/<hex>   index.json  oci-layout     the OCI layout (skopeo and umoci read it)
//! cache/                                          the local cache store
//! cache-mounts/<id>/                              RUN --mount=type=cache directories
//! layers/<hex>/root                               extracted layers (see `layers.rs`)
//! blob-sources/<hex>                              repositories a blob was pushed to
//! copy-digests/<key>                              content digests of COPY --from sources
//! context-memo.bin                                file hashes of the last contexts
//! context-memo.journal                            what later builds hashed since (appended)
//! tmp/                                            scratch, each build in its own directory
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use strata_oci::Layout;

use crate::error::{Error, Result};

/// A build's scratch directory and the lock that says it is in use. The directory is created
/// under a private name, locked, and only then renamed to its `build-` name, so a sweeper or
/// the state check never sees a build directory whose lock is not held. Dropping it removes
/// the directory while the lock is still held.
#[derive(Debug)]
pub(crate) struct WorkDir {
    path: PathBuf,
    _lock: fs::File,
}

impl WorkDir {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(error) = remove_build_dir(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "build directory not removed");
        }
    }
}

/// Removes a build's scratch directory, unmounting first any overlay left mounted in it.
pub(crate) fn remove_build_dir(path: &Path) -> std::io::Result<()> {
    // Mounts first: removing through a merged view would only fill its upper directory
    // with whiteouts (a view of the layer store is read-only).
    detach_mounts(path);
    fs::remove_dir_all(path)
}

/// The hex of a well-formed `sha256:` digest (it names a file), else `None`.
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Where blobs were pushed to, one file per blob (`blob-sources/<hex>`, a repository per line).
pub(crate) const BLOB_SOURCES: &str = "blob-sources";

/// The prefix of scratch directories that are being set up (not yet locked and renamed).
const NEW_PREFIX: &str = ".new-build-";
/// How long a directory being set up may stay unlocked before a sweeper takes it for the
/// remains of a build killed during setup.
const SETUP_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether the scratch directory `dir` belongs to a build that still runs (it holds the
/// directory's lock), or is one being set up right now.
pub(crate) fn is_live_build(dir: &Path) -> bool {
    if is_being_set_up(dir) {
        return true;
    }
    match fs::File::open(dir.join(".lock")) {
        Ok(lock) => {
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
        }
        Err(_) => false,
    }
}

/// A directory under its private setup name, younger than the grace period.
fn is_being_set_up(dir: &Path) -> bool {
    let private = dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(NEW_PREFIX));
    private
        && fs::symlink_metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < SETUP_GRACE)
}

/// Removes the scratch directories of builds that no longer run.
pub(crate) fn sweep(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with("build-") || name.starts_with(NEW_PREFIX);
        if !ours || !path.is_dir() || is_being_set_up(&path) {
            continue;
        }
        // A `build-` directory always has its lock file (it was locked before the rename);
        // one without is a leftover of an older strata, or of a crash during setup.
        let stale = match fs::File::open(path.join(".lock")) {
            Ok(lock) => {
                rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                    .is_ok()
            }
            Err(_) => true,
        };
        if !stale {
            continue;
        }
        if let Err(error) = remove_build_dir(&path) {
            tracing::warn!(path = %path.display(), %error, "stale build directory not removed");
        }
    }
}

/// Lazily unmounts overlays a build left under `dir` (its `run-*/merged` and
/// `view-*/merged`).
fn detach_mounts(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let merged = entry.path().join("merged");
        if merged.is_dir() {
            let _ = rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// An open state directory. Every clone shares one shared lock on `state.lock`, held until
/// the last clone is dropped (the build, and the images it returned): pruning takes the lock
/// exclusively, so it never removes what a build or an image in hand still needs.
#[derive(Debug, Clone)]
pub(crate) struct State {
    root: PathBuf,
    pub(crate) layout: Layout,
    pub(crate) layers: crate::layers::LayerStore,
    _in_use: std::sync::Arc<fs::File>,
}

/// The lock file that says builds are using a state directory.
pub(crate) const STATE_LOCK: &str = "state.lock";
/// The gate a waiting prune closes: builds pass it (shared) before they take the state lock,
/// so a prune that waits is not starved by builds that keep starting.
pub(crate) const PRUNE_GATE: &str = "prune.lock";

/// Opens (creating) one of the state directory's lock files.
pub(crate) fn open_lock(root: &Path, name: &str) -> Result<fs::File> {
    let path = root.join(name);
    fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(Error::io(&path))
}

/// The default state directory: `$XDG_CACHE_HOME/strata`, else `~/.cache/strata`, else
/// `strata-state` under the temporary directory.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("strata");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache/strata");
    }
    std::env::temp_dir().join("strata-state")
}

impl State {
    pub(crate) fn open(root: &Path) -> Result<State> {
        fs::create_dir_all(root).map_err(Error::io(root))?;
        let root = fs::canonicalize(root).map_err(Error::io(root))?;
        // Wait for a prune in progress or waiting; then hold the directory in use.
        let shared = |file: &fs::File, name: &str| {
            rustix::fs::flock(file, rustix::fs::FlockOperation::LockShared)
                .map_err(|e| Error::io(root.join(name))(e.into()))
        };
        let gate = open_lock(&root, PRUNE_GATE)?;
        shared(&gate, PRUNE_GATE)?;
        let lock = open_lock(&root, STATE_LOCK)?;
        shared(&lock, STATE_LOCK)?;
        drop(gate);
        let layout = Layout::open(&root)?;
        for dir in ["cache", "cache-mounts", "copy-digests", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(Error::io(&path))?;
        }
        let layers = crate::layers::LayerStore::open(&root)?;
        Ok(State {
            root,
            layout,
            layers,
            _in_use: std::sync::Arc::new(lock),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// A scratch directory for one build, removed when dropped. It holds a lock for as long
    /// as the build runs; directories of builds that were killed (their lock is free) are
    /// removed first, with any overlay they left mounted.
    pub(crate) fn work_dir(&self) -> Result<WorkDir> {
        let tmp = self.root.join("tmp");
        sweep(&tmp);
        let setup = tempfile::Builder::new()
            .prefix(NEW_PREFIX)
            .tempdir_in(&tmp)
            .map_err(Error::io(&tmp))?;
        let lock_path = setup.path().join(".lock");
        let lock = fs::File::create(&lock_path).map_err(Error::io(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| Error::io(&lock_path)(e.into()))?;
        let suffix = setup
            .path()
            .file_name()
            .map(|n| n.to_string_lossy()[NEW_PREFIX.len()..].to_owned())
            .unwrap_or_default();
        let path = tmp.join(format!("build-{suffix}"));
        // Locked: now the directory may be seen under its build name.
        let setup = setup.keep();
        if let Err(e) = fs::rename(&setup, &path) {
            let _ = fs::remove_dir_all(&setup);
            return Err(Error::io(&path)(e));
        }
        Ok(WorkDir { path, _lock: lock })
    }

    /// The directory of the cache mount `id` (created, mode 0755, on first use).
    pub(crate) fn cache_mount(&self, id: &str) -> PathBuf {
        self.root
            .join("cache-mounts")
            .join(hex::encode(Sha256::digest(id.as_bytes())))
    }

    pub(crate) fn context_memo(&self) -> PathBuf {
        self.root.join("context-memo.bin")
    }

    /// The repositories (`registry/name`) a blob was pushed to, as remembered by
    /// [`State::remember_sources`]: where a later push can mount it from.
    pub(crate) fn blob_sources(&self, digest: &str) -> Vec<String> {
        let Some(hex) = sha256_hex(digest) else {
            return Vec::new();
        };
        fs::read_to_string(self.root.join(BLOB_SOURCES).join(hex))
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Adds `repository` to what is remembered of where each of `digests` is (a hint: two
    /// builds recording at once may lose one line, never corrupt the record). At most the
    /// last 16 repositories are kept per blob.
    pub(crate) fn remember_sources(&self, digests: &[String], repository: &str) -> Result<()> {
        let dir = self.root.join(BLOB_SOURCES);
        fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        for digest in digests {
            let Some(hex) = sha256_hex(digest) else {
                continue;
            };
            let mut known = self.blob_sources(digest);
            if known.iter().any(|r| r == repository) {
                continue;
            }
            known.push(repository.to_owned());
            let keep = known.len().saturating_sub(16);
            let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(Error::io(&dir))?;
            tmp.write_all(known[keep..].join("\n").as_bytes())
                .map_err(Error::io(tmp.path()))?;
            let path = dir.join(hex);
            tmp.persist(&path).map_err(|e| Error::io(&path)(e.error))?;
        }
        Ok(())
    }

    /// A remembered content digest (`copy-digests/<name>`).
    pub(crate) fn recall_digest(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.root.join("copy-digests").join(name))
            .ok()
            .filter(|d| d.starts_with("sha256:"))
    }

    /// Remembers a content digest, written through a temporary file and renamed.
    pub(crate) fn remember_digest(&self, name: &str, digest: &str) -> Result<()> {
        let dir = self.root.join("copy-digests");
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(Error::io(&dir))?;
        tmp.write_all(digest.as_bytes())
            .map_err(Error::io(tmp.path()))?;
        let path = dir.join(name);
        tmp.persist(&path).map_err(|e| Error::io(&path)(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Builds starting while others sweep: no build may lose its directory. (Before the
    /// directories were locked under a private name, a sweeper could take the lock between
    /// a build's `create` of the lock file and its `flock`, and remove the directory.)
    #[test]
    fn sweeping_never_removes_a_starting_build() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let sweepers: Vec<_> = (0..2)
            .map(|_| {
                let tmp = state.root().join("tmp");
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        sweep(&tmp);
                    }
                })
            })
            .collect();
        let builders: Vec<_> = (0..4)
            .map(|_| {
                let state = state.clone();
                std::thread::spawn(move || {
                    for _ in 0..400 {
                        let work = state.work_dir().unwrap();
                        let file = work.path().join("rootfs-0");
                        fs::create_dir(&file).unwrap_or_else(|e| {
                            panic!("{}: {e} (swept while in use)", file.display())
                        });
                        assert!(file.is_dir(), "{} vanished", file.display());
                    }
                })
            })
            .collect();
        let results: Vec<_> = builders.into_iter().map(|b| b.join()).collect();
        done.store(true, Ordering::Relaxed);
        for s in sweepers {
            s.join().unwrap();
        }
        for result in results {
            result.unwrap();
        }
        let left: Vec<_> = fs::read_dir(state.root().join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "scratch left behind: {left:?}");
    }

    #[test]
    fn a_killed_build_is_swept_and_a_setup_in_progress_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let tmp = state.root().join("tmp");
        let killed = tmp.join("build-killed");
        fs::create_dir(&killed).unwrap();
        fs::write(killed.join(".lock"), "").unwrap();
        let setting_up = tmp.join(format!("{NEW_PREFIX}abc"));
        fs::create_dir(&setting_up).unwrap();
        let live = state.work_dir().unwrap();
        assert!(!killed.exists(), "an unlocked build directory is swept");
        assert!(
            setting_up.exists(),
            "a directory being set up is left alone"
        );
        assert!(is_live_build(live.path()) && is_live_build(&setting_up));
        let path = live.path().to_owned();
        drop(live);
        assert!(!path.exists(), "a finished build removes its directory");
    }
}
