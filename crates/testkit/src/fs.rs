//! Small filesystem helpers for fixtures.

use std::path::Path;

use crate::{Error, Result};

/// Sets the access and modification times of `path` to `secs` (whole seconds since the
/// epoch) without following a symlink, so that fixtures have fixed, comparable times.
pub fn set_mtime(path: &Path, secs: i64) -> Result<()> {
    let time = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| Error::Io {
        path: path.to_owned(),
        error: e.into(),
    })
}

/// Every file below `dir` (recursively, on `dir`'s own filesystem: not into the overlays a
/// running step has mounted) whose bytes contain `needle`: where a secret must never be.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let device = std::fs::metadata(dir).map(|m| m.dev()).unwrap_or(0);
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() && entry.metadata().is_ok_and(|m| m.dev() == device) => {
                    stack.push(path)
                }
                Ok(t)
                    if t.is_file()
                        && std::fs::read(&path)
                            .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) =>
                {
                    found.push(path.display().to_string());
                }
                _ => {}
            }
        }
    }
    found
}
