//! The docker-archive output: one tar that `docker load` and `podman load` take.
//!
//! It holds `manifest.json` (the config file, the tags and the layer files in order),
//! `repositories` (the legacy tag map), the config as `<hex>.json`, and each layer as it is
//! stored, under `blobs/sha256/<hex>` (loaders detect and undo gzip or zstd themselves). Blobs
//! stream from the layout into the archive; the archive is written to a temporary file and
//! renamed into place.

use std::collections::BTreeMap;

use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::reference::{DOCKER_HUB, Reference};
use strata_oci::Layout;

fn header(size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

/// The name Docker shows for a reference: Docker Hub images without `docker.io/library/`.
fn docker_name(reference: &Reference) -> String {
    let repository = if reference.registry() == DOCKER_HUB {
        reference
            .repository()
            .strip_prefix("library/")
            .unwrap_or(reference.repository())
            .to_owned()
    } else {
        reference.name()
    };
    format!("{repository}:{}", reference.tag().unwrap_or("latest"))
}

/// Writes the image whose manifest is `manifest_digest` in `layout` as a docker-archive at
/// `path`, tagged with `tags`.
pub fn write_docker_archive(
    layout: &Layout,
    manifest_digest: &str,
    tags: &[Reference],
    path: &Path,
) -> Result<()> {
    let manifest_path = layout.blob_path(manifest_digest)?;
    let manifest_bytes = layout.read_blob(manifest_digest)?;
    let bad = |message: &str| Error::Malformed {
        path: manifest_path.clone(),
        message: message.to_owned(),
    };
    let manifest: Value = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| bad(&format!("manifest is not JSON: {e}")))?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| bad("manifest without a config"))?;
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .ok_or_else(|| bad("manifest without layers"))?
        .iter()
        .map(|l| {
            l["digest"]
                .as_str()
                .ok_or_else(|| bad("layer without a digest"))
        })
        .collect::<Result<_>>()?;
    let hex = |digest: &str| strata_oci::digest::hex_part(digest).to_owned();
    let config_name = format!("{}.json", hex(config_digest));
    let layer_names: Vec<String> = layers
        .iter()
        .map(|d| format!("blobs/sha256/{}", hex(d)))
        .collect();
    let repo_tags: Vec<String> = tags.iter().map(docker_name).collect();
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": repo_tags,
        "Layers": layer_names,
    }]))
    .map_err(|e| bad(&e.to_string()))?;
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    if let Some(top) = layers.last() {
        for tag in &repo_tags {
            if let Some((name, tag)) = tag.rsplit_once(':') {
                repositories
                    .entry(name.to_owned())
                    .or_default()
                    .insert(tag.to_owned(), hex(top));
            }
        }
    }
    let repositories = serde_json::to_vec(&repositories).map_err(|e| bad(&e.to_string()))?;

    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(Error::io(dir))?;
    let io = |e| Error::io(path)(e);
    {
        let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, tmp.as_file()));
        let mut dir_header = header(0, 0o755);
        dir_header.set_entry_type(tar::EntryType::Directory);
        builder
            .append_data(&mut dir_header, "blobs/", std::io::empty())
            .map_err(io)?;
        builder
            .append_data(&mut dir_header.clone(), "blobs/sha256/", std::io::empty())
            .map_err(io)?;
        let config = layout.read_blob(config_digest)?;
        builder
            .append_data(
                &mut header(config.len() as u64, 0o644),
                &config_name,
                config.as_slice(),
            )
            .map_err(io)?;
        let mut written = std::collections::HashSet::new();
        for (digest, name) in layers.iter().zip(&layer_names) {
            if !written.insert(name.clone()) {
                continue;
            }
            let blob = layout.open_blob(digest)?;
            let size = blob
                .metadata()
                .map_err(Error::io(layout.blob_path(digest)?))?
                .len();
            builder
                .append_data(&mut header(size, 0o644), name, blob)
                .map_err(io)?;
        }
        builder
            .append_data(
                &mut header(docker_manifest.len() as u64, 0o644),
                "manifest.json",
                docker_manifest.as_slice(),
            )
            .map_err(io)?;
        builder
            .append_data(
                &mut header(repositories.len() as u64, 0o644),
                "repositories",
                repositories.as_slice(),
            )
            .map_err(io)?;
        let mut writer = builder.into_inner().map_err(io)?;
        writer.flush().map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(Error::io(tmp.path()))?;
    tmp.persist(path).map_err(|e| Error::io(path)(e.error))?;
    Ok(())
}
