//! Steps run in a real busybox root filesystem, in real namespaces.
//!
//! CI runs these as root; `rootless_steps_run_as_an_unprivileged_user` reruns a few of them
//! as `nobody` in a user namespace.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_sandbox::{
    Cancel, Error, ExitStatus, Mount, MountKind, Network, Outcome, Sandbox, Sharing, Step, Stream,
};

struct Root {
    /// Holds `root/` and, beside it, `outside-marker`, which no step may see.
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("root")).unwrap();
        strata_testkit::busybox_rootfs(&dir.path().join("root")).unwrap();
        fs::write(dir.path().join("outside-marker"), "host secret\n").unwrap();
        Root { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn sh(&self, script: &str) -> Step {
        Step::shell(self.path(), ["/bin/sh", "-c"], script).env("PATH", "/bin")
    }
}

struct Ran {
    outcome: Outcome,
    stdout: String,
    stderr: String,
}

fn run(step: &Step) -> Ran {
    try_run(step).unwrap()
}

fn try_run(step: &Step) -> Result<Ran, Error> {
    let sandbox = Sandbox::new().unwrap();
    let mut stdout = String::new();
    let mut stderr = String::new();
    let outcome = sandbox.run(step, &Cancel::new(), |stream, line| {
        let out = match stream {
            Stream::Stdout => &mut stdout,
            Stream::Stderr => &mut stderr,
        };
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    })?;
    Ok(Ran {
        outcome,
        stdout,
        stderr,
    })
}

/// Every path under `dir` with its type, mode and (for directories) modification time.
fn tree(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(dir).unwrap().display().to_string();
        out.push(format!(
            "{rel} {:o} {}",
            meta.mode(),
            meta.mtime_nsec() + meta.mtime() * 1_000_000_000
        ));
        if meta.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn output_and_exit_code_come_back() {
    let root = Root::new();
    let ran = run(&root.sh("echo one; echo two >&2; echo three; exit 3"));
    assert_eq!(ran.outcome.status, ExitStatus::Code(3));
    assert_eq!(ran.stdout, "one\nthree\n");
    assert_eq!(ran.stderr, "two\n");
    assert!(!ran.outcome.isolation.chroot, "pivot_root works here");

    let ran = run(&root.sh("kill -TERM $$"));
    assert_eq!(ran.outcome.status, ExitStatus::Signal(15));
    assert!(
        run(&Step::exec(root.path(), ["/bin/true"]))
            .outcome
            .status
            .success()
    );
}

#[test]
fn environment_workdir_user_and_hostname_are_the_steps() {
    let root = Root::new();
    let step = root
        .sh("id; pwd; echo HOME=$HOME FOO=$FOO; hostname; touch /tmp/made-here")
        .env("FOO", "bar baz")
        .workdir("/home/app/work")
        .user("app")
        .hostname("builder-7");
    let ran = run(&step);
    assert!(ran.outcome.status.success(), "{}", ran.stderr);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(
        lines[0].starts_with("uid=1000(app) gid=1000(app)"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("50(staff)"),
        "supplementary group: {}",
        lines[0]
    );
    assert_eq!(lines[1], "/home/app/work");
    assert_eq!(lines[2], "HOME=/home/app FOO=bar baz");
    assert_eq!(lines[3], "builder-7");
    let made = root.path().join("tmp/made-here");
    assert!(made.is_file(), "files written land in the root");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&made).unwrap().uid(), 1000);

    let ran = run(&root.sh("id -u; id -g").user("4242:4343"));
    assert_eq!(ran.stdout, "4242\n4343\n");
    let ran = run(&root.sh("echo $PATH").envs([("PATH", "/usr/bin:/bin")]));
    assert_eq!(ran.stdout, "/usr/bin:/bin\n");
    let ran = run(&Step::shell(root.path(), ["/bin/sh", "-c"], "echo $PATH"));
    assert_eq!(ran.stdout, format!("{}\n", strata_sandbox::DEFAULT_PATH));
}

#[test]
fn the_host_outside_the_root_cannot_be_seen_or_written() {
    let root = Root::new();
    let marker = root.dir.path().join("outside-marker");
    fs::create_dir(root.path().join("data")).unwrap();
    let script = format!(
        "cat /proc/1/root/../outside-marker; \
         cat ../../../outside-marker; \
         cat {marker}; \
         ln -s / /tmp/up; cat /tmp/up/../outside-marker; \
         ln -s ../../../.. /tmp/rel; cat /tmp/rel/outside-marker; \
         echo escaped > /../escape; echo escaped > /proc/1/root/../escape2; \
         ls /proc | grep -c '^[0-9]'; \
         echo done",
        marker = marker.display()
    );
    let ran = run(&root.sh(&script));
    assert!(!ran.stdout.contains("host secret"), "{}", ran.stdout);
    assert!(ran.stdout.ends_with("done\n"));
    assert!(!root.dir.path().join("escape").exists());
    assert!(!root.dir.path().join("escape2").exists());
    assert_eq!(
        fs::read_to_string(root.path().join("escape")).unwrap(),
        "escaped\n"
    );
    // Only the step's own processes: the init, sh, ls and grep at most.
    let pids: u32 = ran.stdout.lines().next().unwrap().parse().unwrap();
    assert!(pids <= 4, "the step sees {pids} processes");

    // Capabilities that would undo the isolation are gone, even for root.
    let ran = run(&root
        .sh("mount -t tmpfs none /mnt 2>&1 || echo refused; umount /proc 2>&1 || echo refused"));
    assert_eq!(ran.stdout.matches("refused").count(), 2, "{}", ran.stdout);
}

#[test]
fn dev_proc_sys_and_etc_are_provided_without_entering_the_root() {
    let root = Root::new();
    let before = tree(&root.path());
    let ran = run(
        &root.sh("ls /dev; echo x > /dev/null; head -c 4 /dev/zero | wc -c; \
         touch /sys/x 2>/dev/null || echo sys read-only; \
         cat /etc/hosts; echo 1.2.3.4 extra >> /etc/hosts; \
         test -d /proc/self && echo proc"),
    );
    assert!(ran.outcome.status.success(), "{}", ran.stderr);
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "shm", "pts", "ptmx", "fd",
    ] {
        assert!(
            ran.stdout.lines().any(|l| l == dev),
            "/dev/{dev} missing: {}",
            ran.stdout
        );
    }
    assert!(ran.stdout.contains("\n4\n"));
    assert!(ran.stdout.contains("sys read-only"));
    assert!(ran.stdout.contains("localhost strata"));
    assert!(ran.stdout.contains("proc\n"));
    // The busybox root has no /etc/hosts: the stub is gone, and /etc has its old time.
    assert_eq!(tree(&root.path()), before);
}

/// The step's PID 1 is a clone of the builder: its command line and environment must show
/// nothing of the builder's (arguments such as `--build-arg` values, credentials).
#[test]
fn the_steps_init_shows_nothing_of_the_builders_command_line_or_environment() {
    let root = Root::new();
    let exe = std::env::current_exe().unwrap();
    let exe_name = exe.file_name().unwrap().to_string_lossy().into_owned();
    let ran = run(&root.sh(
        "od -An -c /proc/1/cmdline | tr -d ' \\n'; echo; tr '\\0' '\\n' < /proc/1/environ | grep -c . || true",
    ));
    assert!(ran.outcome.status.success(), "{}", ran.stderr);
    let mut lines = ran.stdout.lines();
    let cmdline = lines.next().unwrap();
    assert!(cmdline.starts_with("strata-init\\0"), "{cmdline}");
    assert!(!cmdline.contains(&exe_name), "{cmdline}");
    assert_eq!(
        lines.next(),
        Some("0"),
        "PID 1 shows an environment: {}",
        ran.stdout
    );
}

#[test]
fn processes_left_in_the_background_are_killed_when_the_step_ends() {
    let root = Root::new();
    let started = Instant::now();
    let ran = run(&root.sh("(sleep 1; echo late > /tmp/late) & sleep 30 & echo started"));
    assert_eq!(ran.stdout, "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the run waited for its background processes"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !root.path().join("tmp/late").exists(),
        "a background process survived"
    );
}

#[test]
fn a_secret_is_readable_during_the_step_and_absent_afterwards() {
    let root = Root::new();
    let before = tree(&root.path());
    let secrets = tempfile::tempdir().unwrap();
    let source = secrets.path().join("token");
    fs::write(&source, "s3cr3t\n").unwrap();
    let mut mount = Mount::secret(&source, "/run/secrets/token");
    if let MountKind::Secret { uid, .. } = &mut mount.kind {
        *uid = 1000;
    }
    let ran = run(&root
        .sh("cat /run/secrets/token; stat -c '%a %u' /run/secrets/token; echo x > /run/secrets/token || echo ro")
        .user("app")
        .mount(mount));
    assert_eq!(ran.stdout, "s3cr3t\n400 1000\nro\n", "{}", ran.stderr);
    assert!(!root.path().join("run").exists());
    assert_eq!(tree(&root.path()), before);
    assert_eq!(fs::read_to_string(&source).unwrap(), "s3cr3t\n");
}

#[test]
fn a_cache_mount_persists_between_runs_and_stays_out_of_the_root() {
    let root = Root::new();
    let cache = tempfile::tempdir().unwrap();
    let step = |script: &str, sharing| {
        root.sh(script).mount(Mount::cache(
            cache.path().join("apt"),
            "/var/cache/apt",
            sharing,
        ))
    };
    let before = tree(&root.path());
    assert!(
        run(&step("echo 1 >> /var/cache/apt/count", Sharing::Shared))
            .outcome
            .status
            .success()
    );
    let ran = run(&step(
        "echo 2 >> /var/cache/apt/count; cat /var/cache/apt/count",
        Sharing::Locked,
    ));
    assert_eq!(ran.stdout, "1\n2\n");
    assert_eq!(tree(&root.path()), before, "the mount point is gone");
    assert_eq!(
        fs::read_to_string(cache.path().join("apt/count")).unwrap(),
        "1\n2\n"
    );

    // A private cache in use by another step gives this one an empty directory.
    let busy = fs::File::open(cache.path().join("apt")).unwrap();
    rustix::fs::flock(&busy, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let ran = run(&step("ls /var/cache/apt | wc -l", Sharing::Private));
    assert_eq!(ran.stdout.trim(), "0");
}

#[test]
fn bind_and_tmpfs_mounts() {
    let root = Root::new();
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("input"), "from the host\n").unwrap();
    let before = tree(&root.path());
    let ran = run(&root
        .sh("cat /src/input; echo x > /src/new || echo ro; echo y > /out/new; echo z > /scratch/tmp; ls /scratch")
        .mount(Mount::bind(host.path(), "/src"))
        .mount(Mount::bind(host.path(), "/out").read_write())
        .mount(Mount::tmpfs("/scratch")));
    assert_eq!(ran.stdout, "from the host\nro\ntmp\n", "{}", ran.stderr);
    assert_eq!(fs::read_to_string(host.path().join("new")).unwrap(), "y\n");
    assert_eq!(
        tree(&root.path()),
        before,
        "no mount point, no tmpfs file left"
    );
}

#[test]
fn network_none_cannot_reach_the_hosts_loopback() {
    let root = Root::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"hello from the host\n").unwrap();
    });
    let script = format!("nc 127.0.0.1 {port} </dev/null || echo unreachable");
    let ran = run(&root.sh(&script).network(Network::None));
    assert_eq!(ran.stdout.trim(), "unreachable", "{}", ran.stderr);
    assert_eq!(ran.outcome.isolation.network, Network::None);
    // The loopback interface of the step's own namespace is up.
    let ran = run(&root
        .sh("cat /sys/class/net/lo/flags")
        .network(Network::None));
    let flags = u32::from_str_radix(ran.stdout.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is up");

    let ran = run(&root.sh(&script));
    assert_eq!(
        ran.stdout, "hello from the host\n",
        "the host network is the default"
    );
    server.join().unwrap();
}

#[test]
fn a_timeout_kills_the_step_and_cleans_up() {
    let root = Root::new();
    let before = tree(&root.path());
    let started = Instant::now();
    let err = try_run(
        &root
            .sh("echo begun; sleep 30")
            .mount(Mount::tmpfs("/scratch"))
            .timeout(Duration::from_millis(300)),
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::TimedOut(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(tree(&root.path()), before);
}

#[test]
fn cancelling_kills_the_step() {
    let root = Root::new();
    let cancel = Cancel::new();
    let trigger = cancel.clone();
    let sandbox = Sandbox::new().unwrap();
    let mut seen = Vec::new();
    let err = sandbox
        .run(&root.sh("echo begun; sleep 30"), &cancel, |_, line| {
            seen.push(line.to_vec());
            trigger.cancel();
        })
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(seen, vec![b"begun".to_vec()]);
}

#[test]
fn errors_say_what_is_wrong() {
    let root = Root::new();
    let err = try_run(&Step::exec(root.path(), ["no-such-tool", "x"]))
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("`no-such-tool`: executable file not found in $PATH"),
        "{text}"
    );
    let err = try_run(&Step::exec(root.path(), ["/etc/passwd"]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("permission denied"), "{err}");
    let err = try_run(&root.sh("true").user("ghost")).err().unwrap();
    assert!(err.to_string().contains("no user named `ghost`"), "{err}");
    let err = try_run(&root.sh("true").workdir("/etc/passwd"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a directory"), "{err}");
    let err = try_run(&root.sh("true").mount(Mount::tmpfs("/proc/x")))
        .err()
        .unwrap();
    assert!(err.to_string().contains("inside /proc"), "{err}");
    let err = try_run(&Step::exec(root.dir.path().join("missing"), ["/bin/true"]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn long_and_unterminated_lines_are_delivered() {
    let root = Root::new();
    let ran = run(&root.sh("head -c 200000 /dev/zero | tr '\\0' x; printf tail"));
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "three pieces of 64 KiB at most, then the rest"
    );
    assert_eq!(lines.iter().map(|l| l.len()).sum::<usize>(), 200_004);
    assert!(lines[3].ends_with("tail"));
}

#[test]
fn the_probe_reports_what_works_here() {
    let probe = strata_sandbox::probe();
    println!("{probe}");
    assert!(probe.namespaces.is_yes(), "{probe}");
    assert!(probe.pivot_root.is_yes(), "{probe}");
    if probe.running_as_root {
        assert!(probe.overlay.is_yes(), "overlay works as root: {probe}");
    }
}

/// Runs the inner test below as `nobody` (uid 65534) in a user namespace.
#[test]
fn rootless_steps_run_as_an_unprivileged_user() {
    if !rustix::process::geteuid().is_root() {
        // Already unprivileged: the inner test is this process's own business.
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args([
            "rootless_inner",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("STRATA_SANDBOX_ROOTLESS", "1")
        .env("TMPDIR", "/tmp")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the inner test ran: {stdout}");
}

#[test]
#[ignore = "run by rootless_steps_run_as_an_unprivileged_user as an unprivileged user"]
fn rootless_inner() {
    assert_eq!(std::env::var("STRATA_SANDBOX_ROOTLESS").as_deref(), Ok("1"));
    let probe = strata_sandbox::probe();
    assert!(probe.rootless, "{probe}");
    if !probe.user_namespaces.is_yes() {
        panic!("unprivileged user namespaces are not allowed on this machine: {probe}");
    }
    let root = Root::new();
    let before = tree(&root.path());
    let ran = run(&root.sh("id -u; echo made > /tmp/made; ls /dev/null; hostname"));
    assert!(ran.outcome.isolation.user_namespace);
    assert_eq!(ran.stdout, "0\n/dev/null\nstrata\n", "{}", ran.stderr);
    assert_eq!(
        fs::read_to_string(root.path().join("tmp/made")).unwrap(),
        "made\n"
    );
    fs::remove_file(root.path().join("tmp/made")).unwrap();
    let mut after = tree(&root.path());
    after.retain(|line| !line.starts_with("tmp "));
    let mut before = before;
    before.retain(|line| !line.starts_with("tmp "));
    assert_eq!(after, before);
    let err = try_run(&root.sh("true").user("app")).err().unwrap();
    assert!(
        err.to_string().contains("not mapped in rootless mode"),
        "{err}"
    );
}

/// The engine runs steps on an overlay: the upper directory must hold only what the command
/// wrote (mount points created for /etc/hosts and friends are taken away again).
#[test]
fn on_an_overlay_the_upper_directory_holds_only_the_commands_writes() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let root = Root::new();
    let base = tempfile::tempdir().unwrap();
    let (upper, work, merged) = (
        base.path().join("upper"),
        base.path().join("work"),
        base.path().join("merged"),
    );
    for dir in [&upper, &work, &merged] {
        fs::create_dir(dir).unwrap();
    }
    // The busybox root has no /etc/hosts, /etc/resolv.conf or /run: all become stubs.
    let status = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            root.path().display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged)
        .status()
        .unwrap();
    assert!(status.success());
    let secrets = tempfile::tempdir().unwrap();
    fs::write(secrets.path().join("s"), "x").unwrap();
    let step = Step::shell(&merged, ["/bin/sh", "-c"], "echo hi > /tmp/x")
        .env("PATH", "/bin")
        .mount(Mount::secret(secrets.path().join("s"), "/run/secrets/s"))
        .mount(Mount::tmpfs("/var/scratch"));
    let ran = run(&step);
    assert!(ran.outcome.status.success(), "{}", ran.stderr);
    let upper_tree: Vec<String> = tree(&upper)
        .into_iter()
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    let umount = std::process::Command::new("umount")
        .arg(&merged)
        .status()
        .unwrap();
    assert!(
        umount.success(),
        "the overlay is not held by the finished step"
    );
    // `etc` was copied up when its stubs were created; they are gone and its mode and times
    // are the lower directory's again, so a change set can tell it apart from a real change.
    assert_eq!(
        upper_tree,
        vec!["", "etc", "tmp", "tmp/x"],
        "upper: {upper_tree:?}"
    );
    let meta = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(p).unwrap();
        (m.mode(), m.uid(), m.mtime(), m.mtime_nsec())
    };
    assert_eq!(meta(&upper.join("etc")), meta(&root.path().join("etc")));
}

/// Steps started at the same moment from two threads are independent: a step's init holds
/// no descriptor of another step, so a quick step never waits for a slow one's end (its
/// output would stay open while the slow step's init held a copy of the write end).
#[test]
fn a_quick_step_never_waits_for_a_slow_one_started_beside_it() {
    let quick_root = Root::new();
    let slow_root = Root::new();
    for round in 0..6 {
        let barrier = std::sync::Barrier::new(2);
        let (quick, _) = std::thread::scope(|scope| {
            let slow = scope.spawn(|| {
                barrier.wait();
                run(&slow_root.sh("sleep 2"));
            });
            let quick = scope.spawn(|| {
                barrier.wait();
                let started = Instant::now();
                run(&quick_root.sh("echo quick"));
                started.elapsed()
            });
            (quick.join().unwrap(), slow.join().unwrap())
        });
        assert!(
            quick < Duration::from_millis(1500),
            "round {round}: the quick step took {quick:?}, waiting for the slow one"
        );
    }
}
