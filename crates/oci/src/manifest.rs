//! Image manifests and indexes as they arrive from a registry or a layout: untrusted JSON,
//! checked once here so that the pull and push code works with digests that are valid and
//! sizes that are numbers.

use serde_json::Value;

use crate::digest::validate_digest;
use crate::error::{Error, Result};

/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker's schema 2 image manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's schema 2 manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The largest manifest or index strata reads (containerd's limit too): a registry that
/// sends more is refused before the bytes are kept.
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

/// A content descriptor: what a manifest says about one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The blob's media type (empty when the manifest gives none).
    pub media_type: String,
    /// The blob's digest, validated (`sha256:` and 64 lowercase hex digits, or another
    /// algorithm the reference rules accept).
    pub digest: String,
    /// The blob's size in bytes.
    pub size: u64,
}

/// A parsed manifest: an image, or an index of images.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// An image manifest (OCI or Docker schema 2).
    Image {
        /// Its media type.
        media_type: String,
        /// The config blob.
        config: Descriptor,
        /// The layers, bottom first.
        layers: Vec<Descriptor>,
    },
    /// An image index or Docker manifest list.
    Index {
        /// Its media type.
        media_type: String,
        /// Its entries as they were written (each has a valid `digest`); pick one with
        /// [`crate::Platform::select`].
        manifests: Vec<Value>,
    },
}

impl Manifest {
    /// Parses `bytes` as a manifest of `reference` (named in errors). Schema 1, unknown media
    /// types, missing or invalid digests and sizes, and documents over
    /// [`MAX_MANIFEST_SIZE`] are errors.
    pub fn parse(bytes: &[u8], reference: &str) -> Result<Manifest> {
        let fail = |message: String| Error::UnsupportedManifest {
            reference: reference.to_owned(),
            message,
        };
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(fail(format!(
                "the manifest is {} bytes, more than the {MAX_MANIFEST_SIZE} strata accepts",
                bytes.len()
            )));
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| fail(format!("the manifest is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(fail("the manifest is not a JSON object".to_owned()));
        }
        if value["schemaVersion"] == 1 {
            return Err(fail(
                "schema 1 manifests are not supported (push the image again with a current client)"
                    .to_owned(),
            ));
        }
        let declared = match &value["mediaType"] {
            Value::Null => None,
            Value::String(s) => Some(s.as_str()),
            _ => return Err(fail("`mediaType` is not a string".to_owned())),
        };
        let is_index = match declared {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) => return Err(fail(format!("unsupported manifest media type {other}"))),
            // OCI allows leaving it out: the shape says which it is.
            None => value["manifests"].is_array() && !value["layers"].is_array(),
        };
        if is_index {
            let manifests = value["manifests"]
                .as_array()
                .ok_or_else(|| fail("the index has no `manifests` list".to_owned()))?;
            for (i, entry) in manifests.iter().enumerate() {
                descriptor(entry).map_err(|m| fail(format!("index entry {i}: {m}")))?;
            }
            return Ok(Manifest::Index {
                media_type: declared.unwrap_or(OCI_INDEX).to_owned(),
                manifests: manifests.clone(),
            });
        }
        let config = descriptor(&value["config"]).map_err(|m| fail(format!("config: {m}")))?;
        let layers = value["layers"]
            .as_array()
            .ok_or_else(|| fail("the manifest has no `layers` list".to_owned()))?
            .iter()
            .enumerate()
            .map(|(i, layer)| descriptor(layer).map_err(|m| fail(format!("layer {i}: {m}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Manifest::Image {
            media_type: declared.unwrap_or(OCI_MANIFEST).to_owned(),
            config,
            layers,
        })
    }
}

fn descriptor(value: &Value) -> std::result::Result<Descriptor, String> {
    if !value.is_object() {
        return Err("not a descriptor object".to_owned());
    }
    let digest = value["digest"]
        .as_str()
        .ok_or_else(|| "no `digest`".to_owned())?;
    validate_digest(digest).map_err(|e| e.to_string())?;
    let size = value["size"]
        .as_u64()
        .ok_or_else(|| "no `size`, or not a whole number of bytes".to_owned())?;
    let media_type = match &value["mediaType"] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        _ => return Err("`mediaType` is not a string".to_owned()),
    };
    Ok(Descriptor {
        media_type,
        digest: digest.to_owned(),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn image_manifest() {
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"c","digest":"{D}","size":7}},"layers":[{{"digest":"{D}","size":9}}]}}"#
        );
        let Manifest::Image { config, layers, .. } = Manifest::parse(text.as_bytes(), "r").unwrap()
        else {
            panic!("not an image");
        };
        assert_eq!((config.size, config.media_type.as_str()), (7, "c"));
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].digest, D);
    }

    #[test]
    fn index_without_media_type() {
        let text = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{D}","size":1}}]}}"#);
        assert!(matches!(
            Manifest::parse(text.as_bytes(), "r").unwrap(),
            Manifest::Index { manifests, .. } if manifests.len() == 1
        ));
    }

    #[test]
    fn refusals_name_the_reference_and_the_fault() {
        let cases = [
            (r#"{"schemaVersion":1}"#.to_owned(), "schema 1"),
            ("[]".to_owned(), "not a JSON object"),
            ("{".to_owned(), "not JSON"),
            (r#"{"mediaType":"text/plain"}"#.to_owned(), "text/plain"),
            (
                format!(
                    r#"{{"config":{{"digest":"{D}","size":1}},"layers":[{{"digest":"sha256:../../x","size":1}}]}}"#
                ),
                "layer 0",
            ),
            (
                format!(r#"{{"config":{{"digest":"{D}","size":-1}},"layers":[]}}"#),
                "config: no `size`",
            ),
            (
                format!(r#"{{"config":{{"digest":"{D}","size":1}}}}"#),
                "no `layers`",
            ),
        ];
        for (text, expected) in cases {
            let message = Manifest::parse(text.as_bytes(), "reg/x:1")
                .unwrap_err()
                .to_string();
            assert!(message.starts_with("reg/x:1: "), "{message}");
            assert!(message.contains(expected), "{text}: {message}");
        }
        let huge = vec![b' '; MAX_MANIFEST_SIZE + 1];
        assert!(
            Manifest::parse(&huge, "r")
                .unwrap_err()
                .to_string()
                .contains("more than")
        );
    }
}
