//! Turns a directory into a one-layer image and pushes it: no Dockerfile, no engine, just
//! the layer and registry crates.
//!
//! ```sh
//! cargo run --example push_dir -- ./site localhost:5000/team/site:1 [--cmd /bin/serve]
//! ```
//!
//! The layer holds the directory's files at the image root, owned by root, with the times
//! clamped to 0 so the same directory always gives the same digest.

use std::path::Path;

use strata::layer::{Entry, EntryKind, LayerWriter, Metadata};
use strata::registry::{Layout, Reference, RegistryClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, reference, cmd) = match args.as_slice() {
        [dir, reference] => (dir, reference, None),
        [dir, reference, flag, cmd] if flag == "--cmd" => (dir, reference, Some(cmd.clone())),
        _ => return Err("usage: push_dir DIR REFERENCE [--cmd COMMAND]".into()),
    };
    let reference = Reference::parse(reference)?;

    // 1. The directory's entries, paths relative to it.
    let mut entries = Vec::new();
    collect(Path::new(dir), Path::new(dir), &mut entries)?;

    // 2. One layer, written to a temporary file in a scratch layout and renamed to its digest.
    let scratch = tempfile::tempdir()?;
    let layout = Layout::open(scratch.path())?;
    let staged = layout.staging_file()?;
    let layer = LayerWriter::new()
        .clamp_mtime(Some(0))
        .write(entries, std::io::BufWriter::new(staged.as_file()))?;
    let layer_digest = layer.descriptor.digest().to_string();
    layout.commit_staged(staged, &layer_digest, &layer_digest)?;

    // 3. The config and manifest (OCI media types).
    let platform = strata::registry::Platform::host();
    let config = serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": { "Cmd": cmd.map(|c| vec![c]) },
        "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
        "history": [{ "created_by": format!("push_dir {dir}") }],
    });
    let config_blob = layout.write_blob_bytes(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_blob.digest,
            "size": config_blob.size,
        },
        "layers": [{
            "mediaType": layer.descriptor.media_type().to_string(),
            "digest": layer_digest,
            "size": layer.descriptor.size(),
        }],
    });
    let manifest_blob = layout.write_blob_bytes(&serde_json::to_vec(&manifest)?)?;

    // 4. Push: blobs the registry has are skipped, the manifest goes last.
    let client = RegistryClient::builder().build();
    let report = client
        .push(&layout, manifest_blob.digest.as_ref(), &reference, None)
        .await?;
    println!(
        "pushed {reference}@{} ({} files, {} blobs uploaded, {} already there)",
        report.manifest_digest, layer.entries, report.uploaded, report.skipped
    );
    Ok(())
}

/// Adds an entry for everything under `dir`, as paths relative to `root`, in a sorted order.
fn collect(root: &Path, dir: &Path, entries: &mut Vec<Entry>) -> std::io::Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let path = child.path();
        let meta = std::fs::symlink_metadata(&path)?;
        // Names go into the layer as their bytes, UTF-8 or not.
        let relative = path
            .strip_prefix(root)
            .map_err(std::io::Error::other)?
            .to_owned();
        let kind = if meta.is_dir() {
            EntryKind::Dir
        } else if meta.is_symlink() {
            EntryKind::Symlink {
                target: std::fs::read_link(&path)?,
            }
        } else if meta.is_file() {
            EntryKind::File {
                source: path.clone(),
                size: meta.len(),
            }
        } else {
            // Devices, sockets and pipes have no place in an image made from a directory.
            continue;
        };
        use std::os::unix::fs::PermissionsExt;
        entries.push(Entry {
            path: relative,
            kind,
            metadata: Metadata {
                mode: meta.permissions().mode() & 0o7777,
                ..Metadata::default()
            },
        });
        if meta.is_dir() {
            collect(root, &path, entries)?;
        }
    }
    Ok(())
}
