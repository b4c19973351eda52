//! A stage's lifecycle: its base (an image pulled or imported, another stage, scratch), the
//! base's ONBUILD triggers, its steps in order, and the single snapshot of `--single-snapshot`;
//! images named by `--from`, pulled once per build.

use super::*;
use crate::options::ImageSource;

impl Engine {
    /// Builds stage `index`, whose dependencies are in `done`.
    pub(crate) fn build_stage(
        &self,
        index: usize,
        done: &HashMap<usize, Arc<StageResult>>,
    ) -> Result<StageResult> {
        let stage = self
            .plan
            .stages
            .get(index)
            .ok_or_else(|| Error::Invalid(format!("no stage {index}")))?;
        let name = self.stage_name(index);
        let stage_started = Instant::now();
        let at_from = |e: Error| Error::Step {
            position: Position {
                file: self.file_name.clone(),
                line: stage.line,
                stage: name.clone(),
            },
            error: Box::new(e),
        };
        let (mut image, mut rootfs) = self.base(stage, done).map_err(at_from)?;
        let base_layers = image.layers.len();
        let base_history = image.config.history.len();
        self.emit(Event::StageStarted {
            stage: name.clone(),
            base: match &stage.base {
                Base::Scratch => "scratch".to_owned(),
                Base::Image(reference) => reference.clone(),
                Base::Stage(i) => format!("stage {}", self.stage_name(*i)),
            },
        });
        let mut cmd_set = false;
        // The base image's ONBUILD triggers run first, as if written after FROM; the image
        // made here does not pass them on.
        if let Some(triggers) = image
            .config
            .config
            .on_build
            .take()
            .filter(|t| !t.is_empty())
        {
            self.run_triggers(
                &mut image,
                &mut rootfs,
                &triggers,
                stage,
                &name,
                done,
                &mut cmd_set,
            )
            .map_err(at_from)?;
        }
        let base_env = image.config.config.env_pairs();
        let steps = self
            .plan
            .steps(index, &base_env)
            .map_err(|source| Error::Dockerfile {
                file: self.file_name.clone(),
                error: source,
            })?;
        if self.remote.is_some() {
            self.look_ahead(&image, &steps, &name, done);
        }
        for step in &steps {
            let located = &step.instruction;
            if self.cancel.is_cancelled() {
                // Another stage failed: this one stops before its next step.
                return Err(Error::Cancelled);
            }
            let at = self.step_at(&name, step, done);
            self.run_step(&mut image, &mut rootfs, step, &at, &mut cmd_set)
                .map_err(|e| Error::Step {
                    position: Position {
                        file: self.file_name.clone(),
                        line: located.start_line,
                        stage: name.clone(),
                    },
                    error: Box::new(e),
                })?;
        }
        if self.opts.single_snapshot && index == self.plan.target {
            self.squash(&mut image, base_layers, base_history)
                .map_err(at_from)?;
            rootfs = None;
        }
        self.emit(Event::StageFinished {
            stage: name,
            duration: stage_started.elapsed(),
        });
        Ok(StageResult {
            image,
            rootfs: Mutex::new(rootfs),
        })
    }

    /// Replaces the layers a stage added to its base by one layer with the same result.
    ///
    /// The added layers are extracted in order into an empty directory with overlay-style
    /// whiteouts, which is then an overlay upper directory over the base's filesystem: its
    /// change set is the squashed layer.
    fn squash(
        &self,
        image: &mut StageImage,
        base_layers: usize,
        base_history: usize,
    ) -> Result<()> {
        if image.layers.len() <= base_layers + 1 {
            return Ok(());
        }
        let mut lower = None;
        let lower_dir = self.materialize(&mut lower, &image.layers[..base_layers])?;
        let upper = tempfile::Builder::new()
            .prefix("squash-")
            .tempdir_in(&self.work)
            .map_err(Error::io(&self.work))?;
        for layer in &image.layers[base_layers..] {
            self.ensure_blob(layer)?;
            let file = self.state.layout.open_blob(&layer.digest)?;
            Extractor::new()
                .whiteouts(self.overlay_whiteouts())
                .allow_devices(true)
                .parents_like(&lower_dir)
                .media_type(Some(layer.media_type.clone()))
                .apply(BufReader::with_capacity(1 << 20, file), upper.path())?;
        }
        let changes = strata_snapshot::overlay::upper_changes(upper.path(), &[lower_dir])?;
        let entries = crate::changes::entries(&changes)?;
        // Steps that changed nothing together make no layer at all.
        let layer = if entries.is_empty() {
            None
        } else {
            Some(self.write_layer(entries)?)
        };
        image.layers.truncate(base_layers);
        image.layers.extend(layer);
        // The squashed layer was made by no one step.
        image.layer_keys.retain(|at, _| *at < base_layers);
        let added = &mut image.config.history[base_history..];
        for entry in added.iter_mut() {
            entry.empty_layer = true;
        }
        if image.layers.len() > base_layers
            && let Some(last) = added.last_mut()
        {
            last.empty_layer = false;
        }
        Ok(())
    }

    /// Runs a base image's ONBUILD triggers at the start of `stage`.
    #[allow(clippy::too_many_arguments)]
    fn run_triggers(
        &self,
        image: &mut StageImage,
        rootfs: &mut Option<Rootfs>,
        triggers: &[String],
        stage: &Stage,
        name: &str,
        done: &HashMap<usize, Arc<StageResult>>,
        cmd_set: &mut bool,
    ) -> Result<()> {
        let steps = self
            .plan
            .triggers(stage.index, triggers, &image.config.config.env_pairs())
            .map_err(|e| Error::Invalid(format!("the base image's ONBUILD triggers: {e}")))?;
        for step in &steps {
            let at = self.step_at(name, step, done);
            self.run_step(image, rootfs, step, &at, cmd_set)?;
        }
        Ok(())
    }

    /// Runs one step (of the Dockerfile, or a base image's ONBUILD trigger) between its
    /// started and finished events.
    fn run_step(
        &self,
        image: &mut StageImage,
        rootfs: &mut Option<Rootfs>,
        step: &PlannedStep,
        at: &StepAt<'_>,
        cmd_set: &mut bool,
    ) -> Result<()> {
        self.emit(Event::StepStarted {
            stage: at.stage.to_owned(),
            line: at.line,
            index: at.index,
            onbuild: at.onbuild,
            text: if at.onbuild {
                format!("ONBUILD {}", at.original)
            } else {
                at.original.to_owned()
            },
        });
        let started = Instant::now();
        let cached = self.step(image, rootfs, &step.instruction, at, cmd_set)?;
        self.emit(Event::StepFinished {
            stage: at.stage.to_owned(),
            line: at.line,
            index: at.index,
            onbuild: at.onbuild,
            duration: started.elapsed(),
            cached,
        });
        Ok(())
    }

    /// The image a stage starts from, and its filesystem when one already exists.
    pub(crate) fn base(
        &self,
        stage: &Stage,
        done: &HashMap<usize, Arc<StageResult>>,
    ) -> Result<(StageImage, Option<Rootfs>)> {
        let platform = self.stage_platform(stage)?;
        match &stage.base {
            Base::Scratch => {
                let mut config = ImageConfig {
                    architecture: platform.architecture.clone(),
                    os: platform.os.clone(),
                    variant: platform.variant.clone(),
                    ..ImageConfig::default()
                };
                // BuildKit gives an image built from scratch the default PATH, and `/` as its
                // working directory.
                config.config.set_env("PATH", strata_sandbox::DEFAULT_PATH);
                config.config.working_dir = Some("/".to_owned());
                Ok((
                    StageImage {
                        config,
                        layers: Vec::new(),
                        key: self.base_key("scratch", &platform),
                        clock: self.opts.reproducible.map_or_else(|| rfc3339(0), rfc3339),
                        base_reference: None,
                        env_index: Default::default(),
                        layer_keys: HashMap::new(),
                    },
                    None,
                ))
            }
            Base::Stage(i) => {
                let result = done
                    .get(i)
                    .ok_or_else(|| Error::Invalid(format!("stage {i} was not built")))?;
                Ok((result.image.clone(), None))
            }
            Base::Image(reference) => Ok((self.image(reference, &platform)?.image.clone(), None)),
        }
    }

    /// The platform a stage's base is for: its `FROM --platform` (expanded, with BuildKit's
    /// `BUILDPLATFORM` and `TARGETPLATFORM` arguments), else the build's target platform.
    pub(crate) fn stage_platform(&self, stage: &Stage) -> Result<Platform> {
        let Some(text) = stage.platform.as_deref() else {
            return Ok(self.opts.platform.clone());
        };
        text.parse::<Platform>()
            .map_err(|e| Error::Invalid(format!("FROM --platform={text}: {e}")))
    }

    /// Resolves and pulls an image for `platform` (or reads an `oci-layout://` directory) into
    /// the state.
    pub(crate) fn pull(&self, name: &str, platform: &Platform) -> Result<StageImage> {
        // A named build context stands in for the image it names.
        // Events name the image as the Dockerfile wrote it, or the context as it was given.
        let (source, reference) = match self.opts.named_contexts.get(name) {
            Some(source) => (source.clone(), source.display_name()),
            None => (ImageSource::of_name(name)?, name.to_owned()),
        };
        self.emit(Event::Pulling {
            reference: reference.clone(),
        });
        let (digest, downloaded) = match &source {
            ImageSource::OciLayout { path, tag } => {
                (self.import_layout(path, tag.as_deref(), platform)?, 0)
            }
            ImageSource::Image(parsed) => match parsed
                .digest()
                .filter(|d| self.complete_locally(d, platform))
            {
                // A pinned digest whose blobs are all here needs no network at all.
                Some(digest) => (digest.to_owned(), 0),
                None => {
                    // The manifest and config only: the layers come when a step needs the
                    // filesystem or an output needs their bytes.
                    let pulled = self.runtime.block_on(self.registry.pull_manifest(
                        parsed,
                        platform,
                        &self.state.layout,
                    ))?;
                    (pulled.manifest_digest.to_string(), pulled.downloaded)
                }
            },
        };
        let mut image = self.image_in_state(&digest, platform)?;
        if matches!(source, ImageSource::Image(_)) {
            for layer in &image.layers {
                self.note_source(layer.digest.as_ref(), &reference)?;
            }
        }
        image.base_reference = Some(reference.clone());
        self.emit(Event::Pulled {
            reference,
            digest,
            downloaded,
        });
        Ok(image)
    }

    /// Whether the manifest `digest` (or its platform manifest) and all its blobs are in the
    /// state directory.
    pub(crate) fn complete_locally(&self, digest: &str, platform: &Platform) -> bool {
        self.platform_manifest(&self.state.layout, digest, platform)
            .ok()
            .and_then(|d| {
                let image = image_manifest(&self.state.layout, &d).ok()?;
                Some(
                    std::iter::once(image.config())
                        .chain(image.layers())
                        .all(|blob| self.state.layout.has_blob(blob.digest().as_ref())),
                )
            })
            .unwrap_or(false)
    }

    /// The image manifest for `platform`: `digest` itself, or its entry when it is an index.
    pub(crate) fn platform_manifest(
        &self,
        layout: &Layout,
        digest: &str,
        platform: &Platform,
    ) -> Result<String> {
        match Manifest::parse(&layout.read_blob(digest)?, digest)? {
            Manifest::Image(_) => Ok(digest.to_owned()),
            Manifest::Index(index) => Ok(platform
                .select(index.manifests(), digest)?
                .digest()
                .to_string()),
        }
    }

    /// Copies an image out of the OCI layout directory `path` (the one named `tag`, or the
    /// only one there) into the state.
    pub(crate) fn import_layout(
        &self,
        path: &Path,
        tag: Option<&str>,
        platform: &Platform,
    ) -> Result<String> {
        let spec = ImageSource::OciLayout {
            path: path.to_owned(),
            tag: tag.map(str::to_owned),
        };
        if !path.join("index.json").is_file() {
            return Err(Error::Invalid(format!(
                "{spec}: {} is not an OCI image layout (no index.json)",
                path.display()
            )));
        }
        let source = Layout::open(path)?;
        let digest = match tag {
            Some(tag) => source.image_manifest(tag, platform)?,
            None => {
                let index = source.index()?;
                let manifests = index.manifests();
                match manifests.as_slice() {
                    [only] => only.digest().to_string(),
                    _ => {
                        return Err(Error::Invalid(format!(
                            "{spec}: the layout holds {} images; name one with :TAG",
                            manifests.len()
                        )));
                    }
                }
            }
        };
        let digest = self.platform_manifest(&source, &digest, platform)?;
        let image = image_manifest(&source, &digest)?;
        source.copy_blob(&digest, &self.state.layout)?;
        for blob in std::iter::once(image.config()).chain(image.layers()) {
            source.copy_blob(blob.digest().as_ref(), &self.state.layout)?;
        }
        Ok(digest)
    }

    /// The image whose manifest `digest` is in the state directory.
    pub(crate) fn image_in_state(&self, digest: &str, platform: &Platform) -> Result<StageImage> {
        let layout = &self.state.layout;
        let digest = self.platform_manifest(layout, digest, platform)?;
        let image = image_manifest(layout, &digest)?;
        let descriptors = image.layers();
        let config_digest = image.config().digest().as_ref();
        let config: ImageConfig = serde_json::from_slice(&layout.read_blob(config_digest)?)
            .map_err(|e| Error::Invalid(format!("image config {config_digest}: {e}")))?;
        if descriptors.len() != config.rootfs.diff_ids.len() {
            return Err(Error::Invalid(format!(
                "image {digest}: {} layers but {} diff_ids",
                descriptors.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let layers = descriptors
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(d, diff_id)| {
                Ok(LayerRef {
                    digest: d.digest().clone(),
                    // The config is untrusted: a diff_id that is no digest is an error here.
                    diff_id: strata_oci::digest::parse(diff_id)?,
                    size: d.size(),
                    media_type: match d.media_type().to_string() {
                        t if t.is_empty() => {
                            "application/vnd.oci.image.layer.v1.tar+gzip".to_owned()
                        }
                        t => t,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let clock = config.created.clone().unwrap_or_else(|| rfc3339(0));
        Ok(StageImage {
            config,
            layers,
            key: self.base_key(&digest, platform),
            clock,
            base_reference: None,
            env_index: Default::default(),
            layer_keys: HashMap::new(),
        })
    }

    /// The key a stage's chain starts from: the base and the platform, and the epoch of a
    /// reproducible build (its layers' times are clamped to it, so they are other layers
    /// than those of a build without one, and must never answer for them).
    fn base_key(&self, base: &str, platform: &Platform) -> String {
        match self.opts.reproducible {
            None => KeyBuilder::base_image(base, &platform.to_string()),
            Some(epoch) => KeyBuilder::base_image(base, &format!("{platform} epoch={epoch}")),
        }
    }

    /// What a `--from` value names: a finished stage, or else an image (pulled once per
    /// build, like a base image).
    pub(crate) fn source_stage(&self, from: &str, at: &StepAt<'_>) -> Result<Arc<StageResult>> {
        if let Some(index) = self.plan.stage_by_reference(from) {
            return match at.done.get(&index) {
                Some(stage) => Ok(Arc::clone(stage)),
                // Only a base image's ONBUILD trigger can name a stage the plan did not know
                // this stage needs: build it now, as BuildKit does.
                None => self.stage_on_demand(index, at.done, 0),
            };
        }
        // An image named by `--from` is for the build's target platform, as in BuildKit.
        self.image(from, &self.opts.platform)
    }

    /// Builds stage `index` (and what it needs that is not in `done`) outside the schedule:
    /// for a stage that only a base image's ONBUILD trigger names.
    fn stage_on_demand(
        &self,
        index: usize,
        done: &HashMap<usize, Arc<StageResult>>,
        depth: usize,
    ) -> Result<Arc<StageResult>> {
        if depth > self.plan.stages.len() {
            return Err(Error::Invalid(format!(
                "stage {} depends on itself through ONBUILD triggers",
                self.stage_name(index)
            )));
        }
        // Built once per build: a step asks for its source stage for its key and again to
        // copy or mount it, and both must see the same result.
        let poisoned = || Error::Task("stages built on demand poisoned".to_owned());
        if let Some(built) = self.on_demand.lock().map_err(|_| poisoned())?.get(&index) {
            return Ok(Arc::clone(built));
        }
        let mut have = done.clone();
        let needs = self
            .plan
            .stages
            .get(index)
            .map(|s| s.dependencies.clone())
            .unwrap_or_default();
        for dependency in needs {
            if !have.contains_key(&dependency) {
                let built = self.stage_on_demand(dependency, &have, depth + 1)?;
                have.insert(dependency, built);
            }
        }
        let built = Arc::new(self.build_stage(index, &have)?);
        Ok(Arc::clone(
            self.on_demand
                .lock()
                .map_err(|_| poisoned())?
                .entry(index)
                .or_insert(built),
        ))
    }

    /// The image `reference` names for `platform`, pulled on first use in this build.
    fn image(&self, reference: &str, platform: &Platform) -> Result<Arc<StageResult>> {
        let poisoned = || Error::Task("image list poisoned".to_owned());
        let slot = Arc::clone(
            self.images
                .lock()
                .map_err(|_| poisoned())?
                .entry(format!("{reference} {platform}"))
                .or_default(),
        );
        let mut slot = slot.lock().map_err(|_| poisoned())?;
        if let Some(found) = slot.as_ref() {
            return Ok(Arc::clone(found));
        }
        let pulled = Arc::new(StageResult {
            image: self.pull(reference, platform)?,
            rootfs: Mutex::new(None),
        });
        *slot = Some(Arc::clone(&pulled));
        Ok(pulled)
    }
}

/// The config and layer descriptors of the image manifest `digest` in `layout`, parsed and
/// validated (digests, sizes, media types); an index is an error here.
fn image_manifest(layout: &Layout, digest: &str) -> Result<ImageManifest> {
    match Manifest::parse(&layout.read_blob(digest)?, digest)? {
        Manifest::Image(image) => Ok(*image),
        Manifest::Index(_) => Err(Error::Invalid(format!(
            "{digest} is an image index where an image manifest was expected"
        ))),
    }
}
