//! Named points at which a test can have the build killed, so that crash consistency is
//! tested at the same places on every run and every machine speed.
//!
//! With `STRATA_FAILPOINT=NAME` in the environment, the process sends itself `SIGKILL` the
//! first time it reaches the point `NAME`; without it, a point costs one comparison. The
//! points are listed in [`POINTS`].

use std::io::Read;
use std::sync::OnceLock;

/// Every named point, in the order a cold build meets them.
pub const POINTS: &[&str] = &[
    // A pulled blob is complete in the staging area, not yet renamed into the layout.
    "blob-staged",
    // Half of a layer's compressed bytes have been read by the extractor.
    "mid-extraction",
    // A step's layer is in the layout and its cache entry has just been written.
    "cache-entry-written",
    // A push has sent part of a blob.
    "mid-push",
];

/// The point named by the environment, read once.
fn armed() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| std::env::var("STRATA_FAILPOINT").ok())
        .as_deref()
}

/// Whether any point is armed (the engine then watches transfers for the byte points).
pub(crate) fn any() -> bool {
    armed().is_some()
}

/// Kills the process when `name` is the armed point.
pub(crate) fn hit(name: &str) {
    if armed() == Some(name) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// A reader that hits `mid-extraction` once half of `total` bytes have been read.
pub(crate) struct Halfway<R> {
    inner: R,
    read: u64,
    half: u64,
}

impl<R: Read> Halfway<R> {
    pub(crate) fn new(inner: R, total: u64) -> Halfway<R> {
        Halfway {
            inner,
            read: 0,
            half: total / 2,
        }
    }
}

impl<R: Read> Read for Halfway<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let before = self.read;
        self.read += n as u64;
        if before < self.half && self.read >= self.half {
            hit("mid-extraction");
        }
        Ok(n)
    }
}
