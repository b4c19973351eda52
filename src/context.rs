//! The build context: a directory, or a tar archive (file or stream) unpacked safely, with
//! `.dockerignore` applied and no way out of it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use strata_dockerfile::{Dockerignore, has_wildcards, match_path};
use strata_snapshot::{
    ContextDigest, HashMemo, TreeEntry, Visit, Walk, hash_context, hash_context_with_owners,
};

use crate::error::{Error, Result};

/// Where a build's context comes from.
pub enum ContextSource {
    /// A directory.
    Dir(PathBuf),
    /// A tar file, plain or compressed (gzip, zstd).
    Tar(PathBuf),
    /// A tar stream, plain or compressed, such as standard input.
    TarStream(Box<dyn Read + Send>),
    /// A git repository: fetched shallowly and checked out without its `.git` directory.
    Git(crate::GitSource),
    /// A tar archive (plain, gzip or zstd) at an `http://` or `https://` URL, downloaded with
    /// the registry client's TLS settings and the build's download limit.
    Url(String),
    /// A tar archive in an object store: `s3://BUCKET/KEY`, `gs://BUCKET/KEY` or
    /// `https://ACCOUNT.blob.core.windows.net/CONTAINER/KEY` (a bucket alone means its
    /// `context.tar.gz`, as in Kaniko), with credentials from the environment.
    Object(String),
}

impl std::fmt::Debug for ContextSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContextSource::Dir(p) => f.debug_tuple("Dir").field(p).finish(),
            ContextSource::Tar(p) => f.debug_tuple("Tar").field(p).finish(),
            ContextSource::TarStream(_) => f.write_str("TarStream(..)"),
            ContextSource::Git(g) => f.debug_tuple("Git").field(g).finish(),
            ContextSource::Url(u) => f.debug_tuple("Url").field(&crate::git::redact(u)).finish(),
            ContextSource::Object(u) => f.debug_tuple("Object").field(u).finish(),
        }
    }
}

impl ContextSource {
    /// Whether `text` is an object-store URL strata reads as a context (`s3://`, `gs://`,
    /// `https://ACCOUNT.blob.core.windows.net/…`).
    pub fn is_object_url(text: &str) -> bool {
        crate::objects::is_object_url(text)
    }
}

impl<P: AsRef<Path>> From<P> for ContextSource {
    /// A directory, or a tar file when the path names a file.
    fn from(path: P) -> ContextSource {
        let path = path.as_ref();
        if path.is_file() {
            ContextSource::Tar(path.to_owned())
        } else {
            ContextSource::Dir(path.to_owned())
        }
    }
}

/// A context ready to copy from.
#[derive(Debug)]
pub(crate) struct Context {
    root: PathBuf,
    ignore: Dockerignore,
    /// A build context (symlinks may not lead out) rather than a stage's root filesystem
    /// (symlinks resolve inside it, as in a chroot).
    strict: bool,
    /// The unpacked archive, for tar contexts.
    _unpacked: Option<tempfile::TempDir>,
}

/// One matched `COPY` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    /// Relative to the context root (empty for the root itself), symbolic links followed.
    pub path: String,
    /// The name a file source is copied under: its own, as written or matched, even when it
    /// is a symbolic link to another name (BuildKit copies the target's content under the
    /// link's name).
    pub name: String,
    /// The path as written or matched, less what comes before a `/./` pivot in the pattern:
    /// what `COPY --parents` keeps below the destination.
    pub kept: String,
    /// Whether it is a directory (its contents are copied).
    pub is_dir: bool,
}

impl Context {
    /// Opens the context; a tar is unpacked into `scratch` (refusing entries that would land
    /// outside it). `ignore` is the `.dockerignore` text when the caller found one; otherwise
    /// the context's own `.dockerignore` applies, if it has one.
    pub(crate) fn open(
        source: ContextSource,
        scratch: &Path,
        ignore: Option<&str>,
    ) -> Result<Context> {
        let (root, unpacked) = match source {
            ContextSource::Dir(dir) => {
                let root = fs::canonicalize(&dir).map_err(Error::io(&dir))?;
                if !root.is_dir() {
                    return Err(Error::Context(format!(
                        "{} is not a directory",
                        dir.display()
                    )));
                }
                (root, None)
            }
            ContextSource::Tar(path) => {
                let file = fs::File::open(&path).map_err(Error::io(&path))?;
                let dir = unpack(
                    Box::new(std::io::BufReader::new(file)),
                    scratch,
                    &path.display().to_string(),
                )?;
                (dir.path().to_owned(), Some(dir))
            }
            ContextSource::TarStream(reader) => {
                let dir = unpack(reader, scratch, "the context stream")?;
                (dir.path().to_owned(), Some(dir))
            }
            ContextSource::Git(_) | ContextSource::Url(_) | ContextSource::Object(_) => {
                return Err(Error::Invalid(
                    "a remote context must be fetched before it is opened".to_owned(),
                ));
            }
        };
        Context::finish(root, unpacked, ignore)
    }

    /// A fresh directory under `scratch` to fetch a remote context into.
    pub(crate) fn scratch_dir(scratch: &Path) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("context-")
            .tempdir_in(scratch)
            .map_err(Error::io(scratch))
    }

    /// A context fetched into `dir` (a git checkout), read as an unpacked archive.
    pub(crate) fn open_unpacked(dir: tempfile::TempDir, ignore: Option<&str>) -> Result<Context> {
        Context::finish(dir.path().to_owned(), Some(dir), ignore)
    }

    /// A context from a tar stream, `name` naming it in errors.
    pub(crate) fn open_stream(
        reader: Box<dyn Read + Send>,
        scratch: &Path,
        name: &str,
    ) -> Result<Context> {
        let dir = unpack(reader, scratch, name)?;
        Context::finish(dir.path().to_owned(), Some(dir), None)
    }

    fn finish(
        root: PathBuf,
        unpacked: Option<tempfile::TempDir>,
        ignore: Option<&str>,
    ) -> Result<Context> {
        // The context's own `.dockerignore`: absent is fine, unreadable (not UTF-8, a
        // directory, no permission) is an error, never "no exclusions".
        let own = match ignore {
            Some(_) => None,
            None => {
                let path = root.join(".dockerignore");
                match fs::read_to_string(&path) {
                    Ok(text) => Some(text),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(Error::io(&path)(e)),
                }
            }
        };
        let ignore = match ignore.or(own.as_deref()) {
            Some(text) => Dockerignore::parse(text)
                .map_err(|e| Error::Context(format!(".dockerignore: {e}")))?,
            None => Dockerignore::default(),
        };
        Ok(Context {
            root,
            ignore,
            strict: true,
            _unpacked: unpacked,
        })
    }

    /// A stage's root filesystem as a source of `COPY --from`.
    pub(crate) fn for_rootfs(root: &Path) -> Context {
        Context {
            root: root.to_owned(),
            ignore: Dockerignore::default(),
            strict: false,
            _unpacked: None,
        }
    }

    /// Whether the context is a directory of the caller's (not an unpacked archive).
    pub(crate) fn is_dir_source(&self) -> bool {
        self._unpacked.is_none()
    }

    /// The context's directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `path` (relative) is left out by `.dockerignore`.
    pub(crate) fn excluded(&self, path: &str) -> bool {
        !path.is_empty() && self.ignore.is_excluded(path)
    }

    /// Whether `.dockerignore` leaves anything out.
    pub(crate) fn ignores_anything(&self) -> bool {
        !self.ignore.patterns().is_empty()
    }

    /// Copies `source` to the new path `dest` with only what `.dockerignore` lets through
    /// (a private view of the context for `RUN --mount=type=bind`).
    pub(crate) fn copy_out(&self, source: &Source, dest: &Path) -> Result<()> {
        let from = self.root.join(&source.path);
        let meta = fs::symlink_metadata(&from).map_err(Error::io(&from))?;
        let mut dirs = Vec::new();
        let top = TreeEntry::from_metadata(String::new(), &meta, None);
        crate::engine::run::copy_entry(&from, dest, &top, &mut dirs)?;
        if source.is_dir {
            for entry in self.walk(&source.path, &[])? {
                let (from, to) = (from.join(&entry.path), dest.join(&entry.path));
                crate::engine::run::copy_entry(&from, &to, &entry, &mut dirs)?;
            }
        }
        crate::engine::run::finish_dirs(dirs)
    }

    /// What a walk below `roots` does with each path: `.dockerignore` applies to paths of
    /// the context, `--exclude` patterns (with `.dockerignore`'s rules) to paths relative to
    /// the source being copied.
    fn visit<'a>(
        &'a self,
        exclude: &'a Option<Dockerignore>,
        roots: &'a [String],
    ) -> impl Fn(&str, bool) -> Visit + Sync + 'a {
        move |path: &str, is_dir: bool| {
            let user_excluded = exclude.as_ref().is_some_and(|patterns| {
                let relative = roots
                    .iter()
                    .filter_map(|root| match root.as_str() {
                        "" => Some(path),
                        root => path.strip_prefix(root)?.strip_prefix('/'),
                    })
                    .min_by_key(|rest| rest.len());
                relative.is_some_and(|rest| !rest.is_empty() && patterns.is_excluded(rest))
            });
            if user_excluded && is_dir {
                Visit::Prune
            } else if user_excluded {
                Visit::Exclude
            } else if self.excluded(path) {
                if is_dir && self.ignore.can_skip_dir(path) {
                    Visit::Prune
                } else {
                    Visit::Exclude
                }
            } else {
                Visit::Include
            }
        }
    }

    /// The sources a `COPY` names: each pattern cleaned (a leading `/` is the context root),
    /// refused when it leaves the context, expanded when it has wildcards, and checked to
    /// exist and not be ignored.
    pub(crate) fn sources(&self, patterns: &[String]) -> Result<Vec<Source>> {
        let mut out: Vec<Source> = Vec::new();
        for pattern in patterns {
            let clean = clean_relative(pattern).ok_or_else(|| {
                Error::Context(format!("`{pattern}` is outside the build context"))
            })?;
            // `COPY --parents a/./b/c` keeps `b/c`: the components before the pivot go.
            let pivot = pattern
                .split_once("/./")
                .and_then(|(before, _)| clean_relative(before))
                .map_or(0, |before| {
                    before.split('/').filter(|p| !p.is_empty()).count()
                });
            let kept = |matched: &str| -> String {
                matched
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .skip(pivot)
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let matched = if has_wildcards(&clean) {
                // A wildcard may match nothing (BuildKit allows it): it copies nothing.
                let mut found = self.glob(&clean)?;
                for source in &mut found {
                    source.kept = kept(&source.kept);
                }
                found
            } else {
                let path = self.follow(&clean, pattern)?;
                if self.excluded(&path) && !path.is_empty() {
                    return Err(Error::Context(format!(
                        "`{pattern}` is excluded by .dockerignore"
                    )));
                }
                let full = self.root.join(&path);
                let meta = fs::metadata(&full).map_err(|_| {
                    Error::Context(format!("`{pattern}` not found in the build context"))
                })?;
                vec![Source {
                    name: base_name(&clean),
                    kept: kept(&clean),
                    path,
                    is_dir: meta.is_dir(),
                }]
            };
            for source in matched {
                if !out.contains(&source) {
                    out.push(source);
                }
            }
        }
        Ok(out)
    }

    /// Resolves symlinks along `path` inside the context; a link that leads out is an error.
    fn follow(&self, path: &str, pattern: &str) -> Result<String> {
        let outside = || Error::Context(format!("`{pattern}` leads outside the build context"));
        let resolved = strata_sandbox::resolve_in_root(&self.root, path)?;
        if !self.strict {
            return Ok(resolved.trim_start_matches('/').to_owned());
        }
        // resolve_in_root clamps `..` and absolute links to the root, as a chroot would; the
        // context is stricter: a link that pointed out must not be read as pointing in.
        let mut here = PathBuf::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            here.push(part);
            if let Ok(target) = fs::read_link(self.root.join(&here)) {
                let mut depth = here.components().count() as i64 - 1;
                if target.is_absolute() {
                    return Err(outside());
                }
                for c in target.components() {
                    match c {
                        std::path::Component::ParentDir => depth -= 1,
                        std::path::Component::Normal(_) => depth += 1,
                        _ => {}
                    }
                    if depth < 0 {
                        return Err(outside());
                    }
                }
            }
        }
        Ok(resolved.trim_start_matches('/').to_owned())
    }

    /// Every path of the context matching `pattern` (component by component).
    fn glob(&self, pattern: &str) -> Result<Vec<Source>> {
        let parts: Vec<&str> = pattern.split('/').collect();
        let mut current = vec![String::new()];
        for (i, part) in parts.iter().enumerate() {
            let mut next = Vec::new();
            for dir in &current {
                let full = self.root.join(dir);
                if !has_wildcards(part) {
                    let path = join(dir, part);
                    if self.root.join(&path).symlink_metadata().is_ok() {
                        next.push(path);
                    }
                    continue;
                }
                // A directory that cannot be read is an error naming it, never "no matches".
                let entries = match fs::read_dir(&full) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(&full)(e)),
                };
                let mut names: Vec<String> = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(Error::io(&full))?;
                    let name = entry.file_name().into_string().map_err(|name| {
                        Error::Context(format!(
                            "{}: file names must be UTF-8 to be matched by `{pattern}`",
                            full.join(name).display()
                        ))
                    })?;
                    names.push(name);
                }
                names.sort();
                for name in names {
                    let matched = match_path(part, &name)
                        .map_err(|e| Error::Context(format!("pattern `{pattern}`: {e}")))?;
                    if matched {
                        next.push(join(dir, &name));
                    }
                }
            }
            if i + 1 < parts.len() {
                next.retain(|p| self.root.join(p).is_dir());
            }
            current = next;
        }
        let mut out = Vec::new();
        for path in current {
            if self.excluded(&path) {
                continue;
            }
            let resolved = self.follow(&path, &path)?;
            let is_dir = self.root.join(&resolved).is_dir();
            out.push(Source {
                name: base_name(&path),
                kept: path.clone(),
                path: resolved,
                is_dir,
            });
        }
        Ok(out)
    }

    /// The content digest of `sources` (what a cache key needs), honouring `.dockerignore`
    /// and `exclude` patterns.
    pub(crate) fn digest(
        &self,
        sources: &[Source],
        exclude: &[String],
        memo: &mut HashMemo,
    ) -> Result<ContextDigest> {
        let paths: Vec<String> = sources.iter().map(|s| s.path.clone()).collect();
        let exclude = exclude_patterns(exclude)?;
        let visit = self.visit(&exclude, &paths);
        if self.strict {
            Ok(hash_context(&self.root, &paths, &visit, memo)?)
        } else {
            // A stage's files are copied with their owners: an owner change is a change.
            Ok(hash_context_with_owners(&self.root, &paths, &visit, memo)?)
        }
    }

    /// The files below a directory source (their paths relative to it), for copying, in
    /// path order (a directory's contents right after it). Ignored paths are left out. The
    /// snapshot crate's walk, which hashing the context uses too: a few directories read
    /// ahead in parallel.
    pub(crate) fn walk(&self, dir: &str, exclude: &[String]) -> Result<Vec<TreeEntry>> {
        self.walk_each(dir, exclude, |walk| walk.collect())
    }

    /// [`Context::walk`], one entry at a time: `f` is given the walk (in path order, a few
    /// directories read ahead, never the whole tree held).
    pub(crate) fn walk_each<R>(
        &self,
        dir: &str,
        exclude: &[String],
        f: impl FnOnce(&mut dyn Iterator<Item = Result<TreeEntry>>) -> Result<R>,
    ) -> Result<R> {
        let exclude = exclude_patterns(exclude)?;
        let roots = [dir.to_owned()];
        let visit = self.visit(&exclude, &roots);
        let walk = Walk::new(&self.root, dir, &visit)?;
        // The directory itself is the caller's; the rest is named from inside it.
        let mut inside = walk.filter_map(|entry| match entry {
            Ok(entry) if entry.path == dir => None,
            Ok(mut entry) => {
                if !dir.is_empty() {
                    entry.path.replace_range(..=dir.len(), "");
                }
                Some(Ok(entry))
            }
            Err(e) => Some(Err(Error::from(e))),
        });
        f(&mut inside)
    }
}

/// `--exclude` patterns, matched with `.dockerignore`'s rules; `None` when there are none.
fn exclude_patterns(exclude: &[String]) -> Result<Option<Dockerignore>> {
    if exclude.is_empty() {
        return Ok(None);
    }
    Dockerignore::from_patterns(exclude)
        .map(Some)
        .map_err(|e| Error::Invalid(format!("--exclude: {e}")))
}

/// `dir/name`, either side possibly empty.
pub(crate) fn join(dir: &str, name: &str) -> String {
    match (dir.is_empty(), name.is_empty()) {
        (true, _) => name.to_owned(),
        (_, true) => dir.to_owned(),
        _ => format!("{dir}/{name}"),
    }
}

/// `path` relative to the context root, cleaned; `None` when `..` would leave the root.
pub(crate) fn clean_relative(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// Unpacks a context archive (`name` in errors) into a new directory under `scratch`.
fn unpack(reader: Box<dyn Read + Send>, scratch: &Path, name: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("context-")
        .tempdir_in(scratch)
        .map_err(Error::io(scratch))?;
    strata_layer::Extractor::new()
        .whiteouts(strata_layer::WhiteoutMode::Keep)
        .ownership(Some(false))
        .apply(reader, dir.path())
        .map_err(|e| Error::Context(format!("context archive {name}: {e}")))?;
    Ok(dir)
}

/// The last component of a relative path (`""` for the root).
fn base_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_refuses_to_leave_the_root() {
        assert_eq!(clean_relative("/a/./b/../c").as_deref(), Some("a/c"));
        assert_eq!(clean_relative(".").as_deref(), Some(""));
        assert_eq!(clean_relative("../x"), None);
        assert_eq!(clean_relative("a/../../x"), None);
    }
}
