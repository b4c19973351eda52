//! The OCI layout store, read back by skopeo and umoci.

use std::fs;
use std::process::Command;

use strata_oci::Error;
use strata_registry::{BlobInfo, Layout, OCI_MANIFEST};
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
    assert_eq!(
        layout.resolve("app").unwrap().digest().as_ref(),
        first.as_str()
    );
    let other = BlobInfo {
        digest: ("sha256:".to_owned() + &"1".repeat(64)).parse().unwrap(),
        size: 1,
    };
    layout.tag("app", &other.descriptor(OCI_MANIFEST)).unwrap();
    assert_eq!(layout.index().unwrap().manifests().len(), 1);
    assert_eq!(layout.resolve("app").unwrap().digest(), &other.digest);
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
                    let blob = BlobInfo {
                        digest: digest.parse().unwrap(),
                        size: 1,
                    };
                    layout
                        .tag(&format!("t{i}-{j}"), &blob.descriptor(OCI_MANIFEST))
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(layout.index().unwrap().manifests().len(), 80);
}

#[test]
fn skopeo_reads_our_docker_archive() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path().join("oci")).unwrap();
    let manifest = store_busybox(&layout, "app");
    let archive = dir.path().join("image.tar");
    let tags = [
        "busybox:1".parse().unwrap(),
        "127.0.0.1:5000/team/app:2".parse().unwrap(),
    ];
    strata_registry::write_docker_archive(&layout, &manifest, &tags, &archive).unwrap();

    let skopeo = find_program("skopeo", "skopeo").unwrap();
    // skopeo finds the image by each of its tags.
    let inspect = |args: &[&str], tag: &str| {
        let output = Command::new(&skopeo)
            .args(args)
            .arg(format!("docker-archive:{}:{tag}", archive.display()))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let info = inspect(&["inspect"], "busybox:1");
    assert_eq!(info["Layers"].as_array().unwrap().len(), 1);
    let config = inspect(&["inspect", "--config"], "127.0.0.1:5000/team/app:2");
    assert_eq!(config["config"]["Cmd"][0], "/bin/sh");

    // skopeo copies it into an OCI layout.
    let copy = dir.path().join("copy");
    let output = Command::new(&skopeo)
        .arg("copy")
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("oci:{}:copied", copy.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let copied = Layout::open(&copy).unwrap();
    let descriptor = copied.resolve("copied").unwrap();
    let copied_manifest: serde_json::Value =
        serde_json::from_slice(&copied.read_blob(descriptor.digest().as_ref()).unwrap()).unwrap();
    let original: serde_json::Value =
        serde_json::from_slice(&layout.read_blob(&manifest).unwrap()).unwrap();
    // skopeo compresses the plain layer and rewrites the config on the way to OCI, so compare
    // what is invariant: the uncompressed digests of the layers.
    let diff_ids = |layout: &Layout, manifest: &serde_json::Value| {
        let config: serde_json::Value = serde_json::from_slice(
            &layout
                .read_blob(manifest["config"]["digest"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        config["rootfs"]["diff_ids"].clone()
    };
    assert_eq!(
        diff_ids(&copied, &copied_manifest),
        diff_ids(&layout, &original)
    );
    assert_eq!(copied_manifest["layers"].as_array().unwrap().len(), 1);
}

#[test]
fn an_index_in_a_layout_resolves_per_platform() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let amd64 = common::store_busybox_for(&layout, "a", "amd64");
    let arm64 = common::store_busybox_for(&layout, "b", "arm64");
    let size = |d: &str| layout.read_blob(d).unwrap().len();
    let index = layout
        .write_blob_bytes(
            &serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64, "size": size(&amd64), "platform": {"os": "linux", "architecture": "amd64"}},
                    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm64, "size": size(&arm64), "platform": {"os": "linux", "architecture": "arm64"}},
                ],
            }))
            .unwrap(),
        )
        .unwrap();
    layout
        .tag("multi", &index.descriptor(strata_registry::OCI_INDEX))
        .unwrap();
    let arm = strata_registry::Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: None,
    };
    assert_eq!(layout.image_manifest("multi", &arm).unwrap(), arm64);
    assert_eq!(
        layout.image_manifest("a", &arm).unwrap(),
        amd64,
        "a plain manifest is itself, whatever the platform"
    );
    let riscv = strata_registry::Platform {
        os: "linux".into(),
        architecture: "riscv64".into(),
        variant: None,
    };
    assert!(matches!(
        layout.image_manifest("multi", &riscv),
        Err(Error::NoPlatform { .. })
    ));
}
