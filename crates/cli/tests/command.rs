//! The command's own surface: help, version, the `executor` name, completions and the man
//! page, tar contexts as Kaniko reads them, and `strata state`.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn strata(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("strata runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn help_version_and_the_executor_name() {
    let cwd = tempfile::tempdir().unwrap();
    for args in [&["--help"][..], &["build", "--help"], &["state", "--help"]] {
        let out = strata(cwd.path(), args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(!out.stdout.is_empty() && out.stderr.is_empty(), "{args:?}");
    }
    let build_help =
        String::from_utf8_lossy(&strata(cwd.path(), &["build", "--help"]).stdout).into_owned();
    for flag in [
        "--destination",
        "--cache-repo",
        "--digest-file",
        "[default: true]",
    ] {
        assert!(
            build_help.contains(flag),
            "{flag} missing from build --help"
        );
    }
    let version = strata(cwd.path(), &["--version"]);
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(
        version.starts_with(&format!("strata {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    // Invoked as Kaniko's /kaniko/executor: the build flags with no subcommand, and
    // `executor version`.
    let executor = cwd.path().join("executor");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_strata"), &executor).unwrap();
    let out = Command::new(&executor).arg("--help").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--destination"));
    let out = Command::new(&executor).arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("strata "));
    // Usage errors exit 2 and name the flag.
    let out = strata(cwd.path(), &["build", "--compression", "lz4"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--compression"));
}

#[test]
fn completions_and_the_man_page_come_from_the_same_definitions() {
    let cwd = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = strata(cwd.path(), &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("strata"), "{shell}");
        assert!(
            script.contains("cache-repo"),
            "{shell}: build flags missing"
        );
    }
    let out = strata(cwd.path(), &["manpage"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && page.contains(".TH strata"),
        "{page}"
    );
}

#[test]
fn a_tar_context_brings_its_own_dockerfile_as_in_kaniko() {
    let cwd = tempfile::tempdir().unwrap();
    let context = cwd.path().join("ctx");
    fs::create_dir_all(context.join("sub")).unwrap();
    fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY a.txt /a.txt\n",
    )
    .unwrap();
    fs::write(
        context.join("sub/Other"),
        "FROM scratch\nCOPY sub/b.txt /b.txt\n",
    )
    .unwrap();
    fs::write(context.join("a.txt"), "a\n").unwrap();
    fs::write(context.join("sub/b.txt"), "b\n").unwrap();
    let state = cwd.path().join("state");
    // tar -C ctx -cf - . | strata --context tar://stdin --no-push --tar-path img.tar
    let mut tar = Command::new("tar")
        .args(["-C"])
        .arg(&context)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .current_dir(cwd.path())
        .args([
            "--context",
            "tar://stdin",
            "--no-push",
            "--tar-path",
            "img.tar",
        ])
        .arg("--state-dir")
        .arg(&state)
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(tar.wait().unwrap().success());
    assert!(out.status.success(), "{}", text(&out));
    assert!(cwd.path().join("img.tar").is_file());
    // A relative --dockerfile is found inside the archive.
    let tarball = cwd.path().join("ctx.tar.gz");
    let made = Command::new("tar")
        .arg("-C")
        .arg(&context)
        .arg("-czf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(made.success());
    let context_arg = format!("tar://{}", tarball.display());
    let out = strata(
        cwd.path(),
        &[
            "--context",
            &context_arg,
            "--dockerfile",
            "sub/Other",
            "--no-push",
            "--oci-layout-path",
            "other",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn state_check_repair_and_prune() {
    let cwd = tempfile::tempdir().unwrap();
    let state = cwd.path().join("state");
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let state_arg = state.to_str().unwrap();
    let out = strata(
        cwd.path(),
        &[
            "--context",
            hello.to_str().unwrap(),
            "--state-dir",
            state_arg,
            "--no-push",
            "--oci-layout-path",
            "out",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let check = strata(cwd.path(), &["state", "check", "--state-dir", state_arg]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("0 broken"));
    // Damage a cache entry: check fails (exit 1), repair removes it, check passes again.
    let entry = fs::read_dir(state.join("cache/entries"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    fs::write(&entry, "garbage").unwrap();
    let check = strata(cwd.path(), &["state", "check", "--state-dir", state_arg]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let repair = strata(cwd.path(), &["state", "repair", "--state-dir", state_arg]);
    assert!(repair.status.success(), "{}", text(&repair));
    // Prune to nothing: every entry goes; the next build runs its steps again.
    let prune = strata(
        cwd.path(),
        &[
            "state",
            "prune",
            "--max-size",
            "0",
            "--state-dir",
            state_arg,
        ],
    );
    assert!(prune.status.success(), "{}", text(&prune));
    assert!(
        String::from_utf8_lossy(&prune.stdout).contains("pruned"),
        "{}",
        text(&prune)
    );
    assert_eq!(
        fs::read_dir(state.join("cache/entries")).unwrap().count(),
        0
    );
    let check = strata(cwd.path(), &["state", "check", "--state-dir", state_arg]);
    assert!(check.status.success(), "{}", text(&check));
    let bad = strata(
        cwd.path(),
        &[
            "state",
            "prune",
            "--max-size",
            "lots",
            "--state-dir",
            state_arg,
        ],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    // --cache-max-size prunes after a build.
    let out = strata(
        cwd.path(),
        &[
            "--context",
            hello.to_str().unwrap(),
            "--state-dir",
            state_arg,
            "--no-push",
            "--oci-layout-path",
            "out2",
            "--cache-max-size",
            "0",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pruned"),
        "{}",
        text(&out)
    );
}
