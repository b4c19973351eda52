//! Finding the external programs the tests use.

use std::path::PathBuf;

use crate::{Error, Result};

/// Finds `program` on `PATH`, or returns [`Error::MissingProgram`] naming the Debian `package`
/// that provides it.
///
/// ```
/// let err = strata_testkit::find_program("no-such-program-here", "no-such-package").unwrap_err();
/// assert!(err.to_string().contains("apt-get install -y no-such-package"));
/// ```
pub fn find_program(program: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(Error::MissingProgram {
        program: program.to_owned(),
        package: package.to_owned(),
    })
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
