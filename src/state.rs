//! The state directory: a valid OCI image layout holding every blob (base images, layers,
//! configs, manifests), the cache, cache-mount directories and per-build scratch space.
//!
//! ```text
//! blobs/sha256/<hex>   index.json  oci-layout     the OCI layout (skopeo and umoci read it)
//! cache/                                          the local cache store
//! cache-mounts/<id>/                              RUN --mount=type=cache directories
//! copy-digests/<key>                              content digests of COPY --from sources
//! context-memo.json                               file hashes of the last contexts
//! tmp/                                            scratch, each build in its own directory
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use strata_registry::Layout;

use crate::error::{Error, Result};

/// A build's scratch directory and the lock that says it is in use.
#[derive(Debug)]
pub(crate) struct WorkDir {
    dir: tempfile::TempDir,
    _lock: fs::File,
}

impl WorkDir {
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Whether the scratch directory `dir` belongs to a build that still runs (it holds the
/// directory's lock).
pub(crate) fn is_live_build(dir: &Path) -> bool {
    match fs::File::open(dir.join(".lock")) {
        Ok(lock) => {
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
        }
        Err(_) => false,
    }
}

/// Removes the scratch directories of builds that no longer run.
fn sweep(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_build = entry.file_name().to_string_lossy().starts_with("build-");
        if !is_build || !path.is_dir() {
            continue;
        }
        let stale = match fs::File::open(path.join(".lock")) {
            Ok(lock) => {
                rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                    .is_ok()
            }
            // No lock yet: just created by a build starting now, unless it is old.
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 600),
        };
        if !stale {
            continue;
        }
        if fs::remove_dir_all(&path).is_err() {
            detach_mounts(&path);
            if let Err(error) = fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), %error, "stale build directory not removed");
            }
        }
    }
}

/// Lazily unmounts overlays a killed build left under `dir` (its `run-*/merged`).
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

/// An open state directory.
#[derive(Debug, Clone)]
pub(crate) struct State {
    root: PathBuf,
    pub(crate) layout: Layout,
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
        let layout = Layout::open(&root)?;
        for dir in ["cache", "cache-mounts", "copy-digests", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(Error::io(&path))?;
        }
        Ok(State { root, layout })
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
        let dir = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&tmp)
            .map_err(Error::io(&tmp))?;
        let lock_path = dir.path().join(".lock");
        let lock = fs::File::create(&lock_path).map_err(Error::io(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| Error::io(&lock_path)(e.into()))?;
        Ok(WorkDir { dir, _lock: lock })
    }

    /// The directory of the cache mount `id` (created, mode 0755, on first use).
    pub(crate) fn cache_mount(&self, id: &str) -> PathBuf {
        self.root
            .join("cache-mounts")
            .join(hex::encode(Sha256::digest(id.as_bytes())))
    }

    pub(crate) fn context_memo(&self) -> PathBuf {
        self.root.join("context-memo.json")
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
