//! Self-tests of the test kit against the real `docker-registry` process.

use std::path::Path;
use std::process::Command;

use strata_testkit::{
    RegistryClient, TestRegistry, busybox_rootfs, find_program, push_busybox_image,
};

fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.contains(") Z "),
        Err(_) => false,
    }
}

fn skopeo_json(args: &[&str]) -> serde_json::Value {
    let skopeo = find_program("skopeo", "skopeo").unwrap();
    let output = Command::new(skopeo).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn plain_http_registry_stores_and_serves_a_blob() {
    let registry = TestRegistry::start().unwrap();
    assert!(registry.url().starts_with("http://127.0.0.1:"));
    let client = registry.client();
    assert_eq!(client.ping().unwrap(), 200);

    let blob = b"strata test blob\n".repeat(1000);
    let digest = client.push_blob("selftest/blob", &blob).unwrap();
    assert!(client.blob_exists("selftest/blob", &digest).unwrap());
    assert_eq!(client.get_blob("selftest/blob", &digest).unwrap(), blob);

    let absent = format!("sha256:{}", "0".repeat(64));
    assert!(!client.blob_exists("selftest/blob", &absent).unwrap());
    // The registry itself wrote the blob into its storage directory.
    let hex = digest.trim_start_matches("sha256:");
    let stored = registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    assert_eq!(std::fs::read(stored).unwrap(), blob);
    assert!(registry.log().contains("/v2/selftest/blob/blobs/uploads/"));
}

#[test]
fn basic_auth_registry_refuses_missing_and_wrong_credentials() {
    let registry = TestRegistry::builder()
        .basic_auth("alice", "s3cret")
        .start()
        .unwrap();
    assert_eq!(registry.anonymous_client().ping().unwrap(), 401);
    let wrong = registry.client_with_credentials("alice", "wrong");
    assert_eq!(wrong.ping().unwrap(), 401);
    let err = wrong
        .push_blob("selftest/auth", b"x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("HTTP 401"), "{err}");

    let client = registry.client();
    assert_eq!(client.ping().unwrap(), 200);
    let digest = client.push_blob("selftest/auth", b"authorised").unwrap();
    assert_eq!(
        client.get_blob("selftest/auth", &digest).unwrap(),
        b"authorised"
    );
    // The password never shows in Debug output.
    assert!(!format!("{registry:?} {client:?}").contains("s3cret"));
}

#[test]
fn tls_registry_is_trusted_only_with_its_generated_ca() {
    let registry = TestRegistry::builder()
        .tls()
        .basic_auth("bob", "pw")
        .start()
        .unwrap();
    assert!(registry.url().starts_with("https://127.0.0.1:"));
    let ca = registry.ca_pem().unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));

    let client = registry.client();
    assert_eq!(client.ping().unwrap(), 200);
    let digest = client.push_blob("selftest/tls", b"over tls").unwrap();
    assert_eq!(
        client.get_blob("selftest/tls", &digest).unwrap(),
        b"over tls"
    );

    // Without the CA the certificate does not verify.
    let untrusting = RegistryClient::new(&registry.url(), None, registry.credentials());
    let err = untrusting.ping().unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // Plain HTTP to a TLS port gets no registry answer.
    let plain = RegistryClient::new(&registry.url().replace("https", "http"), None, None);
    assert_ne!(plain.ping().ok(), Some(200));
}

#[test]
fn dropping_the_registry_stops_its_process() {
    let registry = TestRegistry::start().unwrap();
    let pid = registry.pid().unwrap();
    assert!(process_alive(pid));
    drop(registry);
    assert!(!process_alive(pid));
}

#[test]
fn a_panicking_test_leaks_no_registry() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let registry = TestRegistry::start().unwrap();
        tx.send(registry.pid().unwrap()).unwrap();
        panic!("a test fails while the registry runs");
    });
    assert!(result.is_err());
    let pid = rx.recv().unwrap();
    assert!(!process_alive(pid));
}

#[test]
fn restart_serves_the_same_content_on_the_same_port() {
    let mut registry = TestRegistry::start().unwrap();
    let url = registry.url();
    let digest = registry
        .client()
        .push_blob("selftest/restart", b"kept")
        .unwrap();
    let first = registry.pid().unwrap();

    registry.stop();
    assert!(!process_alive(first));
    assert!(registry.client().ping().is_err());

    registry.restart().unwrap();
    assert_eq!(registry.url(), url);
    assert_ne!(registry.pid().unwrap(), first);
    assert_eq!(
        registry
            .client()
            .get_blob("selftest/restart", &digest)
            .unwrap(),
        b"kept"
    );
}

#[test]
fn busybox_rootfs_holds_a_working_static_shell() {
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path()).unwrap();
    let sh = root.path().join("bin/sh");
    assert_eq!(std::fs::read_link(&sh).unwrap(), Path::new("busybox"));
    let output = Command::new(&sh)
        .args(["-c", "echo $((6 * 7))"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "42");
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("app:x:1000:1000:")));
    use std::os::unix::fs::PermissionsExt;
    let tmp = std::fs::metadata(root.path().join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
}

#[test]
fn busybox_image_is_read_back_by_skopeo() {
    let registry = TestRegistry::start().unwrap();
    let image = push_busybox_image(&registry, "base/busybox", "latest").unwrap();
    let docker_ref = format!("docker://{}", image.reference);

    let inspect = skopeo_json(&["inspect", "--tls-verify=false", &docker_ref]);
    assert_eq!(inspect["Digest"], image.manifest_digest.as_str());
    assert_eq!(inspect["Layers"][0], image.layer_digest.as_str());
    assert_eq!(inspect["Os"], "linux");

    let config = skopeo_json(&["inspect", "--tls-verify=false", "--config", &docker_ref]);
    assert_eq!(config["config"]["Cmd"][0], "/bin/sh");
    assert_eq!(config["rootfs"]["diff_ids"][0], image.diff_id.as_str());

    // The layer is deterministic: a second push of the same rootfs has the same digests.
    let again = push_busybox_image(&registry, "base/busybox", "again").unwrap();
    assert_eq!(again.layer_digest, image.layer_digest);
    assert_eq!(again.manifest_digest, image.manifest_digest);
}

#[test]
fn skopeo_reaches_a_tls_registry_with_auth_through_the_generated_ca() {
    let registry = TestRegistry::builder()
        .tls()
        .basic_auth("carol", "pa55")
        .start()
        .unwrap();
    let image = push_busybox_image(&registry, "base/busybox", "1").unwrap();
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("ca.crt"), registry.ca_pem().unwrap()).unwrap();
    let inspect = skopeo_json(&[
        "inspect",
        "--cert-dir",
        certs.path().to_str().unwrap(),
        "--creds",
        "carol:pa55",
        &format!("docker://{}", image.reference),
    ]);
    assert_eq!(inspect["Digest"], image.manifest_digest.as_str());
}

#[test]
fn a_missing_program_names_its_debian_package() {
    let err = find_program("docker-registry-that-does-not-exist", "docker-registry").unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("docker-registry-that-does-not-exist"),
        "{message}"
    );
    assert!(
        message.contains("apt-get install -y docker-registry"),
        "{message}"
    );
}
