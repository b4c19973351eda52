//! RUN inside an ordinary, unprivileged container, as Kaniko does it: the executor image
//! under podman (runc) with the default security settings (no `--privileged`, no added
//! capability, the default seccomp profile, `/proc` masked), where namespaces are denied,
//! so `--isolation auto` picks the in-container mode. Each image is compared with the same
//! build on the host in namespaces: the same file trees (kind, content, mode, owner, link
//! target) and the same config.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod podman;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use podman::{debug_image, docker_config, podman, remote_digest, snapshot, text};
use strata_testkit::{TestRegistry, push_busybox_image};

/// A registry with the busybox base, and its reference.
fn registry() -> (TestRegistry, String) {
    let registry = TestRegistry::start().unwrap();
    let base = push_busybox_image(&registry, "base/busybox", "1").unwrap();
    (registry, base.reference)
}

/// Builds `workspace` in the container (`--oci-layout-path /workspace/in`), with `extra`
/// podman arguments and executor flags; returns the output. Every build, good or failed,
/// leaves the workspace volume (but the layout it writes) and a Docker config mounted at
/// `/kaniko/.docker` byte for byte as they were.
fn in_container(
    workspace: &Path,
    volumes: &[(&Path, &str)],
    flags: &[&str],
) -> std::process::Output {
    let (dir, _) = debug_image();
    let layout = dir.path().join("debug");
    let docker = tempfile::tempdir().unwrap();
    fs::write(docker.path().join("config.json"), "{\"auths\":{}}").unwrap();
    let mut all = vec![
        (workspace, "/workspace"),
        (docker.path(), "/kaniko/.docker"),
    ];
    all.extend_from_slice(volumes);
    let inputs = |dir: &Path| -> Vec<_> {
        let output = dir.join("in");
        snapshot(dir)
            .into_iter()
            .filter(|(path, _)| !path.starts_with(&output))
            .collect()
    };
    let (workspace_before, docker_before) = (inputs(workspace), snapshot(docker.path()));
    let mut args = vec![
        "--context",
        "dir:///workspace",
        "--no-push",
        "--oci-layout-path",
        "/workspace/in",
        "--reproducible",
        "--progress",
        "plain",
        "--log-timestamp=false",
    ];
    args.extend_from_slice(flags);
    let out = podman(&layout, &all, &[], &args);
    assert!(
        inputs(workspace) == workspace_before,
        "the build changed the workspace: {}",
        text(&out)
    );
    assert!(
        snapshot(docker.path()) == docker_before,
        "the build changed the mounted Docker config: {}",
        text(&out)
    );
    out
}

/// The same build on the host, in namespaces, into `workspace/host`.
fn on_host(workspace: &Path, flags: &[&str]) {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["build", "--isolation", "namespaces", "--context"])
        .arg(workspace)
        .args(["--no-push", "--oci-layout-path"])
        .arg(workspace.join("host"))
        .args(["--reproducible", "--state-dir"])
        .arg(state.path())
        .args(flags)
        .output()
        .unwrap();
    assert!(out.status.success(), "host build: {}", text(&out));
}

/// The unpacked tree and the config of `layout:latest`.
fn judge(
    layout: &Path,
) -> (
    BTreeMap<String, String>,
    serde_json::Value,
    tempfile::TempDir,
) {
    let work = tempfile::tempdir().unwrap();
    let rootfs = common::umoci_rootfs_tagged(work.path(), layout, "latest");
    let tree = common::tree(&rootfs);
    let skopeo = strata_testkit::find_program("skopeo", "skopeo").unwrap();
    let out = Command::new(skopeo)
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:latest", layout.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The layers' own digests may differ where the two ways record the same change
    // differently (an overlay marks a directory made again opaque; a scan lists what went
    // from it): the trees are compared instead.
    config["rootfs"]["diff_ids"] = serde_json::json!(null);
    (tree, config, work)
}

/// Builds in the container and on the host and asserts the two images are the same.
fn same_as_on_host(
    workspace: &Path,
    volumes: &[(&Path, &str)],
    flags: &[&str],
) -> (BTreeMap<String, String>, String) {
    let out = in_container(workspace, volumes, flags);
    assert!(out.status.success(), "in the container: {}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("RUN steps: in-container"),
        "the mode and why: {stderr}"
    );
    on_host(workspace, flags);
    let (inside, inside_config, _w1) = judge(&workspace.join("in"));
    let (host, host_config, _w2) = judge(&workspace.join("host"));
    let differ: Vec<_> = inside
        .iter()
        .filter(|(k, v)| host.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: in the container {v}, on the host {:?}", host.get(k)))
        .chain(
            host.keys()
                .filter(|k| !inside.contains_key(*k))
                .map(|k| format!("{k}: only on the host")),
        )
        .collect();
    assert!(differ.is_empty(), "trees differ:\n{}", differ.join("\n"));
    assert_eq!(inside_config, host_config);
    (inside, stderr)
}

#[test]
fn kanikos_tutorial_dockerfile_builds_without_privileges() {
    let (_registry, base) = registry();
    let workspace = tempfile::tempdir().unwrap();
    fs::write(
        workspace.path().join("Dockerfile"),
        format!(
            "FROM {base}\n\
             RUN mkdir -p /usr/share/nginx/html && echo 'Hello from strata' > /usr/share/nginx/html/index.html\n\
             EXPOSE 80\n\
             CMD [\"httpd\", \"-f\", \"-h\", \"/usr/share/nginx/html\"]\n"
        ),
    )
    .unwrap();
    let (tree, _) = same_as_on_host(workspace.path(), &[], &[]);
    assert_eq!(
        tree.get("usr/share/nginx/html/index.html")
            .map(String::as_str),
        Some("644 0:0 = \"Hello from strata\\n\"")
    );
}

#[test]
fn a_run_as_another_user_and_one_that_deletes_base_files() {
    let (_registry, base) = registry();
    let workspace = tempfile::tempdir().unwrap();
    fs::write(
        workspace.path().join("Dockerfile"),
        format!(
            "FROM {base}\n\
             RUN rm -rf /home/app && rm /etc/group && mkdir -p /home/app && chown 1000:1000 /home/app\n\
             USER app\n\
             RUN echo mine > /home/app/file && id -u > /home/app/uid && mkdir /tmp/by-app\n"
        ),
    )
    .unwrap();
    let (tree, _) = same_as_on_host(workspace.path(), &[], &[]);
    assert!(!tree.contains_key("etc/group"), "the whiteout applies");
    assert_eq!(
        tree.get("home/app/uid").map(String::as_str),
        Some("644 1000:1000 = \"1000\\n\"")
    );
    assert!(tree.get("tmp/by-app").unwrap().contains("1000:1000"));
}

#[test]
fn stages_run_one_after_another_and_copy_from_reads_layers() {
    let (_registry, base) = registry();
    let workspace = tempfile::tempdir().unwrap();
    fs::write(
        workspace.path().join("Dockerfile"),
        format!(
            "FROM {base} AS build\n\
             RUN echo built > /artifact && rm /bin/vi\n\
             FROM {base} AS unused\n\
             RUN exit 1\n\
             FROM {base}\n\
             RUN echo final > /final && test -e /bin/vi && test ! -e /artifact\n\
             COPY --from=build /artifact /artifact\n\
             RUN cat /artifact /final > /both\n"
        ),
    )
    .unwrap();
    let (tree, _) = same_as_on_host(workspace.path(), &[], &[]);
    assert_eq!(
        tree.get("both").map(String::as_str),
        Some("644 0:0 = \"built\\nfinal\\n\"")
    );
    assert!(
        tree.contains_key("bin/vi"),
        "the build stage's deletion stays there"
    );
}

#[test]
fn run_mounts_without_mount_privileges() {
    let (_registry, base) = registry();
    let workspace = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    fs::write(secrets.path().join("token"), "s3cret-token-Hq7").unwrap();
    fs::write(workspace.path().join("hello.txt"), "hello\n").unwrap();
    fs::write(workspace.path().join(".dockerignore"), "private\n").unwrap();
    fs::write(workspace.path().join("private"), "not for the build\n").unwrap();
    fs::write(
        workspace.path().join("Dockerfile"),
        format!(
            "FROM {base}\n\
             RUN --mount=type=cache,target=/var/cache/thing cat /var/cache/thing/count 2>/dev/null; echo run >> /var/cache/thing/count\n\
             RUN --mount=type=secret,id=token test \"$(wc -c < /run/secrets/token)\" = 16 && echo seen > /secret-seen\n\
             RUN --mount=type=bind,target=/src cp /src/hello.txt /copied && test ! -e /src/private && touch /src/scribble\n\
             RUN --mount=type=tmpfs,target=/scratch touch /scratch/x && test -e /scratch/x\n"
        ),
    )
    .unwrap();
    let volumes = [
        (state.path(), "/state"),
        (secrets.path(), "/run/secrets-in"),
    ];
    let flags = [
        "--state-dir",
        "/state",
        "--cache=false",
        "--secret",
        "id=token,src=/run/secrets-in/token",
    ];
    for round in 0..2 {
        let out = in_container(workspace.path(), &volumes, &flags);
        assert!(out.status.success(), "round {round}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The second build, in a fresh container, sees what the first wrote to the cache.
        assert_eq!(
            stderr.contains("[0] | run"),
            round == 1,
            "round {round}: {stderr}"
        );
    }
    let (tree, _, _work) = judge(&workspace.path().join("in"));
    assert_eq!(
        tree.get("copied").map(String::as_str),
        Some("644 0:0 = \"hello\\n\"")
    );
    assert!(tree.contains_key("secret-seen"));
    for gone in ["var/cache/thing", "run/secrets", "src", "scratch"] {
        assert!(!tree.contains_key(gone), "{gone} is in the image");
    }
    assert!(
        !workspace.path().join("scribble").exists(),
        "the bind mount wrote to the context"
    );
    // The secret is in no layer and no file of the state directory.
    for dir in [workspace.path().join("in"), state.path().to_owned()] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd '{}' && for f in $(find . -type f); do (zcat \"$f\" 2>/dev/null || cat \"$f\") | grep -l s3cret-token-Hq7 >/dev/null && echo \"$f\"; done; true",
                dir.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.stdout.is_empty(),
            "the secret is in {}: {}",
            dir.display(),
            text(&out)
        );
    }
}

#[test]
fn failures_say_where_and_the_volumes_and_executor_stay_intact() {
    let (_registry, base) = registry();
    let workspace = tempfile::tempdir().unwrap();
    let docker = tempfile::tempdir().unwrap();
    fs::write(docker.path().join("config.json"), "{\"auths\":{}}").unwrap();
    fs::write(
        workspace.path().join("Dockerfile"),
        format!("FROM {base}\nRUN echo about to fail && exit 7\n"),
    )
    .unwrap();
    fs::write(workspace.path().join("data"), "user data\n").unwrap();
    let before_workspace = snapshot(workspace.path());
    let before_docker = snapshot(docker.path());
    let (dir, _) = debug_image();
    let layout = dir.path().join("debug");
    // The build fails; then the shell checks that the executor's directory is whole.
    let script = "/kaniko/executor --context dir:///workspace --no-push --progress plain; \
                  rc=$?; sha256sum /kaniko/executor /kaniko/ssl/certs/ca-certificates.crt; \
                  exit $rc";
    let out = podman(
        &layout,
        &[
            (workspace.path(), "/workspace"),
            (docker.path(), "/kaniko/.docker"),
        ],
        &["--entrypoint", "/busybox/sh"],
        &["-c", script],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Dockerfile:2"), "{stderr}");
    assert!(stderr.contains("exit code 7"), "{stderr}");
    assert!(stderr.contains("about to fail"), "{stderr}");
    let sums = String::from_utf8_lossy(&out.stdout);
    let binary = podman::repository().join("target/static/x86_64-unknown-linux-gnu/debug/strata");
    let expected = Command::new("sha256sum").arg(&binary).output().unwrap();
    let expected = String::from_utf8_lossy(&expected.stdout);
    let expected = expected.split_whitespace().next().unwrap();
    assert!(sums.contains(expected), "the executor changed: {sums}");
    assert_eq!(
        snapshot(workspace.path()),
        before_workspace,
        "the workspace changed"
    );
    assert_eq!(
        snapshot(docker.path()),
        before_docker,
        "the Docker config changed"
    );

    // Not uid 0: a clear error, nothing touched.
    let out = podman(
        &layout,
        &[(workspace.path(), "/workspace")],
        &["--user", "1000"],
        &["--context", "dir:///workspace", "--no-push"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs uid 0"),
        "{}",
        text(&out)
    );
    // --network=none cannot be honoured: an error naming the line.
    fs::write(
        workspace.path().join("Dockerfile"),
        format!("FROM {base}\nRUN --network=none true\n"),
    )
    .unwrap();
    let out = in_container(workspace.path(), &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Dockerfile:2") && stderr.contains("--network=none"),
        "{stderr}"
    );
    // A mount target on a volume (the workspace) is refused: nothing is placed there.
    fs::write(
        workspace.path().join("Dockerfile"),
        format!("FROM {base}\nRUN --mount=type=tmpfs,target=/workspace/scratch true\n"),
    )
    .unwrap();
    let out = in_container(workspace.path(), &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/workspace/scratch") && stderr.contains("never touches"),
        "{stderr}"
    );
    assert!(!workspace.path().join("scratch").exists());
}

#[test]
fn a_push_with_the_mounted_docker_config() {
    let registry = TestRegistry::builder()
        .basic_auth("ci", "ci-pass-77x")
        .start()
        .unwrap();
    let base = push_busybox_image(&registry, "base/busybox", "1").unwrap();
    let workspace = tempfile::tempdir().unwrap();
    fs::write(
        workspace.path().join("Dockerfile"),
        format!("FROM {}\nRUN echo pushed > /pushed\n", base.reference),
    )
    .unwrap();
    let docker = docker_config(&registry.host(), "ci", "ci-pass-77x");
    let destination = format!("{}/team/app:1", registry.host());
    let (dir, _) = debug_image();
    let out = podman(
        &dir.path().join("debug"),
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
            "--digest-file",
            "/workspace/digest",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("ci-pass-77x"));
    let digest = fs::read_to_string(workspace.path().join("digest")).unwrap();
    assert_eq!(remote_digest(&destination, "ci:ci-pass-77x"), digest);
}

/// GitLab's way: the job's shell puts the context (and a secret) in the container's own
/// filesystem, not on a volume. Replacing `/` for the stage must not take them away.
#[test]
fn a_context_and_a_secret_in_the_containers_own_filesystem_survive_the_stage() {
    let (_registry, base) = registry();
    let workspace = tempfile::tempdir().unwrap();
    fs::write(workspace.path().join("hello.txt"), "hello\n").unwrap();
    fs::write(
        workspace.path().join("Dockerfile"),
        format!(
            "FROM {base}\n\
             RUN --mount=type=secret,id=t test -s /run/secrets/t && echo ran > /ran\n\
             COPY hello.txt /hello.txt\n"
        ),
    )
    .unwrap();
    let (dir, _) = debug_image();
    let script = "mkdir /ctx && cp -r /workspace/. /ctx && echo s3 > /my-secret && \
                  /kaniko/executor --context dir:///ctx --no-push --secret id=t,src=/my-secret \
                  --oci-layout-path /workspace/in --progress plain";
    let out = podman(
        &dir.path().join("debug"),
        &[(workspace.path(), "/workspace")],
        &["--entrypoint", "/busybox/sh"],
        &["-c", script],
    );
    assert!(out.status.success(), "{}", text(&out));
    let (tree, _, _work) = judge(&workspace.path().join("in"));
    assert_eq!(
        tree.get("hello.txt").map(String::as_str),
        Some("644 0:0 = \"hello\\n\"")
    );
    assert!(tree.contains_key("ran"));
    assert!(!tree.contains_key("ctx") && !tree.contains_key("my-secret"));
}

/// The executor is the container's PID 1, so what a RUN leaves behind becomes its child when
/// orphaned: killed with the step's process group, it must also be reaped, not left a zombie.
#[test]
fn what_a_run_leaves_behind_is_killed_and_reaped() {
    let (_registry, base) = registry();
    let workspace = tempfile::tempdir().unwrap();
    fs::write(
        workspace.path().join("Dockerfile"),
        format!(
            "FROM {base}\n\
             RUN (sleep 30 &) ; echo started\n\
             RUN cat /proc/[0-9]*/stat | awk '{{print $3}}' | grep -c Z > /zombies || true\n"
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = in_container(workspace.path(), &[], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(25));
    let (tree, _, _work) = judge(&workspace.path().join("in"));
    assert_eq!(
        tree.get("zombies").map(String::as_str),
        Some("644 0:0 = \"0\\n\""),
        "a killed process was left a zombie"
    );
}
