//! Build contexts made on the fly.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Makes a build context in a fresh temporary directory, removed when the returned
/// [`tempfile::TempDir`] is dropped.
///
/// ```
/// let context = strata_testkit::ContextBuilder::new()
///     .file("Dockerfile", "FROM scratch\nCOPY hello.txt /\n")
///     .file("hello.txt", "hello\n")
///     .build()?;
/// assert!(context.path().join("hello.txt").is_file());
/// # Ok::<(), strata_testkit::Error>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct ContextBuilder {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
enum Entry {
    File {
        path: PathBuf,
        contents: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: PathBuf,
        mode: u32,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
    },
}

impl ContextBuilder {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// A regular file with mode 0644; parent directories are created.
    pub fn file(self, path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Self {
        self.file_with_mode(path, contents, 0o644)
    }

    /// A regular file with the given mode.
    pub fn file_with_mode(
        mut self,
        path: impl AsRef<Path>,
        contents: impl AsRef<[u8]>,
        mode: u32,
    ) -> Self {
        self.entries.push(Entry::File {
            path: path.as_ref().to_owned(),
            contents: contents.as_ref().to_owned(),
            mode,
        });
        self
    }

    /// A directory with the given mode.
    pub fn dir(mut self, path: impl AsRef<Path>, mode: u32) -> Self {
        self.entries.push(Entry::Dir {
            path: path.as_ref().to_owned(),
            mode,
        });
        self
    }

    /// A symbolic link at `path` whose target is `target`, as written (it may dangle or point
    /// outside the context: hostile contexts are a use of this builder).
    pub fn symlink(mut self, path: impl AsRef<Path>, target: impl AsRef<Path>) -> Self {
        self.entries.push(Entry::Symlink {
            path: path.as_ref().to_owned(),
            target: target.as_ref().to_owned(),
        });
        self
    }

    /// Writes the context into a new temporary directory.
    pub fn build(&self) -> Result<tempfile::TempDir> {
        let dir = tempfile::Builder::new()
            .prefix("strata-context-")
            .tempdir()
            .map_err(Error::io(std::env::temp_dir()))?;
        self.write_into(dir.path())?;
        Ok(dir)
    }

    /// Writes the context into an existing directory.
    pub fn write_into(&self, root: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for entry in &self.entries {
            match entry {
                Entry::File {
                    path,
                    contents,
                    mode,
                } => {
                    let full = root.join(path);
                    create_parent(&full)?;
                    fs::write(&full, contents).map_err(Error::io(&full))?;
                    fs::set_permissions(&full, fs::Permissions::from_mode(*mode))
                        .map_err(Error::io(&full))?;
                }
                Entry::Dir { path, mode } => {
                    let full = root.join(path);
                    fs::create_dir_all(&full).map_err(Error::io(&full))?;
                    fs::set_permissions(&full, fs::Permissions::from_mode(*mode))
                        .map_err(Error::io(&full))?;
                }
                Entry::Symlink { path, target } => {
                    let full = root.join(path);
                    create_parent(&full)?;
                    std::os::unix::fs::symlink(target, &full).map_err(Error::io(&full))?;
                }
            }
        }
        Ok(())
    }
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(Error::io(parent)),
        None => Ok(()),
    }
}
