//! `COPY` and `ADD`: the copied files are the change set (no filesystem walk), keyed on
//! their content, from the build context or from another stage's filesystem.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};
use strata_cache::KeyBuilder;
use strata_dockerfile::{Add, Copy, Instruction};
use strata_layer::{Entry, EntryKind, Metadata, Mtime};
use strata_snapshot::HashMemo;

use crate::context::{Context, Source};
use crate::engine::{Engine, Rootfs, StageImage, StepAt, canonical, clean_absolute};
use crate::error::{Error, Result};

impl Engine {
    #[allow(clippy::too_many_arguments)]
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
        if copy.parents {
            return Err(Error::Unsupported(format!("{verb} --parents")));
        }
        if let Some(add) = add {
            if add.checksum.is_some() {
                return Err(Error::Unsupported("ADD --checksum".to_owned()));
            }
            if let Some(url) = copy
                .sources
                .iter()
                .find(|s| s.contains("://") || s.starts_with("git@"))
            {
                return Err(Error::Unsupported(format!(
                    "ADD from a URL or git repository ({url})"
                )));
            }
        }
        let chmod = match &copy.chmod {
            None => None,
            Some(text) => Some(u32::from_str_radix(text, 8).map_err(|_| {
                Error::Unsupported(format!(
                    "--chmod={text}: only octal modes are supported yet"
                ))
            })?),
        };
        // Where the files come from, and their content digests for the key.
        let mut key = KeyBuilder::new(&image.key).instruction(&canonical(instruction));
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
        let from_stage = match &copy.from {
            None => None,
            Some(from) => Some(self.source_stage(from, at)?),
        };
        let sources: Vec<Source>;
        match &from_stage {
            None => {
                sources = self.context.sources(&copy.sources)?;
                let digest = {
                    let mut memo = self
                        .memo
                        .lock()
                        .map_err(|_| Error::Task("context memo poisoned".to_owned()))?;
                    self.context.digest(&sources, &copy.exclude, &mut memo)?
                };
                for (path, file_digest) in &digest.files {
                    key = key.file(path, file_digest);
                }
            }
            Some(stage) => {
                // Keyed on the content of what is copied: a source stage rebuilt with the
                // same files still hits, and changed files always miss.
                let name = {
                    let mut h = Sha256::new();
                    for layer in &stage.image.layers {
                        h.update(layer.diff_id.as_bytes());
                        h.update(b"\n");
                    }
                    h.update(format!("{:?}\n{:?}", copy.sources, copy.exclude).as_bytes());
                    hex::encode(h.finalize())
                };
                let digest = match self.state.recall_digest(&name) {
                    Some(digest) => {
                        sources = Vec::new();
                        digest
                    }
                    None => {
                        let root = self.stage_rootfs(stage)?;
                        let source_ctx = Context::for_rootfs(&root);
                        sources = source_ctx.sources(&copy.sources)?;
                        let digest = source_ctx
                            .digest(&sources, &copy.exclude, &mut HashMemo::new())?
                            .digest;
                        self.state.remember_digest(&name, &digest)?;
                        digest
                    }
                };
                key = key.file(
                    &format!("--from={}", copy.from.as_deref().unwrap_or("")),
                    &digest,
                );
            }
        }
        for file in &copy.files {
            key = key.file(
                &format!("<<{}", file.name),
                &hex::encode(Sha256::digest(file.data.as_bytes())),
            );
        }
        let key = key.build();
        if self.cache_hit(image, &key, at)? {
            return Ok(true);
        }

        let root = self.materialize(rootfs, &image.layers)?;
        let (source_ctx, sources) = match &from_stage {
            None => (None, sources),
            Some(stage) => {
                let dir = self.stage_rootfs(stage)?;
                let ctx = Context::for_rootfs(&dir);
                let sources = ctx.sources(&copy.sources)?;
                (Some(ctx), sources)
            }
        };
        let source_ctx = source_ctx.as_ref().unwrap_or(&self.context);
        if let Some(add) = add
            && add.unpack != Some(false)
        {
            for source in sources.iter().filter(|s| !s.is_dir) {
                if is_archive(&source_ctx.root().join(&source.path)) {
                    return Err(Error::Unsupported(format!(
                        "ADD of a local archive ({}): extraction is not written yet",
                        source.path
                    )));
                }
            }
        }
        let owner = match &copy.chown {
            Some(spec) => strata_sandbox::chown_ids(&root, spec)?,
            None => (0, 0),
        };
        let workdir = image
            .config
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".to_owned());
        let dest_text = if copy.dest.starts_with('/') {
            copy.dest.clone()
        } else {
            format!("{workdir}/{}", copy.dest)
        };
        let dest_resolved = strata_sandbox::resolve_in_root(&root, &clean_absolute(&dest_text))?;
        let dest_exists_dir = root.join(dest_resolved.trim_start_matches('/')).is_dir();
        let trailing = copy.dest.ends_with('/') || copy.dest.ends_with("/.") || copy.dest == ".";
        let count = sources.len() + copy.files.len();
        let dest_is_dir = trailing || dest_exists_dir;
        if count > 1 && !dest_is_dir {
            return Err(Error::Invalid(format!(
                "when using {verb} with more than one source file, the destination must be a \
                 directory and end with a / ({})",
                copy.dest
            )));
        }
        let dest_rel = dest_resolved.trim_start_matches('/').to_owned();
        let mtime_now = self.mtime_now();
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        let all_dirs = sources.iter().all(|s| s.is_dir) && copy.files.is_empty();
        // Parents of the destination that do not exist yet.
        let parent_of_files = if dest_is_dir || all_dirs {
            dest_rel.clone()
        } else {
            dest_rel
                .rsplit_once('/')
                .map_or(String::new(), |(p, _)| p.to_owned())
        };
        for entry in self.missing_dirs(&root, &format!("/{parent_of_files}"), owner)? {
            entries.insert(entry.path.clone(), entry);
        }
        let meta_of = |meta: &fs::Metadata| Metadata {
            mode: match chmod {
                Some(mode) => mode,
                None => meta.mode() & 0o7777,
            },
            uid: owner.0,
            gid: owner.1,
            mtime: Mtime {
                secs: meta.mtime(),
                nanos: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
            },
            ..Metadata::default()
        };
        let join = |a: &str, b: &str| match (a.is_empty(), b.is_empty()) {
            (true, _) => b.to_owned(),
            (_, true) => a.to_owned(),
            _ => format!("{a}/{b}"),
        };
        for source in &sources {
            let host = source_ctx.root().join(&source.path);
            if source.is_dir {
                // The directory's contents go into the destination.
                if !dest_rel.is_empty() && !root.join(&dest_rel).is_dir() {
                    let meta = fs::metadata(&host).map_err(Error::io(&host))?;
                    entries.insert(
                        dest_rel.clone(),
                        Entry {
                            path: dest_rel.clone(),
                            kind: EntryKind::Dir,
                            metadata: meta_of(&meta),
                        },
                    );
                }
                let exclude = &copy.exclude;
                let walked = if from_stage.is_some() {
                    source_ctx.walk(&source.path, exclude)?
                } else {
                    self.context.walk(&source.path, exclude)?
                };
                for (rel, meta) in walked {
                    let path = join(&dest_rel, &rel);
                    let full = host.join(&rel);
                    if let Some(entry) = file_entry(&path, &full, &meta, meta_of(&meta))? {
                        entries.insert(path, entry);
                    }
                }
            } else {
                let name = Path::new(&source.path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let path = if dest_is_dir {
                    join(&dest_rel, &name)
                } else {
                    dest_rel.clone()
                };
                let meta = fs::metadata(&host).map_err(Error::io(&host))?;
                if let Some(entry) = file_entry(&path, &host, &meta, meta_of(&meta))? {
                    entries.insert(path, entry);
                }
            }
        }
        for file in &copy.files {
            let path = if dest_is_dir || count > 1 {
                join(&dest_rel, &file.name)
            } else {
                dest_rel.clone()
            };
            entries.insert(
                path.clone(),
                Entry {
                    path,
                    kind: EntryKind::Bytes(file.data.clone().into_bytes()),
                    metadata: Metadata {
                        mode: chmod.unwrap_or(0o644),
                        uid: owner.0,
                        gid: owner.1,
                        mtime: mtime_now,
                        ..Metadata::default()
                    },
                },
            );
        }
        if entries.is_empty() && sources.is_empty() && copy.files.is_empty() {
            return Err(Error::Context(format!(
                "{verb}: no source files were specified"
            )));
        }
        let layer = self.write_layer(entries.into_values().collect())?;
        self.finish_miss(image, key, at, layer)?;
        self.materialize(rootfs, &image.layers)?;
        Ok(false)
    }
}

/// The layer entry for one copied path; `None` for sockets and devices, which a build
/// context does not carry.
fn file_entry(
    path: &str,
    full: &Path,
    meta: &fs::Metadata,
    metadata: Metadata,
) -> Result<Option<Entry>> {
    let kind = if meta.is_dir() {
        EntryKind::Dir
    } else if meta.file_type().is_symlink() {
        let target = fs::read_link(full).map_err(Error::io(full))?;
        EntryKind::Symlink {
            target: target.to_string_lossy().into_owned(),
        }
    } else if meta.is_file() {
        EntryKind::File {
            source: full.to_owned(),
            size: meta.len(),
        }
    } else {
        return Ok(None);
    };
    Ok(Some(Entry {
        path: path.to_owned(),
        kind,
        metadata,
    }))
}

/// Whether a file starts like a tar archive or a compressed stream.
fn is_archive(path: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    let n = std::io::Read::read(&mut file, &mut head).unwrap_or(0);
    let head = &head[..n];
    head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(b"BZh")
        || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (n >= 262 && &head[257..262] == b"ustar")
}
