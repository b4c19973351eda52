//! Defects a careful reading found, each with the smallest build that shows it: silent
//! defaults that weakened security (a malformed passwd entry read as root, an unreadable
//! `.dockerignore` read as none, bind mounts that wrote through to the context or showed
//! ignored files, env secrets on disk) and downloads outside the client's HTTP settings.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Fixture, run};
use strata::registry::RegistryClient;
use strata::{Build, ContextSource, Error, check_state};
use strata_testkit::{ContextBuilder, TestRegistry};
use strata_testkit::{HostileServer, Reply, files_containing};

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_passwd_entry_is_an_error_never_root() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file(
            "passwd",
            "root:x:0:0:root:/root:/bin/sh\nbad:x:12ab:1000::/:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .build()
        .unwrap();
    let (result, _) = run(fx.build(
        context.path(),
        "FROM {base}\nCOPY passwd /etc/passwd\nUSER bad\nRUN id -u > /who\n",
    ))
    .await;
    let error = result.expect_err("USER bad must not run as root");
    let text = error.to_string();
    assert!(text.contains("Dockerfile:4"), "{text}");
    assert!(text.contains("/etc/passwd line 2"), "{text}");
    // Another user of the same file still works: the bad line is skipped.
    let (result, _) = run(fx.build(
        context.path(),
        "FROM {base}\nCOPY passwd /etc/passwd\nUSER app\nRUN id -u > /tmp/who\n",
    ))
    .await;
    let image = result.unwrap();
    let (work, layout) = common::layout(&image);
    let rootfs = common::umoci_rootfs(work.path(), &layout);
    assert_eq!(
        fs::read_to_string(rootfs.join("tmp/who")).unwrap(),
        "1000\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_dockerignore_in_a_tar_context_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let tar_path = dir.path().join("context.tar");
    {
        let file = fs::File::create(&tar_path).unwrap();
        let mut builder = tar::Builder::new(file);
        for (name, bytes) in [
            (".dockerignore", &b".env\n\xff\xfe\n"[..]),
            (".env", b"API_KEY=hunter2\n"),
            ("Dockerfile", b"FROM scratch\nCOPY . /\n"),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, bytes).unwrap();
        }
        builder.finish().unwrap();
    }
    for source in [
        ContextSource::Tar(tar_path.clone()),
        ContextSource::TarStream(Box::new(fs::File::open(&tar_path).unwrap())),
    ] {
        let state = tempfile::tempdir().unwrap();
        let (result, _) = run(Build::new(source)
            .dockerfile_text("FROM scratch\nCOPY . /\n")
            .state_dir(state.path()))
        .await;
        match result {
            Err(Error::Io { path, .. }) => {
                assert!(path.ends_with(".dockerignore"), "{}", path.display())
            }
            other => panic!("expected the .dockerignore's I/O error, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_mounts_never_change_the_context_nor_show_what_dockerignore_hides() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file(".dockerignore", "secret\n")
        .file("secret", "do not show\n")
        .file("src/main.c", "int main;\n")
        .build()
        .unwrap();
    let before = common::tree(context.path());
    let dockerfile = "FROM {base}\n\
        RUN --mount=type=bind,target=/ctx,rw echo changed > /ctx/src/main.c && rm /ctx/secret 2>/dev/null; echo new > /ctx/new; ls /ctx > /listing\n\
        RUN --mount=type=bind,target=/ro cat /ro/src/main.c > /seen; test -e /ro/secret && echo visible > /leak || true\n";
    let (result, _) = run(fx.build(context.path(), dockerfile)).await;
    let image = result.unwrap();
    assert_eq!(
        common::tree(context.path()),
        before,
        "the build changed its context"
    );
    let (work, layout) = common::layout(&image);
    let rootfs = common::umoci_rootfs(work.path(), &layout);
    let listing = fs::read_to_string(rootfs.join("listing")).unwrap();
    assert!(!listing.contains("secret"), "{listing}");
    assert!(
        listing.contains("new") && listing.contains("src"),
        "{listing}"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("seen")).unwrap(),
        "int main;\n"
    );
    assert!(!rootfs.join("leak").exists(), "an ignored file was visible");
    assert_clean_state(fx.state.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_context_memo_is_found_repaired_and_rebuilt() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("a", "a\n").build().unwrap();
    let dockerfile = "FROM {base}\nCOPY a /a\n";
    let (image, _) = run(fx.build(context.path(), dockerfile)).await;
    let first = image.unwrap().digest().to_owned();
    let memo = fx.state.path().join("context-memo.bin");
    assert!(memo.is_file());
    assert_clean_state(fx.state.path());
    fs::write(&memo, b"strata-memo\0\0\0\0\x02\xff").unwrap();
    let check = check_state(fx.state.path(), true).unwrap();
    assert!(
        check.faults.iter().any(|f| f.path == memo && f.repaired),
        "{:#?}",
        check.faults
    );
    assert!(!memo.exists());
    // The next build hashes the context again and gets the same image.
    let (image, _) = run(fx.build(context.path(), dockerfile)).await;
    assert_eq!(image.unwrap().digest(), first);
    assert!(memo.is_file());
    assert_clean_state(fx.state.path());
}

fn assert_clean_state(state: &Path) {
    let check = check_state(state, false).unwrap();
    assert!(check.is_clean(), "{:#?}", check.faults);
}

/// The child half of the env-secret test: the secret is in this process's environment.
const SECRET_CHILD: &str = "STRATA_RELIABILITY_SECRET";

#[test]
fn env_secrets_never_touch_the_state_directory() {
    if let Ok(secret) = std::env::var(SECRET_CHILD) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        return runtime.block_on(env_secret_child(secret));
    }
    let secret = format!("s3cret-{}", std::process::id());
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "env_secrets_never_touch_the_state_directory",
            "--exact",
            "--nocapture",
        ])
        .env(SECRET_CHILD, &secret)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn env_secret_child(secret: String) {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("a", "a\n").build().unwrap();
    let build = fx
        .build(
            context.path(),
            "FROM {base}\nRUN --mount=type=secret,id=token,env=TOKEN,target=/run/t \
             test \"$TOKEN\" = \"$(cat /run/t)\" && sleep 2 && echo ok > /ok\n",
        )
        .secret("token", strata::Secret::Env(SECRET_CHILD.to_owned()));
    let state = fx.state.path().to_owned();
    let task = tokio::spawn(run(build));
    // While the step runs, the secret must be in no file of the state directory.
    let mut scans = 0;
    while !task.is_finished() {
        let found = files_containing(&state, secret.as_bytes());
        assert!(found.is_empty(), "the secret is on disk: {found:?}");
        scans += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (result, _) = task.await.unwrap();
    let image = result.unwrap();
    assert!(
        scans > 10,
        "the step must have been watched ({scans} scans)"
    );
    let (work, layout) = common::layout(&image);
    assert!(files_containing(work.path(), secret.as_bytes()).is_empty());
    assert!(files_containing(&state, secret.as_bytes()).is_empty());
    let rootfs = common::umoci_rootfs(work.path(), &layout);
    assert_eq!(fs::read_to_string(rootfs.join("ok")).unwrap(), "ok\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn add_downloads_use_the_clients_tls_settings_and_limits() {
    // HTTPS with the test kit's own CA: trusted only when the client is told so.
    let registry = TestRegistry::builder().tls().start().unwrap();
    let bytes = b"served over TLS\n";
    let digest = registry.client().push_blob("files/blobs", bytes).unwrap();
    let url = format!("https://{}/v2/files/blobs/blobs/{digest}", registry.host());
    let context = ContextBuilder::new().file("a", "a\n").build().unwrap();
    let dockerfile = format!("FROM scratch\nADD {url} /downloaded\n");
    let state = tempfile::tempdir().unwrap();
    let (result, _) = run(Build::new(context.path())
        .dockerfile_text(&dockerfile)
        .state_dir(state.path())
        .registry(RegistryClient::builder().build()))
    .await;
    let text = result
        .expect_err("an unknown CA must be refused")
        .to_string();
    assert!(text.contains("Dockerfile:2"), "{text}");
    let trusting = RegistryClient::builder()
        .ca_pem(registry.ca_pem().unwrap())
        .build();
    let (result, _) = run(Build::new(context.path())
        .dockerfile_text(&dockerfile)
        .state_dir(state.path())
        .registry(trusting))
    .await;
    let image = result.unwrap();
    let (work, layout) = common::layout(&image);
    let rootfs = common::umoci_rootfs(work.path(), &layout);
    assert_eq!(fs::read(rootfs.join("downloaded")).unwrap(), bytes);

    // A server that sends forever meets the size limit; one that stalls meets the read
    // timeout. Both are clear errors, and nothing is left in the state directory.
    let endless = HostileServer::start("127.0.0.1", |_| Reply::Endless {
        status: 200,
        headers: Vec::new(),
    })
    .unwrap();
    let stalled = HostileServer::start("127.0.0.1", |_| Reply::Hang).unwrap();
    for (server, expect) in [(&endless, "limit"), (&stalled, "timed out")] {
        let state = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let client = RegistryClient::builder()
            .timeouts(
                Duration::from_secs(5),
                Duration::from_secs(1),
                Duration::from_secs(5),
            )
            .build();
        let (result, _) = run(Build::new(context.path())
            .dockerfile_text(format!(
                "FROM scratch\nADD http://{}/big /big\n",
                server.host()
            ))
            .state_dir(state.path())
            .max_download_size(4 << 20)
            .registry(client))
        .await;
        let text = result.expect_err(expect).to_string();
        assert!(text.contains(expect), "{expect}: {text}");
        assert!(text.contains("Dockerfile:2"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_clean_state(state.path());
        let left = fs::read_dir(state.path().join("tmp")).unwrap().count();
        assert_eq!(left, 0, "{expect}: scratch left behind");
        let blobs = fs::read_dir(state.path().join("blobs/sha256")).map_or(0, |d| d.count());
        assert_eq!(blobs, 0, "{expect}: a blob was kept");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_sources_that_cannot_be_read_exactly_are_errors_not_skipped() {
    use std::os::unix::ffi::OsStrExt;
    let context = ContextBuilder::new().file("a.txt", "a\n").build().unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"odd-\xff.txt");
    fs::write(context.path().join(odd), "odd\n").unwrap();
    fs::create_dir(context.path().join("links")).unwrap();
    std::os::unix::fs::symlink(
        std::ffi::OsStr::from_bytes(b"target-\xfe"),
        context.path().join("links/bad"),
    )
    .unwrap();
    // A name a pattern cannot be matched against exactly is an error naming it, never
    // skipped.
    let state = tempfile::tempdir().unwrap();
    let dockerfile = "FROM scratch\nCOPY *.txt /out/\n";
    let (result, _) = run(Build::new(context.path())
        .dockerfile_text(dockerfile)
        .state_dir(state.path()))
    .await;
    let text = result.expect_err(dockerfile).to_string();
    assert!(
        text.contains("Dockerfile:2") && text.contains("odd-"),
        "{text}"
    );

    // A symbolic link's target that is not UTF-8 is carried exactly, not converted lossily.
    let dockerfile = "FROM scratch\nCOPY links /links\n";
    let (result, _) = run(Build::new(context.path())
        .dockerfile_text(dockerfile)
        .state_dir(state.path()))
    .await;
    let image = result.unwrap();
    let (work, layout) = common::layout(&image);
    let rootfs = common::umoci_rootfs(work.path(), &layout);
    assert_eq!(
        fs::read_link(rootfs.join("links/bad"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"target-\xfe"
    );
}

/// A RUN step may create a file whose name is not UTF-8 (legal on Linux and in tar): the
/// build succeeds and the layer carries the name's exact bytes, as Go's tar reader (umoci)
/// and GNU tar read them.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_makes_a_name_that_is_not_utf8_keeps_its_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let dockerfile = "FROM {base}\n\
                      RUN touch \"/odd-$(printf '\\377')-name\" && mkdir /d && ln -s \"../odd-$(printf '\\377')-name\" /d/link\n";
    for mode in [strata::SnapshotMode::Overlay, strata::SnapshotMode::Walk] {
        let state = tempfile::tempdir().unwrap();
        let build = fx
            .build(context.path(), dockerfile)
            .state_dir(state.path())
            .snapshot_mode(mode);
        let (image, _) = run(build).await;
        let image = image.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let (work, layout) = common::layout(&image);
        let rootfs = common::umoci_rootfs(work.path(), &layout);
        let name = std::ffi::OsStr::from_bytes(b"odd-\xff-name");
        assert!(
            rootfs.join(name).is_file(),
            "{mode:?}: the file keeps its name"
        );
        assert_eq!(
            fs::read_link(rootfs.join("d/link"))
                .unwrap()
                .as_os_str()
                .as_bytes(),
            b"../odd-\xff-name",
            "{mode:?}: the link keeps its target"
        );
        // GNU tar reads the same bytes from the layer.
        let manifest: serde_json::Value = serde_json::from_slice(
            &fs::read(
                layout
                    .join("blobs/sha256")
                    .join(image.digest().trim_start_matches("sha256:")),
            )
            .unwrap(),
        )
        .unwrap();
        let top = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_owned();
        let listing = std::process::Command::new("tar")
            .args(["--quoting-style=literal", "-tzf"])
            .arg(layout.join("blobs/sha256").join(top))
            .output()
            .unwrap();
        assert!(listing.status.success(), "{listing:?}");
        assert!(
            listing
                .stdout
                .split(|b| *b == b'\n')
                .any(|line| line == b"odd-\xff-name"),
            "{mode:?}: {}",
            String::from_utf8_lossy(&listing.stdout)
        );
    }
}
