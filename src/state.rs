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

    /// A scratch directory for one build, removed when dropped.
    pub(crate) fn work_dir(&self) -> Result<tempfile::TempDir> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&tmp)
            .map_err(Error::io(&tmp))
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
