//! An OCI image layout directory: content-addressed blobs and named manifests.
//!
//! Blobs are written to `tmp/` first, hashed as they are written, and renamed into
//! `blobs/<algorithm>/<hex>` only when the digest is right, so a blob is either complete or
//! absent. `index.json` is rewritten under a lock and renamed into place, so several writers
//! can share one layout. skopeo and umoci read what this writes.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, ImageIndex, MediaType};
use serde_json::{Value, json};

use crate::digest::{Hasher, validate_digest};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::platform::Platform;

/// The annotation that names a manifest in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A blob's identity: digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// `sha256:<hex>`.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// An image layer as manifests, configs and caches speak of it: its blob (digest, size,
/// media type) and its `diff_id`, the digest of the uncompressed tar. The cache records it
/// with these field names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar, for the image config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Media type of the blob.
    pub media_type: String,
}

impl LayerBlob {
    /// The blob's descriptor, with its media type as `media_type` (a manifest may spell a
    /// layer's type its own way).
    pub fn descriptor(&self, media_type: &str) -> Descriptor {
        Descriptor::new(MediaType::from(media_type), self.size, self.digest.clone())
    }
}

impl BlobInfo {
    /// The descriptor of this blob as `media_type`, for a manifest or [`Layout::tag`].
    pub fn descriptor(&self, media_type: &str) -> Descriptor {
        Descriptor::new(MediaType::from(media_type), self.size, self.digest.clone())
    }
}

/// An OCI image layout on disk.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

fn atomic_write(path: &Path, tmp_dir: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir).map_err(Error::io(tmp_dir))?;
    tmp.write_all(bytes).map_err(Error::io(tmp.path()))?;
    tmp.as_file().sync_all().map_err(Error::io(tmp.path()))?;
    tmp.persist(path).map_err(|e| Error::io(path)(e.error))?;
    Ok(())
}

impl Layout {
    /// Opens the layout at `root`, creating it (and `oci-layout`, `index.json`) when missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Layout> {
        let root = root.into();
        for dir in [root.join("blobs/sha256"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        }
        let layout = Layout { root };
        let marker = layout.root.join("oci-layout");
        if !marker.exists() {
            atomic_write(&marker, &layout.tmp(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = layout.root.join("index.json");
        if !index.exists() {
            atomic_write(
                &index,
                &layout.tmp(),
                br#"{"schemaVersion":2,"manifests":[]}"#,
            )?;
        }
        Ok(layout)
    }

    /// The layout's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where the blob with `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: impl AsRef<str>) -> Result<PathBuf> {
        let digest = digest.as_ref();
        validate_digest(digest).map_err(|message| Error::InvalidDigest {
            digest: digest.to_owned(),
            message,
        })?;
        let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        Ok(self.root.join("blobs").join(algorithm).join(hex))
    }

    /// Whether the layout has the blob.
    pub fn has_blob(&self, digest: impl AsRef<str>) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, digest: impl AsRef<str>) -> Result<File> {
        let path = self.blob_path(digest)?;
        File::open(&path).map_err(Error::io(path))
    }

    /// Reads a (small) blob whole: manifests and configs.
    pub fn read_blob(&self, digest: impl AsRef<str>) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        fs::read(&path).map_err(Error::io(path))
    }

    /// Streams `reader` into the layout as a blob, hashing as it writes; with `expected`, a
    /// different digest is an error and nothing is stored. Returns the blob's digest and size.
    pub fn write_blob(&self, mut reader: impl Read, expected: Option<&str>) -> Result<BlobInfo> {
        if let Some(expected) = expected
            && self.has_blob(expected)
        {
            let size = fs::metadata(self.blob_path(expected)?)
                .map_err(Error::io(&self.root))?
                .len();
            // Drain nothing: the caller's bytes are not needed when the blob is already here.
            return Ok(BlobInfo {
                digest: crate::digest::parse(expected)?,
                size,
            });
        }
        let tmp_dir = self.tmp();
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(Error::io(&tmp_dir))?;
        let mut hasher = Hasher::new();
        let mut size = 0u64;
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("<blob source>")(e)),
            };
            hasher.update(&buffer[..n]);
            tmp.write_all(&buffer[..n]).map_err(Error::io(tmp.path()))?;
            size += n as u64;
        }
        let digest = hasher.finish_digest()?;
        if let Some(expected) = expected
            && expected != digest.as_ref()
        {
            return Err(Error::DigestMismatch {
                what: format!("blob written to {}", self.root.display()),
                expected: expected.to_owned(),
                actual: digest.to_string(),
            });
        }
        let path = self.blob_path(&digest)?;
        tmp.persist(&path).map_err(|e| Error::io(&path)(e.error))?;
        Ok(BlobInfo { digest, size })
    }

    /// A temporary file in the layout for a blob being received; see [`Layout::commit_staged`].
    pub fn staging_file(&self) -> Result<tempfile::NamedTempFile> {
        let tmp_dir = self.tmp();
        tempfile::NamedTempFile::new_in(&tmp_dir).map_err(Error::io(&tmp_dir))
    }

    /// Renames a received blob into place once its digest, computed while it was written,
    /// is the one expected; a mismatch stores nothing.
    pub fn commit_staged(
        &self,
        staged: tempfile::NamedTempFile,
        expected: &str,
        actual: &str,
    ) -> Result<()> {
        if actual != expected {
            return Err(Error::DigestMismatch {
                what: format!("blob received into {}", self.root.display()),
                expected: expected.to_owned(),
                actual: actual.to_owned(),
            });
        }
        let path = self.blob_path(expected)?;
        staged
            .persist(&path)
            .map_err(|e| Error::io(&path)(e.error))?;
        Ok(())
    }

    /// Stores bytes as a blob.
    pub fn write_blob_bytes(&self, bytes: &[u8]) -> Result<BlobInfo> {
        self.write_blob(bytes, None)
    }

    /// Records `descriptor` (a manifest's or an index's) in `index.json` under `name`,
    /// replacing what had that name; `name` may be empty for an unnamed entry.
    pub fn tag(&self, name: &str, descriptor: &Descriptor) -> Result<()> {
        let mut entry = serde_json::to_value(descriptor).map_err(|e| Error::Malformed {
            path: self.root.join("index.json"),
            message: format!("the descriptor for `{name}` does not serialise: {e}"),
        })?;
        if !name.is_empty() {
            entry["annotations"][REF_NAME] = json!(name);
        }
        self.edit_index(|manifests| {
            if !name.is_empty() {
                manifests.retain(|m| m["annotations"][REF_NAME] != json!(name));
            }
            manifests.push(entry);
        })
    }

    /// Drops the `index.json` entries for these manifest digests.
    pub fn drop_entries(&self, digests: &[String]) -> Result<()> {
        self.edit_index(|manifests| {
            manifests.retain(|m| !digests.iter().any(|d| m["digest"] == json!(d)));
        })
    }

    /// Rewrites `index.json`'s `manifests` under the layout's lock, through a temporary file.
    fn edit_index(&self, edit: impl FnOnce(&mut Vec<Value>)) -> Result<()> {
        let lock_path = self.root.join("index.json.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io(&lock_path)(e.into()))?;
        let index_path = self.root.join("index.json");
        let mut index = self.index_value()?;
        let manifests = index["manifests"]
            .as_array_mut()
            .ok_or_else(|| Error::Malformed {
                path: index_path.clone(),
                message: "`manifests` is not an array".to_owned(),
            })?;
        edit(manifests);
        let bytes = serde_json::to_vec_pretty(&index).map_err(|e| Error::Malformed {
            path: index_path.clone(),
            message: e.to_string(),
        })?;
        atomic_write(&index_path, &self.tmp(), &bytes)
        // The lock is released when `lock` is dropped.
    }

    /// The parsed `index.json`.
    pub fn index(&self) -> Result<ImageIndex> {
        let path = self.root.join("index.json");
        serde_json::from_value(self.index_value()?).map_err(|e| Error::Malformed {
            path,
            message: format!("not an image index: {e}"),
        })
    }

    /// `index.json` as JSON, for the code that keeps what it does not know ([`Layout::tag`]
    /// rewrites it) or must read a broken one ([`Layout::verify`]).
    pub(crate) fn index_value(&self) -> Result<Value> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(Error::io(&path))?;
        let index: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Malformed {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if !index["manifests"].is_array() {
            return Err(Error::Malformed {
                path,
                message: "`manifests` is not an array".to_owned(),
            });
        }
        Ok(index)
    }

    /// The image manifest `name` stands for on `platform`: the manifest itself, or, when
    /// `name` records an index, the index entry for the platform. Returns its digest.
    pub fn image_manifest(&self, name: &str, platform: &Platform) -> Result<String> {
        let descriptor = self.resolve(name)?;
        let digest = descriptor.digest().to_string();
        let blob = self.read_blob(&digest)?;
        match Manifest::parse(&blob, &digest)? {
            Manifest::Image(_) => Ok(digest),
            Manifest::Index(index) => {
                let reference = format!("{}:{name}", self.root.display());
                let chosen = platform.select(index.manifests(), &reference)?;
                Ok(chosen.digest().to_string())
            }
        }
    }

    /// The descriptor recorded under `name`.
    pub fn resolve(&self, name: &str) -> Result<Descriptor> {
        self.index()?
            .manifests()
            .iter()
            .rev()
            .find(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .is_some_and(|n| n == name)
            })
            .cloned()
            .ok_or_else(|| Error::NotFound {
                store: self.root.clone(),
                name: name.to_owned(),
            })
    }
}

impl Layout {
    /// Copies the image (or index, with its images) whose manifest is `manifest_digest` into
    /// the layout `to` under `name`: every blob hard-linked where the filesystem allows,
    /// else copied and verified; the name recorded last, once every blob is there.
    pub fn copy_image(&self, manifest_digest: &str, to: &Layout, name: &str) -> Result<()> {
        let bytes = self.read_blob(manifest_digest)?;
        let manifest = Manifest::parse(&bytes, manifest_digest)?;
        for descriptor in manifest.blobs() {
            self.copy_blob(descriptor.digest().as_ref(), to)?;
        }
        if let Manifest::Index(index) = &manifest {
            for entry in index.manifests() {
                // Children are copied without a name of their own.
                self.copy_image_blobs(entry.digest().as_ref(), to)?;
            }
        }
        self.copy_blob(manifest_digest, to)?;
        let digest = crate::digest::parse(manifest_digest)?;
        let descriptor = Descriptor::new(
            MediaType::from(manifest.media_type().as_str()),
            bytes.len() as u64,
            digest,
        );
        to.tag(name, &descriptor)
    }

    fn copy_image_blobs(&self, manifest_digest: &str, to: &Layout) -> Result<()> {
        let bytes = self.read_blob(manifest_digest)?;
        for descriptor in Manifest::parse(&bytes, manifest_digest)?.blobs() {
            self.copy_blob(descriptor.digest().as_ref(), to)?;
        }
        self.copy_blob(manifest_digest, to)
    }

    /// One blob into `to`: a hard link when possible, else a verified copy.
    pub fn copy_blob(&self, digest: impl AsRef<str>, to: &Layout) -> Result<()> {
        let digest = digest.as_ref();
        if to.has_blob(digest) {
            return Ok(());
        }
        let source = self.blob_path(digest)?;
        let target = to.blob_path(digest)?;
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(Error::io(parent))?;
        }
        if fs::hard_link(&source, &target).is_ok() {
            return Ok(());
        }
        let file = self.open_blob(digest)?;
        to.write_blob(io::BufReader::new(file), Some(digest))?;
        Ok(())
    }
}
