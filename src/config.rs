//! The image config and manifest as Docker tools read them.
//!
//! Fields strata does not know are kept as they came from the base image (`extra`), so that
//! building on an image never drops what another tool put there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// An image config (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// When the image was made (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// `MAINTAINER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture (`amd64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// Architecture variant (`v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// What a container of the image runs with.
    #[serde(default)]
    pub config: RuntimeConfig,
    /// The layers' `diff_id`s.
    #[serde(default)]
    pub rootfs: RootFs,
    /// One entry per instruction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Fields kept from the base image.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `sha256:` digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> RootFs {
        RootFs {
            kind: "layers".to_owned(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The instruction made no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
    /// Fields kept from the base image.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `config` object: Docker's container configuration, with BuildKit's `Healthcheck`,
/// `OnBuild` and `Shell` kept whatever the media type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    /// `USER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `EXPOSE`: `port/proto` → `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    /// `ENV` as `K=V`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// `ENTRYPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME`: path → `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    /// `WORKDIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `LABEL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `STOPSIGNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `HEALTHCHECK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Value>,
    /// `ONBUILD` triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    /// `SHELL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Fields kept from the base image.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl RuntimeConfig {
    /// The environment as name/value pairs, in order.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .flatten()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }

    /// Sets `name` to `value`, replacing an earlier value in place.
    pub fn set_env(&mut self, name: &str, value: &str) {
        let env = self.env.get_or_insert_with(Vec::new);
        let entry = format!("{name}={value}");
        // A byte comparison per entry, no splitting: Dockerfiles with 100,000 ENV lines
        // stay fast.
        match env.iter_mut().find(|kv| names(kv, name)) {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }

    /// The value of `name` in the environment.
    pub fn get_env(&self, name: &str) -> Option<String> {
        self.env
            .iter()
            .flatten()
            .find(|kv| names(kv, name))
            .map(|kv| kv.get(name.len() + 1..).unwrap_or_default().to_owned())
    }
}

/// Whether the `NAME=value` entry `kv` is for `name` (an entry without `=` names itself).
fn names(kv: &str, name: &str) -> bool {
    let (kv, name) = (kv.as_bytes(), name.as_bytes());
    kv.len() >= name.len()
        && kv[..name.len()] == *name
        && (kv.len() == name.len() || kv[name.len()] == b'=')
}

/// A layer of an image: its blob and its `diff_id` (the same type the cache records).
pub type LayerRef = strata_oci::LayerBlob;

/// Docker's layer media types and their OCI equivalents (the bytes are the same).
pub fn oci_layer_media_type(media_type: &str) -> String {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip".to_owned()
        }
        "application/vnd.docker.image.rootfs.diff.tar" => {
            "application/vnd.oci.image.layer.v1.tar".to_owned()
        }
        other => other.to_owned(),
    }
}

/// The manifest of an image with this config blob, these layers and these annotations.
pub fn manifest(
    config: &strata_oci::BlobInfo,
    layers: &[LayerRef],
    annotations: BTreeMap<String, String>,
) -> crate::Result<strata_oci::ImageManifest> {
    use strata_oci::spec::{ImageManifestBuilder, MediaType};
    let layers = layers
        .iter()
        .map(|l| l.descriptor(&oci_layer_media_type(&l.media_type)))
        .collect::<Vec<_>>();
    let mut manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config.descriptor(OCI_CONFIG))
        .layers(layers);
    if !annotations.is_empty() {
        manifest = manifest.annotations(
            annotations
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        );
    }
    manifest
        .build()
        .map_err(|e| crate::Error::Invalid(format!("image manifest: {e}")))
}

/// RFC 3339 for `secs` since the epoch, in UTC (`1970-01-01T00:00:00Z`); times beyond the
/// years -9999 and 9999 are clamped to them.
pub fn rfc3339(secs: i64) -> String {
    let clamped = secs.clamp(
        jiff::Timestamp::MIN.as_second(),
        jiff::Timestamp::MAX.as_second(),
    );
    jiff::Timestamp::from_second(clamped)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-30T22:00:00Z");
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let text = r#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Tty":false,"OnBuild":["RUN x"]},"rootfs":{"type":"layers","diff_ids":[]},"container":"abc"}"#;
        let config: ImageConfig = serde_json::from_str(text).unwrap();
        assert_eq!(
            config.config.on_build.as_deref(),
            Some(&["RUN x".to_owned()][..])
        );
        let back = serde_json::to_value(&config).unwrap();
        assert_eq!(back["container"], "abc");
        assert_eq!(back["config"]["Tty"], false);
    }

    /// Found by the `manifest` fuzz target: a number that is not exactly a u64 or an i64 in
    /// a base image's config must come back as the same number, not a neighbouring float.
    #[test]
    fn large_numbers_in_unknown_fields_round_trip_exactly() {
        let text = r#"{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]},"size":3333333333333333333333333333333333333333333333331,"other":0.1}"#;
        let config: ImageConfig = serde_json::from_str(text).unwrap();
        let printed = serde_json::to_string(&config).unwrap();
        let again: ImageConfig = serde_json::from_str(&printed).unwrap();
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            serde_json::to_value(&config).unwrap()
        );
        assert_eq!(serde_json::to_value(&config).unwrap()["other"], 0.1);
    }

    #[test]
    fn env_is_replaced_in_place() {
        let mut config = RuntimeConfig::default();
        config.set_env("PATH", "/bin");
        config.set_env("A", "1");
        config.set_env("PATH", "/usr/bin:/bin");
        assert_eq!(
            config.env.as_deref().unwrap(),
            ["PATH=/usr/bin:/bin", "A=1"]
        );
        assert_eq!(config.get_env("A").as_deref(), Some("1"));
    }
}
