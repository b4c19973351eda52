//! User and group id maps for a user namespace (rootless mode).
//!
//! The caller becomes root inside. With a range in `/etc/subuid` and `/etc/subgid` and the
//! setuid helpers `newuidmap`/`newgidmap` (Debian's `uidmap` package), ids 1… inside map to
//! that range, so that `USER app` works; without them, only root exists inside and
//! `setgroups` is denied, as the kernel requires for an unprivileged map.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// A subordinate id range: `count` ids starting at `start` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub start: u64,
    pub count: u64,
}

/// How the ids of one user namespace are mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdMap {
    /// Only the caller, as root. `setgroups` is denied.
    Single { uid: u32, gid: u32 },
    /// The caller as root and a subordinate range as ids 1…, written by the helpers.
    Ranges {
        uid: u32,
        gid: u32,
        uids: Range,
        gids: Range,
        newuidmap: PathBuf,
        newgidmap: PathBuf,
    },
}

impl IdMap {
    /// The map for the calling user: ranges when both files name the user and both helpers
    /// are installed, the single map otherwise.
    pub(crate) fn for_caller() -> IdMap {
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let name = host_user_name(uid);
        let range = |file: &str| {
            std::fs::read_to_string(file)
                .ok()
                .and_then(|text| find_range(&text, uid, name.as_deref()))
        };
        let helper = |name: &str| {
            ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
                .iter()
                .map(|dir| Path::new(dir).join(name))
                .find(|path| path.is_file())
        };
        match (
            range("/etc/subuid"),
            range("/etc/subgid"),
            helper("newuidmap"),
            helper("newgidmap"),
        ) {
            (Some(uids), Some(gids), Some(newuidmap), Some(newgidmap)) => IdMap::Ranges {
                uid,
                gid,
                uids,
                gids,
                newuidmap,
                newgidmap,
            },
            _ => IdMap::Single { uid, gid },
        }
    }

    /// Whether `uid`/`gid` exist inside the namespace.
    pub(crate) fn maps(&self, uid: u32, gid: u32) -> bool {
        match self {
            IdMap::Single { .. } => uid == 0 && gid == 0,
            IdMap::Ranges { uids, gids, .. } => {
                u64::from(uid) <= uids.count && u64::from(gid) <= gids.count
            }
        }
    }

    /// Whether `setgroups` is allowed inside.
    pub(crate) fn allows_setgroups(&self) -> bool {
        matches!(self, IdMap::Ranges { .. })
    }

    /// Writes the maps of the namespace whose first process is `pid`.
    pub(crate) fn apply(&self, pid: i32) -> Result<()> {
        match self {
            IdMap::Single { uid, gid } => {
                let proc = PathBuf::from(format!("/proc/{pid}"));
                let write = |name: &str, text: String| {
                    let path = proc.join(name);
                    std::fs::write(&path, text)
                        .map_err(|e| Error::IdMap(format!("writing {}: {e}", path.display())))
                };
                write("setgroups", "deny".to_owned())?;
                write("uid_map", format!("0 {uid} 1\n"))?;
                write("gid_map", format!("0 {gid} 1\n"))
            }
            IdMap::Ranges {
                uid,
                gid,
                uids,
                gids,
                newuidmap,
                newgidmap,
            } => {
                run_helper(newuidmap, pid, *uid, *uids)?;
                run_helper(newgidmap, pid, *gid, *gids)
            }
        }
    }
}

fn run_helper(helper: &Path, pid: i32, own: u32, range: Range) -> Result<()> {
    let output = Command::new(helper)
        .args([
            pid.to_string(),
            "0".to_owned(),
            own.to_string(),
            "1".to_owned(),
            "1".to_owned(),
            range.start.to_string(),
            range.count.to_string(),
        ])
        .output()
        .map_err(|e| Error::IdMap(format!("running {}: {e}", helper.display())))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::IdMap(format!(
            "{} failed ({}): {}",
            helper.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The host's name for `uid`, from `/etc/passwd`.
fn host_user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

/// The first range of `/etc/subuid`-format `text` for the user named `name` or numbered `uid`.
pub(crate) fn find_range(text: &str, uid: u32, name: Option<&str>) -> Option<Range> {
    text.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let who = fields.next()?;
        let start: u64 = fields.next()?.trim().parse().ok()?;
        let count: u64 = fields.next()?.trim().parse().ok()?;
        let matches = Some(who) == name || who.parse::<u32>().ok() == Some(uid);
        (matches && count > 0).then_some(Range { start, count })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_found_by_name_or_number() {
        let text = "# comment\nalice:100000:65536\n1001:200000:65536\nbob:300000:0\n";
        assert_eq!(
            find_range(text, 1000, Some("alice")),
            Some(Range {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(
            find_range(text, 1001, Some("carol")).map(|r| r.start),
            Some(200000)
        );
        assert_eq!(
            find_range(text, 1002, Some("bob")),
            None,
            "an empty range is no range"
        );
        assert_eq!(find_range(text, 1002, None), None);
    }

    #[test]
    fn a_single_map_has_only_root() {
        let map = IdMap::Single {
            uid: 1000,
            gid: 1000,
        };
        assert!(map.maps(0, 0));
        assert!(!map.maps(1000, 1000));
        assert!(!map.allows_setgroups());
    }
}

/// The user namespace a process of the calling user gets: the caller as root, and its
/// subordinate ranges (`/etc/subuid`, `/etc/subgid`, through `newuidmap`/`newgidmap`) as ids
/// 1… when it has them. The same map the sandbox writes for rootless steps, for callers that
/// enter a namespace of their own (a command re-executing itself as root inside one) or that
/// translate host ids of files written inside one back to the ids the namespace saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNamespaceMap(IdMap);

impl UserNamespaceMap {
    /// The map for the calling user.
    pub fn for_caller() -> UserNamespaceMap {
        UserNamespaceMap(IdMap::for_caller())
    }

    /// Whether the caller has subordinate ranges (and the helpers to map them): without them,
    /// only root exists inside.
    pub fn has_ranges(&self) -> bool {
        matches!(self.0, IdMap::Ranges { .. })
    }

    /// Writes the maps of the user namespace whose first process is `pid` (which must not have
    /// been mapped yet).
    pub fn apply(&self, pid: i32) -> Result<()> {
        self.0.apply(pid)
    }

    /// The id inside the namespace of host uid `host`, if it has one.
    pub fn uid_inside(&self, host: u32) -> Option<u32> {
        match &self.0 {
            IdMap::Single { uid, .. } => (host == *uid).then_some(0),
            IdMap::Ranges { uid, uids, .. } => inside(host, *uid, *uids),
        }
    }

    /// The id inside the namespace of host gid `host`, if it has one.
    pub fn gid_inside(&self, host: u32) -> Option<u32> {
        match &self.0 {
            IdMap::Single { gid, .. } => (host == *gid).then_some(0),
            IdMap::Ranges { gid, gids, .. } => inside(host, *gid, *gids),
        }
    }
}

fn inside(host: u32, own: u32, range: Range) -> Option<u32> {
    if host == own {
        return Some(0);
    }
    let host = u64::from(host);
    (host >= range.start && host < range.start + range.count)
        .then(|| u32::try_from(host - range.start + 1).ok())
        .flatten()
}

#[cfg(test)]
mod map_tests {
    use super::*;

    #[test]
    fn host_ids_map_back_inside() {
        let map = UserNamespaceMap(IdMap::Ranges {
            uid: 1001,
            gid: 1001,
            uids: Range {
                start: 100000,
                count: 65536,
            },
            gids: Range {
                start: 100000,
                count: 65536,
            },
            newuidmap: PathBuf::new(),
            newgidmap: PathBuf::new(),
        });
        assert_eq!(map.uid_inside(1001), Some(0));
        assert_eq!(map.uid_inside(100999), Some(1000));
        assert_eq!(map.uid_inside(100000), Some(1));
        assert_eq!(map.uid_inside(165536), None);
        assert_eq!(map.gid_inside(5), None);
        let single = UserNamespaceMap(IdMap::Single { uid: 7, gid: 8 });
        assert_eq!(single.uid_inside(7), Some(0));
        assert_eq!(single.gid_inside(8), Some(0));
        assert_eq!(single.uid_inside(0), None);
    }
}
