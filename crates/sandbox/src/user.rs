//! The user a step runs as, from `USER`'s value and the root's `/etc/passwd` and `/etc/group`,
//! with the rules runc applies (moby's `user.GetExecUser`).

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::root::{self, Create};

/// The most bytes read from `/etc/passwd` or `/etc/group`: the root is untrusted.
const MAX_DATABASE: u64 = 16 << 20;

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary one first): only when the group was not given
    /// explicitly.
    pub groups: Vec<u32>,
    /// The home directory from `/etc/passwd`, `/` when there is no entry.
    pub home: String,
}

/// Resolves a `USER` value (`name`, `uid`, `name:group`, `uid:gid`, empty for root).
pub(crate) fn resolve(root_dir: &Path, spec: &str) -> Result<ExecUser> {
    let passwd = read_database(root_dir, "/etc/passwd")?;
    let group = read_database(root_dir, "/etc/group")?;
    resolve_in(spec, passwd.as_deref(), group.as_deref())
}

/// The owner `COPY --chown=SPEC` and friends give: `user[:group]`, names looked up in the
/// root's `/etc/passwd` and `/etc/group`, numbers taken as they are; a user without a group
/// gets its uid as gid too (Docker's rule for `--chown`, unlike `USER`).
///
/// ```
/// let root = tempfile::tempdir().unwrap();
/// std::fs::create_dir(root.path().join("etc")).unwrap();
/// std::fs::write(root.path().join("etc/passwd"), "app:x:1000:50::/home/app:/bin/sh\n").unwrap();
/// std::fs::write(root.path().join("etc/group"), "staff:x:50:\n").unwrap();
/// assert_eq!(strata_sandbox::chown_ids(root.path(), "app")?, (1000, 1000));
/// assert_eq!(strata_sandbox::chown_ids(root.path(), "app:staff")?, (1000, 50));
/// assert_eq!(strata_sandbox::chown_ids(root.path(), "7:8")?, (7, 8));
/// # Ok::<(), strata_sandbox::Error>(())
/// ```
pub fn chown_ids(root_dir: &Path, spec: &str) -> Result<(u32, u32)> {
    let fail = |reason: String| Error::User {
        user: spec.to_owned(),
        reason,
    };
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let uid = match user_part.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => {
            let passwd = read_database(root_dir, "/etc/passwd")?.unwrap_or_default();
            match passwd_entries(&passwd).find(|e| e.name == user_part) {
                Some(entry) => entry.ids("/etc/passwd", spec)?.0,
                // `root` is 0 even where no passwd file says so (BuildKit's rule).
                None if user_part == "root" => 0,
                None => return Err(fail(format!("no user named `{user_part}` in /etc/passwd"))),
            }
        }
    };
    let gid = match group_part {
        None => uid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_database(root_dir, "/etc/group")?.unwrap_or_default();
                match group_entries(&groups).find(|e| e.name == group) {
                    Some(entry) => entry.ids("/etc/group", spec)?.0,
                    None if group == "root" => 0,
                    None => return Err(fail(format!("no group named `{group}` in /etc/group"))),
                }
            }
        },
    };
    Ok((uid, gid))
}

fn read_database(root_dir: &Path, path: &str) -> Result<Option<String>> {
    let Some(inner) = root::resolve(root_dir, path, Create::Nothing, None)? else {
        return Ok(None);
    };
    let host = root::join(root_dir, &inner);
    if !host.is_file() {
        return Ok(None);
    }
    let mut text = Vec::new();
    std::fs::File::open(&host)
        .and_then(|file| file.take(MAX_DATABASE).read_to_end(&mut text))
        .map_err(Error::io(&host))?;
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

/// One line of `/etc/passwd` or `/etc/group`. A numeric field that does not parse is kept as
/// `None`: such an entry is an error when it is the one asked for and is skipped otherwise,
/// never read as id 0 (root).
struct Entry<'a> {
    name: &'a str,
    /// The line, from 1, for errors.
    line: usize,
    /// The uid (passwd) or gid (group) field as written, and its value when it is a number.
    id_text: &'a str,
    id: Option<u32>,
    /// passwd: the primary gid field (missing is 0, as runc reads it); group: unused.
    gid_text: &'a str,
    gid: Option<u32>,
    /// passwd: the home directory; group: the member list.
    rest: &'a str,
}

impl Entry<'_> {
    /// The ids of an entry that was asked for, or the error that names its line.
    fn ids(&self, database: &str, spec: &str) -> Result<(u32, u32)> {
        let bad = |field: &str, text: &str| Error::User {
            user: spec.to_owned(),
            reason: format!(
                "{database} line {}: the {field} `{text}` of `{}` is not a number",
                self.line, self.name
            ),
        };
        let id = self.id.ok_or_else(|| bad("id", self.id_text))?;
        let gid = self.gid.ok_or_else(|| bad("group id", self.gid_text))?;
        Ok((id, gid))
    }
}

fn entries(text: &str, passwd: bool) -> impl Iterator<Item = Entry<'_>> {
    text.lines().enumerate().filter_map(move |(index, line)| {
        let fields: Vec<&str> = line.trim().split(':').collect();
        if fields.len() < 3 || fields[0].is_empty() {
            return None;
        }
        let gid_text = if passwd {
            fields.get(3).copied().unwrap_or("")
        } else {
            "0"
        };
        Some(Entry {
            name: fields[0],
            line: index + 1,
            id_text: fields[2],
            id: fields[2].parse().ok(),
            gid_text,
            gid: if gid_text.is_empty() {
                Some(0)
            } else {
                gid_text.parse().ok()
            },
            rest: fields
                .get(if passwd { 5 } else { 3 })
                .copied()
                .unwrap_or(""),
        })
    })
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Entry<'_>> {
    entries(text, true)
}

fn group_entries(text: &str) -> impl Iterator<Item = Entry<'_>> {
    entries(text, false)
}

fn resolve_in(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<ExecUser> {
    let fail = |reason: String| Error::User {
        user: spec.to_owned(),
        reason,
    };
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, g),
        None => (spec, ""),
    };
    let uid_arg: Option<u32> = user_arg.parse().ok();
    let gid_arg: Option<u32> = group_arg.parse().ok();

    let mut user = ExecUser {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        home: "/".to_owned(),
    };
    let matched = passwd.and_then(|text| {
        passwd_entries(text).find(|e| match (user_arg, uid_arg) {
            ("", _) => e.id == Some(0),
            (_, Some(uid)) => e.id == Some(uid),
            (name, None) => e.name == name,
        })
    });
    let mut matched_name = None;
    if let Some(entry) = matched {
        (user.uid, user.gid) = entry.ids("/etc/passwd", spec)?;
        user.home = if entry.rest.is_empty() {
            "/".to_owned()
        } else {
            entry.rest.to_owned()
        };
        matched_name = Some(entry.name.to_owned());
    } else if user_arg == "root" {
        // `root` is 0:0 even where no passwd file says so (BuildKit's rule).
    } else if !user_arg.is_empty() {
        user.uid = uid_arg.ok_or_else(|| {
            fail(match passwd {
                Some(_) => format!("no user named `{user_arg}` in /etc/passwd"),
                None => format!("no /etc/passwd to look up `{user_arg}` in"),
            })
        })?;
    }

    if group_arg.is_empty() {
        // The primary group is always among the supplementary groups, also for a user
        // without a passwd entry (BuildKit's fix for CVE-2023-25173).
        user.groups = vec![user.gid];
        if let (Some(name), Some(text)) = (&matched_name, group) {
            // The primary group first, as Docker and buildah give it, then memberships.
            user.groups = vec![user.gid];
            for g in group_entries(text) {
                // A malformed group is skipped, never read as group 0.
                let Some(id) = g.id else { continue };
                if g.rest.split(',').any(|member| member.trim() == name)
                    && !user.groups.contains(&id)
                {
                    user.groups.push(id);
                }
            }
        }
    } else {
        let found = group.and_then(|text| {
            group_entries(text).find(|g| match gid_arg {
                Some(gid) => g.id == Some(gid),
                None => g.name == group_arg,
            })
        });
        user.gid = match (found, gid_arg) {
            (Some(entry), _) => entry.ids("/etc/group", spec)?.0,
            (None, Some(gid)) => gid,
            (None, None) if group_arg == "root" => 0,
            (None, None) => {
                return Err(fail(match group {
                    Some(_) => format!("no group named `{group_arg}` in /etc/group"),
                    None => format!("no /etc/group to look up `{group_arg}` in"),
                }));
            }
        };
        user.groups = vec![user.gid];
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          app:x:1000:1000::/home/app:/bin/sh\n\
                          nobody:x:65534:65534::/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app,other\napp:x:1000:\nwheel:x:10: app \n";

    fn get(spec: &str) -> Result<ExecUser> {
        resolve_in(spec, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn the_primary_group_is_always_a_supplementary_group() {
        // A numeric user with no passwd entry (BuildKit's fix for CVE-2023-25173).
        assert_eq!(get("4242").unwrap().groups, [0]);
        assert_eq!(get("4242:77").unwrap().groups, [77]);
        assert_eq!(get("app:staff").unwrap().groups, [50]);
        assert_eq!(get("app").unwrap().groups, [1000, 50, 10]);
    }

    #[test]
    fn root_is_zero_without_a_passwd_file() {
        let root = resolve_in("root", None, None).unwrap();
        assert_eq!(
            (root.uid, root.gid, root.groups.as_slice()),
            (0, 0, &[0][..])
        );
        let root = resolve_in("root:root", None, None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(
            resolve_in("app", None, None).is_err(),
            "other names still need an entry"
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(chown_ids(empty.path(), "root").unwrap(), (0, 0));
        assert_eq!(chown_ids(empty.path(), "root:root").unwrap(), (0, 0));
        assert!(chown_ids(empty.path(), "app").is_err());
    }

    #[test]
    fn names_give_the_passwd_entry_and_supplementary_groups() {
        let app = get("app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1000, 1000, "/home/app")
        );
        assert_eq!(app.groups, vec![1000, 50, 10]);
        let root = get("").unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn numeric_ids_need_no_entry() {
        let u = get("4242").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        let u = get("1000").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        let u = get("4242:4343").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 4343));
        assert_eq!(u.groups, [4343], "only the primary group");
    }

    #[test]
    fn an_explicit_group_replaces_the_primary_and_drops_supplementary_groups() {
        let u = get("app:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert_eq!(u.groups, [50], "the memberships of app are dropped");
    }

    #[test]
    fn unknown_names_are_errors_that_say_where_we_looked() {
        let err = get("ghost").unwrap_err().to_string();
        assert!(
            err.contains("no user named `ghost` in /etc/passwd"),
            "{err}"
        );
        let err = get("app:ghosts").unwrap_err().to_string();
        assert!(err.contains("no group named `ghosts`"), "{err}");
        let err = resolve_in("app", None, None).unwrap_err().to_string();
        assert!(err.contains("no /etc/passwd"), "{err}");
        assert_eq!(resolve_in("7", None, None).unwrap().uid, 7);
    }

    /// A malformed id never becomes root: it is an error naming the file and line when it is
    /// the entry asked for, and the entry is skipped otherwise.
    #[test]
    fn malformed_ids_are_errors_never_root() {
        let passwd = "root:x:0:0::/root:/bin/sh\nbad:x:12ab:1000::/:/bin/sh\n\
                      badgid:x:1001:zz::/:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
        let group = "root:x:0:\nweird:x:9x9:app\nstaff:x:50:app\n";
        for spec in ["bad", "badgid", "app:weird"] {
            match resolve_in(spec, Some(passwd), Some(group)) {
                Err(Error::User { reason, .. }) => {
                    assert!(reason.contains(" line "), "{spec}: {reason}");
                    assert!(reason.contains("is not a number"), "{spec}: {reason}");
                }
                other => panic!("{spec}: expected a user error, got {other:?}"),
            }
        }
        let err = resolve_in("bad", Some(passwd), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/passwd line 2"), "{err}");
        // Asked for by number or by another name: the malformed lines are skipped.
        let app = resolve_in("app", Some(passwd), Some(group)).unwrap();
        assert_eq!((app.uid, app.gid, app.groups), (1000, 1000, vec![1000, 50]));
        let numeric = resolve_in("12", Some(passwd), Some(group)).unwrap();
        assert_eq!((numeric.uid, numeric.gid), (12, 0));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("etc/group"), group).unwrap();
        assert!(matches!(
            chown_ids(dir.path(), "bad"),
            Err(Error::User { .. })
        ));
        assert!(matches!(
            chown_ids(dir.path(), "app:weird"),
            Err(Error::User { .. })
        ));
        assert_eq!(chown_ids(dir.path(), "app:staff").unwrap(), (1000, 50));
    }

    #[test]
    fn reads_the_databases_through_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/real", dir.path().join("etc/passwd")).unwrap();
        std::fs::write(dir.path().join("etc/real"), PASSWD).unwrap();
        let u = resolve(dir.path(), "nobody").unwrap();
        assert_eq!((u.uid, u.gid), (65534, 65534));
    }
}
