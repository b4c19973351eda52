//! Rootless builds inside a user namespace of their own, as `buildah unshare` does.
//!
//! Called at the start of `main` by an ordinary user with subordinate id ranges
//! (`/etc/subuid`, `/etc/subgid`, and the `newuidmap`/`newgidmap` helpers of Debian's
//! `uidmap`), [`enter_user_namespace`] re-executes the program in a new user namespace where
//! the user is root and the ranges are ids 1…, with a mount namespace of its own. There a
//! build extracts layers with their owners, mounts overlays, runs steps and scans their
//! changes with the ids the image has, like a build as root: the image does not depend on who
//! built it. Without ranges, or where user namespaces are denied, the program goes on as it is
//! (steps still run in a namespace of their own, and their files' host ids are mapped back).
//!
//! The handshake: the first process spawns its own executable with `unshare(CLONE_NEWUSER)`
//! before `execve`; the new process waits on a pipe; the first process writes the maps with
//! the helpers and writes a byte; the new process executes itself once more, now root in the
//! namespace with its capabilities, and its exit status becomes the first process's.

#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;

/// The variable that carries the handshake's state: `wait:FD` in the process waiting for its
/// maps, `inside` in the process that runs the build, `off` to never enter a namespace.
pub const ENV: &str = "STRATA_USERNS";

/// Re-executes this program (`/proc/self/exe` with `args`, the program's own arguments
/// including its name) as root of a new user namespace mapping the caller's subordinate ids,
/// when the caller is not root and has them. Returns the exit code of the program run inside,
/// which the caller should exit with, or `None` to go on in this process: when running as
/// root, when already inside, without ranges, where user namespaces or the helpers are denied,
/// or with `STRATA_USERNS=off`.
///
/// Call it first thing in `main`, before any thread starts: the process inside takes its
/// mount namespace on this call too.
pub fn enter_user_namespace(args: &[OsString]) -> Option<i32> {
    let state = std::env::var(ENV).ok();
    if let Some(fd) = state.as_deref().and_then(|s| s.strip_prefix("wait:")) {
        return Some(wait_and_exec(fd, args));
    }
    if state.as_deref() == Some("inside") {
        if !rustix::process::geteuid().is_root() {
            // Not the process this module started: nothing to set up.
            return None;
        }
        follow_parent();
        if !private_mounts() {
            // Root in name only: the namespace grants no capabilities (a security module
            // restricting unprivileged user namespaces). The first process builds instead.
            std::process::exit(FALLBACK);
        }
        return None;
    }
    if state.is_some() || rustix::process::geteuid().is_root() {
        return None;
    }
    let map = crate::idmap::UserNamespaceMap::for_caller();
    if !map.has_ranges() {
        return None;
    }
    let (read, write) = rustix::pipe::pipe().ok()?;
    let write_fd = write.as_raw_fd();
    let mut command = Command::new("/proc/self/exe");
    command
        .args(args.iter().skip(1))
        .env(ENV, format!("wait:{}", read.as_raw_fd()))
        .env(PARENT_ENV, std::process::id().to_string());
    if let Some(arg0) = args.first() {
        command.arg0(arg0);
    }
    // SAFETY: the closure runs between fork and exec and makes only raw system calls
    // (close, unshare, prctl, getppid, _exit); it allocates nothing and takes no locks.
    let parent = std::process::id();
    unsafe {
        command.pre_exec(move || {
            libc::close(write_fd);
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    // User namespaces denied (a container's seccomp profile, a sysctl): go on as we are.
    let mut child = command.spawn().ok()?;
    drop(read);
    let pid = i32::try_from(child.id()).ok()?;
    if let Err(error) = map.apply(pid) {
        let _ = child.kill();
        let _ = child.wait();
        tracing::debug!(%error, "subordinate ids not mapped; building without them");
        return None;
    }
    let mut write = std::fs::File::from(write);
    if write.write_all(b"1").is_err() {
        let _ = child.kill();
    }
    drop(write);
    // The terminal's interrupt reaches the child too (one process group): it decides, and
    // this process reports how it ended, as `system()` does.
    // SAFETY: setting the disposition of two signals to "ignore"; no handler runs.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let status = loop {
        match child.wait() {
            Ok(status) => break status,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Some(1),
        }
    };
    match status.code() {
        Some(FALLBACK) => {
            // SAFETY: restoring the default disposition of the two signals ignored above.
            unsafe {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            }
            tracing::debug!("the user namespace gives no capabilities; building without it");
            None
        }
        Some(code) => Some(code),
        None => Some(128 + status.signal().unwrap_or(0)),
    }
}

/// The exit status by which the process inside says it could not work there (and did
/// nothing), so that the first process goes on itself.
const FALLBACK: i32 = 117;

/// The variable that carries the first process's pid to the one inside.
const PARENT_ENV: &str = "STRATA_USERNS_PARENT";

/// The process inside ends when the first process does (killed, say, by a `SIGTERM` meant
/// for the build): becoming root of the namespace cleared the parent-death signal its first
/// `execve` had.
fn follow_parent() {
    let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<libc::pid_t>().ok())
    else {
        return;
    };
    // SAFETY: prctl, getppid and _exit with constant arguments, before any thread starts.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        if libc::getppid() != parent {
            libc::_exit(143);
        }
    }
}

/// Root of the user namespace, this process takes a mount namespace of its own, so that it
/// can mount the layer store's overlays (with `userxattr`) as a build as root does. Failing
/// that, builds extract each stage's layers instead.
fn private_mounts() -> bool {
    // SAFETY: plain system calls with constant arguments, made before any thread starts.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return false;
        }
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
    }
    true
}

/// In the new namespace: waits for the maps, then executes the command again as root there.
fn wait_and_exec(fd: &str, args: &[OsString]) -> i32 {
    let Ok(raw) = fd.parse::<i32>() else {
        return FALLBACK;
    };
    // SAFETY: the fd was inherited for this purpose and is used by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut byte = [0u8; 1];
    let mut pipe = std::fs::File::from(fd);
    if !matches!(pipe.read(&mut byte), Ok(1)) {
        return FALLBACK;
    }
    drop(pipe);
    let mut command = Command::new("/proc/self/exe");
    command.args(args.iter().skip(1)).env(ENV, "inside");
    if let Some(arg0) = args.first() {
        command.arg0(arg0);
    }
    let error = command.exec();
    tracing::error!(%error, "cannot re-execute in the user namespace");
    FALLBACK
}
