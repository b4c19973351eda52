//! [`check_state`]: verifies a state directory — every blob against its digest, every cache
//! entry against its layer, the small records — and reports or removes what is broken.

use std::fs;
use std::path::{Path, PathBuf};

use strata_cache::LocalStore;
use strata_oci::Layout;

use crate::error::{Error, Result};

/// One thing found wrong in a state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFault {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
    /// Whether it was removed because repair was asked for.
    pub repaired: bool,
}

impl From<strata_oci::Fault> for StateFault {
    fn from(f: strata_oci::Fault) -> StateFault {
        StateFault {
            path: f.path,
            message: f.message,
            repaired: f.repaired,
        }
    }
}

impl From<strata_cache::StoreFault> for StateFault {
    fn from(f: strata_cache::StoreFault) -> StateFault {
        StateFault {
            path: f.path,
            message: f.message,
            repaired: f.repaired,
        }
    }
}

/// What [`check_state`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCheck {
    /// Blobs hashed (the layout's and the cache's).
    pub blobs: usize,
    /// Bytes of the layout's blobs.
    pub bytes: u64,
    /// Cache entries read.
    pub cache_entries: usize,
    /// Complete directories of the layer store (their trees are not hashed).
    pub layers: usize,
    /// What is broken.
    pub faults: Vec<StateFault>,
    /// Temporary files and scratch directories of builds that were killed: not corrupt, only
    /// space (the next build removes the scratch directories; repair removes all of them).
    pub leftovers: Vec<PathBuf>,
}

impl StateCheck {
    /// Whether nothing is broken (leftovers do not count).
    pub fn is_clean(&self) -> bool {
        self.faults.is_empty()
    }
}

/// Checks the state directory `dir`: every blob of the layout and of the cache hashes to its
/// name, every manifest `index.json` names has its blobs, every cache entry parses, is filed
/// under its key and has its layer, and the small records (`copy-digests/`,
/// `context-memo.bin` and its journal) parse. With `repair`, what is broken is removed, so that the next
/// build runs the affected steps again or pulls again; leftovers are removed too. Run it
/// while no build uses the directory when repairing.
pub fn check_state(dir: &Path, repair: bool) -> Result<StateCheck> {
    if !dir.join("oci-layout").is_file() {
        return Err(Error::Invalid(format!(
            "{}: not a strata state directory (no oci-layout file)",
            dir.display()
        )));
    }
    let mut check = StateCheck::default();
    let layout = Layout::open(dir)?.verify(repair)?;
    check.blobs += layout.blobs;
    check.bytes = layout.bytes;
    check.leftovers.extend(layout.leftovers);
    check
        .faults
        .extend(layout.faults.into_iter().map(StateFault::from));
    let cache_dir = dir.join("cache");
    if cache_dir.is_dir() {
        let store = LocalStore::open(&cache_dir)?.verify(repair)?;
        check.blobs += store.blobs;
        check.cache_entries = store.entries;
        check.leftovers.extend(store.leftovers);
        check
            .faults
            .extend(store.faults.into_iter().map(StateFault::from));
    }
    for path in list(&dir.join("copy-digests"))? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(".tmp") {
            check.leftovers.push(path);
            continue;
        }
        let text = fs::read_to_string(&path).unwrap_or_default();
        if crate::state::sha256_hex(&text).is_none() {
            let repaired = repair && fs::remove_file(&path).is_ok();
            check.faults.push(StateFault {
                path,
                message: "not a content digest".to_owned(),
                repaired,
            });
        }
    }
    let memo = dir.join("context-memo.bin");
    if memo.exists()
        && let Err(error) = strata_snapshot::HashMemo::check(&memo)
    {
        // The memo file or its journal, whichever does not read.
        let path = match &error {
            strata_snapshot::Error::Memo { path, .. } | strata_snapshot::Error::Io { path, .. } => {
                path.clone()
            }
            _ => memo,
        };
        let repaired = repair && fs::remove_file(&path).is_ok();
        check.faults.push(StateFault {
            path,
            message: error.to_string(),
            repaired,
        });
    }
    // The layer store: an entry is used only with its marker; one without is the remains of
    // a strata older than the marker, or of a hand-made change.
    for path in list(&dir.join(crate::layers::LAYERS))? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') && name.ends_with(".lock") {
            continue;
        }
        check.layers += 1;
        if !crate::layers::is_complete(&path) {
            check.layers -= 1;
            let repaired = repair && fs::remove_dir_all(&path).is_ok();
            check.faults.push(StateFault {
                path,
                message: "an incomplete layer directory (no marker naming its diff_id)".to_owned(),
                repaired,
            });
        }
    }
    // Scratch of builds that were killed; live builds hold the lock of theirs.
    for path in list(&dir.join("tmp"))? {
        if path.is_dir() && !crate::state::is_live_build(&path) {
            check.leftovers.push(path);
        }
    }
    if repair {
        for path in &check.leftovers {
            let _ = crate::state::remove_build_dir(path).or_else(|_| fs::remove_file(path));
        }
    }
    check.leftovers.sort();
    check.leftovers.dedup();
    Ok(check)
}

pub(crate) fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            Ok(paths)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(dir)(e)),
    }
}
