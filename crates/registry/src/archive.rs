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

use serde_json::json;

use crate::error::{Error, Result};
use crate::reference::{DOCKER_HUB, Reference};
use strata_oci::{Layout, Manifest};

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

/// What a docker-archive holds, named as `docker load` reads them.
struct ArchiveParts<'a> {
    config_digest: &'a str,
    /// `<hex>.json`.
    config_name: &'a str,
    /// Each layer's digest and its `blobs/sha256/<hex>` name, bottom first.
    layers: Vec<(&'a str, &'a String)>,
    /// `manifest.json`.
    manifest: &'a [u8],
    /// `repositories`.
    repositories: &'a [u8],
}

impl ArchiveParts<'_> {
    /// The archive's tar into `file` (`path` names it in errors): directories, config,
    /// each layer once, `manifest.json`, `repositories`.
    fn write(&self, layout: &Layout, file: &std::fs::File, path: &Path) -> Result<()> {
        let io = |e| Error::io(path)(e);
        let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
        let mut dir_header = header(0, 0o755);
        dir_header.set_entry_type(tar::EntryType::Directory);
        builder
            .append_data(&mut dir_header, "blobs/", std::io::empty())
            .map_err(io)?;
        builder
            .append_data(&mut dir_header.clone(), "blobs/sha256/", std::io::empty())
            .map_err(io)?;
        let config = layout.read_blob(self.config_digest)?;
        builder
            .append_data(
                &mut header(config.len() as u64, 0o644),
                self.config_name,
                config.as_slice(),
            )
            .map_err(io)?;
        let mut written = std::collections::HashSet::new();
        for (digest, name) in &self.layers {
            if !written.insert(*name) {
                continue;
            }
            let blob = layout.open_blob(digest)?;
            let size = blob
                .metadata()
                .map_err(Error::io(layout.blob_path(digest)?))?
                .len();
            builder
                .append_data(&mut header(size, 0o644), name.as_str(), blob)
                .map_err(io)?;
        }
        builder
            .append_data(
                &mut header(self.manifest.len() as u64, 0o644),
                "manifest.json",
                self.manifest,
            )
            .map_err(io)?;
        builder
            .append_data(
                &mut header(self.repositories.len() as u64, 0o644),
                "repositories",
                self.repositories,
            )
            .map_err(io)?;
        let mut writer = builder.into_inner().map_err(io)?;
        writer.flush().map_err(io)?;
        Ok(())
    }
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
    let Manifest::Image(manifest) = Manifest::parse(&manifest_bytes, manifest_digest)? else {
        return Err(bad("an image index, where an image manifest was expected"));
    };
    let config_digest = manifest.config().digest().as_ref();
    let layers: Vec<&str> = manifest
        .layers()
        .iter()
        .map(|l| l.digest().as_ref())
        .collect();
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
    let parts = ArchiveParts {
        config_digest,
        config_name: &config_name,
        layers: layers.iter().copied().zip(&layer_names).collect(),
        manifest: &docker_manifest,
        repositories: &repositories,
    };
    parts.write(layout, tmp.as_file(), path)?;
    tmp.as_file().sync_all().map_err(Error::io(tmp.path()))?;
    tmp.persist(path).map_err(|e| Error::io(path)(e.error))?;
    Ok(())
}
