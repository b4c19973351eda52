//! Rootless builds: an ordinary user's image equals root's. Run as root (as CI does), the
//! test creates two users: one with subordinate id ranges (`/etc/subuid`, `/etc/subgid`,
//! Debian's `uidmap` helpers), which builds as root of a user namespace of its own, and one
//! without, which can build what needs only root.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

/// Creates `name` (once) and, with `ranges`, gives it a subordinate range; returns its uid.
fn ensure_user(name: &str, ranges: Option<u32>) -> u32 {
    let id = |flag: &str| {
        Command::new("id")
            .args([flag, name])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .ok()
            })
    };
    if id("-u").is_none() {
        let status = Command::new("useradd")
            .args(["-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin"])
            // Debian's useradd gives new users subordinate ranges unless told not to.
            .args(["-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name])
            .status()
            .unwrap();
        assert!(status.success(), "useradd {name}");
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let mine = |l: &&str| l.starts_with(&format!("{name}:"));
        if ranges.is_none() && text.lines().any(|l| mine(&l)) {
            let kept: Vec<&str> = text.lines().filter(|l| !mine(l)).collect();
            std::fs::write(file, format!("{}\n", kept.join("\n"))).unwrap();
        }
    }
    if let Some(start) = ranges {
        for file in ["/etc/subuid", "/etc/subgid"] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if !text.lines().any(|l| l.starts_with(&format!("{name}:"))) {
                let mut text = text;
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&format!("{name}:{start}:65536\n"));
                std::fs::write(file, text).unwrap();
            }
        }
    }
    id("-u").unwrap()
}

fn build(as_user: Option<u32>, cwd: &Path, ctx: &Path, dockerfile: &str, state: &Path) -> Output {
    let exe = env!("CARGO_BIN_EXE_strata");
    let mut command = match as_user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .args(["--init-groups", "--"])
                .arg(exe);
            c
        }
        None => Command::new(exe),
    };
    command
        .current_dir(cwd)
        .env("HOME", cwd)
        .arg("--context")
        .arg(ctx)
        .arg("--dockerfile")
        .arg(ctx.join(dockerfile))
        .arg("--reproducible")
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap()
}

/// A directory for `uid`: readable by everyone, writable by the user.
fn workdir(uid: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
    dir
}

const BASE: &str = r#"FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p /tmp /etc /home/app /srv/data && chmod 1777 /tmp && printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n' > /etc/passwd && printf 'root:x:0:\napp:x:1000:\n' > /etc/group && echo kept > /srv/data/kept && echo gone > /srv/data/gone && chown -R 1000:1000 /home/app /srv/data && chmod 0750 /srv/data"]
"#;

/// What needs only root: files made, changed and deleted by root.
const ROOT_ONLY: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p /tmp /etc /usr/share/nginx/html && chmod 1777 /tmp && printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n' > /etc/passwd && printf 'root:x:0:\napp:x:1000:\n' > /etc/group && echo hi > /usr/share/nginx/html/index.html"]
RUN rm /usr/share/nginx/html/index.html && echo again > /usr/share/nginx/html/other
COPY hello.txt /srv/
"#;

const STEPS: &str = r#"
FROM base AS built
RUN mkdir -p /usr/share/nginx/html && echo hi > /usr/share/nginx/html/index.html && rm /srv/data/gone
COPY --chown=app:app hello.txt /home/app/copied.txt
COPY hello.txt /srv/data/
USER app
RUN touch /tmp/mine /home/app/made && echo more >> /srv/data/kept

FROM scratch
COPY --from=built /home/app /app
COPY --from=built /srv/data /data
"#;

#[test]
fn rootless_builds_equal_root_builds() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("rootless builds not checked: creating the test users needs root");
        return;
    }
    let ranged = ensure_user("strata-rootless", Some(300_000));
    let single = ensure_user("strata-rootless-single", None);
    let busybox = strata_testkit::find_program("busybox", "busybox-static").unwrap();
    for (uid, dockerfile, needs_ranges) in [
        (ranged, format!("{BASE}{STEPS}"), true),
        (single, ROOT_ONLY.to_owned(), false),
    ] {
        let cwd = workdir(uid);
        let ctx = cwd.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        std::fs::copy(&busybox, ctx.join("busybox")).unwrap();
        std::fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
        std::fs::write(ctx.join("Dockerfile"), &dockerfile).unwrap();
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&ctx)
            .status()
            .unwrap();
        let root_state = tempfile::tempdir().unwrap();
        let as_root = common::printed_digest(&build(
            None,
            root_state.path(),
            &ctx,
            "Dockerfile",
            &root_state.path().join("state"),
        ));
        let state = cwd.path().join("state");
        let out = build(Some(uid), cwd.path(), &ctx, "Dockerfile", &state);
        assert_eq!(
            common::printed_digest(&out),
            as_root,
            "uid {uid} (ranges: {needs_ranges}) built another image than root"
        );
        if needs_ranges {
            // In its own user and mount namespaces, the build used the layer store: overlays
            // mounted with `userxattr`.
            let stored = std::fs::read_dir(state.join("layers"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert!(stored > 0, "no layer store in {}", state.display());
            // The cache works the same: a second build takes every step from it.
            let again = build(Some(uid), cwd.path(), &ctx, "Dockerfile", &state);
            assert_eq!(common::printed_digest(&again), as_root);
            let stdout = String::from_utf8_lossy(&again.stdout);
            assert!(stdout.contains("8 of 8 steps from the cache"), "{stdout}");
            // A SIGTERM to the command ends the build inside its namespace too: nothing of
            // the user's is left running.
            std::fs::write(ctx.join("Dockerfile.slow"), format!("{BASE}RUN sleep 60\n")).unwrap();
            let mut slow = Command::new("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .args(["--init-groups", "--"])
                .arg(env!("CARGO_BIN_EXE_strata"))
                .arg("--context")
                .arg(&ctx)
                .arg("--dockerfile")
                .arg(ctx.join("Dockerfile.slow"))
                .arg("--state-dir")
                .arg(&state)
                .current_dir(cwd.path())
                .env("HOME", cwd.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let running = |pattern: &str| {
                Command::new("pgrep")
                    .args(["-u", &uid.to_string(), "-f", pattern])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !running("sleep 60") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the slow step never started"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let pid = rustix::process::Pid::from_raw(slow.id() as i32).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
            let _ = slow.wait();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while running("strata") || running("sleep 60") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the build went on after its command was terminated"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            // And the state check finds nothing wrong in the user's state directory.
            let check = Command::new("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .args(["--init-groups", "--"])
                .arg(env!("CARGO_BIN_EXE_strata"))
                .args(["state", "check", "--state-dir"])
                .arg(&state)
                .env("HOME", cwd.path())
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "{}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        if !needs_ranges {
            // Without ranges, only root exists inside: USER app with RUN is a clear error.
            let file = format!("{ROOT_ONLY}USER app\nRUN touch /tmp/x\n");
            std::fs::write(ctx.join("Dockerfile.app"), file).unwrap();
            let out = build(Some(uid), cwd.path(), &ctx, "Dockerfile.app", &state);
            assert_eq!(out.status.code(), Some(1));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("not mapped"), "{stderr}");
        }
    }
}
