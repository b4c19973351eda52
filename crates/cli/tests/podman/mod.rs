//! Shared by the tests that run the executor image under podman: building the image with
//! `scripts/executor-image`, and `podman run` with the default security settings.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use strata_testkit::find_program;

/// A new directory whose path is all lower case (podman names an `oci:` image after it).
///
/// The name is not only the process id: the images kept in statics are never dropped, so a
/// later test process that gets the same id must not collide with their directories.
pub fn lowercase_dir() -> tempfile::TempDir {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_images_of_ended_processes);
    loop {
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let made = tempfile::Builder::new()
            .prefix(&format!(
                "strata-image-{}-{n}-{nanos:x}",
                std::process::id()
            ))
            .rand_bytes(0)
            .tempdir();
        match made {
            Ok(dir) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => continue,
            Err(e) => panic!("a directory for the image: {e}"),
        }
    }
}

/// Removes the image directories of test processes that have ended: the images kept in
/// statics are never dropped, so each test process leaves its directories behind.
fn sweep_images_of_ended_processes() {
    // Without /proc, no process can be told ended: nothing is removed.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("strata-image-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `scripts/executor-image --profile dev [--debug] --oci-layout DIR`; the digest it prints.
pub fn build_image(debug: bool, layout: &Path) -> String {
    build_image_in(debug, layout, None)
}

/// [`build_image`], with the image built in the state directory `state` (default: the
/// script's own, shared by every build of the image).
pub fn build_image_in(debug: bool, layout: &Path, state: Option<&Path>) -> String {
    let mut command = Command::new(repository().join("scripts/executor-image"));
    command
        .args(["--profile", "dev", "--oci-layout"])
        .arg(layout);
    if let Some(state) = state {
        command.env("STRATA_IMAGE_STATE_DIR", state);
    }
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
pub fn image() -> &'static (tempfile::TempDir, String) {
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
pub fn podman(layout: &Path, volumes: &[(&Path, &str)], extra: &[&str], args: &[&str]) -> Output {
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

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file below `dir` with its bytes.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
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

/// The debug image (a shell at /busybox/sh), built once per test process.
pub fn debug_image() -> &'static (tempfile::TempDir, String) {
    static IMAGE: OnceLock<(tempfile::TempDir, String)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = lowercase_dir();
        let digest = build_image(true, &dir.path().join("debug"));
        (dir, digest)
    })
}

/// A Docker config directory (`config.json`) with `user:password` for `registry`, as a
/// Kubernetes secret mounted at `/kaniko/.docker` holds it.
pub fn docker_config(registry: &str, user: &str, password: &str) -> tempfile::TempDir {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    dir
}

/// The manifest digest skopeo reads for `destination` with `user:password`.
pub fn remote_digest(destination: &str, creds: &str) -> String {
    let skopeo = find_program("skopeo", "skopeo").unwrap();
    let inspected = Command::new(skopeo)
        .args(["inspect", "--tls-verify=false", "--creds", creds])
        .arg(format!("docker://{destination}"))
        .output()
        .unwrap();
    assert!(inspected.status.success(), "{}", text(&inspected));
    let json: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    json["Digest"].as_str().unwrap_or_default().to_owned()
}
