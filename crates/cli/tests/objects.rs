//! Object-store contexts through the command line, as Kaniko's users give them, against real
//! servers on loopback: moto's S3 server, gcp-storage-emulator and Azurite. Each image equals
//! the one built from the same files as a directory (`--reproducible`: the same digest), and
//! no credential appears in the output.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use strata_testkit::{AZURITE_ACCOUNT, AZURITE_KEY, ContextBuilder, ObjectKind, ObjectServer};

const AWS_SECRET: &str = "moto-secret-key-4471";

fn strata(cwd: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    command.current_dir(cwd).args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

/// The context, as a directory and as `context.tar.gz`.
fn context(cwd: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = cwd.join("ctx");
    ContextBuilder::new()
        .file("Dockerfile", "FROM scratch\nCOPY . /data/\n")
        .file("a.txt", "from an object store\n")
        .file("sub/b.txt", "b\n")
        .write_into(&dir)
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let archive = cwd.join("context.tar.gz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    (dir, archive)
}

fn check(kind: ObjectKind, url: &str, env: &[(&str, String)], bucket_flag: Option<&str>) {
    let cwd = tempfile::tempdir().unwrap();
    let (dir, archive) = context(cwd.path());
    let server = ObjectServer::start(kind).unwrap();
    server.put("ctx", "app/context.tar.gz", &archive).unwrap();
    server.put("ctx", "context.tar.gz", &archive).unwrap();
    let state = cwd.path().join("state");
    let mut env = env.to_vec();
    for (k, v) in env.iter_mut() {
        *v = v.replace("{endpoint}", &server.endpoint());
        let _ = k;
    }
    let common = ["--reproducible", "--state-dir", state.to_str().unwrap()];
    let mut args = vec!["--context", url];
    if let Some(bucket) = bucket_flag {
        args = vec!["--bucket", bucket];
    }
    args.extend(common);
    let out = strata(cwd.path(), &env, &args);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let from_store = common::printed_digest(&out);
    for secret in [AWS_SECRET, AZURITE_KEY] {
        assert!(!shown.contains(secret), "{shown}");
    }
    // Nor in any file the build left in the state directory or the output.
    for secret in [AWS_SECRET, AZURITE_KEY] {
        let holding = strata_testkit::files_containing(cwd.path(), secret.as_bytes());
        assert!(holding.is_empty(), "a credential is in {holding:?}");
    }
    let mut local = vec!["--context", dir.to_str().unwrap()];
    local.extend(common);
    let from_dir = common::printed_digest(&strata(cwd.path(), &[], &local));
    assert_eq!(from_store, from_dir, "{kind:?}: {shown}");
    // A missing object fails the build, naming it.
    if bucket_flag.is_none() {
        let missing = url.replace("app/context.tar.gz", "app/none.tar.gz");
        let mut args = vec!["--context", missing.as_str()];
        args.extend(common);
        let out = strata(cwd.path(), &env, &args);
        assert_eq!(out.status.code(), Some(1), "{kind:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("none.tar.gz"), "{kind:?}: {stderr}");
    }
}

fn s3_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "moto-access-key".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("S3_ENDPOINT", "{endpoint}".to_owned()),
        ("S3_FORCE_PATH_STYLE", "true".to_owned()),
    ]
}

#[test]
fn s3_contexts() {
    check(
        ObjectKind::S3,
        "s3://ctx/app/context.tar.gz",
        &s3_env(),
        None,
    );
}

#[test]
fn s3_bucket_flag_reads_its_context_tar_gz() {
    check(ObjectKind::S3, "", &s3_env(), Some("s3://ctx"));
}

#[test]
fn gcs_contexts() {
    let env = vec![("STORAGE_EMULATOR_HOST", "{endpoint}".to_owned())];
    check(ObjectKind::Gcs, "gs://ctx/app/context.tar.gz", &env, None);
    // Kaniko's --bucket NAME: Google Cloud Storage, context.tar.gz.
    check(ObjectKind::Gcs, "", &env, Some("ctx"));
}

#[test]
fn azure_blob_contexts() {
    let env = vec![
        ("AZURE_STORAGE_USE_EMULATOR", "true".to_owned()),
        ("AZURITE_BLOB_STORAGE_URL", "{endpoint}".to_owned()),
        ("AZURE_STORAGE_ACCESS_KEY", AZURITE_KEY.to_owned()),
    ];
    let url = format!("https://{AZURITE_ACCOUNT}.blob.core.windows.net/ctx/app/context.tar.gz");
    check(ObjectKind::Azure, &url, &env, None);
}
