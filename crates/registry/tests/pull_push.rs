//! Pull and push against the real reference registry, checked by skopeo.

mod common;

use std::fs;
use std::process::Command;

use common::{store_busybox, store_busybox_for};
use serde_json::json;
use strata_registry::{
    BlobInfo, Credential, Credentials, Error, Layout, Platform, Reference, RegistryClient,
};
use strata_testkit::{TestRegistry, find_program, push_busybox_image};

fn skopeo(args: &[&str]) -> serde_json::Value {
    let output = Command::new(find_program("skopeo", "skopeo").unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
}

fn client_for(registry: &TestRegistry) -> RegistryClient {
    let mut credentials = Credentials::none();
    if let Some((user, password)) = registry.credentials() {
        credentials = credentials.insert(
            &registry.host(),
            Credential::Basic {
                username: user.into(),
                password: password.into(),
            },
        );
    }
    let mut builder = RegistryClient::builder().credentials(credentials);
    if let Some(ca) = registry.ca_pem() {
        builder = builder.https_loopback(true).ca_pem(ca.as_bytes().to_vec());
    }
    builder.build()
}

#[tokio::test]
async fn push_then_pull_back_bit_for_bit() {
    let registry = TestRegistry::start().unwrap();
    let source_dir = tempfile::tempdir().unwrap();
    let source = Layout::open(source_dir.path()).unwrap();
    let manifest = store_busybox(&source, "app");
    let client = client_for(&registry);
    let to: Reference = format!("{}/team/app:1", registry.host()).parse().unwrap();

    let report = client.push(&source, &manifest, &to, None).await.unwrap();
    assert_eq!(report.manifest_digest.to_string(), manifest);
    assert_eq!(
        (report.uploaded, report.skipped, report.mounted),
        (2, 0, 0),
        "config and layer"
    );
    let inspect = skopeo(&["inspect", "--tls-verify=false", &format!("docker://{to}")]);
    assert_eq!(inspect["Digest"], manifest.as_str());

    // Everything is there already: a second push uploads nothing.
    let report = client
        .push(&source, &manifest, &to.with_tag("2").unwrap(), None)
        .await
        .unwrap();
    assert_eq!((report.uploaded, report.skipped), (0, 2));

    // Another repository of the same registry mounts the blobs instead of uploading them.
    let elsewhere: Reference = format!("{}/other/app:1", registry.host()).parse().unwrap();
    let report = client
        .push(&source, &manifest, &elsewhere, Some(&to))
        .await
        .unwrap();
    assert_eq!((report.uploaded, report.mounted), (0, 2));
    assert!(
        registry.log().contains("mount="),
        "the registry saw mount requests"
    );
    // skopeo copies what we pushed into an OCI layout.
    let copy = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{elsewhere}"),
        &format!("oci:{}:copied", copy.path().display()),
    ]);

    let target_dir = tempfile::tempdir().unwrap();
    let target = Layout::open(target_dir.path()).unwrap();
    let pulled = client.pull(&to, &Platform::host(), &target).await.unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), manifest);
    assert_eq!(pulled.downloaded, 2);
    for digest in std::iter::once(pulled.config_digest.to_string())
        .chain(pulled.layer_digests.iter().map(ToString::to_string))
        .chain([manifest.clone()])
    {
        assert_eq!(
            target.read_blob(&digest).unwrap(),
            source.read_blob(&digest).unwrap(),
            "{digest}"
        );
    }
    // Pulling again downloads nothing.
    assert_eq!(
        client
            .pull(&to, &Platform::host(), &target)
            .await
            .unwrap()
            .downloaded,
        0
    );
}

#[tokio::test]
async fn an_image_another_client_pushed_is_pulled() {
    let registry = TestRegistry::start().unwrap();
    let image = push_busybox_image(&registry, "base/busybox", "latest").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let pulled = client_for(&registry)
        .pull(
            &image.reference.parse().unwrap(),
            &Platform::host(),
            &layout,
        )
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), image.manifest_digest);
    assert_eq!(
        pulled.layer_digests[..],
        [image.layer_digest.parse().unwrap()]
    );
    assert!(layout.has_blob(&image.layer_digest));
}

#[tokio::test]
async fn basic_auth_over_tls_with_the_generated_ca() {
    let registry = TestRegistry::builder()
        .tls()
        .basic_auth("alice", "s3cret")
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let manifest = store_busybox(&layout, "app");
    let to: Reference = format!("{}/secure/app:1", registry.host()).parse().unwrap();
    client_for(&registry)
        .push(&layout, &manifest, &to, None)
        .await
        .unwrap();

    let other = tempfile::tempdir().unwrap();
    let pulled = client_for(&registry)
        .pull(&to, &Platform::host(), &Layout::open(other.path()).unwrap())
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), manifest);

    // A wrong password is an authentication error that names the registry, and no secret.
    let wrong = RegistryClient::builder()
        .credentials(Credentials::none().insert(
            &registry.host(),
            Credential::Basic {
                username: "alice".into(),
                password: "wrong-pw".into(),
            },
        ))
        .https_loopback(true)
        .ca_pem(registry.ca_pem().unwrap().as_bytes().to_vec())
        .build();
    let err = wrong
        .pull(&to, &Platform::host(), &Layout::open(other.path()).unwrap())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Registry { .. }), "{err:?}");
    assert!(
        message.contains(&registry.host()) && message.contains("401"),
        "{message}"
    );
    assert!(!message.contains("wrong-pw") && !format!("{wrong:?}").contains("wrong-pw"));

    // Without the CA, TLS verification fails.
    let untrusting = RegistryClient::builder()
        .credentials(Credentials::none())
        .https_loopback(true)
        .build();
    assert!(
        untrusting
            .pull(&to, &Platform::host(), &Layout::open(other.path()).unwrap())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_index_with_two_platforms_resolves_to_the_one_asked_for() {
    let registry = TestRegistry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let amd64 = store_busybox_for(&layout, "amd64", "amd64");
    let arm64 = store_busybox_for(&layout, "arm64", "arm64");
    let size = |d: &str| layout.read_blob(d).unwrap().len();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64, "size": size(&amd64), "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm64, "size": size(&arm64), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ],
    }))
    .unwrap();
    let index = layout.write_blob_bytes(&index).unwrap();
    layout
        .tag("multi", &index.descriptor(strata_registry::OCI_INDEX))
        .unwrap();
    // skopeo copies the whole index: an independent client writes it to the registry.
    let to = format!("{}/multi/app:1", registry.host());
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", dir.path().display()),
        &format!("docker://{to}"),
    ]);

    // skopeo compresses the plain layers on the way, so the registry's manifests are its own:
    // read them from the index it pushed.
    let pushed = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{to}"),
    ]);
    let digest_for = |arch: &str| {
        pushed["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (amd64, arm64) = (digest_for("amd64"), digest_for("arm64"));
    let client = client_for(&registry);
    let target = tempfile::tempdir().unwrap();
    let target = Layout::open(target.path()).unwrap();
    let arm = Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: Some("v8".into()),
    };
    let pulled = client
        .pull(&to.parse().unwrap(), &arm, &target)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), arm64);
    let intel = Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    };
    assert_eq!(
        client
            .pull(&to.parse().unwrap(), &intel, &target)
            .await
            .unwrap()
            .manifest_digest
            .to_string(),
        amd64
    );
    let riscv = Platform {
        os: "linux".into(),
        architecture: "riscv64".into(),
        variant: None,
    };
    let err = client
        .pull(&to.parse().unwrap(), &riscv, &target)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoPlatform { .. }), "{err:?}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");

    // strata pushes the same index itself: both images by digest, then the index.
    let ours = format!("{}/multi/ours:1", registry.host());
    let report = client
        .push(&layout, index.digest.as_ref(), &ours.parse().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(report.manifest_digest, index.digest);
    // Two configs and two layers; a blob the images share is there by the second one.
    assert_eq!(report.uploaded + report.skipped, 4, "{report:?}");
    assert!(report.uploaded >= 3, "{report:?}");
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{ours}"),
    ]);
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
    let again = tempfile::tempdir().unwrap();
    let again = Layout::open(again.path()).unwrap();
    let pulled = client
        .pull(&ours.parse().unwrap(), &arm, &again)
        .await
        .unwrap();
    assert_eq!(
        pulled.manifest_digest.as_ref(),
        raw["manifests"][1]["digest"]
    );
}

#[tokio::test]
async fn a_corrupted_blob_is_a_digest_error_and_stores_nothing() {
    let registry = TestRegistry::start().unwrap();
    let image = push_busybox_image(&registry, "base/busybox", "latest").unwrap();
    let hex = image.layer_digest.trim_start_matches("sha256:");
    let data = registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let bytes = fs::read(&data).unwrap();
    // Same length, other bytes: the digest check catches it.
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    fs::write(&data, &flipped).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let pull = || async {
        client_for(&registry)
            .pull(
                &image.reference.parse().unwrap(),
                &Platform::host(),
                &layout,
            )
            .await
            .unwrap_err()
    };
    let err = pull().await;
    assert!(err.to_string().to_lowercase().contains("digest"), "{err}");
    // Truncated: the size the registry announces is refused before any byte is kept.
    fs::write(&data, &bytes[..bytes.len() / 2]).unwrap();
    let err = pull().await;
    assert!(err.to_string().contains("announces"), "{err}");
    assert!(!layout.has_blob(&image.layer_digest));
    assert!(
        !layout.has_blob(&image.manifest_digest),
        "no manifest without its blobs"
    );
    assert_eq!(
        fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "no staging file left"
    );
}

/// Eight 8 MiB layers of incompressible bytes (seeded xorshift) in one image: transfers long
/// enough to interrupt. Returns the layers and the manifest.
fn big_image(layout: &Layout, mut state: u64) -> (Vec<BlobInfo>, BlobInfo) {
    let mut layers = Vec::new();
    for _ in 0..8 {
        let data: Vec<u8> = (0..8 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        layers.push(layout.write_blob_bytes(&data).unwrap());
    }
    let config = layout
        .write_blob_bytes(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
    let manifest = layout
        .write_blob_bytes(&serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.size},
            "layers": layers.iter().map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        })).unwrap())
        .unwrap();
    (layers, manifest)
}

#[tokio::test]
async fn a_registry_restarted_during_a_push_gets_the_whole_image_or_no_manifest() {
    let mut registry = TestRegistry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let (layers, manifest) = big_image(&layout, 0x9E37_79B9_7F4A_7C15);
    let to: Reference = format!("{}/big/app:1", registry.host()).parse().unwrap();
    let client = RegistryClient::builder()
        .credentials(Credentials::none())
        .retries(8)
        .build();
    let push = {
        let (layout, manifest, to, client) = (
            layout.clone(),
            manifest.digest.clone(),
            to.clone(),
            client.clone(),
        );
        tokio::spawn(async move { client.push(&layout, manifest.as_ref(), &to, None).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    registry.stop();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    registry.restart().unwrap();
    let result = push.await.unwrap();

    let raw = registry.client();
    let manifest_there = raw
        .get_manifest("big/app", "1", "application/vnd.oci.image.manifest.v1+json")
        .is_ok();
    match result {
        Ok(report) => {
            eprintln!("the push completed after the restart: {report:?}");
            assert!(manifest_there);
            assert_eq!(report.manifest_digest, manifest.digest);
            for layer in &layers {
                assert!(
                    raw.blob_exists("big/app", layer.digest.as_ref()).unwrap(),
                    "{} missing",
                    layer.digest
                );
            }
        }
        Err(e) => {
            eprintln!("the push failed cleanly: {e}");
            // A clean failure: it says what failed, and no manifest points at missing blobs.
            assert!(
                !manifest_there,
                "manifest pushed although the push failed: {e}"
            );
        }
    }
}

#[tokio::test]
async fn docker_hub_images_come_from_the_first_mirror_that_has_them() {
    let empty = TestRegistry::start().unwrap();
    let mirror = TestRegistry::start().unwrap();
    let image = push_busybox_image(&mirror, "library/busybox", "stable").unwrap();
    let client = RegistryClient::builder()
        .credentials(Credentials::none())
        .retries(0)
        .mirror(empty.host())
        .mirror(mirror.host())
        .build();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    // `busybox:stable` is Docker Hub's; with no network here it can only come from a mirror.
    let pulled = client
        .pull(
            &"busybox:stable".parse().unwrap(),
            &Platform::host(),
            &layout,
        )
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), image.manifest_digest);
    assert!(
        empty.log().contains("/v2/library/busybox/manifests/stable"),
        "the first mirror was asked first"
    );
    // (What happens when no mirror has the image, falling back to Docker Hub itself, is not
    // tested: tests reach no network beyond loopback.)
}

#[tokio::test]
async fn tls_verification_can_be_skipped_for_one_registry_only() {
    let registry = TestRegistry::builder().tls().start().unwrap();
    let image = push_busybox_image(&registry, "base/busybox", "1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let reference: Reference = image.reference.parse().unwrap();
    let skipping = RegistryClient::builder()
        .credentials(Credentials::none())
        .https_loopback(true)
        .skip_tls_verify_for(registry.host())
        .build();
    assert_eq!(
        skipping
            .pull(&reference, &Platform::host(), &layout)
            .await
            .unwrap()
            .manifest_digest
            .to_string(),
        image.manifest_digest
    );
    let other = RegistryClient::builder()
        .credentials(Credentials::none())
        .https_loopback(true)
        .retries(0)
        .skip_tls_verify_for("127.0.0.1:1")
        .build();
    assert!(
        other
            .pull(&reference, &Platform::host(), &layout)
            .await
            .is_err(),
        "another host's exemption does not apply"
    );
}

#[tokio::test]
async fn insecure_pull_speaks_plain_http_for_pulls_only() {
    let registry = TestRegistry::start().unwrap();
    let image = push_busybox_image(&registry, "base/busybox", "1").unwrap();
    let reference: Reference = image.reference.parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    // Treated like a remote registry: HTTPS unless told otherwise.
    let strict = RegistryClient::builder()
        .credentials(Credentials::none())
        .https_loopback(true)
        .retries(0)
        .build();
    let refused = strict
        .pull(&reference, &Platform::host(), &layout)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains(&registry.host()), "{refused}");
    let insecure = RegistryClient::builder()
        .credentials(Credentials::none())
        .https_loopback(true)
        .insecure_pull(true)
        .retries(0)
        .build();
    let pulled = insecure
        .pull(&reference, &Platform::host(), &layout)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), image.manifest_digest);
    // Pushes keep HTTPS: --insecure-pull says nothing about destinations.
    let to: Reference = format!("{}/team/copy:1", registry.host()).parse().unwrap();
    let pushed = insecure
        .push(&layout, pulled.manifest_digest.as_ref(), &to, None)
        .await;
    assert!(pushed.is_err());
}

#[tokio::test]
async fn any_registry_can_be_mapped_to_mirrors_tried_in_order() {
    let mirror = TestRegistry::start().unwrap();
    let image = push_busybox_image(&mirror, "proxy/team/app", "2").unwrap();
    let client = RegistryClient::builder()
        .credentials(Credentials::none())
        .retries(0)
        // Nothing listens on port 9; the second mirror puts repositories under `proxy/`.
        .registry_mirror("registry.example.com", "127.0.0.1:9")
        .registry_mirror("registry.example.com", format!("{}/proxy", mirror.host()))
        .build();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let pulled = client
        .pull(
            &"registry.example.com/team/app:2".parse().unwrap(),
            &Platform::host(),
            &layout,
        )
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), image.manifest_digest);
}

#[tokio::test]
async fn a_registry_restarted_during_a_pull_gives_the_whole_image_or_a_clean_error() {
    let mut registry = TestRegistry::start().unwrap();
    // Eight 8 MiB layers of incompressible bytes, pushed first.
    let source = tempfile::tempdir().unwrap();
    let layout = Layout::open(source.path()).unwrap();
    let (layers, manifest) = big_image(&layout, 0x2545_F491_4F6C_DD1D);
    let reference: Reference = format!("{}/big/pulled:1", registry.host()).parse().unwrap();
    let client = RegistryClient::builder()
        .credentials(Credentials::none())
        .retries(8)
        .build();
    client
        .push(&layout, manifest.digest.as_ref(), &reference, None)
        .await
        .unwrap();

    let target_dir = tempfile::tempdir().unwrap();
    let target = Layout::open(target_dir.path()).unwrap();
    let pull = {
        let (target, reference, client) = (target.clone(), reference.clone(), client.clone());
        tokio::spawn(async move { client.pull(&reference, &Platform::host(), &target).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    registry.stop();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    registry.restart().unwrap();
    let result = pull.await.unwrap();
    let report = target.verify(false).unwrap();
    assert!(report.faults.is_empty(), "{:?}", report.faults);
    assert!(report.leftovers.is_empty(), "{:?}", report.leftovers);
    match result {
        Ok(pulled) => {
            eprintln!("the pull completed after the restart: {pulled:?}");
            assert_eq!(pulled.manifest_digest, manifest.digest);
            for layer in &layers {
                assert!(target.has_blob(&layer.digest), "{} missing", layer.digest);
            }
        }
        Err(e) => {
            eprintln!("the pull failed cleanly: {e}");
            assert!(e.to_string().contains("big/pulled"), "{e}");
            assert!(
                !target.has_blob(&manifest.digest),
                "no manifest without its blobs"
            );
            // And a second pull finishes the job.
            let pulled = client
                .pull(&reference, &Platform::host(), &target)
                .await
                .unwrap();
            assert_eq!(pulled.manifest_digest, manifest.digest);
        }
    }
}
