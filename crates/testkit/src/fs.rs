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
        source: e.into(),
    })
}
