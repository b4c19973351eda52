//! Root filesystems: the layer store's directories of a stage's layers, stacked as a
//! read-only overlay, or a private directory (walk mode: a copy of the store's view; else the
//! layers extracted into it); `/` itself in the in-container mode; and the layers steps write.

use super::*;

impl Engine {
    /// Makes `/` hold exactly `layers` for an in-container RUN: the layers missing on top
    /// of what it holds are applied; when it holds another stage's (or the container's own)
    /// files, everything not ignored is removed first.
    pub(crate) fn materialize_slash(&self, mode: &InContainer, layers: &[LayerRef]) -> Result<()> {
        let mut slash = mode
            .slash
            .lock()
            .map_err(|_| Error::Task("root filesystem state poisoned".to_owned()))?;
        let digests: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
        let reuse = slash.as_ref().is_some_and(|held| digests.starts_with(held));
        if !reuse {
            // Forget what `/` held before touching it: a failure half-way leaves it unknown.
            *slash = None;
            Extractor::new()
                .protect(&mode.ignore)
                .clear(Path::new("/"))?;
            *slash = Some(Vec::new());
        }
        let held = slash.as_ref().map_or(0, Vec::len);
        for layer in &layers[held..] {
            self.ensure_blob(layer)?;
            let file = self.state.layout.open_blob(&layer.digest)?;
            let report = Extractor::new()
                .allow_devices(true)
                .protect(&mode.ignore)
                .expect_diff_id(Some(layer.diff_id.to_string()))
                .media_type(Some(layer.media_type.clone()))
                .apply(BufReader::with_capacity(1 << 20, file), Path::new("/"))?;
            if !report.skipped.is_empty() {
                tracing::debug!(
                    layer = %layer.digest,
                    skipped = report.skipped.len(),
                    "entries on ignored paths left out"
                );
            }
            if let Some(held) = slash.as_mut() {
                held.push(layer.digest.to_string());
            }
        }
        Ok(())
    }

    /// Records that `/` now also holds `layer` (the RUN that made it ran there).
    pub(crate) fn slash_made(&self, mode: &InContainer, layer: Option<&LayerRef>) -> Result<()> {
        let mut slash = mode
            .slash
            .lock()
            .map_err(|_| Error::Task("root filesystem state poisoned".to_owned()))?;
        if let (Some(held), Some(layer)) = (slash.as_mut(), layer) {
            held.push(layer.digest.to_string());
        }
        Ok(())
    }

    /// Makes `rootfs` show every layer of `layers`, creating it when needed: a read-only
    /// overlay of the layer store where overlays are usable, else a private directory the
    /// layers not yet applied are extracted into.
    pub(crate) fn materialize(
        &self,
        rootfs: &mut Option<Rootfs>,
        layers: &[LayerRef],
    ) -> Result<PathBuf> {
        if self.use_store() && !matches!(rootfs, Some(Rootfs::Private { .. })) {
            match self.store_view(rootfs, layers) {
                Ok(merged) => return Ok(merged),
                // A stack this kernel cannot mount: one private directory instead.
                Err(Error::Snapshot(strata_snapshot::Error::OverlayUnavailable { reason })) => {
                    tracing::info!(%reason, layers = layers.len(), "layer stack not mountable; extracting into one directory");
                }
                Err(e) => return Err(e),
            }
        }
        self.private_rootfs(rootfs, layers)
    }

    /// A read-only overlay of the layer store's directories of `layers` in `rootfs` (kept
    /// while the layers are the same).
    fn store_view(&self, rootfs: &mut Option<Rootfs>, layers: &[LayerRef]) -> Result<PathBuf> {
        let wanted: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
        if let Some(Rootfs::View { merged, layers, .. }) = rootfs.as_ref()
            && *layers == wanted
        {
            return Ok(merged.clone());
        }
        // The old view (fewer layers) goes before the new one is made.
        *rootfs = None;
        let mut lowers = self.layer_dirs(layers)?;
        let (merged, mount) = if lowers.is_empty() {
            (self.empty_dir()?, None)
        } else {
            // An empty directory at the bottom: a read-only overlay needs two lowers.
            lowers.push(self.empty_dir()?);
            let (merged, mount) = self.mount_view(&lowers)?;
            (merged, Some(mount))
        };
        *rootfs = Some(Rootfs::View {
            merged: merged.clone(),
            layers: wanted,
            _mount: mount,
        });
        Ok(merged)
    }

    /// A read-only overlay of `lowers` (the top-most first, at least two) at a fresh
    /// `view-N/merged` of this build (where a killed build's sweep detaches it).
    fn mount_view(
        &self,
        lowers: &[PathBuf],
    ) -> Result<(PathBuf, strata_snapshot::overlay::OverlayMount)> {
        let n = self.rootfs_count.fetch_add(1, Ordering::Relaxed);
        let merged = self.work.join(format!("view-{n}")).join("merged");
        fs::create_dir_all(&merged).map_err(Error::io(&merged))?;
        let mount = strata_snapshot::overlay::OverlayMount::mount_readonly(lowers, &merged)?;
        Ok((merged, mount))
    }

    /// `rootfs` as a private directory holding `layers` (extracted into it, the ones not yet
    /// applied), made when it is not one yet.
    pub(crate) fn private_rootfs(
        &self,
        rootfs: &mut Option<Rootfs>,
        layers: &[LayerRef],
    ) -> Result<PathBuf> {
        if !matches!(rootfs, Some(Rootfs::Private { .. })) {
            let n = self.rootfs_count.fetch_add(1, Ordering::Relaxed);
            let dir = self.work.join(format!("rootfs-{n}"));
            fs::create_dir(&dir).map_err(Error::io(&dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .map_err(Error::io(&dir))?;
            let applied = self.clone_from_store(&dir, layers)?;
            *rootfs = Some(Rootfs::Private { dir, applied });
        }
        let Some(Rootfs::Private { dir, applied }) = rootfs.as_mut() else {
            return Err(Error::Invalid("no root filesystem".to_owned()));
        };
        while let Some(layer) = layers.get(*applied) {
            self.apply_layer(layer, dir)?;
            *applied += 1;
        }
        Ok(dir.clone())
    }

    /// Walk mode (`--snapshot-mode walk`) where the layer store is usable and the state
    /// directory's filesystem makes reflinks (XFS, btrfs): fills the new private directory
    /// `dir` with a copy-on-write clone of the store's view of `layers`, each file's data
    /// cloned from the store directory the view shows it from (a reflink cannot cross the
    /// overlay; never a hard link into the store), so that the layers are extracted once per
    /// state directory, not once per build. Without reflinks (ext4) the layers are extracted into `dir` from their
    /// blobs, as before: a real copy of the store writes as much as an extraction, and on
    /// a cold build writes everything twice (measured on the big-base benchmark: slower
    /// cold, no faster warm). Returns how many of `layers` `dir` now holds: none when the
    /// store is not used, or when this kernel cannot stack them.
    fn clone_from_store(&self, dir: &Path, layers: &[LayerRef]) -> Result<usize> {
        if layers.is_empty()
            || self.opts.snapshot_mode != SnapshotMode::Walk
            || !self.store_usable()
            || !self.reflinks()
        {
            return Ok(0);
        }
        let mut lowers = self.layer_dirs(layers)?;
        // An empty directory at the bottom: a read-only overlay needs two lowers, and even
        // one layer is read through an overlay, which hides the whiteouts it keeps.
        lowers.push(self.empty_dir()?);
        let started = Instant::now();
        let (view, mount) = match self.mount_view(&lowers) {
            Ok(mounted) => mounted,
            Err(Error::Snapshot(strata_snapshot::Error::OverlayUnavailable { reason })) => {
                tracing::info!(%reason, layers = lowers.len(), "layer stack not mountable; extracting into one directory");
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let report = strata_snapshot::clone_tree_from_layers(&view, dir, &lowers)?;
        mount.unmount()?;
        tracing::debug!(
            entries = report.entries,
            reflinked = report.reflinked,
            copied = report.copied,
            bytes = report.bytes_copied,
            seconds = started.elapsed().as_secs_f64(),
            "private root filesystem copied from the layer store"
        );
        Ok(layers.len())
    }

    /// Whether files in the state directory can be cloned by reference (FICLONE), tried once
    /// on two scratch files.
    fn reflinks(&self) -> bool {
        *self.reflinks.get_or_init(|| {
            let probe = || -> std::io::Result<bool> {
                let dir = tempfile::Builder::new()
                    .prefix("reflink-probe-")
                    .tempdir_in(&self.work)?;
                let source = dir.path().join("source");
                fs::write(&source, [0u8; 4096])?;
                let from = fs::File::open(&source)?;
                let to = fs::File::create(dir.path().join("clone"))?;
                Ok(rustix::fs::ioctl_ficlone(&to, &from).is_ok())
            };
            probe().unwrap_or(false)
        })
    }

    /// An empty directory of this build, made on first use: the root filesystem of a stage
    /// with no layers, and the bottom of read-only overlays.
    pub(crate) fn empty_dir(&self) -> Result<PathBuf> {
        let dir = self.work.join("empty");
        match fs::create_dir(&dir) {
            Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .map_err(Error::io(&dir))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&dir)(e)),
        }
        Ok(dir)
    }

    /// Whether stages' filesystems are overlays of the layer store: namespaces isolation
    /// (not the in-container mode), overlay snapshots not turned off, and this process able
    /// to mount overlays with their whiteouts: `trusted.*` as root, `user.*` (`userxattr`)
    /// as root of a user namespace (a rootless build).
    pub(crate) fn use_store(&self) -> bool {
        self.opts.snapshot_mode != SnapshotMode::Walk && self.store_usable()
    }

    /// Whether the layer store can be filled and stacked here: namespaces isolation, and
    /// overlays with their whiteouts (see [`Engine::use_store`]), decided once.
    fn store_usable(&self) -> bool {
        *self.store_mode.get_or_init(|| {
            self.in_container.is_none()
                && rustix::process::geteuid().is_root()
                && self.opaque_xattrs_settable()
                && strata_snapshot::overlay::probe().usable
        })
    }

    /// Whether this process can mark directories opaque the way its overlays read them:
    /// `trusted.overlay.opaque` as root of the first user namespace, `user.overlay.opaque`
    /// in another (where overlays are mounted with `userxattr`).
    fn opaque_xattrs_settable(&self) -> bool {
        let Ok(dir) = tempfile::Builder::new()
            .prefix("xattr-probe-")
            .tempdir_in(&self.work)
        else {
            return false;
        };
        rustix::fs::lsetxattr(
            dir.path(),
            self.opaque_xattr(),
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .is_ok()
    }

    fn opaque_xattr(&self) -> &'static str {
        if strata_snapshot::overlay::in_user_namespace() {
            "user.overlay.opaque"
        } else {
            "trusted.overlay.opaque"
        }
    }

    /// How extracted layers keep whiteouts for this process's overlays.
    pub(crate) fn overlay_whiteouts(&self) -> strata_layer::WhiteoutMode {
        if strata_snapshot::overlay::in_user_namespace() {
            strata_layer::WhiteoutMode::OverlayUser
        } else {
            strata_layer::WhiteoutMode::Overlay
        }
    }

    /// The layer store's directory of each of `layers`, the top-most first; the layers the
    /// store lacks are extracted, lowest first. Entries are keyed by chain id (the layer and
    /// everything below it, as containerd keys its snapshots): a directory a layer holds
    /// entries in without listing it is made with the metadata the layers below give it, as
    /// an overlay's copy-up would, so the same layer on another base is another entry.
    pub(crate) fn layer_dirs(&self, layers: &[LayerRef]) -> Result<Vec<PathBuf>> {
        let chains = crate::layers::chain_ids(layers.iter().map(|l| l.diff_id.as_ref()));
        let mut dirs: Vec<PathBuf> = Vec::with_capacity(layers.len());
        for (layer, chain) in layers.iter().zip(&chains) {
            // Each entry is looked up (and its use recorded) once per build: every RUN and
            // view of a stage asks again for the same layers, and an entry this build has
            // seen stays (pruning waits for builds).
            let seen = self.resolved()?.get(chain).cloned();
            let dir = match seen {
                Some(dir) => dir,
                None => {
                    let dir = match self.layers.get(chain)? {
                        Some(dir) => dir,
                        None => self.store_layer(layer, chain, &dirs)?,
                    };
                    self.resolved()?.insert(chain.clone(), dir.clone());
                    dir
                }
            };
            dirs.push(dir);
        }
        dirs.reverse();
        Ok(dirs)
    }

    fn resolved(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, PathBuf>>> {
        self.resolved
            .lock()
            .map_err(|_| Error::Task("layer store lookups poisoned".to_owned()))
    }

    /// Extracts `layer` into the store as `chain` over `below` (its lower layers' directories,
    /// lowest first), once: a build that finds another filling it waits for it.
    fn store_layer(&self, layer: &LayerRef, chain: &str, below: &[PathBuf]) -> Result<PathBuf> {
        let started = Instant::now();
        let (tree, extracted) = self.layers.ensure(chain, &self.work, |tree| {
            // The merged view of the layers below, for the directories this layer leaves out.
            let mut view = None;
            let lower = match below {
                [] => None,
                [one] => Some(one.clone()),
                many => {
                    let lowers: Vec<PathBuf> = many.iter().rev().cloned().collect();
                    let (merged, mount) = self.mount_view(&lowers)?;
                    view = Some(mount);
                    Some(merged)
                }
            };
            self.ensure_blob(layer)?;
            let file = self.state.layout.open_blob(&layer.digest)?;
            let mut extractor = Extractor::new()
                .whiteouts(self.overlay_whiteouts())
                .allow_devices(true)
                .expect_diff_id(Some(layer.diff_id.to_string()))
                .media_type(Some(layer.media_type.clone()));
            if let Some(lower) = lower {
                extractor = extractor.parents_like(lower);
            }
            extractor.apply(
                crate::failpoint::Halfway::new(BufReader::with_capacity(1 << 20, file), layer.size),
                tree,
            )?;
            if let Some(view) = view {
                view.unmount()?;
            }
            Ok(())
        })?;
        if extracted {
            self.emit(Event::LayerExtracted {
                diff_id: layer.diff_id.to_string(),
                duration: started.elapsed(),
            });
        }
        Ok(tree)
    }

    /// Makes sure the state directory holds `layer`'s blob, downloading it from a repository
    /// known to hold it (a lazily pulled base, a cache hit) when it does not.
    pub(crate) fn ensure_blob(&self, layer: &LayerRef) -> Result<()> {
        if self.state.layout.has_blob(&layer.digest) {
            return Ok(());
        }
        let sources: Vec<Reference> = self
            .sources
            .lock()
            .map_err(|_| Error::Task("blob sources poisoned".to_owned()))?
            .get(layer.digest.as_ref() as &str)
            .into_iter()
            .flatten()
            .map(|r| Reference::parse(r))
            .collect::<std::result::Result<_, _>>()?;
        let sources: Vec<&Reference> = sources.iter().collect();
        self.runtime.block_on(crate::image::fetch_layer(
            &self.registry,
            &self.state.layout,
            &sources,
            layer,
        ))
    }

    pub(crate) fn apply_layer(&self, layer: &LayerRef, dir: &Path) -> Result<()> {
        self.ensure_blob(layer)?;
        let file = self.state.layout.open_blob(&layer.digest)?;
        let report = Extractor::new()
            .allow_devices(true)
            .expect_diff_id(Some(layer.diff_id.to_string()))
            .media_type(Some(layer.media_type.clone()))
            .apply(
                crate::failpoint::Halfway::new(BufReader::with_capacity(1 << 20, file), layer.size),
                dir,
            )?;
        for warning in report.warnings {
            self.emit(Event::Warning {
                stage: None,
                line: None,
                message: format!("layer {}: {warning}", layer.digest),
            });
        }
        Ok(())
    }

    /// The root filesystem of a finished stage, materialized on first use.
    pub(crate) fn stage_rootfs(&self, stage: &StageResult) -> Result<PathBuf> {
        let mut rootfs = stage
            .rootfs
            .lock()
            .map_err(|_| Error::Task("stage root filesystem lock poisoned".to_owned()))?;
        self.materialize(&mut rootfs, &stage.image.layers)
    }

    /// Gives a rootless step's entries the ids its processes saw: host ids of files written
    /// inside the user namespace are mapped back through its map; an id with no mapping is an
    /// error naming the path, never written as a host id.
    pub(crate) fn ids_inside(&self, entries: &mut [Entry]) -> Result<()> {
        let Some(map) = &self.id_map else {
            return Ok(());
        };
        for entry in entries {
            if matches!(entry.kind, EntryKind::Whiteout | EntryKind::OpaqueDir) {
                continue;
            }
            let meta = &mut entry.metadata;
            match (map.uid_inside(meta.uid), map.gid_inside(meta.gid)) {
                (Some(uid), Some(gid)) => (meta.uid, meta.gid) = (uid, gid),
                _ => {
                    return Err(Error::Invalid(format!(
                        "/{}: owner {}:{} on the host has no id inside the build's user \
                         namespace (rootless build)",
                        entry.path.display(),
                        meta.uid,
                        meta.gid
                    )));
                }
            }
        }
        Ok(())
    }

    /// Writes `entries` as a layer into the state's blobs (no entries: the empty layer).
    pub(crate) fn write_layer(&self, entries: Vec<Entry>) -> Result<LayerRef> {
        self.write_layer_by(|writer, out| Ok(Some(writer.write(entries, out)?)))?
            .ok_or_else(|| Error::Task("the layer writer wrote nothing".to_owned()))
    }

    /// [`Engine::write_layer`], by `write`, which may fail on its own account or give up
    /// (`None`): the layer is then never committed.
    pub(crate) fn write_layer_by(
        &self,
        write: impl FnOnce(
            &LayerWriter,
            std::io::BufWriter<&fs::File>,
        ) -> Result<Option<strata_layer::LayerInfo>>,
    ) -> Result<Option<LayerRef>> {
        let staged = self.state.layout.staging_file()?;
        let writer = LayerWriter::new()
            .compression(self.opts.compression)
            .clamp_mtime(self.opts.reproducible);
        let info = write(
            &writer,
            std::io::BufWriter::with_capacity(1 << 20, staged.as_file()),
        )
        .map_err(|e| match e {
            // The layer crate names its output stream; the file it was going to is what
            // the user can look at (a full disk, a quota).
            Error::Layer(strata_layer::Error::Io {
                path,
                error: source,
            }) if path.as_os_str() == "<output>" => Error::Io {
                path: staged.path().to_owned(),
                error: source,
            },
            other => other,
        })?;
        let Some(info) = info else {
            return Ok(None);
        };
        let digest = info.descriptor.digest().clone();
        self.state
            .layout
            .commit_staged(staged, digest.as_ref(), digest.as_ref())?;
        Ok(Some(LayerRef {
            digest,
            diff_id: info.diff_id,
            size: info.descriptor.size(),
            media_type: info.descriptor.media_type().to_string(),
        }))
    }
}
