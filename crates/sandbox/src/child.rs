//! The code that runs between `clone` and `execve`: the only unsafe code in strata.
//!
//! [`spawn`] clones the calling process into new namespaces. The clone (the step's init,
//! PID 1 of its PID namespace) carries out a prepared list of [`Op`]s (mounts, `pivot_root`,
//! hostname), then forks the command's process, which drops capabilities, takes the step's
//! user and directory and calls `execve`. The init reaps every process in the namespace and,
//! when the command ends, reports its status and exits; the kernel then kills whatever the
//! command left behind, and the mounts disappear with the mount namespace.
//!
//! The parent has other threads, so between `clone` and `execve` only raw system calls are
//! made: every path, argument and environment string is a `CString` prepared by the parent,
//! nothing allocates, takes a lock or unwinds, and identity changes (`setuid`, `setgid`,
//! `setgroups`) go straight to the kernel because glibc's wrappers would try to synchronise
//! with the parent's threads, which do not exist in the child. Failures are reported to the
//! parent as fixed-size [`Report`]s on a pipe.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::RawFd;

use libc::{c_char, c_int, c_ulong};

/// One thing the init does before starting the command.
#[derive(Debug)]
pub(crate) enum Action {
    /// `mount(2)` with these arguments.
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: c_ulong,
        data: Option<CString>,
    },
    /// `mkdir(2)`; an existing directory is fine.
    Mkdir { path: CString, mode: libc::mode_t },
    /// Creates an empty file to mount a device or file onto; an existing one is fine.
    CreateFile { path: CString },
    /// `symlink(2)`.
    Symlink { target: CString, link: CString },
    /// A fresh read-only sysfs, or else the host's bind-mounted and remounted read-only
    /// (`locked` are the flags the host's mount has, which a remount must keep).
    Sysfs {
        target: CString,
        host: CString,
        locked: c_ulong,
    },
    /// A new devpts instance with `options`, or `fallback` options when the kernel refuses
    /// them (a `gid=` that is not mapped in a user namespace).
    Devpts {
        target: CString,
        options: CString,
        fallback: CString,
    },
    /// `sethostname(2)`.
    Hostname(CString),
    /// Brings the loopback interface of a new network namespace up.
    LoopbackUp,
    /// Makes `root` the root directory: `pivot_root`, or `chroot` where that is impossible.
    PivotRoot { root: CString },
}

/// An action, whether its failure is fatal, and what it is in words (for errors).
#[derive(Debug)]
pub(crate) struct Op {
    pub action: Action,
    pub optional: bool,
    pub what: String,
}

/// The command and the identity it runs with. `None` in a [`Program`] runs only the ops
/// (the probe).
#[derive(Debug)]
pub(crate) struct Exec {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    /// Call `setgroups` (impossible in a user namespace whose `setgroups` is denied).
    pub set_groups: bool,
    pub cwd: CString,
    /// `argv[0]` resolved through `PATH`: tried in order, as `execvp` does.
    pub candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// Capabilities kept in the bounding set (bit n = capability n).
    pub keep_caps: u64,
    pub last_cap: u32,
    pub dev_null: CString,
}

/// Everything the child needs, prepared by the parent.
#[derive(Debug)]
pub(crate) struct Program {
    pub ops: Vec<Op>,
    pub exec: Option<Exec>,
}

/// The descriptors of one spawn. The parent keeps the `parent` ends; the child closes them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fds {
    /// The init waits for one byte here before it does anything (id maps are written first).
    pub sync_read: RawFd,
    /// Where [`Report`]s go.
    pub status_write: RawFd,
    /// The command's stdout and stderr.
    pub stdout_write: RawFd,
    pub stderr_write: RawFd,
    /// The parent's ends, closed in the child.
    pub parent: [RawFd; 4],
}

/// What the child tells the parent: 12 bytes, written atomically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// Op number `index` failed with `errno`.
    SetupFailed { index: usize, errno: i32 },
    /// `pivot_root` was impossible; `chroot` was used.
    Chroot,
    /// Forking the command's process failed.
    ForkFailed { errno: i32 },
    /// Taking the step's identity failed: `stage` names which call.
    Credentials { stage: CredentialStage, errno: i32 },
    /// `execve` failed for every candidate; `errno` is the most telling one.
    ExecFailed { errno: i32 },
    /// The command exited with `code`.
    Exited { code: i32 },
    /// A signal killed the command.
    Signaled { signal: i32 },
}

/// Which identity call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CredentialStage {
    Stdio,
    Setgroups,
    Setgid,
    Setuid,
    Chdir,
}

impl CredentialStage {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            CredentialStage::Stdio => "connecting the command's output",
            CredentialStage::Setgroups => "setting the supplementary groups",
            CredentialStage::Setgid => "setting the group id",
            CredentialStage::Setuid => "setting the user id",
            CredentialStage::Chdir => "entering the working directory",
        }
    }
}

impl Report {
    fn encode(self) -> [u8; 12] {
        let (tag, a, b): (i32, i32, i32) = match self {
            Report::SetupFailed { index, errno } => {
                (1, i32::try_from(index).unwrap_or(i32::MAX), errno)
            }
            Report::Chroot => (2, 0, 0),
            Report::ForkFailed { errno } => (3, errno, 0),
            Report::Credentials { stage, errno } => (4, stage as i32, errno),
            Report::ExecFailed { errno } => (5, errno, 0),
            Report::Exited { code } => (6, code, 0),
            Report::Signaled { signal } => (7, signal, 0),
        };
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&tag.to_ne_bytes());
        out[4..8].copy_from_slice(&a.to_ne_bytes());
        out[8..].copy_from_slice(&b.to_ne_bytes());
        out
    }

    /// Decodes one report; `None` for bytes no child writes.
    pub(crate) fn decode(bytes: [u8; 12]) -> Option<Report> {
        let word = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[i..i + 4]);
            i32::from_ne_bytes(w)
        };
        let (tag, a, b) = (word(0), word(4), word(8));
        Some(match tag {
            1 => Report::SetupFailed {
                index: usize::try_from(a).ok()?,
                errno: b,
            },
            2 => Report::Chroot,
            3 => Report::ForkFailed { errno: a },
            4 => Report::Credentials {
                stage: match a {
                    0 => CredentialStage::Stdio,
                    1 => CredentialStage::Setgroups,
                    2 => CredentialStage::Setgid,
                    3 => CredentialStage::Setuid,
                    4 => CredentialStage::Chdir,
                    _ => return None,
                },
                errno: b,
            },
            5 => Report::ExecFailed { errno: a },
            6 => Report::Exited { code: a },
            7 => Report::Signaled { signal: a },
            _ => return None,
        })
    }
}

/// Clones into the namespaces named by `flags` (`CLONE_NEW*`) and runs `program` there.
/// Returns the init's process id; the init waits for one byte on `fds.sync_read`.
pub(crate) fn spawn(program: &Program, flags: c_int, fds: Fds) -> std::io::Result<libc::pid_t> {
    let null_terminated = |strings: &[CString]| -> Vec<*const c_char> {
        strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv, envp) = match &program.exec {
        Some(exec) => (null_terminated(&exec.argv), null_terminated(&exec.envp)),
        None => (vec![std::ptr::null()], vec![std::ptr::null()]),
    };
    let scrub = process_areas();
    let clone_flags = c_ulong::try_from(flags | libc::SIGCHLD).unwrap_or(0);
    // SAFETY: a clone without CLONE_VM and without a new stack behaves as fork(2): the child
    // gets a copy of this thread's memory and runs on, returning 0. From there the child only
    // calls `init`, which never returns and makes raw system calls only (module docs).
    let pid =
        unsafe { libc::syscall(libc::SYS_clone, clone_flags, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the child of the clone above, single-threaded; see `init`. The
        // areas are this process's own argument and environment strings (from the kernel's
        // record of them), which the child's copy of memory holds and nothing reads again.
        unsafe {
            if let Some(areas) = &scrub {
                scrub_areas(areas);
            }
            init(program, &argv, &envp, fds)
        }
    }
    Ok(libc::pid_t::try_from(pid).unwrap_or(-1))
}

/// Where the kernel keeps this process's command line and environment strings
/// (`/proc/self/stat` fields 48 to 51): `[arg_start, arg_end, env_start, env_end]`.
fn process_areas() -> Option<[usize; 4]> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: the first
    // is field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<usize>().ok();
    let areas = [field(48)?, field(49)?, field(50)?, field(51)?];
    (areas[0] < areas[1] && areas[2] <= areas[3]).then_some(areas)
}

/// The name the step's init shows as its command line (`/proc/1/cmdline`).
const INIT_NAME: &[u8] = b"strata-init\0";

/// Overwrites the executor's command line and environment in this (cloned) process, so the
/// step's PID 1 shows none of the builder's arguments (`--build-arg` values, paths) or its
/// environment (credentials) in `/proc/1/cmdline` and `/proc/1/environ`.
unsafe fn scrub_areas(areas: &[usize; 4]) {
    let [arg_start, arg_end, env_start, env_end] = *areas;
    // SAFETY: both ranges lie in the initial stack mapping, which is writable and private
    // to this process after the clone.
    unsafe {
        std::ptr::write_bytes(arg_start as *mut u8, 0, arg_end - arg_start);
        std::ptr::write_bytes(env_start as *mut u8, 0, env_end - env_start);
        if arg_end - arg_start >= INIT_NAME.len() {
            std::ptr::copy_nonoverlapping(
                INIT_NAME.as_ptr(),
                arg_start as *mut u8,
                INIT_NAME.len(),
            );
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Writes a report to the parent. A failure means the parent is gone: nothing to do.
unsafe fn report(fd: RawFd, report: Report) {
    let bytes = report.encode();
    // SAFETY: writes 12 bytes from a live stack buffer.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

unsafe fn exit(code: c_int) -> ! {
    // SAFETY: _exit ends the process without running the parent's atexit handlers.
    unsafe { libc::_exit(code) }
}

/// The step's init: PID 1 of the new PID namespace.
unsafe fn init(program: &Program, argv: &[*const c_char], envp: &[*const c_char], fds: Fds) -> ! {
    // SAFETY (whole function): raw system calls on descriptors and C strings prepared by the
    // parent, whose memory the clone copied.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0);
        for fd in fds.parent {
            libc::close(fd);
        }
        close_inherited(&fds);
        // Wait for the parent: it writes the id maps of a user namespace first. End of file
        // means the parent died or gave up.
        let mut byte = 0u8;
        loop {
            let n = libc::read(fds.sync_read, (&raw mut byte).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            exit(1);
        }
        libc::close(fds.sync_read);

        for (index, op) in program.ops.iter().enumerate() {
            match run_op(&op.action) {
                Ok(true) => {}
                Ok(false) => report(fds.status_write, Report::Chroot),
                Err(errno) if op.optional => {
                    let _ = errno;
                }
                Err(errno) => {
                    report(fds.status_write, Report::SetupFailed { index, errno });
                    exit(1);
                }
            }
        }
        let Some(exec) = &program.exec else {
            report(fds.status_write, Report::Exited { code: 0 });
            exit(0);
        };

        let command = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if command < 0 {
            report(fds.status_write, Report::ForkFailed { errno: errno() });
            exit(1);
        }
        if command == 0 {
            run_command(exec, argv, envp, fds);
        }
        wait_for(command, &fds)
    }
}

/// Closes every descriptor the clone copied but the init's own four.
unsafe fn close_inherited(fds: &Fds) {
    // SAFETY (whole function): close_range on descriptor numbers only.
    unsafe {
        // The clone copied every descriptor the embedding process had open, among them the
        // pipe ends of steps other threads are starting at this moment: held here, they would
        // keep those steps' output open (their RUN could not end before this one). Only our
        // own four stay.
        let mut keep = [
            fds.sync_read,
            fds.status_write,
            fds.stdout_write,
            fds.stderr_write,
        ];
        keep.sort_unstable();
        let mut from: c_int = 3;
        for fd in keep {
            if fd > from {
                libc::syscall(libc::SYS_close_range, from as u32, (fd - 1) as u32, 0u32);
            }
            from = from.max(fd + 1);
        }
        libc::syscall(libc::SYS_close_range, from as u32, u32::MAX, 0u32);
    }
}

/// Waits as PID 1 (reaping every orphan) until the command exits, reports how, and exits.
unsafe fn wait_for(command: libc::c_long, fds: &Fds) -> ! {
    // SAFETY (whole function): raw system calls on the init's own descriptors.
    unsafe {
        // Only the command's processes hold the output pipes from here on: when they are all
        // gone the parent sees end of file.
        libc::close(fds.stdout_write);
        libc::close(fds.stderr_write);
        loop {
            let mut status: c_int = 0;
            let pid = libc::waitpid(-1, &raw mut status, 0);
            if pid < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                exit(1);
            }
            if i64::from(pid) == command {
                if libc::WIFEXITED(status) {
                    report(
                        fds.status_write,
                        Report::Exited {
                            code: libc::WEXITSTATUS(status),
                        },
                    );
                } else if libc::WIFSIGNALED(status) {
                    report(
                        fds.status_write,
                        Report::Signaled {
                            signal: libc::WTERMSIG(status),
                        },
                    );
                }
                // Exiting as PID 1 makes the kernel kill every process left in the namespace.
                exit(0);
            }
        }
    }
}

/// Runs one action. `Ok(false)` means `pivot_root` fell back to `chroot`; `Err` is an errno.
unsafe fn run_op(action: &Action) -> Result<bool, i32> {
    let opt = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    let check = |rc: c_int| if rc == 0 { Ok(true) } else { Err(errno()) };
    // SAFETY (whole function): raw system calls with C strings that outlive them.
    unsafe {
        match action {
            Action::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => check(libc::mount(
                opt(source),
                target.as_ptr(),
                opt(fstype),
                *flags,
                opt(data).cast(),
            )),
            Action::Mkdir { path, mode } => {
                if libc::mkdir(path.as_ptr(), *mode) == 0 || errno() == libc::EEXIST {
                    Ok(true)
                } else {
                    Err(errno())
                }
            }
            Action::CreateFile { path } => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                    0o644,
                );
                if fd < 0 {
                    return Err(errno());
                }
                libc::close(fd);
                Ok(true)
            }
            Action::Symlink { target, link } => {
                if libc::symlink(target.as_ptr(), link.as_ptr()) == 0 || errno() == libc::EEXIST {
                    Ok(true)
                } else {
                    Err(errno())
                }
            }
            Action::Sysfs {
                target,
                host,
                locked,
            } => mount_sysfs(target, host, *locked),
            Action::Devpts {
                target,
                options,
                fallback,
            } => {
                let devpts = c"devpts".as_ptr();
                let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
                for data in [options, fallback] {
                    if libc::mount(devpts, target.as_ptr(), devpts, flags, data.as_ptr().cast())
                        == 0
                    {
                        return Ok(true);
                    }
                }
                Err(errno())
            }
            Action::Hostname(name) => {
                check(libc::sethostname(name.as_ptr(), name.as_bytes().len()))
            }
            Action::LoopbackUp => loopback_up(),
            Action::PivotRoot { root } => {
                check(libc::chdir(root.as_ptr()))?;
                let dot = c".".as_ptr();
                if libc::syscall(libc::SYS_pivot_root, dot, dot) == 0 {
                    // The old root is stacked on top of the new one: detach it.
                    check(libc::umount2(dot, libc::MNT_DETACH))?;
                    check(libc::chdir(c"/".as_ptr()))
                } else {
                    // An initramfs root cannot be pivoted away from.
                    check(libc::chroot(dot))?;
                    check(libc::chdir(c"/".as_ptr()))?;
                    Ok(false)
                }
            }
        }
    }
}

/// A fresh read-only sysfs on `target`; where that is not permitted (no network namespace
/// of our own), the host's bound read-only, keeping the `locked` flags it has.
unsafe fn mount_sysfs(target: &CString, host: &CString, locked: c_ulong) -> Result<bool, i32> {
    let check = |rc: c_int| if rc == 0 { Ok(true) } else { Err(errno()) };
    // SAFETY (whole function): mount with C strings that outlive it.
    unsafe {
        let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let sysfs = c"sysfs".as_ptr();
        if libc::mount(sysfs, target.as_ptr(), sysfs, flags, std::ptr::null()) == 0 {
            return Ok(true);
        }
        let bind = libc::MS_BIND | libc::MS_REC;
        check(libc::mount(
            host.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            bind,
            std::ptr::null(),
        ))?;
        let remount = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | locked;
        check(libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            remount,
            std::ptr::null(),
        ))
    }
}

/// Brings the network namespace's loopback interface up.
unsafe fn loopback_up() -> Result<bool, i32> {
    let check = |rc: c_int| if rc == 0 { Ok(true) } else { Err(errno()) };
    // SAFETY (whole function): a socket and two ioctls on a zeroed request.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(errno());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as c_char;
        }
        let mut result = check(libc::ioctl(fd, libc::SIOCGIFFLAGS, &raw mut request));
        if result.is_ok() {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = check(libc::ioctl(fd, libc::SIOCSIFFLAGS, &raw mut request));
        }
        libc::close(fd);
        result
    }
}

/// The command's process: the step's identity, then `execve`.
unsafe fn run_command(exec: &Exec, argv: &[*const c_char], envp: &[*const c_char], fds: Fds) -> ! {
    // SAFETY (whole function): raw system calls with prepared C strings and arrays.
    unsafe {
        let fail = |stage: CredentialStage| -> ! {
            report(
                fds.status_write,
                Report::Credentials {
                    stage,
                    errno: errno(),
                },
            );
            exit(126)
        };
        // Signals: nothing blocked, nothing ignored (the parent ignores SIGPIPE).
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const set,
            std::ptr::null_mut::<libc::sigset_t>(),
            std::mem::size_of::<c_ulong>(),
        );
        for signal in 1..32 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        let null = libc::open(exec.dev_null.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null < 0
            || libc::dup2(null, 0) < 0
            || libc::dup2(fds.stdout_write, 1) < 0
            || libc::dup2(fds.stderr_write, 2) < 0
        {
            fail(CredentialStage::Stdio);
        }
        // Whatever else the embedding process left open must not reach the command.
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );

        for cap in 0..=exec.last_cap.min(63) {
            if exec.keep_caps & (1u64 << cap) == 0 {
                libc::prctl(libc::PR_CAPBSET_DROP, c_ulong::from(cap), 0, 0, 0);
            }
        }
        if exec.set_groups
            && libc::syscall(libc::SYS_setgroups, exec.groups.len(), exec.groups.as_ptr()) != 0
        {
            fail(CredentialStage::Setgroups);
        }
        if libc::syscall(libc::SYS_setgid, exec.gid) != 0 {
            fail(CredentialStage::Setgid);
        }
        if libc::syscall(libc::SYS_setuid, exec.uid) != 0 {
            fail(CredentialStage::Setuid);
        }
        if libc::chdir(exec.cwd.as_ptr()) != 0 {
            fail(CredentialStage::Chdir);
        }
        let mut telling = libc::ENOENT;
        for candidate in &exec.candidates {
            libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr());
            match errno() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => telling = libc::EACCES,
                other => {
                    telling = other;
                    break;
                }
            }
        }
        report(fds.status_write, Report::ExecFailed { errno: telling });
        exit(127)
    }
}
