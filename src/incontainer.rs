//! The in-container mode (Kaniko's way): in an unprivileged container, where namespaces and
//! mounts are denied, the build's root filesystem is the container's own `/`.
//!
//! Before a stage's first RUN, everything in `/` that is not on the ignore list is removed
//! and the stage's layers are extracted into `/` (with the safe extractor, protecting the
//! ignore list); a RUN is then a plain child process, and its change set is a metadata scan
//! of `/` before and after. The ignore list is never deleted, written, extracted over or put
//! in a layer: `/proc`, `/sys`, `/dev`, every mount point other than `/` (volumes, the
//! mounted Docker config, `/etc/hosts`, `/etc/resolv.conf`, secrets), `/var/run` (Kaniko's
//! `--ignore-var-run`), the executor's own directory, the state directory, and every
//! `--ignore-path`. Stages run one at a time; `COPY --from` reads stages from their layers
//! in the state directory, never from `/`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where RUN steps execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Isolation {
    /// Linux namespaces where the machine allows them; else, inside a container, the
    /// in-container mode (the default).
    #[default]
    Auto,
    /// Linux namespaces (mount, PID, UTS, IPC, and user when unprivileged).
    Namespaces,
    /// The container's own root filesystem, replaced by each stage's (Kaniko's way): for
    /// unprivileged containers made for the build. Refused outside a container unless forced.
    InContainer,
}

impl Isolation {
    /// The name the command line and events use.
    pub fn name(self) -> &'static str {
        match self {
            Isolation::Auto => "auto",
            Isolation::Namespaces => "namespaces",
            Isolation::InContainer => "in-container",
        }
    }
}

/// What a container runtime leaves for its processes to see, if anything: the first sign
/// found, in words.
pub fn container_marker() -> Option<String> {
    for (path, what) in [
        ("/.dockerenv", "/.dockerenv (Docker)"),
        ("/run/.containerenv", "/run/.containerenv (podman)"),
        (
            "/var/run/secrets/kubernetes.io/serviceaccount",
            "a Kubernetes service account",
        ),
    ] {
        if Path::new(path).exists() {
            return Some(what.to_owned());
        }
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return Some("KUBERNETES_SERVICE_HOST (Kubernetes)".to_owned());
    }
    for file in ["/proc/self/cgroup", "/proc/1/cgroup"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for marker in ["docker", "kubepods", "containerd", "libpod", "crio", "lxc"] {
            if text.contains(marker) {
                return Some(format!("{file} names {marker}"));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mounts
        .lines()
        .filter_map(parse_mountinfo)
        .any(|(point, fstype)| point == "/" && fstype == "overlay")
    {
        return Some("an overlay filesystem on /".to_owned());
    }
    None
}

/// The mount point and filesystem type of a `/proc/self/mountinfo` line.
fn parse_mountinfo(line: &str) -> Option<(String, String)> {
    let fields: Vec<&str> = line.split(' ').collect();
    let point = unescape(fields.get(4)?);
    let separator = fields.iter().position(|f| *f == "-")?;
    let fstype = fields.get(separator + 1)?.to_string();
    Some((point, fstype))
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(value) = u8::from_str_radix(&text[i + 1..i + 4], 8)
        {
            out.push(value);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The paths (relative to `/`, no leading slash) the in-container mode never touches.
pub(crate) fn ignore_list(
    state_dir: &Path,
    also: &[PathBuf],
    extra: &[String],
    ignore_var_run: bool,
) -> Vec<String> {
    let mut paths: Vec<String> = ["proc", "sys", "dev"].map(str::to_owned).to_vec();
    if ignore_var_run {
        paths.push("var/run".to_owned());
        // /var/run is usually a link to /run, where runtimes keep their own files.
        paths.push("run".to_owned());
    }
    paths.extend(untouchable(state_dir, also));
    for path in extra {
        paths.push(path.trim_matches('/').to_owned());
    }
    paths.retain(|p| !p.is_empty());
    paths.sort();
    paths.dedup();
    paths
}

/// What nothing of a build may even be placed on: every mount point but `/` (volumes, the
/// Docker config, `/etc/hosts`, secrets), the executor's own directory, the state directory,
/// and `also` (the build's inputs: its context, secret files, named contexts, the Docker
/// config directory), which may be plain directories of the container. (`RUN --mount`
/// targets there are refused; those on the rest of the ignore list, such as
/// `/run/secrets`, are fine.)
pub(crate) fn untouchable(state_dir: &Path, also: &[PathBuf]) -> Vec<String> {
    let mut paths = Vec::new();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for (point, _) in mounts.lines().filter_map(parse_mountinfo) {
        if point != "/" {
            paths.push(point.trim_start_matches('/').to_owned());
        }
    }
    let mut own: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| exe.parent().map(Path::to_owned))
        .filter(|dir| dir != Path::new("/"))
    {
        own.push(dir);
    }
    for dir in std::iter::once(state_dir).chain(also.iter().map(PathBuf::as_path)) {
        own.push(dir.canonicalize().unwrap_or_else(|_| dir.to_owned()));
    }
    for dir in own {
        paths.push(dir.to_string_lossy().trim_start_matches('/').to_owned());
    }
    paths.retain(|p| !p.is_empty());
    paths.sort();
    paths.dedup();
    paths
}

/// Checks that the in-container mode may run here: as uid 0, and in a container (or
/// `force`). Returns why it runs, for the event stream.
pub(crate) fn check(force: bool) -> Result<String> {
    check_with(
        force,
        rustix::process::geteuid().is_root(),
        container_marker(),
    )
}

/// [`check`] with what it looks at given.
fn check_with(force: bool, root: bool, marker: Option<String>) -> Result<String> {
    if !root {
        return Err(Error::Invalid(
            "the in-container mode needs uid 0 in its container (it replaces the container's \
             root filesystem with each stage's): run the container as root (Kubernetes: \
             securityContext.runAsUser: 0), with no added privileges"
                .to_owned(),
        ));
    }
    match marker {
        Some(marker) => Ok(format!("running in a container ({marker})")),
        None if force => Ok("forced outside a container (--force)".to_owned()),
        None => Err(Error::Invalid(
            "the in-container mode replaces the root filesystem with the image's, and this \
             does not look like a container (no /.dockerenv, /run/.containerenv, Kubernetes \
             service account or container cgroup): nothing was touched. Run strata in a \
             container made for the build, or pass --force if this machine is one"
                .to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_needs_root_and_a_container_or_force() {
        let marker = || Some("/.dockerenv (Docker)".to_owned());
        assert!(check_with(false, true, marker()).is_ok());
        assert!(
            matches!(check_with(false, false, marker()), Err(Error::Invalid(m)) if m.contains("uid 0"))
        );
        assert!(
            matches!(check_with(false, true, None), Err(Error::Invalid(m)) if m.contains("--force"))
        );
        assert!(check_with(true, true, None).is_ok_and(|why| why.contains("--force")));
        assert!(check_with(true, false, None).is_err());
    }

    #[test]
    fn mountinfo_lines_give_their_mount_points() {
        let line = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw";
        assert_eq!(
            parse_mountinfo(line),
            Some(("/mnt two".to_owned(), "ext3".to_owned()))
        );
        let overlay = "600 550 0:52 / / rw,relatime - overlay overlay rw,lowerdir=/l";
        assert_eq!(
            parse_mountinfo(overlay),
            Some(("/".to_owned(), "overlay".to_owned()))
        );
        assert_eq!(parse_mountinfo("garbage"), None);
    }

    #[test]
    fn the_ignore_list_holds_the_kernel_filesystems_mounts_and_our_own_directories() {
        let state = tempfile::tempdir().unwrap();
        let context = tempfile::tempdir().unwrap();
        let list = ignore_list(
            state.path(),
            &[context.path().to_owned()],
            &["/cache/".to_owned()],
            true,
        );
        let context = context.path().canonicalize().unwrap();
        assert!(
            list.iter()
                .any(|p| *p == context.to_string_lossy().trim_start_matches('/'))
        );
        for expected in ["proc", "sys", "dev", "var/run", "cache"] {
            assert!(list.iter().any(|p| p == expected), "{expected} in {list:?}");
        }
        let state = state.path().canonicalize().unwrap();
        let state = state.to_string_lossy();
        assert!(list.iter().any(|p| *p == state.trim_start_matches('/')));
        assert!(list.iter().all(|p| !p.starts_with('/') && !p.is_empty()));
    }
}
