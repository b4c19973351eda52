//! Running a step as a plain child process in this process's own root filesystem: the
//! in-container mode, for unprivileged containers where namespaces and mounts are denied
//! (Kaniko's way). There is no isolation beyond the container's own: the caller runs it only
//! in a container made for the build, and makes the step's mounts and snapshots itself.
//!
//! The command gets the step's environment (a default `PATH` and the user's `HOME` when
//! missing), its working directory (created when missing), and its user, group and
//! supplementary groups from the root's `/etc/passwd` and `/etc/group`. It leads a process
//! group of its own; when it ends, or on timeout or cancellation, the whole group is killed
//! (and reaped, where its orphans became ours), so nothing it left running keeps the build
//! waiting.

#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::root::{self, Create};
use crate::sandbox::{Stop, pump};
use crate::step::{Cancel, DEFAULT_PATH, ExitStatus, Isolation, Network, Outcome, Step, Stream};
use crate::user;

/// Runs `step` in place: its root must be `/` (the process's own root filesystem) and it may
/// have no mounts (the caller makes them). Output comes line by line to `on_output`.
pub fn run_in_place(
    step: &Step,
    cancel: &Cancel,
    mut on_output: impl FnMut(Stream, &[u8]),
) -> Result<Outcome> {
    let started = Instant::now();
    check(step)?;
    let mut command = command(step)?;
    let mut child = command.spawn().map_err(|e| Error::Exec {
        program: step.argv[0].clone(),
        reason: match e.kind() {
            std::io::ErrorKind::NotFound => "executable file not found in $PATH".to_owned(),
            _ => e.to_string(),
        },
    })?;
    let group = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let kill_group = || {
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group();
        return Err(Error::Lost(
            "the command's output pipes are missing".to_owned(),
        ));
    };
    let pipes = [OwnedFd::from(stdout), OwnedFd::from(stderr)];
    let deadline = step.timeout.map(|t| started + t);
    // The command is done when its own process is: whatever it left running goes with its
    // group (pump kills it).
    let mut exited = || !matches!(child.try_wait(), Ok(None));
    let stopped = pump(
        &pipes,
        deadline,
        cancel,
        &kill_group,
        &mut exited,
        &mut on_output,
    );
    kill_group();
    let status = child
        .wait()
        .map_err(|e| Error::Lost(format!("waiting for the command: {e}")))?;
    if let Some(group) = group {
        reap(group);
    }
    match stopped? {
        Some(Stop::Timeout) => return Err(Error::TimedOut(step.timeout.unwrap_or_default())),
        Some(Stop::Cancelled) => return Err(Error::Cancelled),
        None => {}
    }
    let status = match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        (None, None) => return Err(Error::Lost(format!("{status:?}"))),
    };
    Ok(Outcome {
        status,
        isolation: Isolation {
            user_namespace: false,
            chroot: false,
            network: Network::Host,
        },
        duration: started.elapsed(),
    })
}

/// What a step run in place cannot have: an empty command, another root, mounts, or
/// `--network=none`.
fn check(step: &Step) -> Result<()> {
    if step.argv.is_empty() {
        return Err(Error::InvalidStep("the command is empty".to_owned()));
    }
    if step.root != Path::new("/") {
        return Err(Error::InvalidStep(format!(
            "a step run in place must have the root `/`, not {}",
            step.root.display()
        )));
    }
    if !step.mounts.is_empty() {
        return Err(Error::InvalidStep(
            "a step run in place takes no mounts (the caller makes them)".to_owned(),
        ));
    }
    if step.network == Network::None {
        return Err(Error::InvalidStep(
            "--network=none needs a network namespace, which a step run in place does not have"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The command of `step`, as its user (groups, then gid, then uid, set in the child before
/// exec), with its environment (a default `PATH` and the user's `HOME` when unset) in its
/// working directory, in a process group of its own, its output piped.
fn command(step: &Step) -> Result<Command> {
    let root_dir = Path::new("/");
    let exec_user = user::resolve(root_dir, &step.user)?;
    let mut env: Vec<(String, String)> = step.env.clone();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".to_owned(), exec_user.home.clone()));
    }
    let workdir = if step.workdir.is_empty() {
        "/"
    } else {
        &step.workdir
    };
    let cwd = root::resolve_as(root_dir, workdir, Create::Dir, None)?;

    let mut command = Command::new(&step.argv[0]);
    command
        .args(&step.argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let (uid, gid, groups) = (exec_user.uid, exec_user.gid, exec_user.groups.clone());
    // SAFETY: the closure runs in the forked child before exec and makes raw system calls
    // only (no allocation: `groups` was built before the fork), in the order that keeps the
    // privilege to make them: groups, then gid, then uid.
    unsafe {
        command.pre_exec(move || {
            let list: &[libc::gid_t] = &groups;
            if libc::syscall(libc::SYS_setgroups, list.len(), list.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command)
}

/// Reaps what the command left in its process group and that became this process's
/// children: as a container's PID 1 (the executor usually is) every orphan is ours, and a
/// killed one would otherwise stay a zombie for the rest of the build. Waits at most
/// 200 ms for the killed to die; other children of this process are never waited for.
fn reap(group: rustix::process::Pid) {
    let started = Instant::now();
    loop {
        match rustix::process::waitpgid(group, rustix::process::WaitOptions::NOHANG) {
            Ok(Some(_)) => {}
            Ok(None) if started.elapsed() < std::time::Duration::from_millis(200) => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            // None of the group is our child (ECHILD), or the rest does not die.
            _ => return,
        }
    }
}
