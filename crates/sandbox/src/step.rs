//! What a step is (command, root, environment, user, mounts) and what running it gives back.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The `PATH` a step gets when its environment has none, as BuildKit gives a `RUN`.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The hostname a step sees unless it asks for another.
pub const DEFAULT_HOSTNAME: &str = "strata";

/// One command to run inside a root filesystem.
///
/// Built with [`Step::exec`] or [`Step::shell`] and refined by the chained setters; every
/// setting has the default a `RUN` step has in `docker build` (root user, `/` as working
/// directory, the host's network, no mounts, no timeout).
#[derive(Debug, Clone)]
pub struct Step {
    pub(crate) root: PathBuf,
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) workdir: String,
    pub(crate) user: String,
    pub(crate) hostname: String,
    pub(crate) network: Network,
    pub(crate) mounts: Vec<Mount>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) hosts: Option<String>,
    pub(crate) resolv_conf: Option<String>,
}

impl Step {
    /// Runs `argv` (exec form): `argv[0]` is looked up in the step's `PATH` inside the root
    /// unless it contains a `/`.
    pub fn exec<I, S>(root: impl Into<PathBuf>, argv: I) -> Step
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Step {
            root: root.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            workdir: "/".to_owned(),
            user: String::new(),
            hostname: DEFAULT_HOSTNAME.to_owned(),
            network: Network::Host,
            mounts: Vec::new(),
            timeout: None,
            hosts: None,
            resolv_conf: None,
        }
    }

    /// Runs `script` through `shell` (shell form): the command is `shell… script`, as a
    /// `RUN` with `SHELL ["/bin/sh", "-c"]` runs it.
    pub fn shell<I, S>(root: impl Into<PathBuf>, shell: I, script: impl Into<String>) -> Step
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut argv: Vec<String> = shell.into_iter().map(Into::into).collect();
        argv.push(script.into());
        Step::exec(root, argv)
    }

    /// Sets one environment variable, replacing an earlier value of the same name.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Step {
        let key = key.into();
        let value = value.into();
        match self.env.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.env.push((key, value)),
        }
        self
    }

    /// Sets several environment variables, in order.
    pub fn envs<I, K, V>(self, vars: I) -> Step
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        vars.into_iter().fold(self, |step, (k, v)| step.env(k, v))
    }

    /// The working directory inside the root, created (owned by root, mode 0755) when missing.
    pub fn workdir(mut self, dir: impl Into<String>) -> Step {
        self.workdir = dir.into();
        self
    }

    /// The user, as `USER` takes it: `name`, `uid`, `name:group` or `uid:gid`, names resolved
    /// in the root's `/etc/passwd` and `/etc/group`. Empty means root.
    pub fn user(mut self, user: impl Into<String>) -> Step {
        self.user = user.into();
        self
    }

    /// The hostname inside the step (default [`DEFAULT_HOSTNAME`]).
    pub fn hostname(mut self, name: impl Into<String>) -> Step {
        self.hostname = name.into();
        self
    }

    /// The network the step sees (default: the host's, as `docker build`).
    pub fn network(mut self, network: Network) -> Step {
        self.network = network;
        self
    }

    /// Adds a mount (`RUN --mount`).
    pub fn mount(mut self, mount: Mount) -> Step {
        self.mounts.push(mount);
        self
    }

    /// Kills the step's processes when the command has not finished after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Step {
        self.timeout = Some(timeout);
        self
    }

    /// The contents of the step's `/etc/hosts` (default: localhost entries and the hostname).
    pub fn hosts_file(mut self, contents: impl Into<String>) -> Step {
        self.hosts = Some(contents.into());
        self
    }

    /// The contents of the step's `/etc/resolv.conf` (default: the host's).
    pub fn resolv_conf(mut self, contents: impl Into<String>) -> Step {
        self.resolv_conf = Some(contents.into());
        self
    }
}

/// The network a step sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// The host's network namespace (`RUN --network=host`, and the default).
    #[default]
    Host,
    /// A network namespace of its own with only a loopback interface (`RUN --network=none`).
    None,
}

/// One `RUN --mount`, already turned into host paths by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The absolute path inside the root where the mount appears.
    pub target: String,
    /// What is mounted there.
    pub kind: MountKind,
}

/// The kinds of `RUN --mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A host file or directory (`type=bind`): a build context or another stage's files.
    Bind {
        /// The host path.
        source: PathBuf,
        /// Writes allowed (`rw`); they reach `source` and never the step's layer.
        read_write: bool,
    },
    /// A persistent directory the caller keeps between builds (`type=cache`).
    Cache {
        /// The host directory.
        dir: PathBuf,
        /// How concurrent steps share it.
        sharing: Sharing,
    },
    /// An empty tmpfs (`type=tmpfs`).
    Tmpfs {
        /// The size limit in bytes; the kernel's default (half the memory) when `None`.
        size: Option<u64>,
    },
    /// A secret file (`type=secret`): a private copy with the given mode and owner is mounted
    /// read-only at the target for the step's duration and removed afterwards.
    Secret {
        /// The host file holding the secret.
        source: PathBuf,
        /// Permission bits of the file inside the step (BuildKit's default 0400).
        mode: u32,
        /// Owner inside the step.
        uid: u32,
        /// Group inside the step.
        gid: u32,
    },
}

/// How a cache mount is shared between steps running at the same time (`sharing=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// Every step uses the directory at once.
    #[default]
    Shared,
    /// A step that finds the directory in use gets an empty directory of its own instead,
    /// removed after the step.
    Private,
    /// A step waits until no other step uses the directory.
    Locked,
}

impl Mount {
    /// A read-only bind mount of a host path.
    pub fn bind(source: impl Into<PathBuf>, target: impl Into<String>) -> Mount {
        Mount {
            target: target.into(),
            kind: MountKind::Bind {
                source: source.into(),
                read_write: false,
            },
        }
    }

    /// A cache mount of a host directory.
    pub fn cache(dir: impl Into<PathBuf>, target: impl Into<String>, sharing: Sharing) -> Mount {
        Mount {
            target: target.into(),
            kind: MountKind::Cache {
                dir: dir.into(),
                sharing,
            },
        }
    }

    /// An empty tmpfs.
    pub fn tmpfs(target: impl Into<String>) -> Mount {
        Mount {
            target: target.into(),
            kind: MountKind::Tmpfs { size: None },
        }
    }

    /// A secret file, mode 0400, owned by root (BuildKit's defaults).
    pub fn secret(source: impl Into<PathBuf>, target: impl Into<String>) -> Mount {
        Mount {
            target: target.into(),
            kind: MountKind::Secret {
                source: source.into(),
                mode: 0o400,
                uid: 0,
                gid: 0,
            },
        }
    }

    /// Makes a bind mount writable (`rw`); other kinds are unchanged.
    pub fn read_write(mut self) -> Mount {
        if let MountKind::Bind { read_write, .. } = &mut self.kind {
            *read_write = true;
        }
        self
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal with this number killed it.
    Signal(i32),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

/// The isolation a step actually got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isolation {
    /// A user namespace mapped the caller to root (rootless mode).
    pub user_namespace: bool,
    /// `pivot_root` was impossible (the root is on an initramfs, for example) and `chroot`
    /// was used instead: weaker, since a privileged process can leave a chroot.
    pub chroot: bool,
    /// The network the step had.
    pub network: Network,
}

/// What running a step gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// How the command ended.
    pub status: ExitStatus,
    /// The isolation it ran with.
    pub isolation: Isolation,
    /// From namespace setup to teardown.
    pub duration: Duration,
}

/// Cancels a running step from another thread (or from a dropped future's guard): its whole
/// process tree is killed and its mounts disappear with its namespaces.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token that has not been cancelled.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks every step run with this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Which namespaces a [`Sandbox`](crate::Sandbox) creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A user namespace when the process is not root with `CAP_SYS_ADMIN`, none otherwise.
    #[default]
    Auto,
    /// Always a user namespace mapping the caller to root (rootless).
    UserNamespace,
    /// Never a user namespace: the process must be root with `CAP_SYS_ADMIN`.
    Privileged,
}
