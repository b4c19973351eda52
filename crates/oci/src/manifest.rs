//! Image manifests and indexes as they arrive from a registry or a layout: untrusted JSON,
//! checked once here and turned into oci-spec's types, so that the pull and push code works
//! with digests that are valid, sizes that are numbers and platforms that are typed.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
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

/// A parsed manifest: an image, or an index of images, as oci-spec types. Its media type is
/// always set (to the OCI one when the document left it out); read it with
/// [`Manifest::media_type`].
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// An image manifest (OCI or Docker schema 2). (Both variants are boxed: oci-spec's
    /// types are hundreds of bytes each.)
    Image(Box<ImageManifest>),
    /// An image index or Docker manifest list; pick an entry with
    /// [`crate::Platform::select`].
    Index(Box<ImageIndex>),
}

impl Manifest {
    /// Parses `bytes` as a manifest of `reference` (named in errors). Schema 1, unknown media
    /// types, missing or invalid digests and sizes, index entries whose platform lacks an OS
    /// or architecture, and documents over [`MAX_MANIFEST_SIZE`] are errors. A descriptor
    /// without a `mediaType` gets an empty one.
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
        let mut value: Value = serde_json::from_slice(bytes)
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
            Value::String(s) => Some(s.clone()),
            _ => return Err(fail("`mediaType` is not a string".to_owned())),
        };
        let is_index = match declared.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) => return Err(fail(format!("unsupported manifest media type {other}"))),
            // OCI allows leaving it out: the shape says which it is.
            None => value["manifests"].is_array() && !value["layers"].is_array(),
        };
        let default_type = if is_index { OCI_INDEX } else { OCI_MANIFEST };
        value["mediaType"] = Value::from(declared.as_deref().unwrap_or(default_type));
        if value["schemaVersion"].is_null() {
            value["schemaVersion"] = Value::from(2);
        }
        if is_index {
            let manifests = value["manifests"]
                .as_array_mut()
                .ok_or_else(|| fail("the index has no `manifests` list".to_owned()))?;
            for (i, entry) in manifests.iter_mut().enumerate() {
                check_descriptor(entry)
                    .and_then(|()| check_platform(&entry["platform"]))
                    .map_err(|m| fail(format!("index entry {i}: {m}")))?;
            }
            return serde_json::from_value(value)
                .map(|index| Manifest::Index(Box::new(index)))
                .map_err(|e| fail(format!("not an image index: {e}")));
        }
        check_descriptor(&mut value["config"]).map_err(|m| fail(format!("config: {m}")))?;
        let layers = value["layers"]
            .as_array_mut()
            .ok_or_else(|| fail("the manifest has no `layers` list".to_owned()))?;
        for (i, layer) in layers.iter_mut().enumerate() {
            check_descriptor(layer).map_err(|m| fail(format!("layer {i}: {m}")))?;
        }
        serde_json::from_value(value)
            .map(|image| Manifest::Image(Box::new(image)))
            .map_err(|e| fail(format!("not an image manifest: {e}")))
    }

    /// The manifest's media type, as declared (or the OCI one when it was left out).
    pub fn media_type(&self) -> String {
        let declared = match self {
            Manifest::Image(image) => image.media_type(),
            Manifest::Index(index) => index.media_type(),
        };
        declared
            .as_ref()
            .map(MediaType::to_string)
            .unwrap_or_default()
    }

    /// The config and layer descriptors of an image manifest (none for an index).
    pub fn blobs(&self) -> Vec<&Descriptor> {
        match self {
            Manifest::Image(image) => std::iter::once(image.config())
                .chain(image.layers())
                .collect(),
            Manifest::Index(_) => Vec::new(),
        }
    }
}

/// Checks one descriptor with messages that say what is wrong (serde's would not), and gives
/// it an empty `mediaType` when it has none.
fn check_descriptor(value: &mut Value) -> std::result::Result<(), String> {
    if !value.is_object() {
        return Err("not a descriptor object".to_owned());
    }
    let digest = value["digest"]
        .as_str()
        .ok_or_else(|| "no `digest`".to_owned())?;
    validate_digest(digest).map_err(|e| e.to_string())?;
    if value["size"].as_u64().is_none() {
        return Err("no `size`, or not a whole number of bytes".to_owned());
    }
    match &value["mediaType"] {
        Value::Null => value["mediaType"] = Value::from(""),
        Value::String(_) => {}
        _ => return Err("`mediaType` is not a string".to_owned()),
    }
    Ok(())
}

/// An index entry's platform, when it has one, must name its OS and architecture.
fn check_platform(platform: &Value) -> std::result::Result<(), String> {
    if platform.is_null() {
        return Ok(());
    }
    for field in ["os", "architecture"] {
        if !platform[field].is_string() {
            return Err(format!("its platform has no `{field}`"));
        }
    }
    Ok(())
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
        let manifest = Manifest::parse(text.as_bytes(), "r").unwrap();
        let Manifest::Image(image) = &manifest else {
            panic!("not an image");
        };
        let config = image.config();
        assert_eq!(
            (config.size(), config.media_type().to_string()),
            (7, "c".to_owned())
        );
        assert_eq!(image.layers().len(), 1);
        assert_eq!(image.layers()[0].digest().as_ref(), D);
        assert_eq!(image.layers()[0].media_type().to_string(), "");
        assert_eq!(manifest.media_type(), OCI_MANIFEST);
        assert_eq!(manifest.blobs().len(), 2);
    }

    #[test]
    fn index_without_media_type() {
        let text = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{D}","size":1}}]}}"#);
        let manifest = Manifest::parse(text.as_bytes(), "r").unwrap();
        assert!(matches!(&manifest, Manifest::Index(index) if index.manifests().len() == 1));
        assert_eq!(manifest.media_type(), OCI_INDEX);
        assert!(manifest.blobs().is_empty());
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
            (
                format!(
                    r#"{{"manifests":[{{"digest":"{D}","size":1,"platform":{{"os":"linux"}}}}]}}"#
                ),
                "index entry 0: its platform has no `architecture`",
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
