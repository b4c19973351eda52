//! Pulling images into, and pushing them from, an OCI layout, against real registries.
//!
//! Built on `oci-client` for the distribution protocol (auth challenges, bearer tokens,
//! chunked uploads). Blobs stream between the network and files: a pull writes each blob to
//! a temporary file while `oci-client` checks its digest, and renames it into the layout only
//! when it is whole; a push streams each blob from its file. Several layers move at once.

use std::fmt;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::{Credential, Credentials};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::manifest::{DOCKER_LIST, DOCKER_MANIFEST, Manifest, OCI_INDEX, OCI_MANIFEST};
use crate::progress::{Direction, Meter, ProgressSink};
use crate::reference::{Reference, is_loopback_host};

const ACCEPTED: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// How many blobs move at once.
const PARALLEL_BLOBS: usize = 4;

/// An OS/architecture/variant triple to pick from an image index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v7`, `v8`, ... when it matters.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this machine.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// The entry of an index's `manifests` (as JSON) for this platform, or an error naming
    /// `reference` and listing the platforms the index has.
    pub fn select<'a>(&self, entries: &'a [Value], reference: &str) -> Result<&'a Value> {
        entries
            .iter()
            .find(|m| self.matches(&m["platform"]))
            .ok_or_else(|| Error::NoPlatform {
                reference: reference.to_owned(),
                platform: self.to_string(),
                available: entries
                    .iter()
                    .map(|m| {
                        format!(
                            "{}/{}",
                            m["platform"]["os"].as_str().unwrap_or("?"),
                            m["platform"]["architecture"].as_str().unwrap_or("?")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn matches(&self, platform: &Value) -> bool {
        platform["os"] == self.os.as_str()
            && platform["architecture"] == self.architecture.as_str()
            && self
                .variant
                .as_ref()
                .is_none_or(|v| platform["variant"] == v.as_str())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image now held in a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The digest of the image manifest (the platform's, when the reference named an index).
    pub manifest_digest: String,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's size in bytes.
    pub manifest_size: u64,
    /// The config blob's digest.
    pub config_digest: String,
    /// The layers' digests, bottom first.
    pub layer_digests: Vec<String>,
    /// Blobs that were downloaded (the others were in the layout already).
    pub downloaded: usize,
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
    ca_pems: Vec<Vec<u8>>,
    skip_tls_verify: bool,
    progress: Option<ProgressSink>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("credentials", &self.credentials)
            .field("insecure", &self.insecure)
            .field("https_loopback", &self.https_loopback)
            .field("ca_certificates", &self.ca_pems.len())
            .field("skip_tls_verify", &self.skip_tls_verify)
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

    /// Reports the byte progress of every blob pulled or pushed to `sink`.
    pub fn on_progress(mut self, sink: ProgressSink) -> Self {
        self.progress = Some(sink);
        self
    }

    /// The client.
    pub fn build(self) -> RegistryClient {
        let insecure = self.insecure.clone();
        let https_loopback = self.https_loopback;
        RegistryClient {
            builder: Arc::new(self),
            insecure,
            https_loopback,
        }
    }
}

/// Talks to registries. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    builder: Arc<ClientBuilder>,
    insecure: Vec<String>,
    https_loopback: bool,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("options", &self.builder)
            .finish()
    }
}

fn registry_error(reference: impl fmt::Display, e: OciDistributionError) -> Error {
    let message = match &e {
        OciDistributionError::ServerError { code, url, message } => {
            format!("HTTP {code} from {url}: {}", excerpt(message))
        }
        OciDistributionError::RegistryError { envelope, url } => {
            let errors: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect();
            format!("{url}: {}", errors.join("; "))
        }
        OciDistributionError::UnauthorizedError { url } => {
            format!("HTTP 401 (authentication failed or required) for {url}")
        }
        OciDistributionError::AuthenticationFailure(m) => {
            format!("authentication failed: {}", excerpt(m))
        }
        other => other.to_string(),
    };
    Error::Registry {
        reference: reference.to_string(),
        message,
    }
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.len() > 300 {
        let mut end = 300;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text.to_owned()
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn malformed(reference: &Reference, message: impl Into<String>) -> Error {
    Error::UnsupportedManifest {
        reference: reference.to_string(),
        message: message.into(),
    }
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

    fn auth(&self, reference: &Reference) -> Result<RegistryAuth> {
        Ok(match self.credentials().get(reference.registry())? {
            Credential::Anonymous => RegistryAuth::Anonymous,
            Credential::Basic { username, password } => RegistryAuth::Basic(username, password),
            // Registries accept an identity token as the password of the `<token>` user.
            Credential::IdentityToken(token) => RegistryAuth::Basic("<token>".to_owned(), token),
        })
    }

    fn client_for(&self, reference: &Reference, pull: bool) -> Client {
        let registry = reference.registry().to_owned();
        let plain = (pull && self.builder.insecure_pull)
            || self.insecure.contains(&registry)
            || (!self.https_loopback && is_loopback_host(&registry));
        let config = ClientConfig {
            protocol: if plain {
                ClientProtocol::HttpsExcept(vec![registry])
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: self.builder.skip_tls_verify
                || self
                    .builder
                    .skip_tls_verify_for
                    .iter()
                    .any(|h| *h == reference.registry()),
            extra_root_certificates: self
                .builder
                .ca_pems
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            // One streaming PUT per blob (sizes are known) instead of a PATCH per stream chunk.
            use_monolithic_push: true,
            max_concurrent_download: PARALLEL_BLOBS,
            max_concurrent_upload: PARALLEL_BLOBS,
            ..ClientConfig::default()
        };
        Client::new(config)
    }

    fn oci_reference(reference: &Reference) -> oci_client::Reference {
        let (registry, repository) = (
            reference.registry().to_owned(),
            reference.repository().to_owned(),
        );
        match (reference.tag(), reference.digest()) {
            (_, Some(digest)) => {
                oci_client::Reference::with_digest(registry, repository, digest.to_owned())
            }
            (Some(tag), None) => {
                oci_client::Reference::with_tag(registry, repository, tag.to_owned())
            }
            (None, None) => {
                oci_client::Reference::with_tag(registry, repository, "latest".to_owned())
            }
        }
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
        let mut last = None;
        for candidate in &candidates {
            match self.pull_from(candidate, platform, layout).await {
                Ok(pulled) => return Ok(pulled),
                Err(e) => {
                    tracing::debug!(%candidate, error = %e, "pull failed; trying the next source");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Registry {
            reference: reference.to_string(),
            message: "no source to pull from".to_owned(),
        }))
    }

    async fn pull_from(
        &self,
        reference: &Reference,
        platform: &Platform,
        layout: &Layout,
    ) -> Result<PulledImage> {
        let client = self.client_for(reference, true);
        let auth = self.auth(reference)?;
        let mut oci_ref = Self::oci_reference(reference);
        let (mut bytes, _) = self
            .retry(reference, || {
                client.pull_manifest_raw(&oci_ref, &auth, &ACCEPTED)
            })
            .await?;
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
        if let Manifest::Index { manifests, .. } = &manifest {
            let chosen = platform.select(manifests, &name)?;
            let digest = chosen["digest"]
                .as_str()
                .ok_or_else(|| malformed(reference, "index entry without a digest"))?
                .to_owned();
            oci_ref = oci_client::Reference::with_digest(
                reference.registry().to_owned(),
                reference.repository().to_owned(),
                digest.clone(),
            );
            let (platform_bytes, _) = self
                .retry(reference, || {
                    client.pull_manifest_raw(&oci_ref, &auth, &ACCEPTED)
                })
                .await?;
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
        let Manifest::Image {
            media_type,
            config,
            layers,
        } = manifest
        else {
            return Err(malformed(reference, "an index names another index"));
        };
        let config_digest = config.digest.clone();
        let layer_digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
        let mut wanted: Vec<(String, u64)> = Vec::new();
        for descriptor in std::iter::once(config).chain(layers) {
            if !layout.has_blob(&descriptor.digest)
                && !wanted.iter().any(|(d, _)| *d == descriptor.digest)
            {
                wanted.push((descriptor.digest, descriptor.size));
            }
        }
        let downloaded = wanted.len();
        futures_util::stream::iter(wanted)
            .map(|(digest, size)| {
                let (client, oci_ref) = (&client, &oci_ref);
                async move {
                    self.pull_blob(client, oci_ref, reference, &digest, size, layout)
                        .await
                }
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

    async fn pull_blob(
        &self,
        client: &Client,
        oci_ref: &oci_client::Reference,
        reference: &Reference,
        digest: &str,
        size: u64,
        layout: &Layout,
    ) -> Result<()> {
        let tries = self.builder.retries.unwrap_or(DEFAULT_RETRIES) + 1;
        let mut pause = std::time::Duration::from_millis(200);
        let mut attempt = 1;
        let (staging, actual) = loop {
            // A fresh staging file each time: nothing half-received is ever resumed.
            let staging = layout.staging_file()?;
            let file = staging.reopen().map_err(Error::io(staging.path()))?;
            let meter = Meter::new(
                self.builder.progress.as_ref(),
                Direction::Pull,
                &reference.to_string(),
                digest,
                size,
            );
            let mut writer = HashingWriter::new(tokio::fs::File::from_std(file), meter);
            match client.pull_blob(oci_ref, digest, &mut writer).await {
                Ok(()) => {
                    tokio::io::AsyncWriteExt::flush(&mut writer)
                        .await
                        .map_err(Error::io(staging.path()))?;
                    writer.meter.finish();
                    break (staging, writer.digest());
                }
                Err(e) if attempt < tries && transient(&e) => {
                    tracing::debug!(%reference, %digest, attempt, error = %e, "retrying blob download");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                    attempt += 1;
                }
                Err(e) => return Err(registry_error(format!("{reference} blob {digest}"), e)),
            }
        };
        layout.commit_staged(staging, digest, &actual)
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
    /// repository holding the step layers) before uploading it.
    pub async fn push_mounting(
        &self,
        layout: &Layout,
        manifest_digest: &str,
        to: &Reference,
        mount_from: &[&Reference],
    ) -> Result<PushReport> {
        let client = self.client_for(to, false);
        let auth = self.auth(to)?;
        let oci_ref = Self::oci_reference(to);
        self.retry(to, || client.auth(&oci_ref, &auth, RegistryOperation::Push))
            .await?;
        let bytes = layout.read_blob(manifest_digest)?;
        let Manifest::Image {
            media_type,
            config,
            layers,
        } = Manifest::parse(&bytes, &to.to_string())?
        else {
            return Err(malformed(to, "pushing an index is not supported"));
        };
        let mut blobs: Vec<(String, u64)> = Vec::new();
        for descriptor in std::iter::once(config).chain(layers) {
            if !blobs.iter().any(|(d, _)| *d == descriptor.digest) {
                blobs.push((descriptor.digest, descriptor.size));
            }
        }
        let mount_sources: Vec<oci_client::Reference> = mount_from
            .iter()
            .filter(|source| {
                source.registry() == to.registry() && source.repository() != to.repository()
            })
            .map(|source| Self::oci_reference(source))
            .collect();
        let outcomes: Vec<BlobOutcome> = futures_util::stream::iter(blobs)
            .map(|(digest, size)| {
                let (client, oci_ref, mount_sources) = (&client, &oci_ref, &mount_sources);
                async move {
                    let what = format!("{to} blob {digest}");
                    if self
                        .retry(&what, || client.blob_exists(oci_ref, &digest))
                        .await?
                    {
                        return Ok::<BlobOutcome, Error>(BlobOutcome::Skipped);
                    }
                    for source in mount_sources {
                        if client.mount_blob(oci_ref, source, &digest).await.is_ok()
                            && self
                                .retry(&what, || client.blob_exists(oci_ref, &digest))
                                .await?
                        {
                            return Ok(BlobOutcome::Mounted);
                        }
                    }
                    let path = layout.blob_path(&digest)?;
                    let name = to.to_string();
                    self.retry(&what, || async {
                        let file = tokio::fs::File::open(&path)
                            .await
                            .map_err(OciDistributionError::IoError)?;
                        let mut meter = Meter::new(
                            self.builder.progress.as_ref(),
                            Direction::Push,
                            &name,
                            &digest,
                            size,
                        );
                        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
                            .inspect_ok(move |chunk| {
                                meter.add(chunk.len());
                                if meter.is_complete() {
                                    meter.finish();
                                }
                            })
                            .map_err(OciDistributionError::IoError);
                        client
                            .push_blob_stream(oci_ref, stream, &digest, Some(size))
                            .await
                    })
                    .await?;
                    Ok(BlobOutcome::Uploaded)
                }
            })
            .buffer_unordered(PARALLEL_BLOBS)
            .try_collect()
            .await?;
        let content_type: http::HeaderValue = media_type.parse().map_err(|_| {
            malformed(
                to,
                format!("media type `{media_type}` is not a valid header value"),
            )
        })?;
        self.retry(to, || {
            client.push_manifest_raw(&oci_ref, bytes.clone(), content_type.clone())
        })
        .await?;
        let count = |kind: BlobOutcome| outcomes.iter().filter(|o| **o == kind).count();
        Ok(PushReport {
            manifest_digest: sha256(&bytes),
            uploaded: count(BlobOutcome::Uploaded),
            mounted: count(BlobOutcome::Mounted),
            skipped: count(BlobOutcome::Skipped),
        })
    }

    /// Runs `operation`, again after a pause when it fails in a way that may pass (connection
    /// trouble, HTTP 5xx or 429), up to the configured number of tries.
    async fn retry<T, F, Fut>(&self, what: impl fmt::Display, mut operation: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = oci_client::errors::Result<T>>,
    {
        let tries = self.builder.retries.unwrap_or(DEFAULT_RETRIES) + 1;
        let mut pause = std::time::Duration::from_millis(200);
        for attempt in 1..=tries {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(e) if attempt < tries && transient(&e) => {
                    tracing::debug!(%what, attempt, error = %e, "retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => return Err(registry_error(what, e)),
            }
        }
        Err(Error::Registry {
            reference: what.to_string(),
            message: "no attempt was made".to_owned(),
        })
    }
}

/// Hashes what is written through it, so a received blob is verified in the same pass.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    meter: Meter,
}

impl<W> HashingWriter<W> {
    fn new(inner: W, meter: Meter) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            meter,
        }
    }

    fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HashingWriter<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = result {
            this.hasher.update(&buf[..n]);
            this.meter.add(n);
        }
        result
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
    pub manifest_digest: String,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs mounted from another repository of the same registry.
    pub mounted: usize,
    /// Blobs the registry already had.
    pub skipped: usize,
}

/// How many times a failing request is tried again by default.
const DEFAULT_RETRIES: u32 = 4;

/// Whether an error may pass if the request is made again.
fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RequestError(e) => {
            e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
        }
        OciDistributionError::IoError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                format!("{:?}", e.code).as_str(),
                "TooManyRequests" | "Unavailable"
            )
        }),
        _ => false,
    }
}
