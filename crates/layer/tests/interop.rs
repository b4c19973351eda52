//! Interoperability with independent tools: umoci unpacks an image holding our layer to the
//! same tree, and we extract what GNU tar writes to the same tree.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{describe, tree_entries};
use serde_json::json;
use sha2::{Digest, Sha256};
use strata_layer::{Compression, Extractor, LayerWriter};
use strata_testkit::find_program;

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(
        root.join("usr/bin/tool"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    fs::write(root.join("usr/data"), vec![42u8; 100_000]).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    fs::hard_link(root.join("usr/data"), root.join("usr/data-link")).unwrap();
    let deep = root.join("l".repeat(90)).join("m".repeat(90));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("n".repeat(90)), "long").unwrap();
    rustix::fs::lsetxattr(
        root.join("usr/data"),
        "user.origin",
        b"test",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::lchown(root.join("usr/bin/tool"), Some(1000), Some(50)).unwrap();
    }
    for entry in tree_entries(root).iter().rev() {
        strata_testkit::set_mtime(&root.join(&entry.path), 1_650_000_000).unwrap();
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes an OCI image layout holding one image with `layer` as its only layer.
fn write_layout(layout: &Path, layer: &[u8], media_type: &str, diff_id: &str) {
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(blobs.join(sha256(layer)), layer).unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "config": {},
    }))
    .unwrap();
    fs::write(blobs.join(sha256(&config)), &config).unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha256(&config)), "size": config.len()},
        "layers": [{"mediaType": media_type, "digest": format!("sha256:{}", sha256(layer)), "size": layer.len()}],
    }))
    .unwrap();
    fs::write(blobs.join(sha256(&manifest)), &manifest).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256(&manifest)), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// Writes `source` as a one-layer image and lets umoci unpack it: (work dir, layout, bundle).
fn umoci_bundle(
    umoci: &Path,
    source: &Path,
    compression: Compression,
) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let mut blob = Vec::new();
    let layer = LayerWriter::new()
        .compression(compression)
        .write(tree_entries(source), &mut blob)
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("image");
    write_layout(
        &layout,
        &blob,
        layer.descriptor.media_type().as_ref(),
        layer.diff_id.as_ref(),
    );
    let bundle = work.path().join("bundle");
    umoci_run(
        umoci,
        &[
            "unpack",
            "--image",
            &format!("{}:latest", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    (work, layout, bundle)
}

fn umoci_run(umoci: &Path, args: &[&str]) {
    let output = Command::new(umoci).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "umoci {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn umoci_unpacks_our_layer_to_the_same_tree() {
    let umoci = find_program("umoci", "umoci").unwrap();
    let source = tempfile::tempdir().unwrap();
    sample_tree(source.path());
    // Debian's umoci reads gzip and plain layers, not zstd (see the zstd test below).
    for compression in [Compression::Gzip { level: 6 }, Compression::None] {
        let (_work, _layout, bundle) = umoci_bundle(&umoci, source.path(), compression);
        assert_eq!(
            describe(source.path()),
            describe(&bundle.join("rootfs")),
            "{compression:?}"
        );
    }
}

#[test]
fn we_extract_what_gnu_tar_writes_to_the_same_tree() {
    let source = tempfile::tempdir().unwrap();
    sample_tree(source.path());
    // (ustar cannot hold the sample's 270-byte names; GNU tar refuses it, as it should.)
    for format in ["pax", "gnu"] {
        let work = tempfile::tempdir().unwrap();
        let archive = work.path().join("layer.tar.gz");
        let output = Command::new("tar")
            .arg(format!("--format={format}"))
            .args(["--xattrs", "--xattrs-include=*", "-czf"])
            .arg(&archive)
            .arg("-C")
            .arg(source.path())
            .arg(".")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let target = work.path().join("rootfs");
        fs::create_dir(&target).unwrap();
        Extractor::new()
            .apply(fs::File::open(&archive).unwrap(), &target)
            .unwrap();
        let expected = describe(source.path());
        let mut actual = describe(&target);
        if format == "gnu" {
            // GNU format stores xattrs only as PAX records, which --format=gnu cannot write.
            for value in actual.values_mut() {
                *value = value.replace("[(\"user.origin\", [116, 101, 115, 116])]", "[]");
            }
            let mut expected = expected.clone();
            for value in expected.values_mut() {
                *value = value.replace("[(\"user.origin\", [116, 101, 115, 116])]", "[]");
            }
            assert_eq!(expected, actual, "{format}");
        } else {
            assert_eq!(expected, actual, "{format}");
        }
    }
}

#[test]
fn the_zstd_cli_and_gnu_tar_read_our_zstd_layer() {
    let source = tempfile::tempdir().unwrap();
    sample_tree(source.path());
    let work = tempfile::tempdir().unwrap();
    let blob = work.path().join("layer.tar.zst");
    let layer = LayerWriter::new()
        .compression(Compression::Zstd { level: 3 })
        .write(
            tree_entries(source.path()),
            fs::File::create(&blob).unwrap(),
        )
        .unwrap();
    let plain = Command::new("zstd").arg("-dc").arg(&blob).output().unwrap();
    assert!(
        plain.status.success(),
        "zstd: {}",
        String::from_utf8_lossy(&plain.stderr)
    );
    assert_eq!(
        format!("sha256:{}", sha256(&plain.stdout)),
        layer.diff_id.to_string()
    );
    let target = work.path().join("rootfs");
    fs::create_dir(&target).unwrap();
    let output = Command::new("tar")
        .args([
            "--zstd",
            "--xattrs",
            "--xattrs-include=*",
            "--same-owner",
            "-xpf",
        ])
        .arg(&blob)
        .arg("-C")
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(describe(source.path()), describe(&target));
}

/// The layers of the image tagged `tag` in an OCI layout, in order: (media type, blob path).
fn layout_layers(layout: &Path, tag: &str) -> Vec<(String, std::path::PathBuf)> {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let blob = |digest: &serde_json::Value| {
        layout
            .join("blobs/sha256")
            .join(digest.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(&manifest["digest"])).unwrap()).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["mediaType"].as_str().unwrap().to_owned(),
                blob(&l["digest"]),
            )
        })
        .collect()
}

#[test]
fn we_apply_layers_umoci_writes_whiteouts_included() {
    let umoci = find_program("umoci", "umoci").unwrap();
    let source = tempfile::tempdir().unwrap();
    sample_tree(source.path());
    let (work, layout, bundle) = umoci_bundle(&umoci, source.path(), Compression::default());
    let run = |args: &[&str]| umoci_run(&umoci, args);

    // Change the tree the way a build step would, and let umoci write the diff as a layer.
    let rootfs = bundle.join("rootfs");
    fs::remove_file(rootfs.join("usr/data-link")).unwrap();
    fs::remove_dir_all(rootfs.join("l".repeat(90))).unwrap();
    fs::write(rootfs.join("usr/bin/tool"), "#!/bin/sh\necho changed\n").unwrap();
    fs::create_dir(rootfs.join("etc")).unwrap();
    fs::write(rootfs.join("etc/new"), "added").unwrap();
    // umoci rounds times to the second when it writes; give the changed paths whole seconds.
    for changed in ["etc/new", "etc", "usr/bin/tool", "usr", ""] {
        strata_testkit::set_mtime(&rootfs.join(changed), 1_700_000_000).unwrap();
    }
    run(&[
        "repack",
        "--image",
        &format!("{}:next", layout.display()),
        bundle.to_str().unwrap(),
    ]);

    // Applying umoci's layers in order gives umoci's tree.
    let layers = layout_layers(&layout, "next");
    assert_eq!(layers.len(), 2);

    let target = work.path().join("ours");
    fs::create_dir(&target).unwrap();
    for (media_type, path) in &layers {
        Extractor::new()
            .media_type(Some(media_type.clone()))
            .apply(fs::File::open(path).unwrap(), &target)
            .unwrap();
    }
    assert_eq!(describe(&rootfs), describe(&target));
}
