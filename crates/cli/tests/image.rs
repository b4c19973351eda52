//! The executor image, built by `scripts/executor-image` with strata itself, run by Debian's
//! podman (runtime runc) with the default security settings: no `--privileged`, no added
//! capability, the default seccomp profile. The registry is on the host's loopback
//! (`--network host`), the context is a volume at `/workspace` and the Docker config a volume
//! at `/kaniko/.docker`, as in Kaniko's Kubernetes Jobs and Tekton's Task.

mod podman;

use std::fs;
use std::process::Command;

use podman::{
    build_image, build_image_in, docker_config, image, lowercase_dir, podman, remote_digest,
    snapshot, text,
};
use strata_testkit::{TestRegistry, find_program};

#[test]
fn the_image_is_reproducible_static_and_has_kanikos_layout() {
    let (dir, digest) = image();
    let layout = dir.path().join("executor");
    // The same commit gives the same digest, also built from an empty state directory (no
    // layer of the first build reused).
    let again = lowercase_dir();
    let empty_state = tempfile::tempdir().unwrap();
    assert_eq!(
        &build_image_in(
            false,
            &again.path().join("executor"),
            Some(empty_state.path())
        ),
        digest
    );
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
    let docker = docker_config(&registry.host(), "ci", "ci-pass-8Qm");
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
    assert_eq!(remote_digest(&destination, "ci:ci-pass-8Qm"), digest);
    assert_eq!(
        snapshot(docker.path()),
        docker_before,
        "the Docker config changed"
    );
    assert!(!text(&out).contains("ci-pass-8Qm"));
}

#[test]
fn namespaces_asked_for_in_an_unprivileged_container_fail_with_the_probes_message() {
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
        &[
            "--context",
            "dir:///workspace",
            "--no-push",
            "--isolation",
            "namespaces",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Dockerfile:2"), "{stderr}");
    assert!(
        stderr.contains("does not allow them"),
        "the probe's message: {stderr}"
    );
    assert!(!stderr.contains("mounting proc"), "{stderr}");
    // The default (auto) picks the in-container mode and builds (tests/in_container.rs);
    // --no-push writes nothing, so the workspace stays as it was.
    let before = snapshot(workspace.path());
    let out = podman(
        &layout,
        &[(workspace.path(), "/workspace")],
        &[],
        &["--context", "dir:///workspace", "--no-push"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(snapshot(workspace.path()), before, "the workspace changed");
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
