//! The registry store: cache entries kept as images in a repository of the user's registry
//! (Kaniko's `--cache-repo`), so that a second machine with an empty local store hits.
//!
//! It joins `strata-cache` (entries, the store trait) and `strata-registry` (the client), so
//! it lives here, where the leaf crates meet, and neither leaf depends on the other.
//!
//! Each entry is an OCI image manifest tagged `sha256-<hex of the key>` whose config blob is
//! the [`CacheEntry`] itself (media type [`ENTRY_MEDIA_TYPE`]) and whose one layer, when the
//! step made one, is the step's layer blob: the same blob the built image references, so a
//! registry stores it once. The manifest carries an `org.opencontainers.image.created`
//! annotation, and the entry itself in [`ENTRY_ANNOTATION`] so that a lookup is one request;
//! entries older than the store's TTL count as misses.
//!
//! The store stages blobs in an OCI image layout (the engine's state directory) and reaches
//! the registry through a [`RegistryClient`]; its methods block on the given Tokio runtime,
//! so call them from blocking threads (`spawn_blocking`), never from async code.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use strata_cache::{CacheEntry, CacheKey, CacheStore, CachedLayer, Error, KeyInputs, Result};
use strata_oci::{Layout, Platform};
use strata_registry::{Reference, RegistryClient};

/// The manifest annotation that carries the entry itself (the config blob's JSON), so a
/// lookup is one request.
pub const ENTRY_ANNOTATION: &str = "dev.strata.cache.entry";

/// The media type of an entry's config blob.
pub const ENTRY_MEDIA_TYPE: &str = "application/vnd.strata.cache.entry.v1+json";

/// How many lookups [`RegistryStore::lookup_many`] keeps in flight at once.
pub const PARALLEL_LOOKUPS: usize = 16;

/// A [`CacheStore`] in a registry repository.
#[derive(Debug, Clone)]
pub struct RegistryStore {
    client: RegistryClient,
    repository: Reference,
    layout: Layout,
    runtime: tokio::runtime::Handle,
    ttl: Option<Duration>,
}

impl RegistryStore {
    /// A store in `repository` (`registry/name`, no tag), staging blobs in `layout`.
    pub fn new(
        client: RegistryClient,
        repository: &str,
        layout: Layout,
        runtime: tokio::runtime::Handle,
    ) -> Result<RegistryStore> {
        let repository = Reference::parse(repository).map_err(|e| Error::Remote {
            repository: repository.to_owned(),
            message: e.to_string(),
        })?;
        Ok(RegistryStore {
            client,
            repository,
            layout,
            runtime,
            ttl: None,
        })
    }

    /// The repository, as `registry/name`.
    pub fn repository(&self) -> String {
        self.repository.name()
    }

    /// Entries older than `ttl` are misses (default: none expire).
    pub fn ttl(mut self, ttl: Option<Duration>) -> RegistryStore {
        self.ttl = ttl;
        self
    }

    /// The entries of `keys`, in their order, looked up concurrently (at most
    /// [`PARALLEL_LOOKUPS`] requests in flight): a stage whose keys are known before its steps
    /// run pays about one round trip for all of them, not one per step. Each answer is what
    /// [`CacheStore::lookup`] would give for that key.
    pub fn lookup_many(&self, keys: &[String]) -> Vec<Result<Option<CacheEntry>>> {
        use futures_util::StreamExt;
        self.runtime.block_on(
            futures_util::stream::iter(keys)
                .map(|key| self.lookup_async(key))
                .buffered(PARALLEL_LOOKUPS)
                .collect(),
        )
    }

    async fn lookup_async(&self, key: &str) -> Result<Option<CacheEntry>> {
        let reference = self.reference(key)?;
        // One round trip: the manifest carries the entry in an annotation (entries written
        // before it did are read from their config blob, a second request).
        let manifest = match self.client.fetch_manifest(&reference).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::debug!(%reference, %error, "registry cache: no entry");
                return Ok(None);
            }
        };
        let inline = serde_json::from_slice::<serde_json::Value>(&manifest)
            .ok()
            .and_then(|m| {
                m["annotations"][ENTRY_ANNOTATION]
                    .as_str()
                    .map(str::to_owned)
            });
        if let Some(text) = inline {
            let entry: CacheEntry = serde_json::from_str(&text)
                .map_err(|e| self.remote(format!("entry {reference} is damaged: {e}")))?;
            return self.live(entry, key, &reference);
        }
        // The entry only: its layer stays in the registry until something needs its bytes
        // ([`CacheStore::open_layer`]); a push to the same registry mounts it.
        let pulled = match self
            .client
            .pull_manifest(&reference, &Platform::host(), &self.layout)
            .await
        {
            Ok(pulled) => pulled,
            Err(error) => {
                tracing::debug!(%reference, %error, "registry cache: no entry");
                return Ok(None);
            }
        };
        let bytes = self
            .layout
            .read_blob(&pulled.config_digest)
            .map_err(|e| self.remote(e.to_string()))?;
        let entry: CacheEntry = serde_json::from_slice(&bytes)
            .map_err(|e| self.remote(format!("entry {reference} is damaged: {e}")))?;
        self.live(entry, key, &reference)
    }

    fn reference(&self, key: &str) -> Result<Reference> {
        let tag = key.replace(':', "-");
        self.repository
            .with_tag(&tag)
            .map_err(|e| self.remote(e.to_string()))
    }

    fn remote(&self, message: String) -> Error {
        Error::Remote {
            repository: self.repository.name(),
            message,
        }
    }

    /// The entry, unless it is filed under another key or older than the TTL.
    fn live(
        &self,
        entry: CacheEntry,
        key: &str,
        reference: &Reference,
    ) -> Result<Option<CacheEntry>> {
        if entry.key.digest != key {
            return Err(self.remote(format!("entry {reference} holds {}", entry.key.digest)));
        }
        if let Some(ttl) = self.ttl
            && now_unix().saturating_sub(entry.created_unix) > ttl.as_secs()
        {
            return Ok(None);
        }
        Ok(Some(entry))
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl CacheStore for RegistryStore {
    /// A registry that cannot be reached or has no entry is a miss (logged), never a failed
    /// build: the step is then simply run.
    fn lookup(&self, key: &str) -> Result<Option<CacheEntry>> {
        self.runtime.block_on(self.lookup_async(key))
    }

    fn record(&self, entry: &CacheEntry, layer_blob: Option<&Path>) -> Result<()> {
        let mut entry = entry.clone();
        if entry.created_unix == 0 {
            entry.created_unix = now_unix();
        }
        // The inputs hold build-arg and environment values and expanded commands: they stay
        // on this machine (explanations are local anyway). The repository gets the key only.
        entry.key.inputs = KeyInputs::default();
        let mut layers = Vec::new();
        if let Some(layer) = &entry.layer {
            if !self.layout.has_blob(&layer.digest) {
                let source = layer_blob.ok_or_else(|| {
                    self.remote(format!("layer {} is not in the layout", layer.digest))
                })?;
                let file = File::open(source).map_err(|e| Error::Io {
                    path: source.to_owned(),
                    error: e,
                })?;
                self.layout
                    .write_blob(std::io::BufReader::new(file), Some(layer.digest.as_ref()))
                    .map_err(|e| self.remote(e.to_string()))?;
            }
            layers.push(json!({
                "mediaType": layer.media_type,
                "digest": layer.digest,
                "size": layer.size,
            }));
        }
        let config_bytes = serde_json::to_vec(&entry).map_err(|e| self.remote(e.to_string()))?;
        let config = self
            .layout
            .write_blob_bytes(&config_bytes)
            .map_err(|e| self.remote(e.to_string()))?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": ENTRY_MEDIA_TYPE, "digest": config.digest, "size": config.size },
            "layers": layers,
            "annotations": {
                "org.opencontainers.image.created": entry.created_unix.to_string(),
                ENTRY_ANNOTATION: String::from_utf8_lossy(&config_bytes),
            },
        });
        let manifest = serde_json::to_vec(&manifest).map_err(|e| self.remote(e.to_string()))?;
        let manifest = self
            .layout
            .write_blob_bytes(&manifest)
            .map_err(|e| self.remote(e.to_string()))?;
        let reference = self.reference(&entry.key.digest)?;
        self.runtime
            .block_on(
                self.client
                    .push(&self.layout, manifest.digest.as_ref(), &reference, None),
            )
            .map_err(|e| self.remote(e.to_string()))?;
        Ok(())
    }

    /// Downloads the layer from the repository first when the layout lacks it (lookups
    /// leave layers in the registry).
    fn open_layer(&self, layer: &CachedLayer) -> Result<File> {
        if !self.layout.has_blob(&layer.digest) {
            self.runtime
                .block_on(self.client.fetch_blob(
                    &self.repository,
                    layer.digest.as_ref(),
                    layer.size,
                    &self.layout,
                ))
                .map_err(|e| self.remote(e.to_string()))?;
        }
        self.layout
            .open_blob(&layer.digest)
            .map_err(|e| self.remote(e.to_string()))
    }

    /// Explanations stay local: the registry keeps entries only.
    fn remember(&self, _step: &str, _key: &CacheKey) -> Result<()> {
        Ok(())
    }

    fn recall(&self, _step: &str) -> Result<Option<KeyInputs>> {
        Ok(None)
    }
}
