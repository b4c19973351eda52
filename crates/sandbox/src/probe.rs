//! What isolation this machine allows, found by trying it.

use std::ffi::CString;
use std::fmt;

use crate::child::{Action, Op, Program, Report};
use crate::error::Error;
use crate::idmap::IdMap;
use crate::sandbox::{launch, namespace_flags};
use crate::step::Network;

/// Whether something works here, and why not when it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// It works.
    Yes,
    /// It does not; the text says what failed and, where known, what to change.
    No(String),
}

impl Support {
    /// Whether it works.
    pub fn is_yes(&self) -> bool {
        *self == Support::Yes
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Support::Yes => f.write_str("yes"),
            Support::No(reason) => write!(f, "no: {reason}"),
        }
    }
}

/// What [`probe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The effective user is root.
    pub running_as_root: bool,
    /// The process has `CAP_SYS_ADMIN`, so steps need no user namespace.
    pub cap_sys_admin: bool,
    /// Whether a [`Sandbox`](crate::Sandbox) with the default mode uses a user namespace.
    pub rootless: bool,
    /// An unprivileged user namespace can be created (needed when not privileged).
    pub user_namespaces: Support,
    /// The namespaces a step uses, with a fresh `/proc`, can be set up in the default mode.
    pub namespaces: Support,
    /// `pivot_root` works (otherwise steps fall back to `chroot`).
    pub pivot_root: Support,
    /// An overlay filesystem can be mounted in the step's namespaces.
    pub overlay: Support,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "running as root: {}", self.running_as_root)?;
        writeln!(f, "CAP_SYS_ADMIN: {}", self.cap_sys_admin)?;
        writeln!(f, "rootless mode: {}", self.rootless)?;
        writeln!(f, "user namespaces: {}", self.user_namespaces)?;
        writeln!(f, "step namespaces: {}", self.namespaces)?;
        writeln!(f, "pivot_root: {}", self.pivot_root)?;
        write!(f, "overlay: {}", self.overlay)
    }
}

/// Whether this process is root with `CAP_SYS_ADMIN` (bit 21 of `CapEff`).
pub(crate) fn privileged() -> bool {
    rustix::process::geteuid().is_root() && cap_sys_admin()
}

fn cap_sys_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let hex = line.strip_prefix("CapEff:")?.trim();
                u64::from_str_radix(hex, 16).ok()
            })
        })
        .is_some_and(|caps| caps & (1 << 21) != 0)
}

/// Tries, in throwaway namespaces, what steps need: a user namespace, the step's namespaces
/// with a fresh `/proc`, `pivot_root`, and an overlay mount. Takes a few milliseconds.
pub fn probe() -> Probe {
    let running_as_root = rustix::process::geteuid().is_root();
    let cap_sys_admin = cap_sys_admin();
    let rootless = !(running_as_root && cap_sys_admin);
    let user_namespaces = attempt(Vec::new, libc::CLONE_NEWUSER | libc::CLONE_NEWNS, true);
    let id_map = rootless;

    let dir = match tempfile::Builder::new().prefix("strata-probe-").tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            let no = Support::No(format!("no temporary directory: {e}"));
            return Probe {
                running_as_root,
                cap_sys_admin,
                rootless,
                user_namespaces,
                namespaces: no.clone(),
                pivot_root: no.clone(),
                overlay: no,
            };
        }
    };
    let base = dir.path().to_string_lossy().into_owned();
    let mut made = true;
    for sub in ["root/proc", "lower", "upper", "work", "merged"] {
        made &= std::fs::create_dir_all(dir.path().join(sub)).is_ok();
    }
    let c = |s: String| CString::new(s).ok();
    let flags = namespace_flags(Network::Host, id_map);

    let root = format!("{base}/root");
    let namespaces_and_pivot = || {
        let mut ops = private_ops();
        if let (Some(source), Some(target)) = (c(root.clone()), c(root.clone())) {
            ops.push(op(Action::Mount {
                source: Some(source),
                target,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
            }));
        }
        if let Some(target) = c(format!("{root}/proc")) {
            ops.push(op(Action::Mount {
                source: Some(c"proc".to_owned()),
                target,
                fstype: Some(c"proc".to_owned()),
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: None,
            }));
        }
        if let Some(root) = c(root.clone()) {
            ops.push(op(Action::PivotRoot { root }));
        }
        ops
    };
    let (namespaces, pivot_root) = match run(namespaces_and_pivot(), flags, id_map) {
        Ok(reports) if reports.contains(&Report::Chroot) => (
            Support::Yes,
            Support::No("pivot_root failed (is the root on an initramfs?); chroot is used".into()),
        ),
        Ok(_) => (Support::Yes, Support::Yes),
        Err(no) => (Support::No(no.clone()), Support::No(no)),
    };
    let overlay_ops = || {
        let mut ops = private_ops();
        if let (Some(target), Some(data)) = (
            c(format!("{base}/merged")),
            c(format!(
                "lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work"
            )),
        ) {
            ops.push(op(Action::Mount {
                source: Some(c"overlay".to_owned()),
                target,
                fstype: Some(c"overlay".to_owned()),
                flags: 0,
                data: Some(data),
            }));
        }
        ops
    };
    let overlay = if made {
        match run(overlay_ops(), flags, id_map) {
            Ok(_) => Support::Yes,
            Err(no) => Support::No(no),
        }
    } else {
        Support::No("could not create the probe's directories".to_owned())
    };
    Probe {
        running_as_root,
        cap_sys_admin,
        rootless,
        user_namespaces,
        namespaces,
        pivot_root,
        overlay,
    }
}

fn op(action: Action) -> Op {
    let what = match &action {
        Action::Mount { fstype, .. } => match fstype {
            Some(fs) => format!("mounting {}", fs.to_string_lossy()),
            None => "a bind mount".to_owned(),
        },
        Action::PivotRoot { .. } => "entering a new root".to_owned(),
        _ => "setting up".to_owned(),
    };
    Op {
        action,
        optional: false,
        what,
    }
}

fn private_ops() -> Vec<Op> {
    vec![Op {
        action: Action::Mount {
            source: None,
            target: c"/".to_owned(),
            fstype: None,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: None,
        },
        optional: false,
        what: "making the mounts private".to_owned(),
    }]
}

fn attempt(ops: impl FnOnce() -> Vec<Op>, flags: libc::c_int, user_namespace: bool) -> Support {
    match run(ops(), flags, user_namespace) {
        Ok(_) => Support::Yes,
        Err(no) => Support::No(no),
    }
}

/// Runs the ops in throwaway namespaces; `Err` says what failed.
fn run(ops: Vec<Op>, flags: libc::c_int, user_namespace: bool) -> Result<Vec<Report>, String> {
    let program = Program { ops, exec: None };
    let map = user_namespace.then(IdMap::for_caller);
    let launched = launch(&program, flags, map.as_ref()).map_err(|e| e.to_string())?;
    let (_, reports) = launched.wait().map_err(|e: Error| e.to_string())?;
    for report in &reports {
        if let Report::SetupFailed { index, errno } = report {
            let what = program.ops.get(*index).map_or("setting up", |op| &op.what);
            return Err(format!(
                "{what}: {}",
                std::io::Error::from_raw_os_error(*errno)
            ));
        }
    }
    if reports.contains(&Report::Exited { code: 0 }) {
        Ok(reports)
    } else {
        Err("the probe's process ended without reporting".to_owned())
    }
}
