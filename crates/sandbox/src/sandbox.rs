//! Running a [`Step`]: preparing the root, spawning into namespaces, streaming the output,
//! and leaving the root as it was apart from what the command wrote.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libc::c_ulong;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{FlockOperation, StatVfsMountFlags};
use rustix::pipe::PipeFlags;
use rustix::process::{Pid, Signal, WaitOptions};

use crate::child::{self, Action, Exec, Fds, Op, Program, Report};
use crate::error::{Error, Result};
use crate::idmap::IdMap;
use crate::root::{self, Create, Stubs};
use crate::step::{
    Cancel, DEFAULT_PATH, ExitStatus, Isolation, Mode, MountKind, Network, Outcome, Sharing, Step,
    Stream,
};
use crate::user::{self, ExecUser};

/// The longest line handed to the output callback; longer lines come in pieces.
pub const MAX_LINE: usize = 64 * 1024;

/// How often a running step checks its cancel token.
const CANCEL_TICK: Duration = Duration::from_millis(50);

/// The capabilities a step's root keeps, as Docker's default set: chown, dac_override,
/// fowner, fsetid, kill, setgid, setuid, setpcap, net_bind_service, net_raw, sys_chroot,
/// mknod, audit_write, setfcap. CAP_SYS_ADMIN and the others are dropped from the bounding
/// set, so the command cannot undo its mounts or reach the host's devices.
const KEPT_CAPABILITIES: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 10)
    | (1 << 13)
    | (1 << 18)
    | (1 << 27)
    | (1 << 29)
    | (1 << 31);

/// Configures a [`Sandbox`].
#[derive(Debug, Clone, Default)]
pub struct SandboxBuilder {
    mode: Mode,
    scratch_dir: Option<PathBuf>,
}

impl SandboxBuilder {
    /// Which namespaces to create (default [`Mode::Auto`]).
    pub fn mode(mut self, mode: Mode) -> SandboxBuilder {
        self.mode = mode;
        self
    }

    /// Where each step's private files (its `/etc/hosts`, `/etc/resolv.conf`, secret copies)
    /// live while it runs: default `/dev/shm` when writable (secrets never touch a disk),
    /// the temporary directory otherwise.
    pub fn scratch_dir(mut self, dir: impl Into<PathBuf>) -> SandboxBuilder {
        self.scratch_dir = Some(dir.into());
        self
    }

    /// Checks the configuration against this process.
    pub fn build(self) -> Result<Sandbox> {
        let privileged = crate::probe::privileged();
        let user_namespace = match self.mode {
            Mode::Auto => !privileged,
            Mode::UserNamespace => true,
            Mode::Privileged if privileged => false,
            Mode::Privileged => {
                return Err(Error::Namespaces {
                    error: std::io::Error::from_raw_os_error(libc::EPERM),
                    hint: "; privileged mode needs root with CAP_SYS_ADMIN".to_owned(),
                });
            }
        };
        let scratch = match self.scratch_dir {
            Some(dir) => dir,
            None => default_scratch(),
        };
        let last_cap = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(40);
        Ok(Sandbox {
            id_map: user_namespace.then(IdMap::for_caller),
            scratch,
            last_cap,
        })
    }
}

fn default_scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if rustix::fs::access(shm, rustix::fs::Access::WRITE_OK).is_ok() && shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// Runs steps. Cheap to keep and to use from several threads at once.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// `Some` in rootless mode.
    id_map: Option<IdMap>,
    scratch: PathBuf,
    last_cap: u32,
}

impl Sandbox {
    /// A sandbox with the defaults ([`Mode::Auto`]).
    pub fn new() -> Result<Sandbox> {
        SandboxBuilder::default().build()
    }

    /// Configures a sandbox.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// Whether steps run in a user namespace (rootless mode).
    pub fn user_namespace(&self) -> bool {
        self.id_map.is_some()
    }

    /// Runs `step` to completion, handing each line of its output (without the newline) to
    /// `on_output` as it comes. A command that exits non-zero is an [`Outcome`], not an
    /// error; a timeout or `cancel` kills every process of the step and is an error.
    pub fn run(
        &self,
        step: &Step,
        cancel: &Cancel,
        mut on_output: impl FnMut(Stream, &[u8]),
    ) -> Result<Outcome> {
        let started = Instant::now();
        let mut prepared = self.prepare(step)?;
        let flags = namespace_flags(step.network, self.id_map.is_some());

        let launched = launch(&prepared.program, flags, self.id_map.as_ref())?;
        let deadline = step.timeout.map(|t| started + t);
        let init = launched.init;
        let kill = || {
            let _ = rustix::process::kill_process(init, Signal::KILL);
        };
        // The pipes close when the namespace dies: nothing to watch besides them.
        let stopped = pump(
            &launched.output,
            deadline,
            cancel,
            &kill,
            &mut || false,
            &mut on_output,
        )?;
        let (wait, reports) = launched.wait()?;
        prepared.stubs.remove();
        let duration = started.elapsed();

        match stopped {
            Some(Stop::Timeout) => {
                return Err(Error::TimedOut(step.timeout.unwrap_or_default()));
            }
            Some(Stop::Cancelled) => return Err(Error::Cancelled),
            None => {}
        }
        let mut isolation = Isolation {
            user_namespace: self.id_map.is_some(),
            chroot: false,
            network: step.network,
        };
        for report in reports {
            match report {
                Report::Chroot => isolation.chroot = true,
                Report::SetupFailed { index, errno } => {
                    let action = prepared
                        .program
                        .ops
                        .get(index)
                        .map_or_else(|| format!("step {index}"), |op| op.what.clone());
                    return Err(Error::Setup {
                        action,
                        error: std::io::Error::from_raw_os_error(errno),
                    });
                }
                Report::ForkFailed { errno } => {
                    return Err(Error::Setup {
                        action: "starting the command's process".to_owned(),
                        error: std::io::Error::from_raw_os_error(errno),
                    });
                }
                Report::Credentials { stage, errno } => {
                    return Err(Error::Setup {
                        action: stage.describe().to_owned(),
                        error: std::io::Error::from_raw_os_error(errno),
                    });
                }
                Report::ExecFailed { errno } => {
                    return Err(exec_error(step, errno, &prepared.path));
                }
                Report::Exited { code } => {
                    return Ok(Outcome {
                        status: ExitStatus::Code(code),
                        isolation,
                        duration,
                    });
                }
                Report::Signaled { signal } => {
                    return Ok(Outcome {
                        status: ExitStatus::Signal(signal),
                        isolation,
                        duration,
                    });
                }
            }
        }
        Err(Error::Lost(match wait {
            Some(status) => format!("{status:?}"),
            None => "no status".to_owned(),
        }))
    }

    /// Checks the step, resolves everything inside the root, creates mount stubs and the
    /// scratch files, and writes the child's program.
    fn prepare(&self, step: &Step) -> Result<Prepared> {
        if step.argv.is_empty() {
            return Err(Error::InvalidStep("the command is empty".to_owned()));
        }
        let root_dir = fs::canonicalize(&step.root).map_err(Error::io(&step.root))?;
        if !root_dir.is_dir() {
            return Err(Error::Io {
                path: root_dir,
                error: std::io::Error::from_raw_os_error(libc::ENOTDIR),
            });
        }
        let root_str = root_dir
            .to_str()
            .ok_or_else(|| Error::InvalidStep("the root path is not UTF-8".to_owned()))?
            .trim_end_matches('/')
            .to_owned();
        let at = |inner: &str| cstring(format!("{root_str}{inner}"));
        let exec_user = self.exec_user(&root_dir, step)?;
        let (env, path) = environment(step, &exec_user);
        let workdir = if step.workdir.is_empty() {
            "/"
        } else {
            &step.workdir
        };
        let cwd = root::resolve_as(&root_dir, workdir, Create::Dir, None)?;

        let mut stubs = Stubs::default();
        let scratch = tempfile::Builder::new()
            .prefix("strata-step-")
            .tempdir_in(&self.scratch)
            .map_err(Error::io(&self.scratch))?;
        let mut ops = Vec::new();
        let mut op = |action: Action, optional: bool, what: String| {
            ops.push(Op {
                action,
                optional,
                what,
            })
        };
        let root = StepRoot {
            dir: &root_dir,
            shown: &root_str,
        };
        let system = self.system_ops(&mut op, &at, &root, &mut stubs)?;
        etc_ops(&mut op, &at, &root, &mut stubs, step, scratch.path())?;
        let locks = self.mount_ops(
            &mut op,
            &at,
            &root,
            &mut stubs,
            step,
            scratch.path(),
            &system,
        )?;
        op(
            Action::Hostname(cstring(step.hostname.clone())?),
            false,
            format!("setting the hostname to {}", step.hostname),
        );
        if step.network == Network::None {
            op(
                Action::LoopbackUp,
                false,
                "bringing up the loopback interface".to_owned(),
            );
        }
        op(
            Action::PivotRoot { root: at("")? },
            false,
            format!("entering the root {root_str}"),
        );

        let exec = self.exec(step, &exec_user, cwd, &env, &path)?;
        Ok(Prepared {
            program: Program {
                ops,
                exec: Some(exec),
            },
            stubs,
            path,
            _scratch: scratch,
            _locks: locks,
        })
    }

    /// The user the command runs as, checked against the user namespace's map when rootless.
    fn exec_user(&self, root_dir: &Path, step: &Step) -> Result<ExecUser> {
        let exec_user = user::resolve(root_dir, &step.user)?;
        if let Some(map) = &self.id_map
            && !map.maps(exec_user.uid, exec_user.gid)
        {
            return Err(Error::User {
                user: step.user.clone(),
                reason: format!(
                    "uid {} / gid {} is not mapped in rootless mode: only root exists inside \
                     unless /etc/subuid and /etc/subgid give the caller a range and newuidmap \
                     is installed (Debian package uidmap)",
                    exec_user.uid, exec_user.gid
                ),
            });
        }
        Ok(exec_user)
    }

    /// What every step's root gets: private mount propagation, the root bound onto itself,
    /// `/proc` (with the kernel's sensitive files masked), a read-only `/sys`, and `/dev`.
    /// Returns where `/proc` and `/sys` are, which the step's own mounts may not enter.
    fn system_ops(
        &self,
        op: &mut impl FnMut(Action, bool, String),
        at: &impl Fn(&str) -> Result<CString>,
        root: &StepRoot<'_>,
        stubs: &mut Stubs,
    ) -> Result<SystemDirs> {
        let (root_dir, root_str) = (root.dir, root.shown);
        let flag = |f: c_ulong| f;

        op(
            Action::Mount {
                source: None,
                target: cstring("/")?,
                fstype: None,
                flags: flag(libc::MS_REC | libc::MS_PRIVATE),
                data: None,
            },
            false,
            "making the step's mounts private".to_owned(),
        );
        op(
            Action::Mount {
                source: Some(at("")?),
                target: at("")?,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
            },
            false,
            format!("binding the root {root_str} onto itself"),
        );
        let proc_dir = root::resolve_as(root_dir, "/proc", Create::Dir, Some(&mut *stubs))?;
        op(
            Action::Mount {
                source: Some(cstring("proc")?),
                target: at(&proc_dir)?,
                fstype: Some(cstring("proc")?),
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: None,
            },
            false,
            format!("mounting proc on {proc_dir}"),
        );
        let sys_dir = root::resolve_as(root_dir, "/sys", Create::Dir, Some(&mut *stubs))?;
        op(
            Action::Sysfs {
                target: at(&sys_dir)?,
                host: cstring("/sys")?,
                locked: locked_flags(Path::new("/sys")),
            },
            false,
            format!("mounting sysfs read-only on {sys_dir}"),
        );
        let dev = root::resolve_as(root_dir, "/dev", Create::Dir, Some(&mut *stubs))?;
        self.dev_ops(op, at, &dev)?;
        mask_proc_ops(op, at, &proc_dir)?;
        Ok(SystemDirs {
            proc: proc_dir,
            sys: sys_dir,
        })
    }

    /// The step's own mounts (binds, caches, tmpfs, secrets), outermost first. Returns the
    /// locks of the cache directories it uses, held while the step runs.
    #[allow(clippy::too_many_arguments)]
    fn mount_ops(
        &self,
        op: &mut impl FnMut(Action, bool, String),
        at: &impl Fn(&str) -> Result<CString>,
        root: &StepRoot<'_>,
        stubs: &mut Stubs,
        step: &Step,
        scratch: &Path,
        system: &SystemDirs,
    ) -> Result<Vec<Option<fs::File>>> {
        let root_dir = root.dir;
        let (proc_dir, sys_dir) = (&system.proc, &system.sys);
        let mut locks = Vec::new();
        let mut mounted: Vec<(String, bool)> = Vec::new();
        let mut mounts: Vec<&crate::step::Mount> = step.mounts.iter().collect();
        mounts.sort_by_key(|m| m.target.split('/').filter(|c| !c.is_empty()).count());
        for (index, mount) in mounts.into_iter().enumerate() {
            let is_file = match &mount.kind {
                MountKind::Bind { source, .. } => {
                    !fs::metadata(source).map_err(Error::io(source))?.is_dir()
                }
                MountKind::Secret { .. } => true,
                MountKind::Cache { .. } | MountKind::Tmpfs { .. } => false,
            };
            let create = if is_file { Create::File } else { Create::Dir };
            let target = root::resolve_as(root_dir, &mount.target, create, Some(&mut *stubs))?;
            for refused in [&proc_dir, &sys_dir] {
                if inside(&target, refused) {
                    return Err(Error::InvalidStep(format!(
                        "mount target {} is inside {refused}",
                        mount.target
                    )));
                }
            }
            if let Some((outer, _)) = mounted
                .iter()
                .find(|(outer, fresh)| !fresh && inside(&target, outer))
            {
                return Err(Error::InvalidStep(format!(
                    "mount target {} is inside the mount at {outer}",
                    mount.target
                )));
            }
            mount_point_ops(op, at, &target, is_file)?;
            let target_c = at(&target)?;
            let what = format!("mounting {} on {}", kind_name(&mount.kind), mount.target);
            match &mount.kind {
                MountKind::Bind { source, read_write } => {
                    bind(
                        op,
                        path_cstring(source)?,
                        target_c,
                        *read_write,
                        source,
                        &what,
                    )?;
                }
                MountKind::Cache { dir, sharing } => {
                    let (dir, lock) = cache_dir(dir, *sharing, scratch, index)?;
                    locks.push(lock);
                    bind(op, path_cstring(&dir)?, target_c, true, &dir, &what)?;
                }
                MountKind::Tmpfs { size } => op(
                    Action::Mount {
                        source: Some(cstring("tmpfs")?),
                        target: target_c,
                        fstype: Some(cstring("tmpfs")?),
                        flags: libc::MS_NOSUID | libc::MS_NODEV,
                        data: Some(cstring(match size {
                            Some(bytes) => format!("mode=1777,size={bytes}"),
                            None => "mode=1777".to_owned(),
                        })?),
                    },
                    false,
                    what,
                ),
                MountKind::Secret {
                    source,
                    mode,
                    uid,
                    gid,
                } => {
                    let copy = scratch.join(format!("secret-{index}"));
                    self.place_secret(source, &copy, *mode, (*uid, *gid), &mount.target)?;
                    bind(op, path_cstring(&copy)?, target_c, false, &copy, &what)?;
                }
            }
            mounted.push((target, matches!(mount.kind, MountKind::Tmpfs { .. })));
        }

        Ok(locks)
    }

    /// A private copy of a secret for one step, `mode` and owned by `owner` (which a
    /// rootless step cannot set), in the step's scratch directory.
    fn place_secret(
        &self,
        source: &Path,
        copy: &Path,
        mode: u32,
        (uid, gid): (u32, u32),
        target: &str,
    ) -> Result<()> {
        let bytes = fs::read(source).map_err(Error::io(source))?;
        write_private(copy, &bytes, mode)?;
        if self.id_map.is_none() {
            rustix::fs::chown(
                copy,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| Error::io(copy)(e.into()))?;
        } else if (uid, gid) != (0, 0) {
            return Err(Error::InvalidStep(format!(
                "secret at {target}: owner {uid}:{gid} cannot be set in rootless mode"
            )));
        }
        Ok(())
    }

    /// The command, its search path, identity, directory and environment, as the child
    /// execs them.
    fn exec(
        &self,
        step: &Step,
        exec_user: &ExecUser,
        cwd: String,
        env: &[(String, String)],
        path: &str,
    ) -> Result<Exec> {
        let set_groups = self.id_map.as_ref().is_none_or(IdMap::allows_setgroups);
        let argv0 = &step.argv[0];
        let candidates = if argv0.contains('/') {
            vec![cstring(argv0.clone())?]
        } else {
            path.split(':')
                .filter(|dir| dir.starts_with('/'))
                .map(|dir| cstring(format!("{}/{argv0}", dir.trim_end_matches('/'))))
                .collect::<Result<_>>()?
        };
        let exec = Exec {
            uid: exec_user.uid,
            gid: exec_user.gid,
            groups: if set_groups {
                exec_user.groups.clone()
            } else {
                Vec::new()
            },
            set_groups,
            cwd: cstring(cwd)?,
            candidates,
            argv: step
                .argv
                .iter()
                .map(|a| cstring(a.clone()))
                .collect::<Result<_>>()?,
            envp: env
                .iter()
                .map(|(k, v)| {
                    if k.is_empty() || k.contains('=') {
                        Err(Error::InvalidStep(format!(
                            "environment variable name `{k}`"
                        )))
                    } else {
                        cstring(format!("{k}={v}"))
                    }
                })
                .collect::<Result<_>>()?,
            keep_caps: KEPT_CAPABILITIES,
            last_cap: self.last_cap,
            dev_null: cstring("/dev/null")?,
        };
        Ok(exec)
    }

    /// A tmpfs on /dev with the host's harmless devices bound in, devpts, shm and the links.
    fn dev_ops(
        &self,
        op: &mut impl FnMut(Action, bool, String),
        at: &impl Fn(&str) -> Result<CString>,
        dev: &str,
    ) -> Result<()> {
        op(
            Action::Mount {
                source: Some(cstring("tmpfs")?),
                target: at(dev)?,
                fstype: Some(cstring("tmpfs")?),
                flags: libc::MS_NOSUID | libc::MS_STRICTATIME,
                data: Some(cstring("mode=755,size=65536k")?),
            },
            false,
            format!("mounting a tmpfs on {dev}"),
        );
        for name in ["null", "zero", "full", "random", "urandom", "tty"] {
            let optional = name == "tty";
            let target = at(&format!("{dev}/{name}"))?;
            op(
                Action::CreateFile {
                    path: target.clone(),
                },
                optional,
                format!("creating {dev}/{name}"),
            );
            op(
                Action::Mount {
                    source: Some(cstring(format!("/dev/{name}"))?),
                    target,
                    fstype: None,
                    flags: libc::MS_BIND,
                    data: None,
                },
                optional,
                format!("binding the host's /dev/{name} on {dev}/{name}"),
            );
        }
        op(
            Action::Mkdir {
                path: at(&format!("{dev}/pts"))?,
                mode: 0o755,
            },
            false,
            format!("creating {dev}/pts"),
        );
        op(
            Action::Devpts {
                target: at(&format!("{dev}/pts"))?,
                options: cstring("newinstance,ptmxmode=0666,mode=0620,gid=5")?,
                fallback: cstring("newinstance,ptmxmode=0666,mode=0620")?,
            },
            false,
            format!("mounting devpts on {dev}/pts"),
        );
        op(
            Action::Mkdir {
                path: at(&format!("{dev}/shm"))?,
                mode: 0o1777,
            },
            false,
            format!("creating {dev}/shm"),
        );
        op(
            Action::Mount {
                source: Some(cstring("shm")?),
                target: at(&format!("{dev}/shm"))?,
                fstype: Some(cstring("tmpfs")?),
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: Some(cstring("mode=1777,size=65536k")?),
            },
            false,
            format!("mounting a tmpfs on {dev}/shm"),
        );
        for (link, target) in [
            ("ptmx", "pts/ptmx"),
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            op(
                Action::Symlink {
                    target: cstring(target)?,
                    link: at(&format!("{dev}/{link}"))?,
                },
                false,
                format!("linking {dev}/{link} to {target}"),
            );
        }
        Ok(())
    }
}

/// What [`Sandbox::prepare`] made; dropping it removes the stubs, scratch files and locks.
struct Prepared {
    program: Program,
    stubs: Stubs,
    /// The step's `PATH`, for a not-found error.
    path: String,
    _scratch: tempfile::TempDir,
    _locks: Vec<Option<fs::File>>,
}

/// A spawned init: its process, its report pipe and the command's output pipes.
pub(crate) struct Launched {
    pub(crate) init: Pid,
    status: OwnedFd,
    pub(crate) output: [OwnedFd; 2],
    guard: KillOnDrop,
}

impl Launched {
    /// Waits for the init to end and returns how it ended and what it reported.
    pub(crate) fn wait(mut self) -> Result<(Option<rustix::process::WaitStatus>, Vec<Report>)> {
        let wait = rustix::process::waitpid(Some(self.init), WaitOptions::empty())
            .map_err(|e| Error::Lost(format!("waiting for the init: {e}")))?;
        self.guard.0 = None;
        Ok((wait.map(|(_, status)| status), read_reports(&self.status)))
    }
}

/// Clones into the namespaces, writes the id maps of a user namespace, and lets the init go.
pub(crate) fn launch(
    program: &Program,
    flags: libc::c_int,
    id_map: Option<&IdMap>,
) -> Result<Launched> {
    let (status_read, status_write) = pipe()?;
    let (sync_read, sync_write) = pipe()?;
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let fds = Fds {
        sync_read: sync_read.as_raw_fd(),
        status_write: status_write.as_raw_fd(),
        stdout_write: stdout_write.as_raw_fd(),
        stderr_write: stderr_write.as_raw_fd(),
        parent: [
            status_read.as_raw_fd(),
            sync_write.as_raw_fd(),
            stdout_read.as_raw_fd(),
            stderr_read.as_raw_fd(),
        ],
    };
    let pid = child::spawn(program, flags, fds)
        .map_err(|source| namespace_error(source, id_map.is_some()))?;
    drop((sync_read, status_write, stdout_write, stderr_write));
    let init = Pid::from_raw(pid).ok_or_else(|| Error::Lost("no process id".to_owned()))?;
    let guard = KillOnDrop(Some(init));
    if let Some(map) = id_map {
        map.apply(pid)?;
    }
    rustix::io::write(&sync_write, &[1])
        .map_err(|e| Error::Lost(format!("starting the init: {e}")))?;
    Ok(Launched {
        init,
        status: status_read,
        output: [stdout_read, stderr_read],
        guard,
    })
}

/// Kills the init (and so the whole step) if the run is abandoned before it was waited for.
struct KillOnDrop(Option<Pid>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
        }
    }
}

pub(crate) enum Stop {
    Timeout,
    Cancelled,
}

/// How long output is still read after `exited` says the command is done and its processes
/// were killed (one that escaped them, with `setsid` for example, may hold the pipes open).
const DRAIN: Duration = Duration::from_millis(500);

/// Streams both output pipes to `on_output` line by line until both are closed. On timeout
/// or cancellation `kill` is called; once `exited` says the command ended, `kill` is called
/// too and the pipes are read for at most [`DRAIN`] more.
pub(crate) fn pump(
    pipes: &[OwnedFd; 2],
    deadline: Option<Instant>,
    cancel: &Cancel,
    kill: &dyn Fn(),
    exited: &mut dyn FnMut() -> bool,
    on_output: &mut impl FnMut(Stream, &[u8]),
) -> Result<Option<Stop>> {
    let streams = [Stream::Stdout, Stream::Stderr];
    let mut open = [true, true];
    let mut pending: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut buffer = vec![0u8; 64 * 1024];
    let mut stopped = None;
    let mut drain_until: Option<Instant> = None;
    while open.iter().any(|o| *o) {
        if drain_until.is_none() && exited() {
            kill();
            drain_until = Some(Instant::now() + DRAIN);
        }
        if drain_until.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if stopped.is_none() && drain_until.is_none() {
            let now = Instant::now();
            let reason = if cancel.is_cancelled() {
                Some(Stop::Cancelled)
            } else if deadline.is_some_and(|d| now >= d) {
                Some(Stop::Timeout)
            } else {
                None
            };
            if let Some(reason) = reason {
                kill();
                stopped = Some(reason);
            }
        }
        let mut wait = CANCEL_TICK;
        if let (None, Some(deadline)) = (&stopped, deadline) {
            wait = wait.min(deadline.saturating_duration_since(Instant::now()));
        }
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        let watched: Vec<usize> = (0..2).filter(|&i| open[i]).collect();
        let mut fds: Vec<PollFd<'_>> = watched
            .iter()
            .map(|&i| PollFd::new(&pipes[i], PollFlags::IN))
            .collect();
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::Lost(format!("polling the output: {e}"))),
        }
        let ready: Vec<usize> = watched
            .iter()
            .zip(&fds)
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(&i, _)| i)
            .collect();
        drop(fds);
        for i in ready {
            match rustix::io::read(pipes[i].as_fd(), &mut buffer) {
                Ok(0) => {
                    open[i] = false;
                    if !pending[i].is_empty() {
                        on_output(streams[i], &pending[i]);
                        pending[i].clear();
                    }
                }
                Ok(n) => split_lines(&mut pending[i], &buffer[..n], |line| {
                    on_output(streams[i], line)
                }),
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(Error::Lost(format!("reading the output: {e}"))),
            }
        }
    }
    // Cut short by the drain limit: what is left of a line still goes out.
    for (i, stream) in streams.into_iter().enumerate() {
        if !pending[i].is_empty() {
            on_output(stream, &pending[i]);
        }
    }
    Ok(stopped)
}

/// Appends `data` to `pending` and hands out every complete line, and pieces of
/// [`MAX_LINE`] bytes of a line that is longer.
fn split_lines(pending: &mut Vec<u8>, data: &[u8], mut emit: impl FnMut(&[u8])) {
    pending.extend_from_slice(data);
    let mut start = 0;
    while let Some(pos) = pending[start..].iter().position(|b| *b == b'\n') {
        emit(&pending[start..start + pos]);
        start += pos + 1;
    }
    while pending.len() - start >= MAX_LINE {
        emit(&pending[start..start + MAX_LINE]);
        start += MAX_LINE;
    }
    pending.drain(..start);
}

fn read_reports(status: &OwnedFd) -> Vec<Report> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 240];
    loop {
        match rustix::io::read(status, &mut buffer) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    bytes
        .chunks_exact(12)
        .filter_map(|chunk| {
            let mut array = [0u8; 12];
            array.copy_from_slice(chunk);
            Report::decode(array)
        })
        .collect()
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(PipeFlags::CLOEXEC)
        .map_err(|e| Error::Lost(format!("creating a pipe: {e}")))
}

pub(crate) fn namespace_flags(network: Network, user_namespace: bool) -> libc::c_int {
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if network == Network::None {
        flags |= libc::CLONE_NEWNET;
    }
    if user_namespace {
        flags |= libc::CLONE_NEWUSER;
    }
    flags
}

pub(crate) fn namespace_error(source: std::io::Error, user_namespace: bool) -> Error {
    let hint = match (source.raw_os_error(), user_namespace) {
        (Some(libc::EPERM | libc::ENOSPC | libc::EINVAL), true) => {
            "; unprivileged user namespaces look disabled here: check the sysctls \
             user.max_user_namespaces (must be > 0) and \
             kernel.apparmor_restrict_unprivileged_userns (must be 0), or run as root"
        }
        (Some(libc::EPERM), false) => {
            "; creating namespaces needs CAP_SYS_ADMIN: inside a container, run it privileged \
             (or with seccomp and AppArmor unconfined), or use rootless mode"
        }
        _ => "",
    };
    Error::Namespaces {
        error: source,
        hint: hint.to_owned(),
    }
}

fn exec_error(step: &Step, errno: i32, path: &str) -> Error {
    let program = step.argv[0].clone();
    let reason = match errno {
        libc::ENOENT if !program.contains('/') => {
            format!("executable file not found in $PATH ({path})")
        }
        libc::ENOENT => "no such file or directory (or its interpreter is missing)".to_owned(),
        libc::EACCES => "permission denied".to_owned(),
        libc::ENOEXEC => "exec format error (not a program for this machine)".to_owned(),
        other => std::io::Error::from_raw_os_error(other).to_string(),
    };
    Error::Exec { program, reason }
}

fn cstring(text: impl Into<Vec<u8>>) -> Result<CString> {
    CString::new(text).map_err(|e| {
        Error::InvalidStep(format!(
            "`{}` contains a NUL byte",
            String::from_utf8_lossy(&e.into_vec())
        ))
    })
}

fn path_cstring(path: &Path) -> Result<CString> {
    cstring(path.as_os_str().as_encoded_bytes().to_vec())
}

fn inside(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn kind_name(kind: &MountKind) -> &'static str {
    match kind {
        MountKind::Bind { .. } => "a bind mount",
        MountKind::Cache { .. } => "a cache mount",
        MountKind::Tmpfs { .. } => "a tmpfs",
        MountKind::Secret { .. } => "a secret",
    }
}

/// A bind mount, remounted read-only unless `read_write`, keeping the flags the source's
/// mount has (a user namespace may not clear them).
/// The root a step runs in: its directory and the same as text, for messages.
struct StepRoot<'a> {
    dir: &'a Path,
    shown: &'a str,
}

/// Where a step's `/proc` and `/sys` are, inside its root.
struct SystemDirs {
    proc: String,
    sys: String,
}

/// The step's environment with `PATH` and `HOME` filled in when it lacks them, and its
/// `PATH`.
fn environment(step: &Step, exec_user: &ExecUser) -> (Vec<(String, String)>, String) {
    let mut env: Vec<(String, String)> = step.env.clone();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".to_owned(), exec_user.home.clone()));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    (env, path)
}

/// The step's own `/etc/hosts` and `/etc/resolv.conf`, bound over the image's.
fn etc_ops(
    op: &mut impl FnMut(Action, bool, String),
    at: &impl Fn(&str) -> Result<CString>,
    root: &StepRoot<'_>,
    stubs: &mut Stubs,
    step: &Step,
    scratch: &Path,
) -> Result<()> {
    let root_dir = root.dir;
    let hosts = step.hosts.clone().unwrap_or_else(|| {
        format!(
            "127.0.0.1\tlocalhost {0}\n::1\tlocalhost ip6-localhost ip6-loopback {0}\n",
            step.hostname
        )
    });
    let resolv = match &step.resolv_conf {
        Some(text) => text.clone(),
        None => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    for (name, contents) in [("/etc/hosts", hosts), ("/etc/resolv.conf", resolv)] {
        let source = scratch.join(&name[5..]);
        write_private(&source, contents.as_bytes(), 0o644)?;
        let target = root::resolve_as(root_dir, name, Create::File, Some(stubs))?;
        op(
            Action::Mount {
                source: Some(path_cstring(&source)?),
                target: at(&target)?,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
            },
            false,
            format!("binding the step's {name}"),
        );
    }

    Ok(())
}

fn bind(
    op: &mut impl FnMut(Action, bool, String),
    source: CString,
    target: CString,
    read_write: bool,
    host: &Path,
    what: &str,
) -> Result<()> {
    op(
        Action::Mount {
            source: Some(source),
            target: target.clone(),
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        },
        false,
        what.to_owned(),
    );
    if !read_write {
        op(
            Action::Mount {
                source: None,
                target,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | locked_flags(host),
                data: None,
            },
            false,
            format!("{what} (making it read-only)"),
        );
    }
    Ok(())
}

/// The flags of the mount holding `path` that a bind remount must keep.
fn locked_flags(path: &Path) -> c_ulong {
    let Ok(stat) = rustix::fs::statvfs(path) else {
        return 0;
    };
    let mut flags = 0;
    for (st, ms) in [
        (StatVfsMountFlags::NOSUID, libc::MS_NOSUID),
        (StatVfsMountFlags::NODEV, libc::MS_NODEV),
        (StatVfsMountFlags::NOEXEC, libc::MS_NOEXEC),
        (StatVfsMountFlags::NOATIME, libc::MS_NOATIME),
        (StatVfsMountFlags::NODIRATIME, libc::MS_NODIRATIME),
        (StatVfsMountFlags::RELATIME, libc::MS_RELATIME),
    ] {
        if stat.f_flag.contains(st) {
            flags |= ms;
        }
    }
    flags
}

/// The directory a cache mount uses, and the lock held while the step runs.
fn cache_dir(
    dir: &Path,
    sharing: Sharing,
    scratch: &Path,
    index: usize,
) -> Result<(PathBuf, Option<fs::File>)> {
    fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let handle = fs::File::open(dir).map_err(Error::io(dir))?;
    let lock = |operation| rustix::fs::flock(&handle, operation);
    match sharing {
        Sharing::Shared => {
            lock(FlockOperation::LockShared).map_err(|e| Error::io(dir)(e.into()))?;
            Ok((dir.to_owned(), Some(handle)))
        }
        Sharing::Locked => {
            lock(FlockOperation::LockExclusive).map_err(|e| Error::io(dir)(e.into()))?;
            Ok((dir.to_owned(), Some(handle)))
        }
        Sharing::Private => match lock(FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok((dir.to_owned(), Some(handle))),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let own = scratch.join(format!("cache-{index}"));
                fs::create_dir(&own).map_err(Error::io(&own))?;
                Ok((own, None))
            }
            Err(e) => Err(Error::io(dir)(e.into())),
        },
    }
}

/// Writes a file only this user can open, then gives it `mode`.
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(path))?;
    file.write_all(bytes).map_err(Error::io(path))?;
    file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .map_err(Error::io(path))
}

/// Masks the kernel's sensitive files under `/proc` (bound over with `/dev/null`) and makes
/// its writable directories read-only, as container runtimes do.
fn mask_proc_ops(
    op: &mut impl FnMut(Action, bool, String),
    at: &impl Fn(&str) -> Result<CString>,
    proc_dir: &str,
) -> Result<()> {
    for name in ["kcore", "keys", "timer_list", "sched_debug"] {
        op(
            Action::Mount {
                source: Some(cstring("/dev/null")?),
                target: at(&format!("{proc_dir}/{name}"))?,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
            },
            true,
            format!("masking {proc_dir}/{name}"),
        );
    }
    for name in ["sys", "sysrq-trigger", "irq", "bus"] {
        let target = at(&format!("{proc_dir}/{name}"))?;
        op(
            Action::Mount {
                source: Some(target.clone()),
                target: target.clone(),
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
            },
            true,
            format!("binding {proc_dir}/{name}"),
        );
        op(
            Action::Mount {
                source: None,
                target,
                fstype: None,
                flags: libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                data: None,
            },
            true,
            format!("making {proc_dir}/{name} read-only"),
        );
    }

    Ok(())
}

/// Creates a mount's target, every directory on the way: the target may lie inside a tmpfs
/// mounted just before (or /dev), so it is created there, in the child.
fn mount_point_ops(
    op: &mut impl FnMut(Action, bool, String),
    at: &impl Fn(&str) -> Result<CString>,
    target: &str,
    is_file: bool,
) -> Result<()> {
    let mut prefix = String::new();
    let parts: Vec<&str> = target.split('/').filter(|c| !c.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        prefix.push('/');
        prefix.push_str(part);
        let last = i + 1 == parts.len();
        let action = if last && is_file {
            Action::CreateFile { path: at(&prefix)? }
        } else {
            Action::Mkdir {
                path: at(&prefix)?,
                mode: 0o755,
            }
        };
        op(action, false, format!("creating the mount point {prefix}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_long_lines_come_in_pieces() {
        let mut pending = Vec::new();
        let mut lines: Vec<Vec<u8>> = Vec::new();
        split_lines(&mut pending, b"one\ntw", |l| lines.push(l.to_vec()));
        split_lines(&mut pending, b"o\n\nthree", |l| lines.push(l.to_vec()));
        assert_eq!(lines, vec![b"one".to_vec(), b"two".to_vec(), b"".to_vec()]);
        assert_eq!(pending, b"three");
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        lines.clear();
        pending.clear();
        split_lines(&mut pending, &long, |l| lines.push(l.to_vec()));
        assert_eq!(lines.len(), 2);
        assert_eq!(pending.len(), 5);
    }

    #[test]
    fn inside_compares_whole_components() {
        assert!(inside("/proc/x", "/proc"));
        assert!(inside("/proc", "/proc"));
        assert!(!inside("/process", "/proc"));
    }
}
