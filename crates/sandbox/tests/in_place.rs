//! Steps run in place (the in-container mode's plain child process), on this machine's own
//! root: harmless commands only. Output, exit codes, the user from /etc/passwd, the working
//! directory, timeouts, and processes left behind killed with the step's process group.

use std::time::{Duration, Instant};

use strata_sandbox::{Cancel, Error, ExitStatus, Step, Stream, run_in_place};

fn sh(script: &str) -> Step {
    Step::shell("/", ["/bin/sh", "-c"], script)
}

fn run(step: &Step) -> (ExitStatus, String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    let outcome = run_in_place(step, &Cancel::new(), |stream, line| {
        let text = String::from_utf8_lossy(line);
        match stream {
            Stream::Stdout => out.push_str(&format!("{text}\n")),
            Stream::Stderr => err.push_str(&format!("{text}\n")),
        }
    })
    .unwrap();
    (outcome.status, out, err)
}

#[test]
fn output_status_user_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("made/here");
    let (status, out, err) = run(&sh("echo out; echo err >&2; pwd; id -u; exit 3")
        .workdir(work.to_str().unwrap())
        .user("nobody")
        .env("PATH", "/usr/bin:/bin"));
    assert_eq!(status, ExitStatus::Code(3));
    assert_eq!(err, "err\n");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["out", work.to_str().unwrap(), "65534"]);
    assert!(work.is_dir(), "the working directory is created");
    let (status, _, _) = run(&sh("kill -9 $$"));
    assert_eq!(status, ExitStatus::Signal(9));
}

#[test]
fn what_the_command_leaves_running_is_killed_and_does_not_hold_the_step() {
    let started = Instant::now();
    let (status, out, _) = run(&sh("sleep 30 & echo started"));
    assert!(status.success());
    assert_eq!(out, "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn timeouts_cancel_and_bad_steps() {
    let started = Instant::now();
    let result = run_in_place(
        &sh("sleep 30").timeout(Duration::from_millis(300)),
        &Cancel::new(),
        |_, _| {},
    );
    assert!(matches!(result, Err(Error::TimedOut(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let cancel = Cancel::new();
    cancel.cancel();
    let result = run_in_place(&sh("sleep 30"), &cancel, |_, _| {});
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    let result = run_in_place(
        &Step::shell("/tmp", ["/bin/sh", "-c"], "true"),
        &Cancel::new(),
        |_, _| {},
    );
    assert!(matches!(result, Err(Error::InvalidStep(_))), "{result:?}");
    let result = run_in_place(
        &Step::exec("/", ["no-such-program-x"]),
        &Cancel::new(),
        |_, _| {},
    );
    assert!(matches!(result, Err(Error::Exec { .. })), "{result:?}");
}
