//! Helpers shared by the registry tests.

#![allow(dead_code)]

use std::process::Command;

use serde_json::json;
use strata_registry::Layout;
use strata_testkit::busybox_rootfs;

/// Stores a one-layer image of a busybox root filesystem as `name`; returns its manifest digest.
pub fn store_busybox(layout: &Layout, name: &str) -> String {
    store_busybox_for(layout, name, "amd64")
}

/// The same, with the config naming `arch`.
pub fn store_busybox_for(layout: &Layout, name: &str, arch: &str) -> String {
    let rootfs = tempfile::tempdir().unwrap();
    busybox_rootfs(rootfs.path()).unwrap();
    let tar = Command::new("tar")
        .arg("-C")
        .arg(rootfs.path())
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let layer = layout.write_blob_bytes(&tar.stdout).unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    }))
    .unwrap();
    let config = layout.write_blob_bytes(&config).unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.digest, "size": layer.size}],
    }))
    .unwrap();
    let manifest = layout.write_blob_bytes(&manifest).unwrap();
    layout
        .tag(name, &manifest.descriptor(strata_registry::OCI_MANIFEST))
        .unwrap();
    manifest.digest.to_string()
}
