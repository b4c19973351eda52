//! The layer store: every layer extracted once into `layers/<hex>/root`, shared by all
//! builds and stages on the state directory, and stacked as overlay lower directories.
//!
//! Entries are named by the layer's chain id (the OCI image spec's `ChainID`: its diff_id
//! and those of every layer below it), not by its diff_id alone: a layer need not list the
//! directories that hold its entries, and those are made with the metadata the layers below
//! give them (as an overlay's copy-up does), so one layer on two bases is two entries. A
//! base's first layer's chain id is its diff_id.
//!
//! ```text
//! layers/<hex>/root      the layer's tree, whiteouts in overlay form (0/0 character devices,
//!                        `trusted.overlay.opaque` directories), immutable once visible
//! layers/<hex>/diff_id   the marker: the entry's chain id, written last
//! layers/.<hex>.lock     held while one build fills the entry (others wait, then use it)
//! ```
//!
//! An entry is filled in the build's scratch directory and renamed into place with its
//! marker, so a build killed half-way leaves no half entry here (its scratch is swept); an
//! entry without its marker is never used, and the state check removes it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The store's directory under the state directory.
pub(crate) const LAYERS: &str = "layers";
/// The marker file of a complete entry.
const MARKER: &str = "diff_id";
/// The tree of an entry.
const TREE: &str = "root";

/// The layer store of one state directory.
#[derive(Debug, Clone)]
pub(crate) struct LayerStore {
    dir: PathBuf,
}

/// The chain id of each layer of a stack given by its diff_ids (lowest first): the first
/// layer's diff_id, then `sha256(chain below + " " + diff_id)`.
pub(crate) fn chain_ids<'a>(diff_ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut chains: Vec<String> = Vec::new();
    for diff_id in diff_ids {
        let chain = match chains.last() {
            None => diff_id.to_owned(),
            Some(below) => strata_oci::digest::sha256(format!("{below} {diff_id}")),
        };
        chains.push(chain);
    }
    chains
}

/// The hex part of a `sha256:` diff_id (anything else is refused: it names a directory).
fn hex_of(diff_id: &str) -> Result<&str> {
    crate::state::sha256_hex(diff_id)
        .ok_or_else(|| Error::Invalid(format!("{diff_id:?} is not a sha256 diff_id")))
}

/// Whether `entry` (a `layers/<hex>` directory) is complete: its marker names its diff_id.
pub(crate) fn is_complete(entry: &Path) -> bool {
    let Some(name) = entry.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    entry.join(TREE).is_dir()
        && fs::read_to_string(entry.join(MARKER))
            .is_ok_and(|marker| marker.strip_prefix("sha256:") == Some(name))
}

impl LayerStore {
    /// The store of the state directory `root`, created when missing.
    pub(crate) fn open(root: &Path) -> Result<LayerStore> {
        let dir = root.join(LAYERS);
        fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        Ok(LayerStore { dir })
    }

    fn entry(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.dir.join(hex_of(diff_id)?))
    }

    /// The tree of `diff_id` when the store holds it whole. Its last use is recorded (the
    /// marker's time), for pruning the least recently used.
    pub(crate) fn get(&self, diff_id: &str) -> Result<Option<PathBuf>> {
        let entry = self.entry(diff_id)?;
        if !is_complete(&entry) {
            return Ok(None);
        }
        let marker = entry.join(MARKER);
        if let Ok(file) = fs::File::options().write(true).open(&marker) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        Ok(Some(entry.join(TREE)))
    }

    /// The tree of `diff_id`, made by `fill` (given an empty directory, mode 0755, in
    /// `scratch`) when the store lacks it. One build fills an entry while the others that
    /// need it wait for it. Returns the tree and whether `fill` ran.
    pub(crate) fn ensure(
        &self,
        diff_id: &str,
        scratch: &Path,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<(PathBuf, bool)> {
        if let Some(tree) = self.get(diff_id)? {
            return Ok((tree, false));
        }
        let _lock = self.lock(diff_id)?;
        if let Some(tree) = self.get(diff_id)? {
            return Ok((tree, false));
        }
        let staging = self.staging(scratch)?;
        let tree = staging.path().join(TREE);
        fs::create_dir(&tree).map_err(Error::io(&tree))?;
        fs::set_permissions(&tree, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(Error::io(&tree))?;
        fill(&tree)?;
        Ok((self.publish(diff_id, staging)?, true))
    }

    /// Moves `tree` (a RUN's upper directory, once its layer `diff_id` is written) into the
    /// store, unless the store has the layer already. `tree` is gone afterwards either way
    /// only when adopted; returns whether it was.
    pub(crate) fn adopt(&self, diff_id: &str, tree: &Path, scratch: &Path) -> Result<bool> {
        if self.get(diff_id)?.is_some() {
            return Ok(false);
        }
        let _lock = self.lock(diff_id)?;
        if self.get(diff_id)?.is_some() {
            return Ok(false);
        }
        let staging = self.staging(scratch)?;
        let target = staging.path().join(TREE);
        fs::rename(tree, &target).map_err(Error::io(tree))?;
        self.publish(diff_id, staging)?;
        Ok(true)
    }

    /// Holds the entry's lock (blocking while another build fills it).
    fn lock(&self, diff_id: &str) -> Result<fs::File> {
        let path = self.dir.join(format!(".{}.lock", hex_of(diff_id)?));
        let file = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io(&path)(e.into()))?;
        Ok(file)
    }

    fn staging(&self, scratch: &Path) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(scratch)
            .map_err(Error::io(scratch))
    }

    /// Writes the marker last and renames the staged entry into place (the caller holds the
    /// lock). An incomplete entry in the way (from a strata older than the marker, or put
    /// there by hand) is moved aside into the scratch directory first.
    fn publish(&self, diff_id: &str, staging: tempfile::TempDir) -> Result<PathBuf> {
        let marker = staging.path().join(MARKER);
        fs::write(&marker, diff_id).map_err(Error::io(&marker))?;
        let entry = self.entry(diff_id)?;
        if fs::symlink_metadata(&entry).is_ok() {
            let aside = staging.path().with_extension("incomplete");
            fs::rename(&entry, &aside).map_err(Error::io(&entry))?;
            let _ = fs::remove_dir_all(&aside);
        }
        let staged = staging.keep();
        if let Err(e) = fs::rename(&staged, &entry) {
            let _ = fs::remove_dir_all(&staged);
            return Err(Error::io(&entry)(e));
        }
        Ok(entry.join(TREE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn an_entry_is_visible_only_once_complete_and_filled_once() {
        let state = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir_in(state.path()).unwrap();
        let store = LayerStore::open(state.path()).unwrap();
        assert!(store.get(ID).unwrap().is_none());
        // A failing fill leaves nothing in the store.
        let failed = store.ensure(ID, scratch.path(), |tree| {
            fs::write(tree.join("half"), "").unwrap();
            Err(Error::Invalid("killed".to_owned()))
        });
        assert!(failed.is_err());
        assert!(store.get(ID).unwrap().is_none());
        assert_eq!(
            fs::read_dir(state.path().join(LAYERS)).unwrap().count(),
            1,
            "the lock only"
        );
        let (tree, filled) = store
            .ensure(ID, scratch.path(), |tree| {
                fs::write(tree.join("f"), "x").map_err(Error::io(tree))
            })
            .unwrap();
        assert!(filled && tree.join("f").is_file());
        let (again, filled) = store
            .ensure(ID, scratch.path(), |_| panic!("filled twice"))
            .unwrap();
        assert!(!filled);
        assert_eq!(again, tree);
        // A directory without its marker is not an entry, and is replaced.
        fs::remove_file(tree.parent().unwrap().join(MARKER)).unwrap();
        assert!(store.get(ID).unwrap().is_none());
        let (_, filled) = store.ensure(ID, scratch.path(), |_| Ok(())).unwrap();
        assert!(filled);
        assert!(
            !tree.join("f").exists(),
            "the incomplete entry was replaced"
        );
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        // The image spec's definition, computed here by hand for two layers.
        let a = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let chains = chain_ids([a, ID]);
        assert_eq!(chains[0], a);
        use sha2::{Digest, Sha256};
        let expected = hex::encode(Sha256::digest(format!("{a} {ID}")));
        assert_eq!(chains[1], format!("sha256:{expected}"));
        assert_ne!(
            chain_ids([ID])[0],
            chains[1],
            "the same layer on another base"
        );
    }

    #[test]
    fn a_name_that_is_not_a_digest_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let store = LayerStore::open(state.path()).unwrap();
        for bad in ["sha256:../../etc", "md5:00", "sha256:", &format!("{ID}/..")] {
            assert!(store.get(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_upper_directory_is_adopted_once() {
        let state = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir_in(state.path()).unwrap();
        let store = LayerStore::open(state.path()).unwrap();
        let upper = scratch.path().join("upper");
        fs::create_dir(&upper).unwrap();
        fs::write(upper.join("made"), "").unwrap();
        assert!(store.adopt(ID, &upper, scratch.path()).unwrap());
        assert!(!upper.exists());
        assert!(store.get(ID).unwrap().unwrap().join("made").is_file());
        fs::create_dir(&upper).unwrap();
        assert!(!store.adopt(ID, &upper, scratch.path()).unwrap());
        assert!(upper.exists(), "left where it was");
    }
}
