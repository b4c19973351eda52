//! Paths inside the step's root filesystem, resolved the way the step itself will see them.
//!
//! A root filesystem is untrusted: `/etc` may be a symlink to `/host/etc`, `/run` a symlink
//! to `../../..`. [`resolve`] walks a path one component at a time, follows symlinks as the
//! kernel would after `pivot_root` (an absolute link restarts at the root, `..` stops at the
//! root), and never leaves the root. Nothing runs inside the root while the walk happens, so
//! the answer stays true until the step starts.
//!
//! Mount points that did not exist are created as stubs and recorded in [`Stubs`], which
//! removes them after the step and gives their parents back their times, so that a mount
//! leaves nothing in the step's layer (BuildKit does the same).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// The most symlinks one resolution follows, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;

/// What to create when a path does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    /// Nothing: a missing path resolves to `None`.
    Nothing,
    /// Directories all the way down.
    Dir,
    /// Directories, and an empty file as the last component.
    File,
    /// Nothing, but missing components are kept as named: the path the step would create.
    Virtual,
}

/// Paths created inside a root, to be removed again.
#[derive(Debug, Default)]
pub(crate) struct Stubs {
    /// Host paths in creation order, each with whether it is a directory.
    created: Vec<(PathBuf, bool)>,
    /// Existing directories that received a stub, with their times before.
    parents: Vec<(PathBuf, SystemTime, SystemTime)>,
}

impl Stubs {
    /// Removes the created paths, deepest first, and restores their parents' times. A stub
    /// that is no longer empty (the command wrote into a directory we created) stays.
    pub(crate) fn remove(&mut self) {
        for (path, is_dir) in self.created.drain(..).rev() {
            let removed = if is_dir {
                fs::remove_dir(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(error) = removed {
                tracing::debug!(path = %path.display(), %error, "mount stub left in place");
            }
        }
        for (path, accessed, modified) in self.parents.drain(..).rev() {
            let times = fs::FileTimes::new()
                .set_accessed(accessed)
                .set_modified(modified);
            if let Err(error) = fs::File::open(&path).and_then(|dir| dir.set_times(times)) {
                tracing::debug!(path = %path.display(), %error, "times of a stub's parent not restored");
            }
        }
    }

    fn record_parent(&mut self, parent: &Path) -> Result<()> {
        if self.parents.iter().any(|(p, _, _)| p == parent)
            || self.created.iter().any(|(p, _)| p == parent)
        {
            return Ok(());
        }
        let meta = fs::metadata(parent).map_err(Error::io(parent))?;
        let accessed = meta.accessed().map_err(Error::io(parent))?;
        let modified = meta.modified().map_err(Error::io(parent))?;
        self.parents.push((parent.to_owned(), accessed, modified));
        Ok(())
    }
}

impl Drop for Stubs {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Resolves the absolute `path` inside `root`, returning it as the step will name it
/// (`/a/b`, no symlinks left, no `..`), or `None` when it does not exist and `create` is
/// [`Create::Nothing`]. Components created are recorded in `stubs` when given (mount points),
/// and kept otherwise (a working directory).
pub(crate) fn resolve(
    root: &Path,
    path: &str,
    create: Create,
    mut stubs: Option<&mut Stubs>,
) -> Result<Option<String>> {
    let fail = |reason: String| Error::Path {
        path: path.to_owned(),
        reason,
    };
    if !path.starts_with('/') {
        return Err(fail("not an absolute path".to_owned()));
    }
    let mut pending: VecDeque<OsString> = components(Path::new(path));
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let parent = host_path(root, &resolved);
        let host = parent.join(&name);
        match fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(fail("too many levels of symbolic links".to_owned()));
                }
                let target = fs::read_link(&host).map_err(Error::io(&host))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for part in components(&target).into_iter().rev() {
                    pending.push_front(part);
                }
            }
            Ok(meta) => {
                if !pending.is_empty() && !meta.is_dir() {
                    return Err(fail(format!(
                        "`{}` is not a directory",
                        display(&resolved, &name)
                    )));
                }
                resolved.push(name);
            }
            Err(error) if error.kind() == ErrorKind::NotFound => {
                if create == Create::Nothing {
                    return Ok(None);
                }
                if create == Create::Virtual {
                    resolved.push(name);
                    continue;
                }
                let file = create == Create::File && pending.is_empty();
                if let Some(stubs) = stubs.as_deref_mut() {
                    stubs.record_parent(&parent)?;
                }
                if file {
                    fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&host)
                        .map_err(Error::io(&host))?;
                } else {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&host)
                        .map_err(Error::io(&host))?;
                }
                if let Some(stubs) = stubs.as_deref_mut() {
                    stubs.created.push((host, !file));
                }
                resolved.push(name);
            }
            Err(error) => return Err(Error::io(host)(error)),
        }
    }
    let mut inner = String::new();
    for part in &resolved {
        inner.push('/');
        inner.push_str(&part.to_string_lossy());
    }
    if inner.is_empty() {
        inner.push('/');
    }
    Ok(Some(inner))
}

/// Resolves `path` and checks that what it names has the expected kind (directory or not).
pub(crate) fn resolve_as(
    root: &Path,
    path: &str,
    create: Create,
    stubs: Option<&mut Stubs>,
) -> Result<String> {
    let inner = resolve(root, path, create, stubs)?.ok_or_else(|| Error::Path {
        path: path.to_owned(),
        reason: "does not exist".to_owned(),
    })?;
    let host = join(root, &inner);
    let meta = fs::metadata(&host).map_err(Error::io(&host))?;
    let want_dir = matches!(create, Create::Dir | Create::Nothing);
    if meta.is_dir() != want_dir {
        return Err(Error::Path {
            path: path.to_owned(),
            reason: if want_dir {
                "exists and is not a directory".to_owned()
            } else {
                "exists and is a directory".to_owned()
            },
        });
    }
    Ok(inner)
}

/// The host path of an inner path returned by [`resolve`].
pub(crate) fn join(root: &Path, inner: &str) -> PathBuf {
    root.join(inner.trim_start_matches('/'))
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn host_path(root: &Path, resolved: &[OsString]) -> PathBuf {
    let mut path = root.to_owned();
    path.extend(resolved);
    path
}

fn display(resolved: &[OsString], name: &OsString) -> String {
    let mut out = String::new();
    for part in resolved.iter().chain(std::iter::once(name)) {
        out.push('/');
        out.push_str(&part.to_string_lossy());
    }
    out
}

/// Resolves the absolute `path` inside `root` as a process whose root directory is `root`
/// would: symlinks followed (an absolute target restarts at `root`), `..` stopping at `root`,
/// and components that do not exist kept as named. The result is absolute, inside `root`,
/// free of symlinks among its existing components; join it to `root` to reach it from the
/// host.
///
/// ```
/// let root = tempfile::tempdir().unwrap();
/// std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
/// std::os::unix::fs::symlink("/usr/bin", root.path().join("bin")).unwrap();
/// let inner = strata_sandbox::resolve_in_root(root.path(), "/bin/../bin/tool")?;
/// assert_eq!(inner, "/usr/bin/tool");
/// # Ok::<(), strata_sandbox::Error>(())
/// ```
pub fn resolve_in_root(root: &Path, path: &str) -> Result<String> {
    let absolute = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    Ok(resolve(root, &absolute, Create::Virtual, None)?.unwrap_or_else(|| "/".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        dir
    }

    #[test]
    fn absolute_symlinks_restart_at_the_root() {
        let dir = root();
        symlink("/etc", dir.path().join("config")).unwrap();
        symlink("/../../../../etc/passwd", dir.path().join("pw")).unwrap();
        let got = resolve(dir.path(), "/config/passwd", Create::Nothing, None).unwrap();
        assert_eq!(got.as_deref(), Some("/etc/passwd"));
        let got = resolve(dir.path(), "/pw", Create::Nothing, None).unwrap();
        assert_eq!(got.as_deref(), Some("/etc/passwd"));
    }

    #[test]
    fn dot_dot_stops_at_the_root() {
        let dir = root();
        symlink("../../../..", dir.path().join("up")).unwrap();
        let got = resolve(dir.path(), "/up/../etc/passwd", Create::Nothing, None).unwrap();
        assert_eq!(got.as_deref(), Some("/etc/passwd"));
        let got = resolve(dir.path(), "/../../tmp", Create::Nothing, None).unwrap();
        assert_eq!(got, None, "the host's /tmp must not be found");
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let dir = root();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        let err = resolve(dir.path(), "/a/x", Create::Dir, None).unwrap_err();
        assert!(err.to_string().contains("too many levels"), "{err}");
    }

    #[test]
    fn stubs_are_created_inside_and_removed_with_parent_times_restored() {
        let dir = root();
        symlink("/", dir.path().join("loop")).unwrap();
        let etc = dir.path().join("etc");
        let before = fs::metadata(&etc).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut stubs = Stubs::default();
        let got = resolve_as(
            dir.path(),
            "/loop/etc/a/b/hosts",
            Create::File,
            Some(&mut stubs),
        )
        .unwrap();
        assert_eq!(got, "/etc/a/b/hosts");
        assert!(dir.path().join("etc/a/b/hosts").is_file());
        stubs.remove();
        assert!(!dir.path().join("etc/a").exists());
        assert_eq!(fs::metadata(&etc).unwrap().modified().unwrap(), before);
    }

    #[test]
    fn a_file_in_the_middle_is_not_a_directory() {
        let dir = root();
        let err = resolve(dir.path(), "/etc/passwd/x", Create::Dir, None).unwrap_err();
        assert!(
            err.to_string().contains("/etc/passwd` is not a directory"),
            "{err}"
        );
        let err = resolve_as(dir.path(), "/etc/passwd", Create::Dir, None).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn virtual_resolution_keeps_missing_components() {
        let dir = root();
        symlink("/etc", dir.path().join("config")).unwrap();
        let got = resolve_in_root(dir.path(), "/config/new/../new2/file").unwrap();
        assert_eq!(got, "/etc/new2/file");
        assert!(!dir.path().join("etc/new2").exists());
        assert_eq!(resolve_in_root(dir.path(), "/../..").unwrap(), "/");
    }

    #[test]
    fn relative_paths_are_refused() {
        let dir = root();
        assert!(resolve(dir.path(), "etc", Create::Nothing, None).is_err());
    }
}
