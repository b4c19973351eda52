//! Pulling images into, and pushing them from, an OCI layout, against real registries.
//!
//! strata speaks the distribution protocol itself (see `http.rs` for auth and limits).
//! Blobs stream between the network and files: a pull writes each blob to a temporary file
//! while hashing it, never accepting more bytes than its descriptor says, and renames it
//! into the layout only when it is whole and its digest matches; a push streams each blob
//! from its file, in chunks for large blobs so that a broken upload resumes where it broke.
//! Several blobs move at once.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{self, HeaderValue};
use reqwest::{Body, StatusCode, Url};
use strata_oci::digest::{Hasher, sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::auth::Credentials;
use crate::error::{Error, Result};
use crate::http::{HttpError, Session, SessionOptions, Timeouts, read_limited, status_error};
use crate::progress::{Direction, Meter, ProgressSink};
use crate::reference::{Reference, is_loopback_host};
use strata_oci::{
    DOCKER_LIST, DOCKER_MANIFEST, Digest, ImageManifest, MAX_MANIFEST_SIZE, Manifest, OCI_INDEX,
    OCI_MANIFEST,
};
use strata_oci::{Layout, Platform};

/// How many blobs move at once.
const PARALLEL_BLOBS: usize = 4;

/// An image now held in a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The digest of the image manifest (the platform's, when the reference named an index).
    pub manifest_digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's size in bytes.
    pub manifest_size: u64,
    /// The config blob's digest.
    pub config_digest: Digest,
    /// The layers' digests, bottom first.
    pub layer_digests: Vec<Digest>,
    /// Blobs that were downloaded (the others were in the layout already).
    pub downloaded: usize,
}

impl PulledImage {
    /// The manifest's descriptor, to record it in a layout with [`Layout::tag`].
    pub fn descriptor(&self) -> strata_oci::Descriptor {
        let blob = strata_oci::BlobInfo {
            digest: self.manifest_digest.clone(),
            size: self.manifest_size,
        };
        blob.descriptor(&self.media_type)
    }
}

/// Options for a [`RegistryClient`].
#[derive(Clone, Default)]
pub struct ClientBuilder {
    credentials: Option<Credentials>,
    /// (registry, mirror) pairs, in the order given.
    mirrors: Vec<(String, String)>,
    insecure_pull: bool,
    skip_tls_verify_for: Vec<String>,
    retries: Option<u32>,
    insecure: Vec<String>,
    https_loopback: bool,
    https: Vec<String>,
    ca_pems: Vec<Vec<u8>>,
    skip_tls_verify: bool,
    skip_tls_verify_pull: bool,
    progress: Option<ProgressSink>,
    timeouts: Timeouts,
    chunk_size: Option<u64>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("credentials", &self.credentials)
            .field("insecure", &self.insecure)
            .field("https_loopback", &self.https_loopback)
            .field("https", &self.https)
            .field("ca_certificates", &self.ca_pems.len())
            .field("skip_tls_verify", &self.skip_tls_verify)
            .field("skip_tls_verify_pull", &self.skip_tls_verify_pull)
            .field("skip_tls_verify_for", &self.skip_tls_verify_for)
            .field("mirrors", &self.mirrors)
            .field("insecure_pull", &self.insecure_pull)
            .field("retries", &self.retries)
            .finish()
    }
}

impl ClientBuilder {
    /// Where credentials come from (default: [`Credentials::from_env`]).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Speaks plain HTTP to `registry` (`host[:port]`).
    pub fn insecure(mut self, registry: impl Into<String>) -> Self {
        self.insecure.push(registry.into());
        self
    }

    /// Speaks HTTPS to loopback registries too (by default they get plain HTTP, as Docker
    /// allows).
    pub fn https_loopback(mut self, https: bool) -> Self {
        self.https_loopback = https;
        self
    }

    /// Speaks HTTPS to `registry` even when it is on loopback (a registry whose certificate
    /// or TLS settings were given is a TLS registry).
    pub fn https(mut self, registry: impl Into<String>) -> Self {
        self.https.push(registry.into());
        self
    }

    /// Trusts this CA certificate (PEM) besides the system's.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pems.push(pem.into());
        self
    }

    /// How many times a request that failed in a way that may pass (connection trouble, HTTP
    /// 5xx or 429) is tried again, with a pause that doubles from 200 ms (default 4).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// Pulls Docker Hub images from `mirror` (`host[:port]`) first; several mirrors are tried
    /// in the order given, Docker Hub last (`--registry-mirror`).
    pub fn mirror(mut self, mirror: impl Into<String>) -> Self {
        self.mirrors
            .push((crate::reference::DOCKER_HUB.to_owned(), mirror.into()));
        self
    }

    /// Pulls images of `registry` (`host[:port]`; `index.docker.io` and `docker.io` both
    /// name Docker Hub) from `mirror` first (`host[:port]`, optionally followed by a path
    /// the repository goes under): Kaniko's `--registry-map`. Mirrors are tried in the order
    /// given, the registry itself last. Pushes are never redirected.
    pub fn registry_mirror(
        mut self,
        registry: impl Into<String>,
        mirror: impl Into<String>,
    ) -> Self {
        let registry = registry.into();
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => crate::reference::DOCKER_HUB.to_owned(),
            _ => registry,
        };
        self.mirrors.push((registry, mirror.into()));
        self
    }

    /// Pulls over plain HTTP from every registry (Kaniko's `--insecure-pull`); pushes keep
    /// the per-registry setting of [`ClientBuilder::insecure`].
    pub fn insecure_pull(mut self, insecure: bool) -> Self {
        self.insecure_pull = insecure;
        self
    }

    /// Accepts any TLS certificate from `registry` alone (`--skip-tls-verify-registry`).
    pub fn skip_tls_verify_for(mut self, registry: impl Into<String>) -> Self {
        self.skip_tls_verify_for.push(registry.into());
        self
    }

    /// Accepts any TLS certificate (`--skip-tls-verify`). Dangerous; for tests and labs.
    pub fn skip_tls_verify(mut self, skip: bool) -> Self {
        self.skip_tls_verify = skip;
        self
    }

    /// Accepts any TLS certificate for pulls only (Kaniko's `--skip-tls-verify-pull`);
    /// pushes still verify. Dangerous; for tests and labs.
    pub fn skip_tls_verify_pull(mut self, skip: bool) -> Self {
        self.skip_tls_verify_pull = skip;
        self
    }

    /// How long to wait for a connection, between two reads of a response, and for a whole
    /// token or manifest request (defaults: 30 s, 60 s, 120 s). A registry that stalls
    /// longer fails the request (which is retried like any connection trouble).
    pub fn timeouts(mut self, connect: Duration, read: Duration, request: Duration) -> Self {
        self.timeouts = Timeouts {
            connect,
            read,
            request,
        };
        self
    }

    /// Blobs larger than `bytes` are uploaded in chunks of that size, and an upload broken
    /// off in the middle resumes where the registry says it got to (default 64 MiB).
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = Some(bytes.max(1));
        self
    }

    /// Reports the byte progress of every blob pulled or pushed to `sink`.
    pub fn on_progress(mut self, sink: ProgressSink) -> Self {
        self.progress = Some(sink);
        self
    }

    /// The client.
    pub fn build(self) -> RegistryClient {
        RegistryClient {
            builder: Arc::new(self),
            sessions: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Talks to registries. Cheap to clone; clones share their connections and tokens.
#[derive(Clone)]
pub struct RegistryClient {
    builder: Arc<ClientBuilder>,
    sessions: Arc<Mutex<Sessions>>,
}

/// Sessions by (registry, plain HTTP, TLS verification skipped).
type Sessions = HashMap<(String, bool, bool), Arc<Session>>;

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("options", &self.builder)
            .finish()
    }
}

/// The default chunk size of uploads.
const DEFAULT_CHUNK: u64 = 64 << 20;

/// How many times a failing request is tried again by default.
const DEFAULT_RETRIES: u32 = 4;

fn malformed(reference: &Reference, message: impl Into<String>) -> Error {
    Error::UnsupportedManifest {
        reference: reference.to_string(),
        message: message.into(),
    }
}

fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

impl RegistryClient {
    /// The same client, reporting blob progress to `sink` (instead of any sink it had).
    pub fn with_progress(&self, sink: ProgressSink) -> RegistryClient {
        let mut builder = (*self.builder).clone();
        builder.progress = Some(sink);
        builder.build()
    }

    /// Options for a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    fn credentials(&self) -> Credentials {
        self.builder
            .credentials
            .clone()
            .unwrap_or_else(Credentials::from_env)
    }

    /// The TLS settings this client uses for `host` (`name[:port]`), for other HTTPS clients
    /// that should trust what it trusts (a git fetch): the extra CA certificates and whether
    /// any certificate is accepted (`skip_tls_verify`, or for that host).
    pub fn tls_for(&self, host: &str) -> TlsSettings {
        TlsSettings {
            ca_pems: self.builder.ca_pems.clone(),
            accept_invalid_certs: self.builder.skip_tls_verify
                || self.builder.skip_tls_verify_for.iter().any(|h| h == host),
        }
    }

    /// A plain HTTP client for `host` (`name[:port]`) with this client's TLS settings,
    /// timeouts and proxies, for downloads that are not registry requests.
    pub(crate) fn http_client(&self, host: &str) -> std::result::Result<reqwest::Client, String> {
        let options = SessionOptions {
            plain: false,
            accept_invalid_certs: self.builder.skip_tls_verify
                || self.builder.skip_tls_verify_for.iter().any(|h| h == host),
            ca_pems: &self.builder.ca_pems,
            timeouts: self.builder.timeouts,
        };
        crate::http::http_client(&options).map_err(|e| e.message)
    }

    /// The session for `reference`'s registry (plain HTTP for insecure and loopback
    /// registries, and for every pull with `insecure_pull`).
    fn session(&self, reference: &Reference, pull: bool) -> Result<Arc<Session>> {
        let registry = reference.registry().to_owned();
        let plain = (pull && self.builder.insecure_pull)
            || self.builder.insecure.contains(&registry)
            || (!self.builder.https_loopback
                && !self.builder.https.contains(&registry)
                && is_loopback_host(&registry));
        let poisoned = || Error::registry(reference.to_string(), "session table poisoned");
        let accept_invalid_certs = self.builder.skip_tls_verify
            || (pull && self.builder.skip_tls_verify_pull)
            || self.builder.skip_tls_verify_for.contains(&registry);
        let key = (registry.clone(), plain, accept_invalid_certs);
        if let Some(session) = self.sessions.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(Arc::clone(session));
        }
        // Credentials are looked up outside the lock: a credential helper may take seconds
        // (it has a deadline), and requests to other registries must not wait for it.
        let credential = self.credentials().get(&registry)?;
        let options = SessionOptions {
            plain,
            accept_invalid_certs,
            ca_pems: &self.builder.ca_pems,
            timeouts: self.builder.timeouts,
        };
        let session = Arc::new(
            Session::new(&registry, credential, options)
                .map_err(|e| registry_error(reference, e))?,
        );
        // Two lookups of the same registry at once: the first session recorded is kept, so
        // every request shares its tokens.
        let mut sessions = self.sessions.lock().map_err(|_| poisoned())?;
        Ok(Arc::clone(sessions.entry(key).or_insert(session)))
    }

    /// Pulls `reference` (the `platform` image, when it names an index) into `layout`: the
    /// manifest, the config and every layer not already there, digests verified as they
    /// arrive. The layout records nothing under a name; tag it if you want one.
    ///
    /// A reference whose registry has mirrors ([`ClientBuilder::mirror`],
    /// [`ClientBuilder::registry_mirror`]) is tried on each of them first, in order, then on
    /// the registry itself; the error of the last try is returned when none has the image.
    pub async fn pull(
        &self,
        reference: &Reference,
        platform: &Platform,
        layout: &Layout,
    ) -> Result<PulledImage> {
        self.pull_with(reference, platform, layout, true).await
    }

    /// [`RegistryClient::pull`] without the layers: the manifest and the config only (a
    /// lazy pull). Fetch a layer later with [`RegistryClient::fetch_blob`] when its bytes are
    /// needed; a push to the same registry can mount it without them.
    pub async fn pull_manifest(
        &self,
        reference: &Reference,
        platform: &Platform,
        layout: &Layout,
    ) -> Result<PulledImage> {
        self.pull_with(reference, platform, layout, false).await
    }

    /// Downloads the blob `digest` (`size` bytes, as its descriptor says) of `reference`'s
    /// repository into `layout`, verified as it arrives; nothing when the layout has it.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &str,
        size: u64,
        layout: &Layout,
    ) -> Result<()> {
        if layout.has_blob(digest) {
            return Ok(());
        }
        // From the mirrors first, as the pull that named the blob did.
        let mut last = None;
        for candidate in &self.candidates(reference)? {
            match self.pull_blob(candidate, digest, size, layout).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(%candidate, error = %e, "blob fetch failed; trying the next source");
                    last = Some(e);
                }
            }
        }
        Err(last
            .unwrap_or_else(|| Error::registry(reference.to_string(), "no source to fetch from")))
    }

    /// Where `reference` is pulled from: each mirror of its registry, in order, then the
    /// registry itself.
    fn candidates(&self, reference: &Reference) -> Result<Vec<Reference>> {
        let mut candidates = Vec::new();
        for (registry, mirror) in &self.builder.mirrors {
            if registry == reference.registry() {
                let mut text = format!("{mirror}/{}", reference.repository());
                if let Some(tag) = reference.tag() {
                    text.push_str(&format!(":{tag}"));
                }
                if let Some(digest) = reference.digest() {
                    text.push_str(&format!("@{digest}"));
                }
                candidates.push(Reference::parse(&text)?);
            }
        }
        candidates.push(reference.clone());
        Ok(candidates)
    }

    async fn pull_with(
        &self,
        reference: &Reference,
        platform: &Platform,
        layout: &Layout,
        layers: bool,
    ) -> Result<PulledImage> {
        let mut last = None;
        for candidate in &self.candidates(reference)? {
            match self.pull_from(candidate, platform, layout, layers).await {
                Ok(pulled) => return Ok(pulled),
                Err(e) => {
                    tracing::debug!(%candidate, error = %e, "pull failed; trying the next source");
                    last = Some(e);
                }
            }
        }
        Err(last
            .unwrap_or_else(|| Error::registry(reference.to_string(), "no source to pull from")))
    }

    /// The manifest `reference` names, as the registry sends it (an index stays an index):
    /// one request, at most [`MAX_MANIFEST_SIZE`] bytes, checked against the reference's
    /// digest when it has one. Nothing is written anywhere.
    pub async fn fetch_manifest(&self, reference: &Reference) -> Result<Vec<u8>> {
        let bytes = self.get_manifest(reference, reference.target()).await?;
        if let Some(pinned) = reference.digest()
            && sha256(&bytes) != pinned
        {
            return Err(Error::DigestMismatch {
                what: format!("manifest of {reference}"),
                expected: pinned.to_owned(),
                actual: sha256(&bytes),
            });
        }
        Ok(bytes)
    }

    /// GETs a manifest (at most [`MAX_MANIFEST_SIZE`] bytes) by tag or digest.
    async fn get_manifest(&self, reference: &Reference, target: &str) -> Result<Vec<u8>> {
        let session = self.session(reference, true)?;
        let scopes = [pull_scope(reference.repository())];
        let url = session
            .url(&format!("v2/{}/manifests/{target}", reference.repository()))
            .map_err(|e| registry_error(reference, e))?;
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let timeout = self.builder.timeouts.request;
        self.retry(reference, || async {
            let response = session
                .send(&scopes, |http| {
                    Ok(http
                        .get(url.clone())
                        .header(header::ACCEPT, &accept)
                        .timeout(timeout))
                })
                .await?;
            if response.status() != StatusCode::OK {
                return Err(status_error(response).await);
            }
            read_limited(response, MAX_MANIFEST_SIZE).await
        })
        .await
    }

    async fn pull_from(
        &self,
        reference: &Reference,
        platform: &Platform,
        layout: &Layout,
        with_layers: bool,
    ) -> Result<PulledImage> {
        let mut bytes = self.get_manifest(reference, reference.target()).await?;
        if let Some(pinned) = reference.digest()
            && sha256(&bytes) != pinned
        {
            return Err(Error::DigestMismatch {
                what: format!("manifest of {reference}"),
                expected: pinned.to_owned(),
                actual: sha256(&bytes),
            });
        }
        let name = reference.to_string();
        let mut manifest = Manifest::parse(&bytes, &name)?;
        if let Manifest::Index(index) = &manifest {
            let digest = platform
                .select(index.manifests(), &name)?
                .digest()
                .to_string();
            let platform_bytes = self.get_manifest(reference, &digest).await?;
            if sha256(&platform_bytes) != digest {
                return Err(Error::DigestMismatch {
                    what: format!("platform manifest of {reference}"),
                    expected: digest,
                    actual: sha256(&platform_bytes),
                });
            }
            bytes = platform_bytes;
            manifest = Manifest::parse(&bytes, &name)?;
        }
        let media_type = manifest.media_type();
        let Manifest::Image(image) = manifest else {
            return Err(malformed(reference, "an index names another index"));
        };
        let config_digest = image.config().digest().clone();
        let layer_digests: Vec<Digest> =
            image.layers().iter().map(|l| l.digest().clone()).collect();
        let mut wanted: Vec<(String, u64)> = Vec::new();
        let layers: &[_] = if with_layers { image.layers() } else { &[] };
        for descriptor in std::iter::once(image.config()).chain(layers) {
            let digest = descriptor.digest().as_ref();
            if !layout.has_blob(digest) && !wanted.iter().any(|(d, _)| d == digest) {
                wanted.push((digest.to_owned(), descriptor.size()));
            }
        }
        let downloaded = wanted.len();
        futures_util::stream::iter(wanted)
            .map(|(digest, size)| async move {
                self.pull_blob(reference, &digest, size, layout).await
            })
            .buffer_unordered(PARALLEL_BLOBS)
            .try_collect::<Vec<()>>()
            .await?;
        let stored = layout.write_blob_bytes(&bytes)?;
        Ok(PulledImage {
            manifest_digest: stored.digest,
            media_type,
            manifest_size: stored.size,
            config_digest,
            layer_digests,
            downloaded,
        })
    }

    /// Downloads one blob into the layout: streamed to a fresh temporary file each try,
    /// never more than `size` bytes, renamed into place only when its digest matches.
    async fn pull_blob(
        &self,
        reference: &Reference,
        digest: &str,
        size: u64,
        layout: &Layout,
    ) -> Result<()> {
        let session = self.session(reference, true)?;
        let scopes = [pull_scope(reference.repository())];
        let url = session
            .url(&format!("v2/{}/blobs/{digest}", reference.repository()))
            .map_err(|e| registry_error(reference, e))?;
        let what = format!("{reference} blob {digest}");
        let name = reference.to_string();
        let (staging, actual) = self
            .retry(&what, || async {
                let staging = layout
                    .staging_file()
                    .map_err(|e| HttpError::permanent(e.to_string()))?;
                let disk_error = |e: std::io::Error| {
                    HttpError::permanent(format!("{}: {e}", staging.path().display()))
                };
                let file = staging.reopen().map_err(disk_error)?;
                let mut file =
                    tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
                let response = session
                    .send(&scopes, |http| Ok(http.get(url.clone())))
                    .await?;
                if response.status() != StatusCode::OK {
                    return Err(status_error(response).await);
                }
                if let Some(announced) = response.content_length()
                    && announced != size
                {
                    return Err(HttpError::permanent(format!(
                        "the registry announces {announced} bytes, the manifest says {size}"
                    )));
                }
                let mut meter = Meter::new(
                    self.builder.progress.as_ref(),
                    Direction::Pull,
                    &name,
                    digest,
                    size,
                );
                let mut hasher = Hasher::new();
                let mut received = 0u64;
                let mut stream = response.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    received += chunk.len() as u64;
                    if received > size {
                        return Err(HttpError::permanent(format!(
                            "the registry sent more than the {size} bytes the manifest says"
                        )));
                    }
                    hasher.update(&chunk);
                    file.write_all(&chunk).await.map_err(disk_error)?;
                    meter.add(chunk.len());
                }
                if received < size {
                    return Err(HttpError::transient(format!(
                        "the registry sent {received} of {size} bytes"
                    )));
                }
                file.flush().await.map_err(disk_error)?;
                meter.finish();
                let actual = hasher.finish();
                Ok((staging, actual))
            })
            .await?;
        Ok(layout.commit_staged(staging, digest, &actual)?)
    }

    /// Pushes the image whose manifest is `manifest_digest` in `layout` to `to`: every blob
    /// the registry does not have yet (several at once, each streamed from its file; mounted
    /// from `mount_from` instead when that repository is on the same registry and has it),
    /// then the manifest, only once every blob is confirmed.
    pub async fn push(
        &self,
        layout: &Layout,
        manifest_digest: &str,
        to: &Reference,
        mount_from: Option<&Reference>,
    ) -> Result<PushReport> {
        self.push_mounting(layout, manifest_digest, to, mount_from.as_slice())
            .await
    }

    /// [`RegistryClient::push`], trying to mount each missing blob from every repository of
    /// `mount_from` on the same registry in turn (the base image's repository, a cache
    /// repository holding the step layers) before uploading it. A blob that must be uploaded
    /// but is not in `layout` (an image pulled with [`RegistryClient::pull_manifest`]) is
    /// first downloaded from the first repository of `mount_from`, on any registry, that
    /// has it.
    pub async fn push_mounting(
        &self,
        layout: &Layout,
        manifest_digest: &str,
        to: &Reference,
        mount_from: &[&Reference],
    ) -> Result<PushReport> {
        self.push_with_sources(layout, manifest_digest, to, mount_from, &HashMap::new())
            .await
    }

    /// [`RegistryClient::push_mounting`] with, per blob digest, the repositories known to
    /// hold that blob (pulled from or pushed to before): tried first for that blob, to mount
    /// it on the same registry or to fetch it when it is not in `layout`.
    pub async fn push_with_sources(
        &self,
        layout: &Layout,
        manifest_digest: &str,
        to: &Reference,
        mount_from: &[&Reference],
        known: &HashMap<String, Vec<Reference>>,
    ) -> Result<PushReport> {
        let bytes = layout.read_blob(manifest_digest)?;
        let manifest = Manifest::parse(&bytes, &to.to_string())?;
        let index_type = manifest.media_type();
        let index = match manifest {
            Manifest::Image(image) => {
                let image = (&bytes[..], index_type.as_str(), &*image);
                return self.push_image(layout, image, to, mount_from, known).await;
            }
            Manifest::Index(index) => index,
        };
        // An index: each of its images by digest, then the index under the tag.
        let mut report = PushReport {
            manifest_digest: strata_oci::digest::parse(&sha256(&bytes))?,
            uploaded: 0,
            mounted: 0,
            skipped: 0,
        };
        for entry in index.manifests() {
            let digest = entry.digest().as_ref();
            let child = layout.read_blob(digest)?;
            let manifest = Manifest::parse(&child, digest)?;
            let media_type = manifest.media_type();
            let Manifest::Image(image) = manifest else {
                return Err(malformed(to, "an index inside an index cannot be pushed"));
            };
            let image = (&child[..], media_type.as_str(), &*image);
            let pushed = self
                .push_image(layout, image, &to.with_digest(digest)?, mount_from, known)
                .await?;
            report.uploaded += pushed.uploaded;
            report.mounted += pushed.mounted;
            report.skipped += pushed.skipped;
        }
        self.put_manifest(to, &bytes, &index_type).await?;
        Ok(report)
    }

    /// Pushes one image: its blobs, then its manifest (`bytes`) under `to`.
    async fn push_image(
        &self,
        layout: &Layout,
        (bytes, media_type, image): (&[u8], &str, &ImageManifest),
        to: &Reference,
        mount_from: &[&Reference],
        known: &HashMap<String, Vec<Reference>>,
    ) -> Result<PushReport> {
        let mut blobs: Vec<(String, u64)> = Vec::new();
        for descriptor in std::iter::once(image.config()).chain(image.layers()) {
            let digest = descriptor.digest().as_ref();
            if !blobs.iter().any(|(d, _)| d == digest) {
                blobs.push((digest.to_owned(), descriptor.size()));
            }
        }
        let outcomes: Vec<BlobOutcome> = futures_util::stream::iter(blobs)
            .map(|(digest, size)| {
                // The repositories known to hold this blob first, then the general ones.
                let mut fetch_from: Vec<&Reference> = Vec::new();
                for source in known
                    .get(&digest)
                    .into_iter()
                    .flatten()
                    .chain(mount_from.iter().copied())
                {
                    if !fetch_from.iter().any(|r| r.name() == source.name()) {
                        fetch_from.push(source);
                    }
                }
                let mount_sources: Vec<&str> = fetch_from
                    .iter()
                    .filter(|source| {
                        source.registry() == to.registry() && source.repository() != to.repository()
                    })
                    .map(|source| source.repository())
                    .collect();
                async move {
                    let fetch_from = &fetch_from[..];
                    if self.blob_exists(to, &digest).await? {
                        return Ok::<BlobOutcome, Error>(BlobOutcome::Skipped);
                    }
                    for source in mount_sources {
                        if self.mount(to, &digest, source).await?
                            && self.blob_exists(to, &digest).await?
                        {
                            return Ok(BlobOutcome::Mounted);
                        }
                    }
                    if !layout.has_blob(&digest) {
                        self.fetch_blob_from(fetch_from, &digest, size, layout)
                            .await?;
                    }
                    self.upload(layout, to, &digest, size).await?;
                    Ok(BlobOutcome::Uploaded)
                }
            })
            .buffer_unordered(PARALLEL_BLOBS)
            .try_collect()
            .await?;
        self.put_manifest(to, bytes, media_type).await?;
        let count = |kind: BlobOutcome| outcomes.iter().filter(|o| **o == kind).count();
        Ok(PushReport {
            manifest_digest: strata_oci::digest::parse(&sha256(bytes))?,
            uploaded: count(BlobOutcome::Uploaded),
            mounted: count(BlobOutcome::Mounted),
            skipped: count(BlobOutcome::Skipped),
        })
    }

    /// Downloads the blob `digest` into `layout` from the first of `sources` (repositories,
    /// on any registry) that has it: a layer pulled lazily, needed after all. Nothing when
    /// the layout has it; the last source's error when none has it.
    pub async fn fetch_blob_from(
        &self,
        sources: &[&Reference],
        digest: &str,
        size: u64,
        layout: &Layout,
    ) -> Result<()> {
        let mut last = None;
        for source in sources {
            match self.fetch_blob(source, digest, size, layout).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e),
            None if layout.has_blob(digest) => Ok(()),
            None => Err(Error::registry(
                digest.to_owned(),
                "the blob is not here, and no repository is known to hold it",
            )),
        }
    }

    /// Whether `to`'s repository has the blob (HEAD).
    async fn blob_exists(&self, to: &Reference, digest: &str) -> Result<bool> {
        let session = self.session(to, false)?;
        let scopes = [push_scope(to.repository())];
        let url = session
            .url(&format!("v2/{}/blobs/{digest}", to.repository()))
            .map_err(|e| registry_error(to, e))?;
        self.retry(format!("{to} blob {digest}"), || async {
            let response = session
                .send(&scopes, |http| Ok(http.head(url.clone())))
                .await?;
            match response.status() {
                StatusCode::OK => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                _ => Err(status_error(response).await),
            }
        })
        .await
    }

    /// Asks the registry to mount the blob from repository `from`; whether it did. A refused
    /// or failed mount request is `Ok(false)` (the caller uploads instead); only a
    /// reference this client cannot address is an error.
    async fn mount(&self, to: &Reference, digest: &str, from: &str) -> Result<bool> {
        let session = self.session(to, false)?;
        let scopes = [push_scope(to.repository()), pull_scope(from)];
        let mut url = session
            .url(&format!("v2/{}/blobs/uploads/", to.repository()))
            .map_err(|e| registry_error(to, e))?;
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let mounted = self
            .retry(format!("{to} blob {digest}"), || async {
                let response = session
                    .send(&scopes, |http| {
                        Ok(http.post(url.clone()).header(header::CONTENT_LENGTH, 0))
                    })
                    .await?;
                match response.status() {
                    StatusCode::CREATED => Ok(true),
                    // An upload was started instead; it is left for the registry to expire.
                    StatusCode::ACCEPTED => Ok(false),
                    status if status.is_client_error() => Ok(false),
                    _ => Err(status_error(response).await),
                }
            })
            .await;
        match mounted {
            Ok(mounted) => Ok(mounted),
            // Refused in a way the answers above do not cover (401 without a usable
            // challenge, or for a scope the credentials do not get; a registry that keeps
            // failing): a mount is only a saving, so the blob is uploaded, and a real fault
            // (no push access, registry down) shows in the upload.
            Err(e) => {
                tracing::debug!(%to, %digest, %from, error = %e, "mount refused; uploading");
                Ok(false)
            }
        }
    }

    /// Uploads one blob from the layout: in one request when it is small, else in chunks,
    /// resuming a broken chunked upload at the offset the registry reports.
    async fn upload(&self, layout: &Layout, to: &Reference, digest: &str, size: u64) -> Result<()> {
        let session = self.session(to, false)?;
        let job = Upload {
            session: &session,
            scopes: [push_scope(to.repository())],
            start: session
                .url(&format!("v2/{}/blobs/uploads/", to.repository()))
                .map_err(|e| registry_error(to, e))?,
            path: layout.blob_path(digest)?,
            digest,
            size,
            chunk: self.builder.chunk_size.unwrap_or(DEFAULT_CHUNK),
            name: to.to_string(),
            progress: self.builder.progress.as_ref(),
        };
        let what = format!("{to} blob {digest}");
        let tries = self.builder.retries.unwrap_or(DEFAULT_RETRIES) + 1;
        let mut resume = None;
        let mut failures = 0;
        loop {
            match job.attempt(&mut resume).await {
                Ok(()) => return Ok(()),
                Err(e) if e.transient && failures + 1 < tries => {
                    failures += 1;
                    tracing::debug!(%what, attempt = failures, error = %e.message, "retrying upload");
                    tokio::time::sleep(pause(failures, e.retry_after)).await;
                }
                Err(e) => return Err(registry_error(&what, e)),
            }
        }
    }

    async fn put_manifest(&self, to: &Reference, bytes: &[u8], media_type: &str) -> Result<()> {
        let session = self.session(to, false)?;
        let scopes = [push_scope(to.repository())];
        let url = session
            .url(&format!("v2/{}/manifests/{}", to.repository(), to.target()))
            .map_err(|e| registry_error(to, e))?;
        let content_type = HeaderValue::from_str(media_type).map_err(|_| {
            malformed(
                to,
                format!("media type `{media_type}` is not a valid header value"),
            )
        })?;
        let bytes = bytes.to_vec();
        self.retry(to, || async {
            let response = session
                .send(&scopes, |http| {
                    Ok(http
                        .put(url.clone())
                        .header(header::CONTENT_TYPE, content_type.clone())
                        .body(bytes.clone()))
                })
                .await?;
            if response.status() != StatusCode::CREATED {
                return Err(status_error(response).await);
            }
            Ok(())
        })
        .await
    }

    /// Runs `operation`, again after a pause when it fails in a way that may pass (connection
    /// trouble, HTTP 5xx, 408 or 429 — after `Retry-After` when the registry sends one), up
    /// to the configured number of tries.
    async fn retry<T, F, Fut>(&self, what: impl fmt::Display, mut operation: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, HttpError>>,
    {
        let tries = self.builder.retries.unwrap_or(DEFAULT_RETRIES) + 1;
        let mut attempt = 1;
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(e) if e.transient && attempt < tries => {
                    tracing::debug!(%what, attempt, error = %e.message, "retrying");
                    tokio::time::sleep(pause(attempt, e.retry_after)).await;
                    attempt += 1;
                }
                Err(e) => return Err(registry_error(what, e)),
            }
        }
    }
}

/// The pause before try `attempt + 1`: the registry's `Retry-After`, else 200 ms doubling
/// up to 5 s.
fn pause(attempt: u32, retry_after: Option<Duration>) -> Duration {
    retry_after.unwrap_or_else(|| {
        Duration::from_millis(200 * 2u64.saturating_pow(attempt.saturating_sub(1)))
            .min(Duration::from_secs(5))
    })
}

fn registry_error(what: impl fmt::Display, e: HttpError) -> Error {
    Error::Registry {
        reference: what.to_string(),
        message: e.message,
        status: e.status,
        retryable: e.transient,
    }
}

/// The last byte offset of a `Range: 0-N` header.
fn range_end(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .rsplit('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// One blob's upload.
struct Upload<'a> {
    session: &'a Session,
    scopes: [String; 1],
    /// `/v2/<name>/blobs/uploads/`.
    start: Url,
    path: std::path::PathBuf,
    digest: &'a str,
    size: u64,
    chunk: u64,
    name: String,
    progress: Option<&'a ProgressSink>,
}

impl Upload<'_> {
    /// One try. `resume` holds the URL of a chunked upload in progress: set while chunks go
    /// out, so that the next try continues it; cleared when the upload is complete.
    async fn attempt(&self, resume: &mut Option<Url>) -> std::result::Result<(), HttpError> {
        let (mut location, mut offset) = match resume.take() {
            Some(location) => match self.offset(&location).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!(error = %e.message, "the broken upload cannot be resumed");
                    (self.begin().await?, 0)
                }
            },
            None => (self.begin().await?, 0),
        };
        let meter = |start: u64| {
            let mut meter = Meter::new(
                self.progress,
                Direction::Push,
                &self.name,
                self.digest,
                self.size,
            );
            meter.add(start as usize);
            meter
        };
        let octets = HeaderValue::from_static("application/octet-stream");
        if self.size <= self.chunk {
            let mut url = location;
            url.query_pairs_mut().append_pair("digest", self.digest);
            let body = file_body(&self.path, 0, self.size, Some(meter(0))).await?;
            let response = self
                .session
                .authorize(&self.scopes, self.session.http().put(url))
                .await?
                .header(header::CONTENT_TYPE, octets)
                .header(header::CONTENT_LENGTH, self.size)
                .body(body)
                .send()
                .await?;
            return expect(response, StatusCode::CREATED).await;
        }
        let mut progress = meter(offset);
        while offset < self.size {
            let length = self.chunk.min(self.size - offset);
            let body = file_body(&self.path, offset, length, None).await?;
            *resume = Some(location.clone());
            let response = self
                .session
                .authorize(&self.scopes, self.session.http().patch(location.clone()))
                .await?
                .header(header::CONTENT_TYPE, octets.clone())
                .header(
                    header::CONTENT_RANGE,
                    format!("{offset}-{}", offset + length - 1),
                )
                .header(header::CONTENT_LENGTH, length)
                .body(body)
                .send()
                .await?;
            if response.status() != StatusCode::ACCEPTED {
                return Err(status_error(response).await);
            }
            location = self.session.location(&response)?;
            *resume = Some(location.clone());
            offset += length;
            progress.add(length as usize);
        }
        let mut url = location;
        url.query_pairs_mut().append_pair("digest", self.digest);
        let response = self
            .session
            .authorize(&self.scopes, self.session.http().put(url))
            .await?
            .header(header::CONTENT_LENGTH, 0)
            .send()
            .await?;
        expect(response, StatusCode::CREATED).await?;
        *resume = None;
        progress.finish();
        Ok(())
    }

    /// Starts an upload; its URL.
    async fn begin(&self) -> std::result::Result<Url, HttpError> {
        let response = self
            .session
            .send(&self.scopes, |http| {
                Ok(http
                    .post(self.start.clone())
                    .header(header::CONTENT_LENGTH, 0))
            })
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(status_error(response).await);
        }
        self.session.location(&response)
    }

    /// How much of the upload at `location` the registry holds: its URL and offset.
    async fn offset(&self, location: &Url) -> std::result::Result<(Url, u64), HttpError> {
        let response = self
            .session
            .send(&self.scopes, |http| Ok(http.get(location.clone())))
            .await?;
        if response.status() != StatusCode::NO_CONTENT {
            return Err(status_error(response).await);
        }
        let received = range_end(response.headers()).map_or(0, |end| end + 1);
        let location = self
            .session
            .location(&response)
            .unwrap_or_else(|_| location.clone());
        Ok((location, received))
    }
}

async fn expect(
    response: reqwest::Response,
    status: StatusCode,
) -> std::result::Result<(), HttpError> {
    if response.status() == status {
        Ok(())
    } else {
        Err(status_error(response).await)
    }
}

/// `length` bytes of the file at `path` from `offset`, as a streamed body that reports
/// progress to `meter`, if any.
async fn file_body(
    path: &std::path::Path,
    offset: u64,
    length: u64,
    mut meter: Option<Meter>,
) -> std::result::Result<Body, HttpError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| HttpError::permanent(format!("{}: {e}", path.display())))?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| HttpError::permanent(format!("{}: {e}", path.display())))?;
    let reader = tokio::io::AsyncReadExt::take(file, length);
    let stream =
        tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20).inspect_ok(move |chunk| {
            if let Some(meter) = meter.as_mut() {
                meter.add(chunk.len());
                if meter.is_complete() {
                    meter.finish();
                }
            }
        });
    Ok(Body::wrap_stream(stream))
}

/// What happened to one blob of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobOutcome {
    Uploaded,
    Mounted,
    Skipped,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The digest of the pushed manifest.
    pub manifest_digest: Digest,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs mounted from another repository of the same registry.
    pub mounted: usize,
    /// Blobs the registry already had.
    pub skipped: usize,
}

/// TLS settings of a [`RegistryClient`] for one host ([`RegistryClient::tls_for`]).
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Extra CA certificates (PEM) trusted besides the system's.
    pub ca_pems: Vec<Vec<u8>>,
    /// Whether any certificate is accepted.
    pub accept_invalid_certs: bool,
}
