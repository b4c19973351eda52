//! The `strata` command run the way the README tells a new user to run it, and judged by
//! skopeo and umoci.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `strata ARGS` (no subcommand: the same as `strata build`) in `cwd`.
fn build(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("strata runs")
}

/// The repository's `examples/hello` context.
fn hello() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello")
}

#[test]
fn the_readme_command_builds_the_hello_image_into_out() {
    let cwd = tempfile::tempdir().unwrap();
    let hello = hello();
    let state = cwd.path().join("state");
    let args = [
        "--context",
        hello.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let out = build(cwd.path(), &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("wrote OCI layout out/hello:latest"),
        "{stdout}"
    );
    assert!(stdout.contains("0 of 2 steps from the cache"), "{stdout}");
    let layout = cwd.path().join("out/hello");
    let skopeo = strata_testkit::find_program("skopeo", "skopeo").unwrap();
    let inspected = Command::new(skopeo)
        .arg("inspect")
        .arg(format!("oci:{}:latest", layout.display()))
        .output()
        .unwrap();
    assert!(
        inspected.status.success(),
        "{}",
        String::from_utf8_lossy(&inspected.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(
        json["Labels"]["org.opencontainers.image.title"],
        "hello from strata"
    );
    assert!(
        stdout.starts_with(&format!("digest {}", json["Digest"].as_str().unwrap())),
        "{stdout}"
    );
    let work = tempfile::tempdir().unwrap();
    let rootfs = common::umoci_rootfs_tagged(work.path(), &layout, "latest");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("hello.txt")).unwrap(),
        "Hello from an image strata built.\n"
    );
    // Again: everything from the cache, the same digest.
    let again = build(cwd.path(), &args);
    let again_stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        again_stdout.contains("2 of 2 steps from the cache"),
        "{again_stdout}"
    );
    assert_eq!(
        stdout.lines().next(),
        again_stdout.lines().next(),
        "same digest"
    );
}

#[test]
fn unimplemented_and_unknown_flags_are_usage_errors() {
    let cwd = tempfile::tempdir().unwrap();
    for (flag, expected) in [
        (
            "--kaniko-dir=/x",
            "--kaniko-dir is not supported by strata: strata keeps its state",
        ),
        ("--git=branch=main", "is not a git repository"),
        (
            "--context=ftp://host/ctx.tar.gz",
            "ftp:// contexts are not supported",
        ),
        ("--no-such-flag", "--no-such-flag"),
        ("--cache=maybe", "--cache"),
    ] {
        let out = build(cwd.path(), &[flag]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{flag}: {stderr}");
    }
}

#[test]
fn a_build_error_exits_1_with_the_dockerfile_position() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("Dockerfile"),
        "FROM scratch\nCOPY missing /x\n",
    )
    .unwrap();
    let state = cwd.path().join("state");
    let out = build(
        cwd.path(),
        &["--context", ".", "--state-dir", state.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Dockerfile:2"), "{stderr}");
    assert!(
        stderr.contains("`missing` not found in the build context"),
        "{stderr}"
    );
    // --context-sub-path picks a directory of the context, with its own Dockerfile.
    std::fs::create_dir(cwd.path().join("sub")).unwrap();
    std::fs::write(
        cwd.path().join("sub/Dockerfile"),
        "FROM scratch\nCOPY Dockerfile /d\n",
    )
    .unwrap();
    let args = [
        "--context",
        ".",
        "--context-sub-path",
        "sub",
        "--state-dir",
        state.to_str().unwrap(),
        "--log-timestamp=false",
        "--cleanup",
    ];
    let sub = build(cwd.path(), &args);
    assert!(
        sub.status.success(),
        "{}",
        String::from_utf8_lossy(&sub.stderr)
    );
    let lines = String::from_utf8_lossy(&sub.stderr).into_owned();
    assert!(
        lines.lines().any(|l| l.starts_with("[0] FROM scratch")),
        "{lines}"
    );
}

#[test]
fn pushes_with_a_digest_file_and_reports_syntax_errors_with_the_line() {
    let registry = strata_testkit::TestRegistry::start().unwrap();
    let base = strata_testkit::push_busybox_image(&registry, "base/busybox", "1").unwrap();
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("Dockerfile"),
        format!("FROM {}\nRUN echo pushed > /pushed\n", base.reference),
    )
    .unwrap();
    let state = cwd.path().join("state");
    let destination = format!("{}/team/cli:v1", registry.host());
    let out = build(
        cwd.path(),
        &[
            "--isolation=namespaces",
            "--context",
            ".",
            "--state-dir",
            state.to_str().unwrap(),
            "--destination",
            &destination,
            "--digest-file",
            "digest.txt",
            "--image-name-with-digest-file",
            "names.txt",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = std::fs::read_to_string(cwd.path().join("digest.txt")).unwrap();
    let skopeo = strata_testkit::find_program("skopeo", "skopeo").unwrap();
    let inspected = Command::new(skopeo)
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{destination}"))
        .output()
        .unwrap();
    assert!(inspected.status.success());
    let json: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(json["Digest"], digest.as_str());
    assert_eq!(
        std::fs::read_to_string(cwd.path().join("names.txt")).unwrap(),
        format!("{}/team/cli@{digest}\n", registry.host())
    );
    assert!(
        stdout.contains(&format!("pushed {destination}@{digest}")),
        "{stdout}"
    );

    std::fs::write(cwd.path().join("Dockerfile"), "FROM scratch\nCOPY\n").unwrap();
    let out = build(
        cwd.path(),
        &["--context", ".", "--state-dir", state.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Dockerfile:2"), "{stderr}");
}

/// Runs `strata build` under `script`, which gives it a pseudo-terminal as stderr.
fn build_on_a_terminal(cwd: &Path, args: &[&str]) -> (bool, String) {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut command = format!(
        "stty cols 120 rows 40; {} build",
        quote(env!("CARGO_BIN_EXE_strata"))
    );
    for arg in args {
        command.push(' ');
        command.push_str(&quote(arg));
    }
    let out = Command::new("script")
        .current_dir(cwd)
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("script (bsdutils) runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_terminal_gets_a_line_per_step_with_its_cache_state() {
    let cwd = tempfile::tempdir().unwrap();
    let hello = hello();
    let state = cwd.path().join("state");
    let args = [
        "--context",
        hello.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let (ok, first) = build_on_a_terminal(cwd.path(), &args);
    assert!(ok, "{first}");
    let (ok, second) = build_on_a_terminal(cwd.path(), &args);
    assert!(ok, "{second}");
    // Finished steps stay as lines: first with their duration, then answered by the cache.
    let step = "✔ [0]   4 COPY hello.txt /hello.txt  ";
    let after = |text: &str| {
        text.split(step)
            .nth(1)
            .map(|rest| rest.chars().take(6).collect::<String>())
    };
    let first_outcome = after(&first).unwrap_or_else(|| panic!("{first:?}"));
    assert!(
        first_outcome.ends_with('s') || first_outcome.contains("s "),
        "{first_outcome:?}"
    );
    assert_eq!(after(&second).as_deref(), Some("CACHED"), "{second:?}");
    // The running step had a spinner (drawn with escape codes) and the summary follows.
    assert!(first.contains("\u{1b}["), "{first:?}");
    assert!(second.contains("2 of 2 steps from the cache"), "{second:?}");
}

#[test]
fn registry_maps_cache_dirs_and_json_logs() {
    let registry = strata_testkit::TestRegistry::start().unwrap();
    strata_testkit::push_busybox_image(&registry, "base/busybox", "1").unwrap();
    let cwd = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: the image can only come from the mapped mirror.
    std::fs::write(
        cwd.path().join("Dockerfile"),
        "FROM 127.0.0.1:9/base/busybox:1\nLABEL mapped=yes\n",
    )
    .unwrap();
    let cache_dir = cwd.path().join("kaniko-cache");
    let map = format!("--registry-map=127.0.0.1:9=127.0.0.1:1;{}", registry.host());
    let out = build(
        cwd.path(),
        &[
            "--context",
            ".",
            "--cache-dir",
            cache_dir.to_str().unwrap(),
            &map,
            "--log-format=json",
            "--push-retry=0",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Every line is one JSON object with a time and a kind.
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["time"].is_string() && e["event"].is_string())
    );
    let pulled = events.iter().find(|e| e["event"] == "pulled").unwrap();
    assert_eq!(pulled["reference"], "127.0.0.1:9/base/busybox:1");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "pull-blob" && e["done"] == e["total"])
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["digest"].as_str().unwrap().starts_with("sha256:"));
    // --cache-dir is where the state (base images included) went.
    assert!(cache_dir.join("oci-layout").is_file());
    assert!(
        cache_dir
            .join(format!(
                "blobs/{}",
                pulled["digest"].as_str().unwrap().replace(':', "/")
            ))
            .is_file()
    );
    // --cache-dir and a different --state-dir contradict each other.
    let out = build(
        cwd.path(),
        &["--cache-dir", "a", "--state-dir", "b", "--context", "."],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cache-dir a and --state-dir b differ")
    );
}

#[test]
fn verbosity_error_leaves_only_the_report() {
    let cwd = tempfile::tempdir().unwrap();
    let hello = hello();
    let state = cwd.path().join("state");
    let base = [
        "--context",
        hello.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let quiet = build(cwd.path(), &[&base[..], &["--verbosity=error"]].concat());
    assert!(quiet.status.success());
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");
    assert!(String::from_utf8_lossy(&quiet.stdout).starts_with("digest sha256:"));
    let chatty = build(cwd.path(), &[&base[..], &["--verbosity", "info"]].concat());
    assert!(String::from_utf8_lossy(&chatty.stderr).contains("COPY hello.txt /hello.txt"));
    let wrong = build(cwd.path(), &[&base[..], &["--verbosity", "loud"]].concat());
    assert_eq!(wrong.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("'loud'") && stderr.contains("--verbosity"),
        "{stderr}"
    );
}

/// Kaniko's git context forms through the command line, against real git servers: `git://`
/// over plain HTTP (`GIT_PULL_METHOD=http`) with `--git branch=…`, and an HTTPS repository
/// with `GIT_USERNAME`/`GIT_PASSWORD` and the server's CA given as a registry certificate.
/// The password appears in no output line and no file the build leaves.
#[test]
fn git_contexts_in_kaniko_form() {
    use strata_testkit::{ContextBuilder, GitServer, commit_files, git};
    let cwd = tempfile::tempdir().unwrap();
    let repos = cwd.path().join("repos");
    let work = cwd.path().join("work");
    let files = ContextBuilder::new()
        .file("Dockerfile", "FROM scratch\nCOPY hello.txt /\n")
        .file("hello.txt", "main\n")
        .file("nested/Dockerfile", "FROM scratch\nCOPY inner.txt /\n")
        .file("nested/inner.txt", "inner\n");
    commit_files(&work, &files, "one").unwrap();
    git(&work, &["checkout", "-qb", "release"]).unwrap();
    std::fs::write(work.join("hello.txt"), "release\n").unwrap();
    git(&work, &["commit", "-qam", "release"]).unwrap();
    let release = git(&work, &["rev-parse", "HEAD"]).unwrap();
    std::fs::create_dir(&repos).unwrap();
    git(
        cwd.path(),
        &["clone", "-q", "--bare", "work", "repos/app.git"],
    )
    .unwrap();
    let password = "cli-git-password-778";
    let server = GitServer::start(&repos, "builder", password).unwrap();
    let state = cwd.path().join("state");

    let http = server.http_url("app.git");
    let context = format!("git://{}", http.trim_start_matches("http://"));
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .current_dir(cwd.path())
        .env("GIT_PULL_METHOD", "http")
        .args([
            "--context",
            &context,
            "--git",
            "branch=release,single-branch=true",
        ])
        .args(["--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("at {release}")),
        "the built commit is reported: {stderr}"
    );
    let layout = cwd.path().join("out/app");
    let rootfs = common::umoci_rootfs_tagged(cwd.path(), &layout, "latest");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("hello.txt")).unwrap(),
        "release\n"
    );

    let https = server.https_url("app.git");
    let host = https
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let certificate = format!("{host}={}", server.ca_path().display());
    let run = |password: &str| {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .current_dir(cwd.path())
            .env("GIT_USERNAME", "builder")
            .env("GIT_PASSWORD", password)
            .args(["--context", &format!("{https}#main"), "--no-push"])
            .args(["--registry-certificate", &certificate])
            .args(["--state-dir", state.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = run(password);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{shown}");
    assert!(!shown.contains(password), "{shown}");
    let wrong = "wrong-password-991";
    let out = run(wrong);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("refused the credentials"), "{shown}");
    assert!(!shown.contains(wrong), "{shown}");
    // Without the CA the server's certificate is refused, unless --git insecure-skip-tls.
    let unverified = |flag: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
        command
            .current_dir(cwd.path())
            .env("GIT_USERNAME", "builder")
            .env("GIT_PASSWORD", password)
            .args(["--context", &https, "--no-push"])
            .args(["--state-dir", state.to_str().unwrap()]);
        if let Some(flag) = flag {
            command.args(["--git", flag]);
        }
        command.output().unwrap()
    };
    assert_eq!(unverified(None).status.code(), Some(1));
    let out = unverified(Some("insecure-skip-tls=true"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // GIT_TOKEN is sent as the user name with no password (Kaniko's rule), and
    // --context-sub-path picks a directory of the repository.
    let token = "tok-5551-abc";
    let token_server = GitServer::start(&repos, token, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .current_dir(cwd.path())
        .env("GIT_TOKEN", token)
        .args([
            "--context",
            &format!("{}#main", token_server.https_url("app.git")),
        ])
        .args(["--context-sub-path", "nested"])
        .args([
            "--registry-certificate",
            &format!("{host}={}", token_server.ca_path().display()),
        ])
        .args(["--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{shown}");
    assert!(!shown.contains(token), "{shown}");
    std::fs::create_dir(cwd.path().join("nested")).unwrap();
    let nested = common::umoci_rootfs_tagged(&cwd.path().join("nested"), &layout, "latest");
    assert_eq!(
        std::fs::read_to_string(nested.join("inner.txt")).unwrap(),
        "inner\n"
    );
    let holding = strata_testkit::files_containing(cwd.path(), password.as_bytes());
    assert!(holding.is_empty(), "the password is in {holding:?}");
}
