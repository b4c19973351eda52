//! A multi-platform base image: an image index whose entries hold different files, so a test
//! can tell which platform's image a build used.

use std::io::Write;

use flate2::{Compression, write::GzEncoder};
use serde_json::json;

use crate::Result;
use crate::client::sha256_digest;
use crate::error::Error;
use crate::registry::TestRegistry;

/// Pushes an OCI image index to `registry` as `REPOSITORY:TAG` with one single-layer image per
/// platform of `platforms` (`os/arch[/variant]`). Each image holds one file, `/platform`,
/// whose content is its platform followed by a newline, and its config names that platform.
/// Returns the reference `127.0.0.1:PORT/REPOSITORY:TAG`.
pub fn push_platform_index(
    registry: &TestRegistry,
    repository: &str,
    tag: &str,
    platforms: &[&str],
) -> Result<String> {
    let client = registry.client();
    let json_error = |e: serde_json::Error| Error::Credentials(e.to_string());
    let mut manifests = Vec::new();
    for platform in platforms {
        let mut parts = platform.split('/');
        let os = parts.next().unwrap_or("linux");
        let architecture = parts.next().unwrap_or("amd64");
        let variant = parts.next();
        let content = format!("{platform}\n");
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, "platform", content.as_bytes())
            .map_err(Error::io("<tar>"))?;
        let tar = builder.into_inner().map_err(Error::io("<tar>"))?;
        let diff_id = sha256_digest(&tar);
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&tar).map_err(Error::io("<gzip>"))?;
        let layer = gz.finish().map_err(Error::io("<gzip>"))?;
        let mut platform_json = json!({"os": os, "architecture": architecture});
        let mut config = json!({
            "architecture": architecture,
            "os": os,
            "created": "2023-11-14T22:13:20Z",
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": format!("strata-testkit {platform}")}],
        });
        if let Some(variant) = variant {
            platform_json["variant"] = json!(variant);
            config["variant"] = json!(variant);
        }
        let config = serde_json::to_vec(&config).map_err(json_error)?;
        let pushed =
            crate::busybox::push_one_layer_image(&client, repository, None, &layer, &config)?;
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": pushed.manifest_digest,
            "size": pushed.manifest_size,
            "platform": platform_json,
        }));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let index = serde_json::to_vec(&index).map_err(json_error)?;
    client.put_manifest(
        repository,
        tag,
        "application/vnd.oci.image.index.v1+json",
        &index,
    )?;
    Ok(format!("{}/{repository}:{tag}", registry.host()))
}
