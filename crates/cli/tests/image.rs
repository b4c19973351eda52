//! The executor image, built by `scripts/executor-image` with strata itself, run by Debian's
//! podman (runtime runc) with the default security settings: no `--privileged`, no added
//! capability, the default seccomp profile. The registry is on the host's loopback
//! (`--network host`), the context is a volume at `/workspace` and the Docker config a volume
//! at `/kaniko/.docker`, as in Kaniko's Kubernetes Jobs and Tekton's Task.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use base64::Engine as _;
use strata_testkit::{TestRegistry, find_program};

/// A new directory whose path is all lower case (podman names an `oci:` image after it).
fn lowercase_dir() -> tempfile::TempDir {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    tempfile::Builder::new()
        .prefix(&format!("strata-image-{}-{n}", std::process::id()))
        .rand_bytes(0)
        .tempdir()
        .unwrap()
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `scripts/executor-image --profile dev [--debug] --oci-layout DIR`; the digest it prints.
fn build_image(debug: bool, layout: &Path) -> String {
    let mut command = Command::new(repository().join("scripts/executor-image"));
    command
        .args(["--profile", "dev", "--oci-layout"])
        .arg(layout);
    if debug {
        command.arg("--debug");
    }
    let out = command.output().expect("scripts/executor-image runs");
    assert!(
        out.status.success(),
        "scripts/executor-image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let digest = stdout.lines().last().unwrap_or_default().trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{stdout}");
    digest
}

/// The executor image (built once for all tests of this file) as an OCI layout.
fn image() -> &'static (tempfile::TempDir, String) {
    static IMAGE: OnceLock<(tempfile::TempDir, String)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = lowercase_dir();
        let digest = build_image(false, &dir.path().join("executor"));
        (dir, digest)
    })
}

/// `podman run` with the default security settings and runc (crun fails on this kernel's
/// hybrid cgroups; podman's default open-files limit cannot be set unprivileged, hence the
/// containers.conf without default ulimits).
fn podman(layout: &Path, volumes: &[(&Path, &str)], extra: &[&str], args: &[&str]) -> Output {
    let podman = find_program("podman", "podman").unwrap();
    find_program("runc", "runc").unwrap();
    let conf = tempfile::NamedTempFile::new().unwrap();
    fs::write(conf.path(), "[containers]\ndefault_ulimits = []\n").unwrap();
    let mut command = Command::new(podman);
    command.env("CONTAINERS_CONF", conf.path()).args([
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--network",
        "host",
    ]);
    for (host, inside) in volumes {
        command
            .arg("-v")
            .arg(format!("{}:{inside}", host.display()));
    }
    command
        .args(extra)
        .arg(format!("oci:{}:latest", layout.display()))
        .args(args);
    command.output().expect("podman runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file below `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), fs::read(&path).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_image_is_reproducible_static_and_has_kanikos_layout() {
    let (dir, digest) = image();
    let layout = dir.path().join("executor");
    // The same commit gives the same digest.
    let again = lowercase_dir();
    assert_eq!(&build_image(false, &again.path().join("executor")), digest);
    let skopeo = find_program("skopeo", "skopeo").unwrap();
    let out = Command::new(skopeo)
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:latest", layout.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/kaniko/executor"])
    );
    assert_eq!(config["config"]["WorkingDir"], "/workspace");
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for expected in [
        "HOME=/root",
        "USER=root",
        "DOCKER_CONFIG=/kaniko/.docker/",
        "SSL_CERT_FILE=/kaniko/ssl/certs/ca-certificates.crt",
    ] {
        assert!(env.contains(&expected), "{expected} not in {env:?}");
    }
    // --help and the version work in the container; `strata` is the same program.
    let help = podman(&layout, &[], &[], &["--help"]);
    assert!(help.status.success(), "{}", text(&help));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--destination"));
    let version = podman(
        &layout,
        &[],
        &["--entrypoint", "/usr/local/bin/strata"],
        &["--version"],
    );
    assert!(version.status.success(), "{}", text(&version));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("strata "));
}

#[test]
fn a_copy_build_pushes_with_the_mounted_docker_config_over_tls() {
    let (dir, _) = image();
    let layout = dir.path().join("executor");
    let registry = TestRegistry::builder()
        .tls()
        .basic_auth("ci", "ci-pass-8Qm")
        .start()
        .unwrap();
    let workspace = tempfile::tempdir().unwrap();
    fs::write(
        workspace.path().join("Dockerfile"),
        "FROM scratch\nCOPY site/ /srv/\nCMD [\"/srv/index.html\"]\n",
    )
    .unwrap();
    fs::create_dir(workspace.path().join("site")).unwrap();
    fs::write(workspace.path().join("site/index.html"), "<h1>hi</h1>\n").unwrap();
    fs::write(workspace.path().join("ca.pem"), registry.ca_pem().unwrap()).unwrap();
    let docker = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("ci:ci-pass-8Qm");
    fs::write(
        docker.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let docker_before = snapshot(docker.path());
    let destination = format!("{}/team/site:1", registry.host());
    let certificate = format!("{}=/workspace/ca.pem", registry.host());
    let out = podman(
        &layout,
        &[
            (workspace.path(), "/workspace"),
            (docker.path(), "/kaniko/.docker"),
        ],
        &[],
        &[
            "--context",
            "dir:///workspace",
            "--destination",
            &destination,
            "--registry-certificate",
            &certificate,
            "--digest-file",
            "/workspace/digest",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let digest = fs::read_to_string(workspace.path().join("digest")).unwrap();
    let skopeo = find_program("skopeo", "skopeo").unwrap();
    let inspected = Command::new(skopeo)
        .args(["inspect", "--creds", "ci:ci-pass-8Qm", "--tls-verify=false"])
        .arg(format!("docker://{destination}"))
        .output()
        .unwrap();
    assert!(inspected.status.success(), "{}", text(&inspected));
    let json: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(json["Digest"].as_str(), Some(digest.as_str()));
    assert_eq!(
        snapshot(docker.path()),
        docker_before,
        "the Docker config changed"
    );
    assert!(!text(&out).contains("ci-pass-8Qm"));
}

#[test]
fn a_run_step_fails_with_the_probes_message_never_a_raw_mount_error() {
    let (dir, _) = image();
    let layout = dir.path().join("executor");
    let registry = TestRegistry::start().unwrap();
    let base = strata_testkit::push_busybox_image(&registry, "base/busybox", "1").unwrap();
    let workspace = tempfile::tempdir().unwrap();
    fs::write(
        workspace.path().join("Dockerfile"),
        format!("FROM {}\nRUN echo hi > /index.html\n", base.reference),
    )
    .unwrap();
    let out = podman(
        &layout,
        &[(workspace.path(), "/workspace")],
        &[],
        &["--context", "dir:///workspace", "--no-push"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Dockerfile:2"), "{stderr}");
    assert!(
        stderr.contains("does not allow them"),
        "the probe's message: {stderr}"
    );
    assert!(!stderr.contains("mounting proc"), "{stderr}");
}

#[test]
fn the_debug_image_has_a_shell_for_gitlab_jobs() {
    let dir = lowercase_dir();
    let layout = dir.path().join("debug");
    build_image(true, &layout);
    // GitLab: `entrypoint: [""]`, then a script in the shell that calls the executor.
    let out = podman(
        &layout,
        &[],
        &["--entrypoint", "/busybox/sh"],
        &["-c", "test -x /bin/sh && /kaniko/executor version"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("strata "));
}
