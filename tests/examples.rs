//! The library's example programs (`embed`, `pull`, `push_dir`), run the way their docs say,
//! judged by skopeo and umoci.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn example(cwd: &Path, name: &str, args: &[&str]) -> Output {
    common::example_command(cwd, name)
        .args(args)
        .output()
        .expect("cargo runs")
}

#[test]
fn the_embed_example_builds_and_writes_a_layout() {
    let cwd = tempfile::tempdir().unwrap();
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    let out = common::example_command(cwd.path(), "embed")
        .env("XDG_CACHE_HOME", cwd.path().join("cache"))
        .arg(&hello)
        .arg("layout")
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("sha256:"), "{stdout}");
    let work = tempfile::tempdir().unwrap();
    let rootfs = common::umoci_rootfs_tagged(work.path(), &cwd.path().join("layout"), "latest");
    assert!(rootfs.join("hello.txt").is_file());
}

#[test]
fn push_dir_and_pull_examples_round_trip_through_a_registry() {
    let registry = strata_testkit::TestRegistry::start().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let site = cwd.path().join("site");
    std::fs::create_dir_all(site.join("docs")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>hi</h1>\n").unwrap();
    std::fs::write(site.join("docs/a.txt"), "a\n").unwrap();
    std::os::unix::fs::symlink("index.html", site.join("home.html")).unwrap();
    let reference = format!("{}/team/site:1", registry.host());
    let out = example(
        cwd.path(),
        "push_dir",
        &["site", &reference, "--cmd", "/bin/serve"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("4 files, 2 blobs uploaded"), "{stdout}");
    let skopeo = strata_testkit::find_program("skopeo", "skopeo").unwrap();
    let inspected = Command::new(&skopeo)
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(inspected.status.success());
    let json: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert!(
        stdout.contains(json["Digest"].as_str().unwrap()),
        "{stdout}"
    );

    let out = example(cwd.path(), "pull", &[&reference, "pulled"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 of 2 blobs downloaded"), "{stdout}");
    let layout = cwd.path().join("pulled");
    let rootfs = common::umoci_rootfs_tagged(cwd.path(), &layout, "latest");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("docs/a.txt")).unwrap(),
        "a\n"
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("home.html")).unwrap(),
        Path::new("index.html")
    );
    // Pulling again downloads nothing.
    let again = example(cwd.path(), "pull", &[&reference, "pulled"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 of 2 blobs downloaded"));
}

#[test]
fn registry_requests_go_through_the_http_proxy_of_the_environment() {
    // A proxy that answers everything with 404 and records what it was asked.
    let proxy = strata_testkit::HostileServer::start("127.0.0.1", |_: &strata_testkit::Request| {
        strata_testkit::Reply::new(404, "{}")
    })
    .unwrap();
    let cwd = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: only the proxy can answer.
    let out = common::example_command(cwd.path(), "pull")
        .env("HTTP_PROXY", format!("http://{}", proxy.host()))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .args(["127.0.0.1:9/team/app:1", "pulled"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HTTP 404"), "{stderr}");
    let asked = proxy.requests();
    assert!(
        asked.iter().any(|r| r
            .path
            .starts_with("http://127.0.0.1:9/v2/team/app/manifests/1")),
        "{asked:?}"
    );
}
