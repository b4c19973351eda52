//! The OCI layout store, read back by skopeo and umoci.

use std::fs;
use std::process::Command;

use serde_json::json;
use strata_registry::{Error, Layout};
use strata_testkit::find_program;

mod common;
use common::store_busybox;

#[test]
fn skopeo_and_umoci_read_what_the_layout_holds() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path().join("oci")).unwrap();
    let digest = store_busybox(&layout, "busybox:1");
    let skopeo = find_program("skopeo", "skopeo").unwrap();
    let inspect = Command::new(&skopeo)
        .arg("inspect")
        .arg(format!("oci:{}:busybox:1", layout.root().display()))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());

    let umoci = find_program("umoci", "umoci").unwrap();
    let bundle = dir.path().join("bundle");
    let unpack = Command::new(&umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:busybox:1", layout.root().display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        unpack.status.success(),
        "{}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());
}

#[test]
fn tags_replace_and_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let first = store_busybox(&layout, "app");
    assert_eq!(layout.resolve("app").unwrap()["digest"], first.as_str());
    layout.tag("app", &json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:".to_owned() + &"1".repeat(64), "size": 1})).unwrap();
    assert_eq!(
        layout.index().unwrap()["manifests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(matches!(
        layout.resolve("missing"),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn a_wrong_digest_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = layout
        .write_blob(&b"some bytes"[..], Some(&wrong))
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    assert!(!layout.has_blob(&wrong));
    assert_eq!(
        fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "no temporary file left"
    );
    assert_eq!(
        fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn concurrent_taggers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    std::thread::scope(|s| {
        for i in 0..8 {
            let layout = layout.clone();
            s.spawn(move || {
                for j in 0..10 {
                    let digest = format!("sha256:{:064x}", i * 100 + j);
                    layout.tag(&format!("t{i}-{j}"), &json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 1})).unwrap();
                }
            });
        }
    });
    assert_eq!(
        layout.index().unwrap()["manifests"]
            .as_array()
            .unwrap()
            .len(),
        80
    );
}
