//! `COPY` and `ADD`: the copied files are the change set (no filesystem walk), keyed on
//! their content, from the build context or from another stage's filesystem.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use strata_cache::{CacheKey, KeyBuilder};
use strata_dockerfile::{Add, Copy, Instruction};
use strata_layer::{Entry, EntryKind, Metadata, Mtime};
use strata_snapshot::{HashMemo, Kind, TreeEntry};

use crate::config::LayerRef;
use crate::context::{Context, join};
use crate::engine::{Engine, Rootfs, StageImage, StepAt, canonical, key_text};
use crate::error::{Error, Result};

impl Engine {
    /// The cache key of a COPY or ADD on the chain head `parent`: the instruction and its
    /// flags, the content digests of its `local` sources (context files, or what it copies
    /// from a stage or image), then of what it `fetched` (name and content digest of each
    /// download and checkout) and of its heredocs. It never depends on the stage's
    /// filesystem, so it is known before the step runs.
    pub(crate) fn copy_key(
        &self,
        parent: &str,
        copy: &Copy,
        local: &[String],
        fetched: &[(String, String)],
        instruction: &Instruction,
        at: &StepAt<'_>,
    ) -> Result<CacheKey> {
        let mut key = KeyBuilder::new(parent).instruction(&canonical(instruction)?);
        for (name, value) in [
            ("chown", copy.chown.clone()),
            ("chmod", copy.chmod.clone()),
            ("from", copy.from.clone()),
        ] {
            if let Some(value) = value {
                key = key.flag(name, &value);
            }
        }
        if copy.link {
            key = key.flag("link", "true");
        }
        if !copy.exclude.is_empty() {
            key = key.flag("exclude", &copy.exclude.join("\n"));
        }
        match &copy.from {
            None => {
                let sources = if local.is_empty() {
                    Vec::new()
                } else {
                    self.context.sources(local)?
                };
                let digest = {
                    let mut memo = self
                        .memo
                        .lock()
                        .map_err(|_| Error::Task("context memo poisoned".to_owned()))?;
                    self.context.digest(&sources, &copy.exclude, &mut memo)?
                };
                key = key.files(digest.files);
            }
            Some(from) => {
                let stage = self.source_stage(from, at)?;
                // Keyed on the content of what is copied: a source stage rebuilt with the
                // same files still hits, and changed files always miss.
                let name = {
                    let mut h = Sha256::new();
                    for layer in &stage.image.layers {
                        h.update(AsRef::<str>::as_ref(&layer.diff_id).as_bytes());
                        h.update(b"\n");
                    }
                    h.update(key_text(&(&copy.sources, &copy.exclude))?.as_bytes());
                    hex::encode(h.finalize())
                };
                // Remembered here, else in the cache repository (a fresh pod), else
                // worked out from the stage's files (which then must be on disk).
                let digest = match self.state.recall_digest(&name) {
                    Some(digest) => digest,
                    None => match self.shared_content_digest(&name) {
                        Some(digest) => {
                            self.state.remember_digest(&name, &digest)?;
                            digest
                        }
                        None => {
                            let root = self.stage_rootfs(&stage)?;
                            let source_ctx = Context::for_rootfs(&root);
                            let sources = source_ctx.sources(&copy.sources)?;
                            let digest = source_ctx
                                .digest(&sources, &copy.exclude, &mut HashMemo::new())?
                                .digest;
                            self.state.remember_digest(&name, &digest)?;
                            self.share_content_digest(&name, &digest, at);
                            digest
                        }
                    },
                };
                key = key.file(&format!("--from={from}"), &digest);
            }
        }
        for (name, digest) in fetched {
            key = key.file(name, digest);
        }
        for file in &copy.files {
            key = key.file(
                &format!("<<{}", file.name),
                &hex::encode(Sha256::digest(file.data.as_bytes())),
            );
        }
        Ok(key.build())
    }

    /// The key of a COPY or ADD worked out before its step runs ([`Engine::look_ahead`]):
    /// `None` for an ADD of a URL or a repository, fetched only when its step runs.
    pub(super) fn copy_key_ahead(
        &self,
        parent: &str,
        copy: &Copy,
        add: Option<&Add>,
        instruction: &Instruction,
        at: &StepAt<'_>,
    ) -> Option<Result<CacheKey>> {
        let kinds = match SourceKinds::of(copy, add) {
            Ok(kinds) => kinds,
            Err(e) => return Some(Err(e)),
        };
        if !kinds.repos.is_empty() || !kinds.urls.is_empty() {
            return None;
        }
        Some(self.copy_key(parent, copy, &kinds.local, &[], instruction, at))
    }

    pub(crate) fn copy(
        &self,
        image: &mut StageImage,
        rootfs: &mut Option<Rootfs>,
        copy: &Copy,
        add: Option<&Add>,
        instruction: &Instruction,
        at: &StepAt<'_>,
    ) -> Result<bool> {
        let verb = if add.is_some() { "ADD" } else { "COPY" };
        let kinds = SourceKinds::of(copy, add)?;
        let fetched = self.fetch(&kinds, add)?;
        let chmod = copy.chmod.as_deref().map(Chmod::parse).transpose()?;
        let key = match self.take_planned(at, &image.key) {
            Some(key) => key,
            None => {
                let inputs = fetched.key_inputs();
                self.copy_key(&image.key, copy, &kinds.local, &inputs, instruction, at)?
            }
        };
        let from_stage = match &copy.from {
            None => None,
            Some(from) => Some(self.source_stage(from, at)?),
        };
        let created_by = crate::history::copy(copy, add.is_some());
        if self.cache_hit(image, &key, at, &created_by)? {
            return Ok(true);
        }

        let root = self.materialize(rootfs, &image.layers)?;
        let (source_ctx, sources) = self.copy_sources(from_stage.as_ref(), &kinds, copy)?;
        let source_ctx = source_ctx.as_ref().unwrap_or(&self.context);
        let archives = self.unpack_archives(add, &sources, source_ctx)?;
        let owner = match &copy.chown {
            Some(spec) => strata_sandbox::chown_ids(&root, spec)?,
            None => (0, 0),
        };
        let count =
            sources.len() + copy.files.len() + fetched.downloads.len() + fetched.checkouts.len();
        if count == 0 {
            // Only wildcards that matched nothing: nothing to copy (BuildKit allows it, and
            // records an empty layer).
            let layer = self.write_layer(Vec::new())?;
            self.finish_miss(image, key, at, Some(layer), created_by)?;
            return Ok(false);
        }
        let dest = Destination::resolve(&root, image, copy, verb, count)?;
        let mut out = CopyEntries {
            engine: self,
            root: &root,
            entries: BTreeMap::new(),
            inodes: Inodes::new(),
            chmod: chmod.as_ref(),
            owner,
            // From another stage without --chown, files keep their owners (BuildKit's
            // rule); from the context they belong to root.
            keep_owners: from_stage.is_some() && copy.chown.is_none(),
        };
        let all_dirs = sources
            .iter()
            .all(|s| s.is_dir || archives.contains_key(&s.path))
            && copy.files.is_empty()
            && fetched.downloads.is_empty();
        // Parents of the destination that do not exist yet: the destination itself when
        // it is a directory (or only directories go there), else its parent.
        let parent_of_files = match dest.rel.rsplit_once('/') {
            _ if dest.is_dir || all_dirs => dest.rel.clone(),
            Some((parent, _)) => parent.to_owned(),
            None => String::new(),
        };
        out.parents(&parent_of_files)?;
        // One directory, nothing else: written as it is walked.
        let one_directory = archives.is_empty()
            && !copy.parents
            && copy.files.is_empty()
            && fetched.downloads.is_empty()
            && fetched.checkouts.is_empty();
        if one_directory
            && let [source] = sources.as_slice()
            && let Some(layer) = out.stream(source, source_ctx, &copy.exclude, &dest.rel)?
        {
            self.finish_miss(image, key, at, Some(layer), created_by)?;
            return Ok(false);
        }
        let gathered = Gathered {
            sources: &sources,
            archives: &archives,
            source_ctx,
            fetched: &fetched,
        };
        let entries = out.gather(&gathered, copy, &dest)?;
        let layer = self.write_layer(entries)?;
        self.finish_miss(image, key, at, Some(layer), created_by)?;
        Ok(false)
    }

    /// The sources a COPY names, and the context they are in when it is not the build's:
    /// a stage's root filesystem (`--from`).
    fn copy_sources(
        &self,
        from_stage: Option<&std::sync::Arc<crate::engine::StageResult>>,
        kinds: &SourceKinds,
        copy: &Copy,
    ) -> Result<(Option<Context>, Vec<crate::context::Source>)> {
        Ok(match from_stage {
            None if kinds.local.is_empty() => (None, Vec::new()),
            None => (None, self.context.sources(&kinds.local)?),
            Some(stage) => {
                let ctx = Context::for_rootfs(&self.stage_rootfs(stage)?);
                let sources = ctx.sources(&copy.sources)?;
                (Some(ctx), sources)
            }
        })
    }

    /// Downloads ADD's URLs and checks out its repositories into the build's scratch
    /// directory (every build: the content or the commit decides the key). Credentials for
    /// a repository: GIT_TOKEN, or GIT_USERNAME and GIT_PASSWORD, as for a git context.
    fn fetch(&self, kinds: &SourceKinds, add: Option<&Add>) -> Result<Fetched> {
        let keep_git_dir = add.is_some_and(|a| a.keep_git_dir);
        let checksum = add.and_then(|a| a.checksum.as_deref());
        let mut downloads = Vec::new();
        for url in &kinds.urls {
            downloads.push((url.clone(), crate::download::download(self, url, checksum)?));
        }
        let mut checkouts = Vec::new();
        for text in &kinds.repos {
            let source = crate::GitSource::parse(text)?
                .credentials_from_env()
                .with_tls_of(&self.registry);
            let dir = tempfile::Builder::new()
                .prefix("git-add-")
                .tempdir_in(&self.work)
                .map_err(Error::io(&self.work))?;
            let checkout = crate::git::checkout(
                &source,
                &self.work,
                dir.path(),
                self.opts.max_download,
                keep_git_dir,
            )?;
            checkouts.push((crate::git::redact(text), checkout.commit, dir));
        }
        Ok(Fetched {
            downloads,
            checkouts,
            keep_git_dir,
        })
    }

    /// ADD's local tar archives (unless `--unpack=false`), each unpacked into a scratch
    /// directory: source path → directory. Their contents go into the destination.
    fn unpack_archives(
        &self,
        add: Option<&Add>,
        sources: &[crate::context::Source],
        source_ctx: &Context,
    ) -> Result<BTreeMap<String, tempfile::TempDir>> {
        let mut archives = BTreeMap::new();
        if add.is_none_or(|add| add.unpack == Some(false)) {
            return Ok(archives);
        }
        for source in sources.iter().filter(|s| !s.is_dir) {
            let host = source_ctx.root().join(&source.path);
            if let Some(codec) = crate::archive::detect(&host)? {
                let dir = tempfile::Builder::new()
                    .prefix("archive-")
                    .tempdir_in(&self.work)
                    .map_err(Error::io(&self.work))?;
                crate::archive::unpack(&host, codec, dir.path())?;
                archives.insert(source.path.clone(), dir);
            }
        }
        Ok(archives)
    }
}

/// A COPY or ADD's sources by where they come from.
struct SourceKinds {
    /// ADD's git repositories.
    repos: Vec<String>,
    /// ADD's http(s) URLs.
    urls: Vec<String>,
    /// The rest: from the context, or from the `--from` stage or image.
    local: Vec<String>,
}

impl SourceKinds {
    /// Sorts the sources, and refuses what COPY or ADD cannot take (a URL in COPY,
    /// `--keep-git-dir` without a repository, `--checksum` beside anything but URLs).
    fn of(copy: &Copy, add: Option<&Add>) -> Result<SourceKinds> {
        let verb = if add.is_some() { "ADD" } else { "COPY" };
        let (repos, others): (Vec<String>, Vec<String>) = copy
            .sources
            .iter()
            .cloned()
            .partition(|s| add.is_some() && crate::git::is_git_url(s));
        let (urls, local): (Vec<String>, Vec<String>) = others
            .into_iter()
            .partition(|s| add.is_some() && crate::download::is_url(s));
        if let Some(source) = local
            .iter()
            .find(|s| s.contains("://") || s.starts_with("git@"))
        {
            return Err(Error::Unsupported(format!(
                "{verb} from a git repository or a non-http URL ({source})"
            )));
        }
        if add.is_some_and(|a| a.keep_git_dir) && repos.is_empty() {
            return Err(Error::Invalid(
                "ADD --keep-git-dir needs a git repository source".to_owned(),
            ));
        }
        if add.and_then(|a| a.checksum.as_deref()).is_some()
            && (urls.is_empty() || !local.is_empty() || !repos.is_empty())
        {
            return Err(Error::Invalid(
                "ADD --checksum needs http(s) sources only".to_owned(),
            ));
        }
        Ok(SourceKinds { repos, urls, local })
    }
}

/// What a COPY or ADD fetched from outside the context.
struct Fetched {
    /// (URL, the downloaded file).
    downloads: Vec<(String, crate::download::Download)>,
    /// (repository without credentials, commit, checkout).
    checkouts: Vec<(String, String, tempfile::TempDir)>,
    keep_git_dir: bool,
}

impl Fetched {
    /// What came from outside the context is in the key by its content: a download's
    /// digest, a checkout's commit.
    fn key_inputs(&self) -> Vec<(String, String)> {
        let mut inputs = Vec::new();
        for (url, download) in &self.downloads {
            inputs.push((url.clone(), download.digest.clone()));
        }
        for (url, commit, _) in &self.checkouts {
            inputs.push((
                url.clone(),
                format!("git:{commit}:keep-git-dir={}", self.keep_git_dir),
            ));
        }
        inputs
    }
}

/// Where a COPY or ADD puts its files, inside the stage's root.
struct Destination {
    /// Relative to the root, symbolic links in the image followed.
    rel: String,
    /// Whether sources go into it (rather than it being the one file's name).
    is_dir: bool,
}

impl Destination {
    /// The destination as written (relative to WORKDIR), followed through the root's links,
    /// and whether it is a directory: written with a trailing `/`, already one in the image,
    /// or several sources. BuildKit's rule counts the sources as written: one wildcard that
    /// matching several files copies them into the destination as a directory, and URLs are
    /// among the sources as written. Heredocs alone go to a file destination one after
    /// another, the last one staying (`COPY <<A <<B /out`, as BuildKit does).
    fn resolve(
        root: &Path,
        image: &StageImage,
        copy: &Copy,
        verb: &str,
        count: usize,
    ) -> Result<Destination> {
        let resolved =
            strata_sandbox::resolve_in_root(root, &super::config::workdir_of(image, &copy.dest))?;
        let exists_dir = root.join(resolved.trim_start_matches('/')).is_dir();
        let trailing = copy.dest.ends_with('/') || copy.dest.ends_with("/.") || copy.dest == ".";
        let written = copy.sources.len() + copy.files.len();
        let only_heredocs = copy.sources.is_empty();
        if written > 1 && !(trailing || exists_dir || only_heredocs) {
            return Err(Error::Invalid(format!(
                "when using {verb} with more than one source file, the destination must be a \
                 directory and end with a / ({})",
                copy.dest
            )));
        }
        Ok(Destination {
            rel: resolved.trim_start_matches('/').to_owned(),
            is_dir: trailing || exists_dir || (count > 1 && !only_heredocs),
        })
    }

    /// Where a file called `name` goes.
    fn file_path(&self, name: &str) -> String {
        if self.is_dir {
            join(&self.rel, name)
        } else {
            self.rel.clone()
        }
    }
}

/// The layer entries of one COPY or ADD, as they are gathered.
struct CopyEntries<'a> {
    engine: &'a Engine,
    /// The stage's root filesystem (for the directories that exist already).
    root: &'a Path,
    entries: BTreeMap<PathBuf, Entry>,
    inodes: Inodes,
    chmod: Option<&'a Chmod>,
    /// `--chown`'s ids, or root's.
    owner: (u32, u32),
    /// Whether copied files keep their source's owners.
    keep_owners: bool,
}

/// What a gathered COPY copies besides the instruction itself.
struct Gathered<'a> {
    sources: &'a [crate::context::Source],
    archives: &'a BTreeMap<String, tempfile::TempDir>,
    source_ctx: &'a Context,
    fetched: &'a Fetched,
}

impl CopyEntries<'_> {
    /// Every entry of a COPY that is not one streamed directory: the sources (archives
    /// unpacked), ADD's repositories and downloads, and heredoc files, in layer order.
    fn gather(
        mut self,
        gathered: &Gathered<'_>,
        copy: &Copy,
        dest: &Destination,
    ) -> Result<Vec<Entry>> {
        for source in gathered.sources {
            match gathered.archives.get(&source.path) {
                Some(dir) => self.archive(dir.path(), &dest.rel, copy.chown.is_none())?,
                None => self.source(source, gathered.source_ctx, copy, dest)?,
            }
        }
        // A repository's files go into the destination, as a directory's do.
        for (_, _, dir) in &gathered.fetched.checkouts {
            self.tree(&Context::for_rootfs(dir.path()), "", &dest.rel, true, &[])?;
        }
        let mtime_now = self.engine.mtime_now();
        for (_, download) in &gathered.fetched.downloads {
            let path = dest.file_path(&download.name);
            // Docker gives downloaded files 0600.
            let metadata = self.new_file(0o600, download.mtime.map_or(mtime_now, Mtime::from_secs));
            self.insert(Entry {
                path: path.into(),
                kind: EntryKind::File {
                    source: download.file.path().to_owned(),
                    size: download.size,
                },
                metadata,
            });
        }
        for file in &copy.files {
            let path = dest.file_path(&file.name);
            let metadata = self.new_file(0o644, mtime_now);
            self.insert(Entry {
                path: path.into(),
                kind: EntryKind::Bytes(file.data.clone().into_bytes()),
                metadata,
            });
        }
        Ok(self.finish()?.into_values().collect())
    }

    fn insert(&mut self, entry: Entry) {
        self.entries.insert(entry.path.clone(), entry);
    }

    /// The metadata of a copied entry found as `found`.
    fn meta_of(&self, found: &TreeEntry) -> Metadata {
        Metadata {
            mode: match self.chmod {
                Some(chmod) => chmod.apply(found.mode, found.kind == Kind::Dir),
                None => found.mode,
            },
            uid: if self.keep_owners {
                found.uid
            } else {
                self.owner.0
            },
            gid: if self.keep_owners {
                found.gid
            } else {
                self.owner.1
            },
            mtime: Mtime {
                secs: found.mtime.0,
                nanos: found.mtime.1,
            },
            ..Metadata::default()
        }
    }

    /// The metadata of a file the step makes (a download, a heredoc) with `mode`.
    fn new_file(&self, mode: u32, mtime: Mtime) -> Metadata {
        Metadata {
            mode: self.chmod.map_or(mode, |c| c.apply(mode, false)),
            uid: self.owner.0,
            gid: self.owner.1,
            mtime,
            ..Metadata::default()
        }
    }

    /// The directories leading to `dir` that the root lacks, with --chown's owner and
    /// --chmod's mode (BuildKit's rule); ones already gathered stay as they are.
    fn parents(&mut self, dir: &str) -> Result<()> {
        for mut entry in self
            .engine
            .missing_dirs(self.root, &format!("/{dir}"), self.owner)?
        {
            if let Some(chmod) = self.chmod {
                entry.metadata.mode = chmod.apply(entry.metadata.mode, true);
            }
            self.entries.entry(entry.path.clone()).or_insert(entry);
        }
        Ok(())
    }

    /// A file found as `found` at `full`, copied to `path`.
    fn file(
        &mut self,
        path: String,
        full: &Path,
        found: &TreeEntry,
        metadata: Metadata,
    ) -> Result<()> {
        if let Some(entry) = file_entry(&path, full, found, metadata)? {
            note_link(&mut self.inodes, &entry, found);
            self.entries.insert(path.into(), entry);
        }
        Ok(())
    }

    /// The contents of `rel` in `ctx` into `dest_rel`, which is made first (with the
    /// directory's metadata) when `make_dest` and it does not exist.
    fn tree(
        &mut self,
        ctx: &Context,
        rel: &str,
        dest_rel: &str,
        make_dest: bool,
        exclude: &[String],
    ) -> Result<()> {
        self.tree_head(ctx, rel, dest_rel, make_dest)?;
        let host = ctx.root().join(rel);
        for found in ctx.walk(rel, exclude)? {
            let metadata = self.meta_of(&found);
            self.file(
                join(dest_rel, &found.path),
                &host.join(&found.path),
                &found,
                metadata,
            )?;
        }
        Ok(())
    }

    /// The destination of a directory's contents, made with the directory's metadata when
    /// `make_dest` and the image lacks it.
    fn tree_head(
        &mut self,
        ctx: &Context,
        rel: &str,
        dest_rel: &str,
        make_dest: bool,
    ) -> Result<()> {
        let host = ctx.root().join(rel);
        if make_dest && !dest_rel.is_empty() && !self.root.join(dest_rel).is_dir() {
            let meta = fs::metadata(&host).map_err(Error::io(&host))?;
            let meta = TreeEntry::from_metadata(String::new(), &meta, None);
            // The destination COPY makes belongs to --chown's owner, or root: only what is
            // inside it keeps the source's owners (BuildKit's rule).
            let metadata = Metadata {
                uid: self.owner.0,
                gid: self.owner.1,
                ..self.meta_of(&meta)
            };
            self.insert(Entry {
                path: dest_rel.into(),
                kind: EntryKind::Dir,
                metadata,
            });
        }
        Ok(())
    }

    /// The layer of a COPY of one directory `source` into `dest_rel`, written as the walk
    /// finds its files, an entry at a time: a context of a million files is never held in
    /// memory. Files that are one file (hard links) are linked to the first of them met, as
    /// [`link_hardlinks`] does. `None`, with no layer committed, where the whole set is
    /// needed first: a file source, or a copied directory that lands on a symbolic link in
    /// the image ([`follow_links_in_root`] moves what goes below it; the walk stops where it
    /// meets one, and the staged layer is dropped). The entries gathered so far (the
    /// destination's parents) come first.
    fn stream(
        &mut self,
        source: &crate::context::Source,
        ctx: &Context,
        exclude: &[String],
        dest_rel: &str,
    ) -> Result<Option<LayerRef>> {
        if !source.is_dir || dest_on_link(self.root, dest_rel) {
            return Ok(None);
        }
        self.tree_head(ctx, &source.path, dest_rel, true)?;
        let this = &*self;
        let head: Vec<Entry> = this.entries.values().cloned().collect();
        let host = ctx.root().join(&source.path);
        let dest_exists = this.root.join(dest_rel).is_dir();
        // Copied directories the image lacks: nothing below them exists there either. Any
        // other (one the image has, or one the walk did not give, such as a directory
        // `.dockerignore` excludes but looks inside) is looked at: a link may wait there.
        let mut missing: std::collections::HashSet<String> = std::collections::HashSet::new();
        // The first copied path of each file with several links: its later names link to it.
        let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
        // Why the walk stopped early: files to gather first, or an error.
        let gather = std::cell::Cell::new(false);
        let failed = std::cell::Cell::new(None);
        let mut entry_of = |found: Result<TreeEntry>| -> Option<Option<Entry>> {
            let found = match found {
                Ok(found) => found,
                Err(e) => {
                    failed.set(Some(e));
                    return None;
                }
            };
            if found.kind == Kind::Dir && dest_exists {
                let parent_missing = found
                    .path
                    .rsplit_once('/')
                    .is_some_and(|(parent, _)| missing.contains(parent));
                let exists = !parent_missing
                    && match fs::symlink_metadata(this.root.join(join(dest_rel, &found.path))) {
                        Ok(meta) if meta.file_type().is_symlink() => {
                            gather.set(true);
                            return None;
                        }
                        Ok(meta) => meta.is_dir(),
                        Err(_) => false,
                    };
                if !exists {
                    missing.insert(found.path.clone());
                }
            }
            let metadata = this.meta_of(&found);
            let path = join(dest_rel, &found.path);
            match file_entry(&path, &host.join(&found.path), &found, metadata) {
                Ok(Some(mut entry)) => {
                    if found.kind == Kind::File && found.nlink > 1 {
                        match linked.get(&(found.dev, found.ino)) {
                            Some(first) => {
                                entry.kind = EntryKind::Hardlink {
                                    target: first.clone(),
                                }
                            }
                            None => {
                                linked.insert((found.dev, found.ino), entry.path.clone());
                            }
                        }
                    }
                    Some(Some(entry))
                }
                Ok(None) => Some(None),
                Err(e) => {
                    failed.set(Some(e));
                    None
                }
            }
        };
        let layer = this.engine.write_layer_by(|writer, out| {
            ctx.walk_each(&source.path, exclude, |walk| {
                let entries = head
                    .into_iter()
                    .chain(walk.map_while(&mut entry_of).flatten());
                let info = writer.write_ordered(entries, out)?;
                if let Some(e) = failed.take() {
                    return Err(e);
                }
                // Given up: the layer is never committed.
                Ok((!gather.get()).then_some(info))
            })
        })?;
        Ok(layer)
    }

    /// An unpacked archive's entries into `dest_rel`; they keep their owners unless
    /// --chown says otherwise (`keep_owners`).
    fn archive(&mut self, dir: &Path, dest_rel: &str, keep_owners: bool) -> Result<()> {
        for found in Context::for_rootfs(dir).walk("", &[])? {
            let mut metadata = self.meta_of(&found);
            if keep_owners {
                (metadata.uid, metadata.gid) = (found.uid, found.gid);
            }
            self.file(
                join(dest_rel, &found.path),
                &dir.join(&found.path),
                &found,
                metadata,
            )?;
        }
        Ok(())
    }

    /// One source (a file, or a directory's contents) from `source_ctx`.
    fn source(
        &mut self,
        source: &crate::context::Source,
        source_ctx: &Context,
        copy: &Copy,
        dest: &Destination,
    ) -> Result<()> {
        // With --parents, a source keeps its path below the destination: the path as
        // written (less a `/./` pivot's prefix), not where links lead.
        let (dest_rel, dest_is_dir) = if copy.parents {
            let parent = match source.kept.rsplit_once('/') {
                _ if source.is_dir => source.kept.as_str(),
                Some((parent, _)) => parent,
                None => "",
            };
            let base = join(&dest.rel, parent);
            self.parents(&base)?;
            (base, true)
        } else {
            (dest.rel.clone(), dest.is_dir)
        };
        if source.is_dir {
            // The directory's contents go into the destination.
            return self.tree(
                source_ctx,
                &source.path,
                &dest_rel,
                !copy.parents,
                &copy.exclude,
            );
        }
        let path = if dest_is_dir {
            join(&dest_rel, &source.name)
        } else {
            dest_rel
        };
        let host = source_ctx.root().join(&source.path);
        let meta = fs::metadata(&host).map_err(Error::io(&host))?;
        let found = TreeEntry::from_metadata(String::new(), &meta, None);
        let metadata = self.meta_of(&found);
        self.file(path, &host, &found, metadata)
    }

    /// The entries, hard links between copied files kept, and paths through symbolic links
    /// of the image followed (a directory copied onto `/var/run` lands in `/run`).
    fn finish(mut self) -> Result<BTreeMap<PathBuf, Entry>> {
        link_hardlinks(&mut self.entries, &self.inodes);
        follow_links_in_root(self.root, self.entries)
    }
}

type Inodes = HashMap<PathBuf, ((u64, u64), PathBuf)>;

fn note_link(inodes: &mut Inodes, entry: &Entry, found: &TreeEntry) {
    if let EntryKind::File { source, .. } = &entry.kind
        && found.nlink > 1
    {
        inodes.insert(entry.path.clone(), ((found.dev, found.ino), source.clone()));
    } else if !inodes.is_empty() {
        inodes.remove(&entry.path);
    }
}

/// Makes the copied files that were one file (hard links of each other) one file in the
/// layer again: the first in path order keeps the contents, the others link to it.
fn link_hardlinks(entries: &mut BTreeMap<PathBuf, Entry>, inodes: &Inodes) {
    let mut groups: HashMap<(u64, u64), Vec<&PathBuf>> = HashMap::new();
    for (path, (inode, source)) in inodes {
        // Only what is still that file (a later source may have replaced the path).
        if let Some(Entry {
            kind: EntryKind::File { source: now, .. },
            ..
        }) = entries.get(path)
            && now == source
        {
            groups.entry(*inode).or_default().push(path);
        }
    }
    for mut group in groups.into_values().filter(|g| g.len() > 1) {
        group.sort();
        let first = group[0].clone();
        for path in &group[1..] {
            if let Some(entry) = entries.get_mut(*path) {
                entry.kind = EntryKind::Hardlink {
                    target: first.clone(),
                };
            }
        }
    }
}

/// Where copied directories meet symbolic links to directories in the image (`/var/run` →
/// `/run`), the links stay and what is copied goes where they lead, as BuildKit and Docker
/// do; without this, the layer's directory would replace the link. One `lstat` per copied
/// directory that may exist in the image; nothing rebuilt when no link is met.
fn follow_links_in_root(
    root: &Path,
    entries: BTreeMap<PathBuf, Entry>,
) -> Result<BTreeMap<PathBuf, Entry>> {
    // Each copied directory: where it lands, and whether that exists in the image (below a
    // directory the layer makes, nothing does).
    let mut dirs: HashMap<PathBuf, (PathBuf, bool)> = HashMap::new();
    // The copied directories a link in the image stands for: the link stays.
    let mut through: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    let landing = |dirs: &HashMap<PathBuf, (PathBuf, bool)>, path: &Path| {
        let parent = path.parent().unwrap_or(Path::new(""));
        let name = path.file_name().unwrap_or_default();
        match dirs.get(parent) {
            Some((at, exists)) => (at.join(name), *exists),
            None => (path.to_owned(), true),
        }
    };
    for (path, entry) in &entries {
        if !matches!(entry.kind, EntryKind::Dir) {
            continue;
        }
        let (at, parent_exists) = landing(&dirs, path);
        let mut exists = false;
        if parent_exists {
            match fs::symlink_metadata(root.join(&at)) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    if let Some(text) = at.to_str() {
                        let resolved = strata_sandbox::resolve_in_root(root, &format!("/{text}"))?;
                        let resolved = PathBuf::from(resolved.trim_start_matches('/'));
                        if root.join(&resolved).is_dir() {
                            through.insert(path.clone());
                            dirs.insert(path.clone(), (resolved, true));
                            continue;
                        }
                    }
                }
                Ok(meta) => exists = meta.is_dir(),
                Err(_) => {}
            }
        }
        dirs.insert(path.clone(), (at, exists));
    }
    if through.is_empty() {
        return Ok(entries);
    }
    let mut moved: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut out = BTreeMap::new();
    for (path, mut entry) in entries {
        if through.contains(&path) {
            continue;
        }
        let at = match dirs.get(&path) {
            Some((at, _)) => at.clone(),
            None => landing(&dirs, &path).0,
        };
        if at != path {
            moved.insert(path, at.clone());
        }
        entry.path = at.clone();
        out.insert(at, entry);
    }
    for entry in out.values_mut() {
        if let EntryKind::Hardlink { target } = &mut entry.kind
            && let Some(now) = moved.get(target)
        {
            *target = now.clone();
        }
    }
    Ok(out)
}

/// Whether `dest_rel` meets a symbolic link in the image (or something that is not a
/// directory) on its way: one `lstat` per component, up to the first the image lacks.
fn dest_on_link(root: &Path, dest_rel: &str) -> bool {
    let mut at = String::new();
    for component in dest_rel.split('/').filter(|c| !c.is_empty()) {
        at = join(&at, component);
        match fs::symlink_metadata(root.join(&at)) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
    false
}

/// The layer entry for one copied path (a socket becomes an empty file); `None` for devices
/// and pipes, which a build context does not carry.
fn file_entry(
    path: &str,
    full: &Path,
    found: &TreeEntry,
    metadata: Metadata,
) -> Result<Option<Entry>> {
    let kind = match found.kind {
        Kind::Dir => EntryKind::Dir,
        // The target's exact bytes (they need not be UTF-8), as the walk read them.
        Kind::Symlink => EntryKind::Symlink {
            target: match &found.link {
                Some(target) => PathBuf::from(std::ffi::OsStr::from_bytes(target)),
                None => fs::read_link(full).map_err(Error::io(full))?,
            },
        },
        Kind::File => EntryKind::File {
            source: full.to_owned(),
            size: found.size,
        },
        // BuildKit copies a socket as an empty regular file.
        Kind::Socket => EntryKind::Bytes(Vec::new()),
        _ => return Ok(None),
    };
    Ok(Some(Entry {
        path: path.into(),
        kind,
        metadata,
    }))
}

/// A `--chmod` value: octal (`755`), or symbolic as chmod(1) writes it (`u=rwx,go=rx`,
/// `a+x`, `g-w,o=`), applied to each copied file's own mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Chmod {
    Octal(u32),
    /// Clauses of (who mask, operator, permission bits, `X`, the class whose current bits
    /// are copied: `u`, `g` or `o` as in `go=u`, as its shift).
    Symbolic(Vec<(u32, char, u32, bool, Option<u32>)>),
}

impl Chmod {
    pub(crate) fn parse(text: &str) -> Result<Chmod> {
        if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
            return u32::from_str_radix(text, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .map(Chmod::Octal)
                .ok_or_else(|| Error::Invalid(format!("--chmod={text}: not an octal mode")));
        }
        let bad = || {
            Error::Invalid(format!(
                "--chmod={text}: not a mode (octal, or like u=rwx,go=rx)"
            ))
        };
        let mut clauses = Vec::new();
        for clause in text.split(',') {
            let mut chars = clause.chars().peekable();
            let mut who = 0u32;
            while let Some(c) = chars.peek().copied() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    'a' => 0o7777,
                    _ => break,
                };
                chars.next();
            }
            if who == 0 {
                who = 0o7777;
            }
            let mut any = false;
            while let Some(op) = chars.next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(bad());
                }
                let (mut bits, mut big_x, mut copy) = (0u32, false, None);
                while let Some(c) = chars.peek().copied() {
                    let class = match c {
                        'u' => Some(6),
                        'g' => Some(3),
                        'o' => Some(0),
                        _ => None,
                    };
                    if let Some(shift) = class {
                        // `go=u`: the permissions another class has now.
                        if copy.is_some() || bits != 0 || big_x {
                            return Err(bad());
                        }
                        copy = Some(shift);
                        chars.next();
                        continue;
                    }
                    if copy.is_some() {
                        return Err(bad());
                    }
                    bits |= match c {
                        'r' => 0o444,
                        'w' => 0o222,
                        'x' => 0o111,
                        's' => 0o6000,
                        't' => 0o1000,
                        'X' => {
                            big_x = true;
                            0
                        }
                        _ => break,
                    };
                    chars.next();
                }
                clauses.push((who, op, bits, big_x, copy));
                any = true;
            }
            if !any {
                return Err(bad());
            }
        }
        Ok(Chmod::Symbolic(clauses))
    }

    pub(crate) fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(mode) => *mode,
            Chmod::Symbolic(clauses) => {
                let mut mode = mode & 0o7777;
                for (who, op, bits, big_x, copy) in clauses {
                    let mut bits = *bits;
                    if let Some(shift) = copy {
                        bits |= ((mode >> shift) & 0o7) * 0o111;
                    }
                    if *big_x && (is_dir || mode & 0o111 != 0) {
                        bits |= 0o111;
                    }
                    let bits = bits & who;
                    mode = match op {
                        '+' => mode | bits,
                        '-' => mode & !bits,
                        _ => (mode & !who) | bits,
                    };
                }
                mode
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chmod_octal_and_symbolic() {
        assert_eq!(Chmod::parse("755").unwrap().apply(0o600, false), 0o755);
        assert_eq!(
            Chmod::parse("u=rwx,go=rx").unwrap().apply(0o600, false),
            0o755
        );
        assert_eq!(Chmod::parse("a+x").unwrap().apply(0o644, false), 0o755);
        assert_eq!(Chmod::parse("g-w,o=").unwrap().apply(0o775, false), 0o750);
        assert_eq!(Chmod::parse("a+X").unwrap().apply(0o644, false), 0o644);
        assert_eq!(Chmod::parse("a+X").unwrap().apply(0o644, true), 0o755);
        assert_eq!(Chmod::parse("+x").unwrap().apply(0o600, false), 0o711);
        // Copying another class's permissions, as chmod(1) does (Kaniko's integration tests
        // use it).
        assert_eq!(Chmod::parse("go=u").unwrap().apply(0o740, false), 0o777);
        assert_eq!(Chmod::parse("o=g").unwrap().apply(0o750, false), 0o755);
        assert_eq!(Chmod::parse("g+u,o-o").unwrap().apply(0o604, false), 0o660);
        assert!(Chmod::parse("g=ur").is_err());
        assert!(Chmod::parse("u*x").is_err());
        assert!(Chmod::parse("99999").is_err());
        assert!(Chmod::parse("").is_err());
    }
}
