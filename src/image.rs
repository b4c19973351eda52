//! [`Image`]: a built image, whose blobs are in the state directory, and its outputs.

use std::path::Path;

use strata_oci::{BlobInfo, Layout};
use strata_registry::{Reference, RegistryClient, Target};

use crate::config::{ImageConfig, LayerRef};
use crate::error::{Error, Result};
use crate::event::{Event, EventSink};
use crate::state::State;

/// A built image: its manifest, config and layers, ready to push or write out.
#[derive(Clone)]
pub struct Image {
    state: State,
    registry: RegistryClient,
    manifest: BlobInfo,
    config_digest: String,
    config: ImageConfig,
    layers: Vec<LayerRef>,
    base_reference: Option<String>,
    cache_repo: Option<String>,
    cache: (usize, usize),
    events: Option<EventSink>,
    runtime: tokio::runtime::Handle,
    /// The repositories holding the layers the build did not download, by blob digest.
    blob_sources: std::collections::HashMap<String, Vec<String>>,
    /// The `--cache-from` images: their repositories may hold any of the image's blobs.
    cache_from: Vec<String>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("digest", &self.manifest.digest)
            .field("config_digest", &self.config_digest)
            .field("layers", &self.layers)
            .field("base_reference", &self.base_reference)
            .field("cache_repo", &self.cache_repo)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl Image {
    /// The repositories the image's layers may be fetched or mounted from: the cache
    /// repository (for cache hits) and the base image's repository.
    fn sources(&self) -> Vec<Reference> {
        [self.cache_repo.as_deref(), self.base_reference.as_deref()]
            .into_iter()
            .flatten()
            .chain(self.cache_from.iter().map(String::as_str))
            .filter(|r| !r.starts_with("oci-layout://"))
            .filter_map(|r| Reference::parse(r).ok())
            .collect()
    }

    /// Downloads the layers a build left in the registry (lazy cache hits, a base's layers no
    /// step needed) into the state directory: an output that holds the bytes needs them.
    async fn fetch_missing(&self) -> Result<()> {
        let everywhere = self.sources();
        for layer in &self.layers {
            // Where the build saw the layer first, then every repository it came from.
            let known: Vec<Reference> = self
                .blob_sources
                .get(layer.digest.as_ref() as &str)
                .into_iter()
                .flatten()
                .filter_map(|r| Reference::parse(r).ok())
                .collect();
            let sources: Vec<&Reference> = if known.is_empty() {
                everywhere.iter().collect()
            } else {
                known.iter().collect()
            };
            fetch_layer(&self.registry, &self.state.layout, &sources, layer).await?;
        }
        Ok(())
    }

    /// [`Image::fetch_missing`] from blocking code: on a thread of its own, so that it works
    /// whether or not the caller is inside the runtime.
    fn fetch_missing_blocking(&self) -> Result<()> {
        if self
            .layers
            .iter()
            .all(|l| self.state.layout.has_blob(&l.digest))
        {
            return Ok(());
        }
        let handle = self.runtime.clone();
        std::thread::scope(|scope| {
            scope
                .spawn(|| handle.block_on(self.fetch_missing()))
                .join()
                .unwrap_or_else(|_| Err(Error::Task("layer download failed".to_owned())))
        })
    }

    /// The same image, reporting its later events (pushes) to `events`.
    pub(crate) fn with_events(mut self, events: Option<EventSink>) -> Image {
        self.events = events;
        self
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        state: State,
        registry: RegistryClient,
        manifest: BlobInfo,
        config_digest: String,
        config: ImageConfig,
        layers: Vec<LayerRef>,
        base_reference: Option<String>,
        cache_repo: Option<String>,
        cache: (usize, usize),
        events: Option<EventSink>,
        runtime: tokio::runtime::Handle,
        blob_sources: std::collections::HashMap<String, Vec<String>>,
        cache_from: Vec<String>,
    ) -> Image {
        Image {
            state,
            registry,
            manifest,
            config_digest,
            config,
            layers,
            base_reference,
            cache_repo,
            cache,
            events,
            runtime,
            blob_sources,
            cache_from,
        }
    }

    /// The manifest digest: the image's identity.
    pub fn digest(&self) -> &str {
        self.manifest.digest.as_ref()
    }

    /// The config blob's digest (Docker's "image id").
    pub fn config_digest(&self) -> &str {
        &self.config_digest
    }

    /// The image config.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// The layers, bottom first.
    pub fn layers(&self) -> &[LayerRef] {
        &self.layers
    }

    /// Layer steps (COPY, ADD, RUN, WORKDIR) the cache answered, and layer steps in all.
    pub fn cache_hits(&self) -> (usize, usize) {
        self.cache
    }

    /// Pushes the image to `reference` (`registry/repository:tag`) and returns the manifest
    /// digest. Blobs the registry has are skipped; blobs of the base image, and layers the
    /// cache repository holds, are mounted from those repositories when they are on the same
    /// registry (never uploaded twice). A layer the build left in its repository is
    /// downloaded only when the registry cannot mount it.
    pub async fn push(&self, reference: &str) -> Result<String> {
        let to = Reference::parse(reference)?;
        let sources = self.sources();
        let sources: Vec<&Reference> = sources.iter().collect();
        // Per blob: where this build found it, and where earlier pushes put it.
        let mut blobs: Vec<String> = self.layers.iter().map(|l| l.digest.to_string()).collect();
        blobs.push(self.config_digest.clone());
        let mut known: std::collections::HashMap<String, Vec<Reference>> = Default::default();
        for digest in &blobs {
            let places = self
                .blob_sources
                .get(digest)
                .into_iter()
                .flatten()
                .cloned()
                .chain(self.state.blob_sources(digest));
            let parsed: Vec<Reference> = places.filter_map(|r| Reference::parse(&r).ok()).collect();
            if !parsed.is_empty() {
                known.insert(digest.clone(), parsed);
            }
        }
        let report = self
            .registry
            .push_with_sources(
                &self.state.layout,
                self.manifest.digest.as_ref(),
                &to,
                &sources,
                &known,
            )
            .await?;
        if let Err(error) = self.state.remember_sources(&blobs, &to.name()) {
            tracing::debug!(%error, "where the blobs went is not remembered");
        }
        if let Some(sink) = &self.events {
            sink(&Event::Pushed {
                reference: to.to_string(),
                digest: report.manifest_digest.to_string(),
                uploaded: report.uploaded,
                mounted: report.mounted,
                skipped: report.skipped,
            });
        }
        Ok(report.manifest_digest.to_string())
    }

    /// Writes the image into the OCI image layout at `dir` (created when missing) under the
    /// name `tag`. Blobs are hard-linked from the state directory where possible.
    ///
    /// This blocks on file work: in async code use [`Image::put`] with `oci:DIR:TAG`, which
    /// writes on a blocking thread.
    pub fn write_oci_layout(&self, dir: &Path, tag: &str) -> Result<()> {
        self.fetch_missing_blocking()?;
        self.state
            .layout
            .copy_image(self.manifest.digest.as_ref(), &Layout::open(dir)?, tag)?;
        Ok(())
    }

    /// Puts the image at `target` — `docker://REF` (or a plain reference), `oci:DIR[:NAME]`
    /// or `docker-archive:PATH[:REF]`, as skopeo names them — and returns its manifest
    /// digest. The same as [`Image::push`], [`Image::write_oci_layout`] and
    /// [`Image::write_docker_archive`], by name.
    pub async fn put(&self, target: &str) -> Result<String> {
        match Target::parse(target)? {
            Target::Registry(reference) => self.push(&reference.to_string()).await,
            other => {
                self.fetch_missing().await?;
                Ok(self
                    .registry
                    .put(
                        &self.state.layout,
                        self.manifest.digest.as_ref(),
                        &other,
                        &[],
                    )
                    .await?)
            }
        }
    }

    /// Writes the image as a docker-archive tarball (`docker load` reads it) at `path`, with
    /// `tags` as its names.
    ///
    /// This blocks on file work: in async code use [`Image::put`] with
    /// `docker-archive:PATH:REF`, which writes on a blocking thread.
    pub fn write_docker_archive(&self, path: &Path, tags: &[&str]) -> Result<()> {
        let tags = tags
            .iter()
            .map(|t| Reference::parse(t))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.fetch_missing_blocking()?;
        strata_registry::write_docker_archive(
            &self.state.layout,
            self.manifest.digest.as_ref(),
            &tags,
            path,
        )
        .map_err(Error::from)
    }
}

/// Downloads `layer` into `layout` from the first of `sources` that has it (nothing when
/// the layout has it): a layer the build left in a registry, needed after all.
pub(crate) async fn fetch_layer(
    registry: &RegistryClient,
    layout: &Layout,
    sources: &[&Reference],
    layer: &LayerRef,
) -> Result<()> {
    if layout.has_blob(&layer.digest) {
        return Ok(());
    }
    if sources.is_empty() {
        return Err(Error::Invalid(format!(
            "layer {} is not in the state directory, and no repository is known to hold it",
            layer.digest
        )));
    }
    Ok(registry
        .fetch_blob_from(sources, layer.digest.as_ref(), layer.size, layout)
        .await?)
}
