//! The engine: stages built in dependency order (independent ones at once), each instruction
//! turned into config changes and layers, every layer step looked up in the cache first.
//!
//! A stage's filesystem is its list of layers; it becomes a directory (`Rootfs`) only when
//! an instruction must look at it (a `RUN`, a `COPY` that missed the cache, a `COPY --from`
//! of it), by extracting the layers not yet applied. A fully cached build never extracts
//! anything.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde_json::json;
use strata_cache::{
    CacheEntry, CacheKey, CacheStore, CachedLayer, KeyBuilder, LocalStore, RegistryStore,
};
use strata_dockerfile::{Base, CommandLine, Healthcheck, Instruction, Located, Plan, Stage};
use strata_layer::{Compression, Entry, EntryKind, Extractor, LayerWriter, Metadata, Mtime};
use strata_registry::{Descriptor, Layout, Manifest, Platform, Reference, RegistryClient};
use strata_sandbox::{Cancel, Sandbox};
use strata_snapshot::HashMemo;

use crate::config::{History, ImageConfig, LayerRef, rfc3339};
use crate::context::Context;
use crate::error::{Error, Position, Result};
use crate::event::{Event, EventSink};
use crate::state::State;

/// The manifest annotation of images strata builds: for each layer, the cache key and date
/// of the step that made it (`null` for the base's layers), a JSON array as a string, so that
/// `--cache-from` can reuse them.
pub const CACHE_KEYS_ANNOTATION: &str = "dev.strata.cache.v1";

/// A step a `--cache-from` image answers: its layer, its date, and the image.
type CacheFromStep = (LayerRef, String, String);

/// How RUN steps find what they changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotMode {
    /// Overlay when the kernel and privileges allow, walk otherwise.
    #[default]
    Auto,
    /// Always an overlay (an error where it is unavailable): the step's changes are its
    /// upper directory, whatever the size of the root filesystem.
    Overlay,
    /// Always a walk of the root filesystem before and after the step.
    Walk,
}

/// Where a `RUN --mount=type=secret` finds its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// A file.
    File(PathBuf),
    /// An environment variable of the building process.
    Env(String),
}

/// The engine's settings, from the builder.
pub(crate) struct Options {
    pub platform: Platform,
    pub reproducible: Option<i64>,
    pub compression: Compression,
    pub labels: BTreeMap<String, String>,
    /// Labels the image gets unless the Dockerfile or the caller set them (the revision and
    /// source of a git context).
    pub default_labels: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, Secret>,
    pub snapshot_mode: SnapshotMode,
    /// One layer for everything the target stage added (Kaniko's `--single-snapshot`).
    pub single_snapshot: bool,
    /// Paths (relative, no leading `/`) left out of RUN snapshots (`--ignore-path`).
    pub ignore_paths: Vec<String>,
    /// Images that stand in for names in FROM, `COPY --from` and `RUN --mount from=`
    /// (`--build-context name=oci-layout://…`): name → image source.
    pub named_contexts: BTreeMap<String, String>,
    /// Instructions (upper case) whose layers are neither looked up in nor recorded to the
    /// cache (`--cache-run-layers=false`, `--cache-copy-layers=false`).
    pub uncached: Vec<String>,
    /// The most bytes one `ADD` download may bring.
    pub max_download: u64,
    /// Whether steps that ran are recorded in the cache repository (Kaniko's
    /// `--no-push-cache` turns it off; lookups still happen).
    pub cache_repo_writes: bool,
    /// Images built by strata whose steps' cache keys answer lookups (`--cache-from`).
    pub cache_from: Vec<String>,
    /// Where RUN steps execute, as asked for.
    pub isolation: crate::Isolation,
    /// The in-container mode outside a container (Kaniko's `--force`).
    pub force: bool,
    /// The in-container mode leaves `/var/run` (and `/run`) alone (Kaniko's
    /// `--ignore-var-run`).
    pub ignore_var_run: bool,
}

/// The in-container mode's state: the ignore list, and which layers `/` holds now (`None`:
/// still the container's own files).
#[derive(Debug)]
pub(crate) struct InContainer {
    pub ignore: Vec<String>,
    /// Mount points and our own directories: no RUN mount may be placed on them.
    pub untouchable: Vec<String>,
    pub slash: Mutex<Option<Vec<String>>>,
}

/// An image in the making: what a stage has built so far.
#[derive(Debug, Clone)]
pub(crate) struct StageImage {
    pub config: ImageConfig,
    pub layers: Vec<LayerRef>,
    /// The cache key of the last step (the chain's head).
    pub key: String,
    /// When the last step's result was made: history and image dates come from it, so that
    /// a fully cached rebuild gives the same config, and so the same digest.
    pub clock: String,
    /// The base image reference, for cross-repository mounts when pushing.
    pub base_reference: Option<String>,
    /// Where each ENV name sits in `config.config.env`, and how many entries the index
    /// covers: ENV steps cost O(1), not a scan of the environment.
    pub env_index: (HashMap<String, usize>, usize),
    /// The cache key and date of the step that made each layer of this build (by the layer's
    /// place in `layers`: several steps may make the same layer, the empty one): the image's
    /// manifest carries them, for `--cache-from`.
    pub layer_keys: HashMap<usize, (String, String)>,
}

impl StageImage {
    /// Sets `name` in the environment (in place when it is there already), as
    /// [`crate::config::RuntimeConfig::set_env`] does, through the index.
    fn set_env(&mut self, name: &str, value: &str) {
        let env = self.config.config.env.get_or_insert_with(Vec::new);
        let (index, covered) = &mut self.env_index;
        if *covered != env.len() {
            // Built (again) when the environment changed behind the index's back; the first
            // entry of a name wins, as in `set_env`.
            index.clear();
            for (i, kv) in env.iter().enumerate() {
                let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
                index.entry(key.to_owned()).or_insert(i);
            }
            *covered = env.len();
        }
        let entry = format!("{name}={value}");
        match index.get(name) {
            Some(&i) => env[i] = entry,
            None => {
                index.insert(name.to_owned(), env.len());
                env.push(entry);
                *covered = env.len();
            }
        }
    }
}

/// A stage's filesystem as a directory.
#[derive(Debug)]
pub(crate) enum Rootfs {
    /// A private directory its layers were extracted into, with how many are applied (where
    /// overlays are unavailable: a RUN then runs in it and is found by two scans).
    Private { dir: PathBuf, applied: usize },
    /// A read-only overlay of the layer store's directories of `layers` (diff_ids).
    View {
        merged: PathBuf,
        layers: Vec<String>,
        _mount: Option<strata_snapshot::overlay::OverlayMount>,
    },
}

/// An image of the build, pulled by the first stage that names it.
type ImageSlot = Arc<Mutex<Option<Arc<StageResult>>>>;

/// A finished stage.
#[derive(Debug)]
pub(crate) struct StageResult {
    pub image: StageImage,
    rootfs: Mutex<Option<Rootfs>>,
}

pub(crate) struct Engine {
    pub state: State,
    pub cache: Option<LocalStore>,
    /// The cache repository, looked up after the local store misses.
    pub remote: Option<RegistryStore>,
    pub registry: RegistryClient,
    pub plan: Plan,
    pub file_name: String,
    pub context: Context,
    pub work: PathBuf,
    pub opts: Options,
    pub events: Option<EventSink>,
    pub memo: Mutex<HashMemo>,
    pub runtime: tokio::runtime::Handle,
    pub cancel: Cancel,
    pub hits: AtomicUsize,
    pub steps: AtomicUsize,
    sandbox: OnceLock<std::result::Result<Sandbox, String>>,
    overlay: OnceLock<std::result::Result<(), String>>,
    /// Whether stages' filesystems are overlays of the layer store (decided once).
    store_mode: OnceLock<bool>,
    /// Each layer extracted once, shared by every build on the state directory.
    pub layers: crate::layers::LayerStore,
    /// The store entries this build has found or made: chain id → tree.
    resolved: Mutex<HashMap<String, PathBuf>>,
    /// Layers this build knows but has not downloaded (a base's layers, cache hits from the
    /// cache repository): blob digest → the repositories that hold it. The bytes come only
    /// when something needs them ([`Engine::ensure_blob`]).
    sources: Mutex<HashMap<String, Vec<String>>>,
    /// The steps the `--cache-from` images answer: cache key → (layer, date, image).
    cache_from: OnceLock<HashMap<String, CacheFromStep>>,
    /// Images named by `FROM` or `--from`, pulled once per build (one slot per reference, so
    /// stages pulling different images do not wait for each other).
    images: Mutex<HashMap<String, ImageSlot>>,
    rootfs_count: AtomicUsize,
    /// Cache keys worked out ahead of their steps ([`Engine::look_ahead`]): step id →
    /// (the chain head it was worked out on, the key). A step takes its own, when its chain
    /// head is the same.
    planned: Mutex<HashMap<String, (String, CacheKey)>>,
    /// The cache repository's answers to the lookups made ahead: key digest → entry.
    looked_up: Mutex<HashMap<String, Option<CacheEntry>>>,
    /// Set when RUN steps run in the container's own root (stages then run one at a time).
    pub in_container: Option<InContainer>,
    /// What choosing the isolation found of namespaces, when it probed.
    pub namespaces_probe: Option<strata_sandbox::Support>,
    /// Rootless RUN steps (namespaces, not root): the user namespace's map, to record the ids
    /// the step saw rather than the host ids its files got.
    pub id_map: Option<strata_sandbox::UserNamespaceMap>,
}

/// One instruction being executed: where it is, for events, errors and cache explanations.
pub(crate) struct StepAt<'a> {
    pub(crate) stage: &'a str,
    /// `stage/index`, the name the cache remembers this step's inputs under.
    pub(crate) id: String,
    pub(crate) line: usize,
    pub(crate) original: &'a str,
    pub(crate) done: &'a HashMap<usize, Arc<StageResult>>,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        state: State,
        cache: Option<LocalStore>,
        remote: Option<RegistryStore>,
        registry: RegistryClient,
        plan: Plan,
        file_name: String,
        context: Context,
        work: PathBuf,
        opts: Options,
        events: Option<EventSink>,
        runtime: tokio::runtime::Handle,
    ) -> Engine {
        let memo = HashMemo::load(&state.context_memo()).unwrap_or_default();
        let layers = state.layers.clone();
        Engine {
            state,
            cache,
            remote,
            registry,
            plan,
            file_name,
            context,
            work,
            opts,
            events,
            memo: Mutex::new(memo),
            runtime,
            cancel: Cancel::new(),
            hits: AtomicUsize::new(0),
            steps: AtomicUsize::new(0),
            sandbox: OnceLock::new(),
            overlay: OnceLock::new(),
            store_mode: OnceLock::new(),
            layers,
            resolved: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            cache_from: OnceLock::new(),
            images: Mutex::new(HashMap::new()),
            rootfs_count: AtomicUsize::new(0),
            planned: Mutex::new(HashMap::new()),
            looked_up: Mutex::new(HashMap::new()),
            in_container: None,
            namespaces_probe: None,
            id_map: None,
        }
    }

    /// Makes `/` hold exactly `layers` for an in-container RUN: the layers missing on top
    /// of what it holds are applied; when it holds another stage's (or the container's own)
    /// files, everything not ignored is removed first.
    pub(crate) fn materialize_slash(&self, mode: &InContainer, layers: &[LayerRef]) -> Result<()> {
        let mut slash = mode
            .slash
            .lock()
            .map_err(|_| Error::Task("root filesystem state poisoned".to_owned()))?;
        let digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
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
                .expect_diff_id(Some(layer.diff_id.clone()))
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
                held.push(layer.digest.clone());
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
            held.push(layer.digest.clone());
        }
        Ok(())
    }

    pub(crate) fn emit(&self, event: Event) {
        if let Some(sink) = &self.events {
            sink(&event);
        }
    }

    /// Seconds since the epoch for anything this build dates: the reproducible epoch when
    /// one is set, the clock otherwise.
    fn epoch_now(&self) -> i64 {
        self.opts.reproducible.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        })
    }

    pub(crate) fn now(&self) -> String {
        rfc3339(self.epoch_now())
    }

    pub(crate) fn mtime_now(&self) -> Mtime {
        Mtime::from_secs(self.epoch_now())
    }

    pub(crate) fn stage_name(&self, index: usize) -> String {
        self.plan
            .stages
            .get(index)
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| index.to_string())
    }

    /// Saves what the build learnt about the context's files.
    pub(crate) fn save_memo(&self) {
        if let Ok(memo) = self.memo.lock()
            && let Err(e) = memo.save(&self.state.context_memo())
        {
            tracing::debug!(error = %e, "context hash memo not saved");
        }
        // The JSON memo of earlier versions is not read any more.
        let _ = std::fs::remove_file(self.state.root().join("context-memo.json"));
    }

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
            source: Box::new(e),
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
        let instructions =
            self.plan
                .instructions(index, &base_env)
                .map_err(|source| Error::Dockerfile {
                    file: self.file_name.clone(),
                    source,
                })?;
        if self.remote.is_some() {
            self.look_ahead(&image, &instructions, stage, &name, done);
        }
        for (i, located) in instructions.iter().enumerate() {
            if self.cancel.is_cancelled() {
                // Another stage failed: this one stops before its next step.
                return Err(Error::Cancelled);
            }
            let original = stage.nodes.get(i).map_or("", |n| n.original.trim());
            let at = StepAt {
                stage: &name,
                id: format!("{}/{name}/{i}", self.file_name),
                line: located.start_line,
                original,
                done,
            };
            let started = Instant::now();
            self.emit(Event::StepStarted {
                stage: name.clone(),
                line: located.start_line,
                text: original.to_owned(),
            });
            let cached = self
                .step(&mut image, &mut rootfs, located, &at, &mut cmd_set)
                .map_err(|e| Error::Step {
                    position: Position {
                        file: self.file_name.clone(),
                        line: located.start_line,
                        stage: name.clone(),
                    },
                    source: Box::new(e),
                })?;
            self.emit(Event::StepFinished {
                stage: name.clone(),
                line: located.start_line,
                duration: started.elapsed(),
                cached,
            });
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

    /// Works out the cache keys of the stage's steps ahead of running them, and asks the
    /// cache repository for all the ones the local cache lacks at once
    /// ([`RegistryStore::lookup_many`]): a fresh pod's cached build then waits about one round
    /// trip per stage, not one per step. A key never depends on the stage's filesystem (only
    /// on the instructions, the context and other stages), so every step's key is known
    /// before the first runs, up to an `ADD` of a URL or a repository (fetched only when its
    /// step runs). Speculative: anything that fails here is left for the step itself to
    /// meet and report, and a step whose chain head differs works its key out again.
    fn look_ahead(
        &self,
        image: &StageImage,
        instructions: &[Located<Instruction>],
        stage: &Stage,
        name: &str,
        done: &HashMap<usize, Arc<StageResult>>,
    ) {
        let (Some(remote), Some(local)) = (&self.remote, &self.cache) else {
            return;
        };
        let mut ahead = image.clone();
        let mut cmd_set = true;
        let mut wanted: Vec<String> = Vec::new();
        for (i, located) in instructions.iter().enumerate() {
            let original = stage.nodes.get(i).map_or("", |n| n.original.trim());
            let at = StepAt {
                stage: name,
                id: format!("{}/{name}/{i}", self.file_name),
                line: located.start_line,
                original,
                done,
            };
            let instruction = &located.value;
            let key = match instruction {
                Instruction::Run(run) => self.run_key(&ahead, run, instruction, &at),
                Instruction::Copy(copy) => {
                    self.copy_key(&ahead.key, copy, &copy.sources, &[], instruction, &at)
                }
                Instruction::Add(add)
                    if !add
                        .copy
                        .sources
                        .iter()
                        .any(|s| crate::git::is_git_url(s) || crate::download::is_url(s)) =>
                {
                    self.copy_key(
                        &ahead.key,
                        &add.copy,
                        &add.copy.sources,
                        &[],
                        instruction,
                        &at,
                    )
                }
                // Fetched when its step runs: the keys after it are not known before.
                Instruction::Add(_) => break,
                Instruction::Workdir { path } => {
                    let dir = workdir_of(&ahead, path);
                    let user = ahead.config.config.user.clone().unwrap_or_default();
                    ahead.config.config.working_dir = Some(dir.clone());
                    Ok(workdir_key(&ahead.key, &dir, &user))
                }
                // Configuration: applied to the copy, which moves its chain head on.
                _ => match self.step(&mut ahead, &mut None, located, &at, &mut cmd_set) {
                    Ok(_) => continue,
                    Err(_) => break,
                },
            };
            let Ok(key) = key else { break };
            let digest = key.digest.clone();
            if self.uncached(&at).is_none() && matches!(local.lookup(&digest), Ok(None)) {
                wanted.push(digest.clone());
            }
            if let Ok(mut planned) = self.planned.lock() {
                planned.insert(at.id.clone(), (ahead.key.clone(), key));
            }
            ahead.key = digest;
        }
        if wanted.is_empty() {
            return;
        }
        let started = Instant::now();
        let answers = remote.lookup_many(&wanted);
        let mut found = 0;
        if let Ok(mut looked_up) = self.looked_up.lock() {
            for (digest, answer) in wanted.iter().zip(answers) {
                // A failed lookup is asked again by its step, which reports it.
                if let Ok(entry) = answer {
                    found += usize::from(entry.is_some());
                    looked_up.insert(digest.clone(), entry);
                }
            }
        }
        self.emit(Event::CacheLookups {
            stage: name.to_owned(),
            keys: wanted.len(),
            found,
            duration: started.elapsed(),
        });
    }

    /// The key [`Engine::look_ahead`] worked out for the step `at`, when it worked it out on
    /// the same chain head `parent`.
    pub(crate) fn take_planned(&self, at: &StepAt<'_>, parent: &str) -> Option<CacheKey> {
        let (head, key) = self.planned.lock().ok()?.remove(&at.id)?;
        (head == parent).then_some(key)
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
        let text = format!("FROM scratch\n{}\n", triggers.join("\n"));
        let invalid = |e: strata_dockerfile::Error| {
            Error::Invalid(format!("the base image's ONBUILD triggers: {e}"))
        };
        let file = strata_dockerfile::parse(&text).map_err(invalid)?;
        let plan = Plan::new(
            &file,
            &strata_dockerfile::PlanOptions {
                build_args: BTreeMap::new(),
                target: None,
                target_platform: strata_dockerfile::Platform::host(),
                build_platform: strata_dockerfile::Platform::host(),
            },
        )
        .map_err(invalid)?;
        let instructions = plan
            .instructions(0, &image.config.config.env_pairs())
            .map_err(invalid)?;
        for (i, located) in instructions.iter().enumerate() {
            let original = triggers.get(i).map_or("", String::as_str);
            let at = StepAt {
                stage: name,
                id: format!("{}/{name}/onbuild-{i}", self.file_name),
                line: stage.line,
                original,
                done,
            };
            self.emit(Event::StepStarted {
                stage: name.to_owned(),
                line: stage.line,
                text: format!("ONBUILD {original}"),
            });
            let started = Instant::now();
            let cached = self.step(image, rootfs, located, &at, cmd_set)?;
            self.emit(Event::StepFinished {
                stage: name.to_owned(),
                line: stage.line,
                duration: started.elapsed(),
                cached,
            });
        }
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
        let parsed = strata_dockerfile::Platform::parse(text).ok_or_else(|| {
            Error::Invalid(format!(
                "FROM --platform={text}: not a platform (expected os/arch[/variant], such as \
                 linux/arm64)"
            ))
        })?;
        Ok(registry_platform(parsed))
    }

    /// Resolves and pulls an image for `platform` (or reads an `oci-layout://` directory) into
    /// the state.
    pub(crate) fn pull(&self, name: &str, platform: &Platform) -> Result<StageImage> {
        // A named build context stands in for the image it names.
        let reference = self
            .opts
            .named_contexts
            .get(name)
            .map_or(name, String::as_str);
        self.emit(Event::Pulling {
            reference: reference.to_owned(),
        });
        let (digest, downloaded) = if let Some(path) = reference.strip_prefix("oci-layout://") {
            (self.import_layout(path, platform)?, 0)
        } else {
            let parsed = Reference::parse(reference)?;
            match parsed
                .digest()
                .filter(|d| self.complete_locally(d, platform))
            {
                // A pinned digest whose blobs are all here needs no network at all.
                Some(digest) => (digest.to_owned(), 0),
                None => {
                    // The manifest and config only: the layers come when a step needs the
                    // filesystem or an output needs their bytes.
                    let pulled = self.runtime.block_on(self.registry.pull_manifest(
                        &parsed,
                        platform,
                        &self.state.layout,
                    ))?;
                    (pulled.manifest_digest, pulled.downloaded)
                }
            }
        };
        let mut image = self.image_in_state(&digest, platform)?;
        if !reference.starts_with("oci-layout://") {
            for layer in &image.layers {
                self.note_source(&layer.digest, reference)?;
            }
        }
        image.base_reference = Some(reference.to_owned());
        self.emit(Event::Pulled {
            reference: reference.to_owned(),
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
                let (config, layers) = image_manifest(&self.state.layout, &d).ok()?;
                Some(
                    std::iter::once(&config)
                        .chain(&layers)
                        .all(|blob| self.state.layout.has_blob(&blob.digest)),
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
            Manifest::Image { .. } => Ok(digest.to_owned()),
            // Every entry of a parsed index has a valid digest.
            Manifest::Index { manifests, .. } => platform.select(&manifests, digest)?["digest"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::Invalid(format!("index {digest}: an entry has no digest"))),
        }
    }

    /// Copies an image out of an OCI layout directory (`PATH[:TAG]`) into the state.
    pub(crate) fn import_layout(&self, spec: &str, platform: &Platform) -> Result<String> {
        let (path, tag) = match spec.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') => (path, Some(tag)),
            _ => (spec, None),
        };
        if !Path::new(path).join("index.json").is_file() {
            return Err(Error::Invalid(format!(
                "oci-layout://{spec}: {path} is not an OCI image layout (no index.json)"
            )));
        }
        let source = Layout::open(path)?;
        let digest = match tag {
            Some(tag) => source.image_manifest(tag, platform)?,
            None => {
                let index = source.index()?;
                let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
                match manifests.as_slice() {
                    [only] => only["digest"].as_str().unwrap_or_default().to_owned(),
                    _ => {
                        return Err(Error::Invalid(format!(
                            "oci-layout://{spec}: the layout holds {} images; name one with :TAG",
                            manifests.len()
                        )));
                    }
                }
            }
        };
        let digest = self.platform_manifest(&source, &digest, platform)?;
        let (config, layers) = image_manifest(&source, &digest)?;
        source.copy_blob(&digest, &self.state.layout)?;
        for blob in std::iter::once(&config).chain(&layers) {
            source.copy_blob(&blob.digest, &self.state.layout)?;
        }
        Ok(digest)
    }

    /// The image whose manifest `digest` is in the state directory.
    pub(crate) fn image_in_state(&self, digest: &str, platform: &Platform) -> Result<StageImage> {
        let layout = &self.state.layout;
        let digest = self.platform_manifest(layout, digest, platform)?;
        let (config_blob, descriptors) = image_manifest(layout, &digest)?;
        let config_digest = &config_blob.digest;
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
            .into_iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(d, diff_id)| LayerRef {
                digest: d.digest,
                diff_id: diff_id.clone(),
                size: d.size,
                media_type: if d.media_type.is_empty() {
                    "application/vnd.oci.image.layer.v1.tar+gzip".to_owned()
                } else {
                    d.media_type
                },
            })
            .collect();
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
        let wanted: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
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

    /// Walk mode (`--snapshot-mode walk`) where the layer store is usable: fills the new
    /// private directory `dir` with a copy of the store's view of `layers` (each file a
    /// reflink where the filesystem allows, else copied; never a hard link into the store),
    /// so that the layers are extracted once per state directory, not once per build.
    /// Returns how many of `layers` `dir` now holds: none when the store is not used here,
    /// or when this kernel cannot stack them (they are then extracted into `dir`).
    fn clone_from_store(&self, dir: &Path, layers: &[LayerRef]) -> Result<usize> {
        if layers.is_empty()
            || self.opts.snapshot_mode != SnapshotMode::Walk
            || !self.store_usable()
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
        let report = strata_snapshot::clone_tree(&view, dir)?;
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

    /// The key a stage's chain starts from: the base and the platform, and the epoch of a
    /// reproducible build (its layers' times are clamped to it, so they are other layers
    /// than those of a build without one, and must never answer for them).
    fn base_key(&self, base: &str, platform: &Platform) -> String {
        match self.opts.reproducible {
            None => KeyBuilder::base_image(base, &platform.to_string()),
            Some(epoch) => KeyBuilder::base_image(base, &format!("{platform} epoch={epoch}")),
        }
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
        let chains = crate::layers::chain_ids(layers.iter().map(|l| l.diff_id.as_str()));
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
                .expect_diff_id(Some(layer.diff_id.clone()))
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
                diff_id: layer.diff_id.clone(),
                duration: started.elapsed(),
            });
        }
        Ok(tree)
    }

    /// The steps the `--cache-from` images answer, read once (manifest and config of each,
    /// no layer). An image without strata's annotation, or one that cannot be read, is left
    /// out with a warning: the build then simply misses.
    fn cache_from_index(&self) -> &HashMap<String, CacheFromStep> {
        self.cache_from.get_or_init(|| {
            let mut index = HashMap::new();
            for source in &self.opts.cache_from {
                match self.read_cache_from(source) {
                    Ok(steps) if steps.is_empty() => self.emit(Event::Warning {
                        stage: None,
                        line: None,
                        message: format!(
                            "--cache-from {source}: no cache keys in the image (not built by \
                             strata?); it is ignored"
                        ),
                    }),
                    Ok(steps) => index.extend(steps),
                    Err(error) => self.emit(Event::Warning {
                        stage: None,
                        line: None,
                        message: format!("--cache-from {source}: {error}; it is ignored"),
                    }),
                }
            }
            index
        })
    }

    fn read_cache_from(&self, source: &str) -> Result<Vec<(String, CacheFromStep)>> {
        let reference = Reference::parse(source)?;
        let pulled = self.runtime.block_on(self.registry.pull_manifest(
            &reference,
            &self.opts.platform,
            &self.state.layout,
        ))?;
        let manifest: serde_json::Value =
            serde_json::from_slice(&self.state.layout.read_blob(&pulled.manifest_digest)?)
                .map_err(|e| Error::Invalid(format!("manifest: {e}")))?;
        let Some(keys) = manifest["annotations"][CACHE_KEYS_ANNOTATION].as_str() else {
            return Ok(Vec::new());
        };
        let keys: Vec<Option<(String, String)>> = serde_json::from_str(keys)
            .map_err(|e| Error::Invalid(format!("annotation {CACHE_KEYS_ANNOTATION}: {e}")))?;
        let image = self.image_in_state(&pulled.manifest_digest, &self.opts.platform)?;
        if keys.len() != image.layers.len() {
            return Err(Error::Invalid(format!(
                "annotation {CACHE_KEYS_ANNOTATION} names {} layers, the image has {}",
                keys.len(),
                image.layers.len()
            )));
        }
        Ok(keys
            .into_iter()
            .zip(image.layers)
            .filter_map(|(key, layer)| {
                key.map(|(key, created)| (key, (layer, created, source.to_owned())))
            })
            .collect())
    }

    /// What [`Engine::note_source`] recorded: blob digest → repositories.
    pub(crate) fn blob_sources(&self) -> Result<HashMap<String, Vec<String>>> {
        Ok(self
            .sources
            .lock()
            .map_err(|_| Error::Task("blob sources poisoned".to_owned()))?
            .clone())
    }

    /// Records that the repository `reference` holds the blob `digest`.
    pub(crate) fn note_source(&self, digest: &str, reference: &str) -> Result<()> {
        let mut sources = self
            .sources
            .lock()
            .map_err(|_| Error::Task("blob sources poisoned".to_owned()))?;
        let known = sources.entry(digest.to_owned()).or_default();
        if !known.iter().any(|r| r == reference) {
            known.push(reference.to_owned());
        }
        Ok(())
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
            .get(&layer.digest)
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
            .expect_diff_id(Some(layer.diff_id.clone()))
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
        let staged = self.state.layout.staging_file()?;
        let info = LayerWriter::new()
            .compression(self.opts.compression)
            .clamp_mtime(self.opts.reproducible)
            .write(
                entries,
                std::io::BufWriter::with_capacity(1 << 20, staged.as_file()),
            )
            .map_err(|e| match e {
                // The layer crate names its output stream; the file it was going to is
                // what the user can look at (a full disk, a quota).
                strata_layer::Error::Io { path, source } if path.as_os_str() == "<output>" => {
                    Error::Io {
                        path: staged.path().to_owned(),
                        source,
                    }
                }
                other => Error::from(other),
            })?;
        let digest = info.descriptor.digest().to_string();
        self.state.layout.commit_staged(staged, &digest, &digest)?;
        Ok(LayerRef {
            digest,
            diff_id: info.diff_id,
            size: info.descriptor.size(),
            media_type: info.descriptor.media_type().to_string(),
        })
    }

    /// Records a config-only instruction: the key chain moves on, history gains an entry.
    pub(crate) fn config_step(
        &self,
        image: &mut StageImage,
        instruction: &Instruction,
        at: &StepAt<'_>,
    ) -> Result<()> {
        image.key = KeyBuilder::new(&image.key)
            .instruction(&canonical(instruction)?)
            .build()
            .digest;
        if let Some(created_by) =
            crate::history::config_step(instruction, &image.config.config, at.original)?
        {
            image.config.history.push(History {
                created: Some(image.clock.clone()),
                created_by: Some(created_by),
                empty_layer: true,
                ..History::default()
            });
        }
        Ok(())
    }

    /// Answers a layer step from the cache when it can. Returns whether it did. `created_by`
    /// is the step's history entry ([`crate::history`]).
    pub(crate) fn cache_hit(
        &self,
        image: &mut StageImage,
        key: &CacheKey,
        at: &StepAt<'_>,
        created_by: &str,
    ) -> Result<bool> {
        let Some(store) = &self.cache else {
            return Ok(false);
        };
        if let Some(keyword) = self.uncached(at) {
            self.emit(Event::CacheMiss {
                stage: at.stage.to_owned(),
                line: at.line,
                reasons: vec![format!("the cache is off for {keyword} steps")],
            });
            return Ok(false);
        }
        let mut found = store.lookup(&key.digest)?;
        if let Some(layer) = found.as_ref().and_then(|e| e.layer.as_ref())
            && !self.state.layout.has_blob(&layer.digest)
        {
            let blob = store.open_layer(layer)?;
            self.state.layout.write_blob(blob, Some(&layer.digest))?;
        }
        if found.is_none()
            && let Some(remote) = &self.remote
            && let Some(entry) = match self.looked_up_answer(&key.digest) {
                Some(answer) => answer,
                None => remote.lookup(&key.digest)?,
            }
        {
            match &entry.layer {
                // A hit leaves the layer in the cache repository: fetched only if a later
                // step or an output needs its bytes, mounted by a push to that registry.
                Some(layer) if !self.state.layout.has_blob(&layer.digest) => {
                    self.note_source(&layer.digest, &remote.repository())?;
                }
                // Kept locally too: the next build answers without the registry.
                Some(layer) => {
                    let blob = self.state.layout.blob_path(&layer.digest)?;
                    store.record(&entry, Some(&blob))?;
                }
                None => store.record(&entry, None)?,
            }
            found = Some(entry);
        }
        if found.is_none()
            && let Some((layer, created, source)) = self.cache_from_index().get(&key.digest)
        {
            // An image built earlier answers: its layer stays in its repository until needed.
            if !self.state.layout.has_blob(&layer.digest) {
                self.note_source(&layer.digest, source)?;
            }
            found = Some(CacheEntry {
                key: key.clone(),
                layer: Some(CachedLayer::from(layer)),
                config: json!({ "created": created }),
                created_unix: 0,
            });
        }
        if let Some(entry) = found {
            if let Some(created) = entry.config["created"].as_str() {
                image.clock = created.to_owned();
            }
            if let Some(layer) = &entry.layer {
                image.layer_keys.insert(
                    image.layers.len(),
                    (key.digest.clone(), image.clock.clone()),
                );
                image.layers.push(LayerRef::from(layer));
            }
            image.config.history.push(History {
                created: Some(image.clock.clone()),
                created_by: Some(created_by.to_owned()),
                empty_layer: entry.layer.is_none(),
                ..History::default()
            });
            image.key = key.digest.clone();
            store.remember(&at.id, key)?;
            self.steps.fetch_add(1, Ordering::Relaxed);
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.emit(Event::CacheHit {
                stage: at.stage.to_owned(),
                line: at.line,
            });
            return Ok(true);
        }
        let reasons = match store.recall(&at.id)? {
            Some(previous) => strata_cache::explain(&previous, &key.inputs),
            None => Vec::new(),
        };
        self.emit(Event::CacheMiss {
            stage: at.stage.to_owned(),
            line: at.line,
            reasons,
        });
        Ok(false)
    }

    /// The cache repository's answer for `digest` when [`Engine::look_ahead`] asked for it
    /// (taken: asked once).
    fn looked_up_answer(&self, digest: &str) -> Option<Option<CacheEntry>> {
        self.looked_up.lock().ok()?.remove(digest)
    }

    /// The instruction keyword of `at` when the cache is off for it.
    fn uncached<'a>(&self, at: &StepAt<'a>) -> Option<&'a str> {
        let keyword = at.original.split_whitespace().next()?;
        self.opts
            .uncached
            .iter()
            .any(|k| k.eq_ignore_ascii_case(keyword))
            .then_some(keyword)
    }

    /// Records what a layer step that missed produced, with `created_by` as its history entry.
    pub(crate) fn finish_miss(
        &self,
        image: &mut StageImage,
        key: CacheKey,
        at: &StepAt<'_>,
        layer: Option<LayerRef>,
        created_by: String,
    ) -> Result<()> {
        image.clock = self.now();
        image.config.history.push(History {
            created: Some(image.clock.clone()),
            created_by: Some(created_by),
            empty_layer: layer.is_none(),
            ..History::default()
        });
        if let Some(store) = self.cache.as_ref().filter(|_| self.uncached(at).is_none()) {
            let blob = match &layer {
                Some(l) => Some(self.state.layout.blob_path(&l.digest)?),
                None => None,
            };
            let entry = CacheEntry {
                key: key.clone(),
                layer: layer.as_ref().map(CachedLayer::from),
                config: json!({ "created": image.clock }),
                created_unix: 0,
            };
            store.record(&entry, blob.as_deref())?;
            crate::failpoint::hit("cache-entry-written");
            store.remember(&at.id, &key)?;
            if let Some(remote) = self.remote.as_ref().filter(|_| self.opts.cache_repo_writes)
                && let Err(error) = remote.record(&entry, blob.as_deref())
            {
                // The step's result is in the image and the local cache: a cache repository
                // that cannot be written costs later builds a miss, never this build (Kaniko
                // warns too).
                tracing::warn!(%error, "the step's layer was not recorded in the cache repository");
                self.emit(Event::Warning {
                    stage: Some(at.stage.to_owned()),
                    line: Some(at.line),
                    message: format!(
                        "not recorded in the cache repository {}: {error}",
                        remote.repository()
                    ),
                });
            }
        }
        if let Some(layer) = layer {
            image.layer_keys.insert(
                image.layers.len(),
                (key.digest.clone(), image.clock.clone()),
            );
            image.layers.push(layer);
        }
        image.key = key.digest;
        self.steps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Executes one instruction. Returns whether the cache answered it.
    pub(crate) fn step(
        &self,
        image: &mut StageImage,
        rootfs: &mut Option<Rootfs>,
        located: &Located<Instruction>,
        at: &StepAt<'_>,
        cmd_set: &mut bool,
    ) -> Result<bool> {
        let instruction = &located.value;
        let config = &mut image.config.config;
        let shell = config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".to_owned(), "-c".to_owned()]);
        let command = |line: &CommandLine| match line {
            CommandLine::Exec(argv) => argv.clone(),
            CommandLine::Shell(text) => {
                let mut argv = shell.clone();
                argv.push(text.clone());
                argv
            }
        };
        match instruction {
            Instruction::Env { vars } => {
                for (k, v) in vars {
                    image.set_env(k, v);
                }
            }
            Instruction::Label { labels } => {
                let map = config.labels.get_or_insert_with(BTreeMap::new);
                for (k, v) in labels {
                    map.insert(k.clone(), v.clone());
                }
            }
            Instruction::Maintainer { name } => image.config.author = Some(name.clone()),
            Instruction::Expose { ports } => {
                let map = config.exposed_ports.get_or_insert_with(BTreeMap::new);
                for port in ports {
                    for spec in expose(port)? {
                        map.insert(spec, json!({}));
                    }
                }
            }
            Instruction::Volume { paths } => {
                let map = config.volumes.get_or_insert_with(BTreeMap::new);
                for path in paths {
                    map.insert(path.clone(), json!({}));
                }
            }
            Instruction::User { user } => config.user = Some(user.clone()),
            Instruction::Cmd { command: line } => {
                config.cmd = Some(command(line));
                *cmd_set = true;
            }
            Instruction::Entrypoint { command: line } => {
                config.entrypoint = Some(command(line));
                if !*cmd_set {
                    config.cmd = None;
                }
            }
            Instruction::Shell { shell } => config.shell = Some(shell.clone()),
            Instruction::Stopsignal { signal } => config.stop_signal = Some(signal.clone()),
            Instruction::Healthcheck { check } => {
                config.healthcheck = Some(healthcheck(check, &shell));
            }
            Instruction::Onbuild { trigger } => {
                config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(trigger.clone());
            }
            Instruction::Arg { .. } => {}
            Instruction::Workdir { path } => return self.workdir(image, rootfs, path, at),
            Instruction::Copy(copy) => {
                return self.copy(image, rootfs, copy, None, instruction, at);
            }
            Instruction::Add(add) => {
                return self.copy(image, rootfs, &add.copy, Some(add), instruction, at);
            }
            Instruction::Run(run) => return self.run(image, rootfs, run, instruction, at),
        }
        self.config_step(image, instruction, at)?;
        Ok(false)
    }

    pub(crate) fn workdir(
        &self,
        image: &mut StageImage,
        rootfs: &mut Option<Rootfs>,
        path: &str,
        at: &StepAt<'_>,
    ) -> Result<bool> {
        let dir = workdir_of(image, path);
        image.config.config.working_dir = Some(dir.clone());
        let user = image.config.config.user.clone().unwrap_or_default();
        let key = match self.take_planned(at, &image.key) {
            Some(key) => key,
            None => workdir_key(&image.key, &dir, &user),
        };
        let created_by = crate::history::workdir(&dir);
        if self.cache_hit(image, &key, at, &created_by)? {
            return Ok(true);
        }
        let root = self.materialize(rootfs, &image.layers)?;
        let owner = owner_of(&root, &user)?;
        let entries = self.missing_dirs(&root, &dir, owner)?;
        // BuildKit makes a layer for any WORKDIR but `/`, an empty one when the directory is
        // there already.
        let layer = if dir == "/" {
            None
        } else {
            Some(self.write_layer(entries)?)
        };
        self.finish_miss(image, key, at, layer, created_by)?;
        Ok(false)
    }

    /// Directory entries for the components of `dir` missing in `root` (after following its
    /// symlinks inside the root).
    pub(crate) fn missing_dirs(
        &self,
        root: &Path,
        dir: &str,
        owner: (u32, u32),
    ) -> Result<Vec<Entry>> {
        let resolved = strata_sandbox::resolve_in_root(root, dir)?;
        let mut entries = Vec::new();
        let mut prefix = String::new();
        for part in resolved.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            let host = root.join(&prefix);
            match fs::symlink_metadata(&host) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(Error::Invalid(format!(
                        "/{prefix} exists and is not a directory"
                    )));
                }
                Err(_) => entries.push(Entry {
                    path: prefix.clone().into(),
                    kind: EntryKind::Dir,
                    metadata: Metadata {
                        mode: 0o755,
                        uid: owner.0,
                        gid: owner.1,
                        mtime: self.mtime_now(),
                        ..Metadata::default()
                    },
                }),
            }
        }
        Ok(entries)
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
        Ok(Arc::new(self.build_stage(index, &have)?))
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

    /// The root filesystem of a finished stage, materialized on first use.
    pub(crate) fn stage_rootfs(&self, stage: &StageResult) -> Result<PathBuf> {
        let mut rootfs = stage
            .rootfs
            .lock()
            .map_err(|_| Error::Task("stage root filesystem lock poisoned".to_owned()))?;
        self.materialize(&mut rootfs, &stage.image.layers)
    }

    pub(crate) fn sandbox(&self) -> Result<&Sandbox> {
        self.sandbox
            .get_or_init(|| {
                // Ask first (unless choosing the isolation did), so that a container without
                // the privileges gets the reason and what to change, not the raw error of the
                // first mount that fails.
                let support = self
                    .namespaces_probe
                    .clone()
                    .unwrap_or_else(|| strata_sandbox::probe().namespaces);
                if let strata_sandbox::Support::No(reason) = &support {
                    return Err(format!(
                        "strata runs RUN steps in Linux namespaces, and this machine or \
                         container does not allow them ({reason}). Give the container \
                         CAP_SYS_ADMIN with seccomp and AppArmor unconfined, or allow \
                         unprivileged user namespaces; Dockerfiles without RUN build \
                         anywhere. Inside an unprivileged container, `--isolation \
                         in-container` runs RUN steps as Kaniko does (the build then owns the \
                         container's root filesystem)."
                    ));
                }
                Sandbox::new().map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::Invalid(format!("RUN cannot be executed here: {e}")))
    }

    pub(crate) fn use_overlay(&self, sandbox: &Sandbox) -> Result<bool> {
        let probe = self.overlay.get_or_init(|| {
            if sandbox.user_namespace() {
                return Err("rootless steps run on a plain directory".to_owned());
            }
            let support = strata_snapshot::overlay::probe();
            if support.usable {
                Ok(())
            } else {
                Err(support
                    .reason
                    .unwrap_or_else(|| "overlay unavailable".to_owned()))
            }
        });
        match (self.opts.snapshot_mode, probe) {
            (SnapshotMode::Walk, _) => Ok(false),
            (SnapshotMode::Auto, result) => Ok(result.is_ok()),
            (SnapshotMode::Overlay, Ok(())) => Ok(true),
            (SnapshotMode::Overlay, Err(reason)) => Err(Error::Invalid(format!(
                "snapshot mode overlay is unavailable here: {reason}"
            ))),
        }
    }
}

/// The directory `WORKDIR path` makes current in `image` (relative to the current one).
fn workdir_of(image: &StageImage, path: &str) -> String {
    let previous = image
        .config
        .config
        .working_dir
        .clone()
        .unwrap_or_else(|| "/".to_owned());
    clean_absolute(&if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{previous}/{path}")
    })
}

/// The cache key of `WORKDIR dir` for `user` on the chain head `parent`.
fn workdir_key(parent: &str, dir: &str, user: &str) -> CacheKey {
    KeyBuilder::new(parent)
        .instruction(&format!("WORKDIR {dir}"))
        .flag("user", user)
        .build()
}

/// The Dockerfile crate's platform as the registry crate names it (the two crates do not
/// know each other).
pub(crate) fn registry_platform(platform: strata_dockerfile::Platform) -> Platform {
    Platform {
        os: platform.os,
        architecture: platform.architecture,
        variant: platform.variant,
    }
}

/// The config and layer descriptors of the image manifest `digest` in `layout`, parsed and
/// validated (digests, sizes, media types); an index is an error here.
fn image_manifest(layout: &Layout, digest: &str) -> Result<(Descriptor, Vec<Descriptor>)> {
    match Manifest::parse(&layout.read_blob(digest)?, digest)? {
        Manifest::Image { config, layers, .. } => Ok((config, layers)),
        Manifest::Index { .. } => Err(Error::Invalid(format!(
            "{digest} is an image index where an image manifest was expected"
        ))),
    }
}

/// The instruction as the cache key sees it: its typed, expanded form, serialised (never
/// `Debug` output, which may change with any refactoring).
pub(crate) fn canonical(instruction: &Instruction) -> Result<String> {
    key_text(instruction)
}

/// A part of a cache key as serialised data: stable as long as the serialised form is, which
/// the Dockerfile crate's tests pin.
pub(crate) fn key_text<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::Invalid(format!("describing a step for its cache key: {e}")))
}

/// The owner `WORKDIR` gives the directories it creates: the current `USER`.
fn owner_of(root: &Path, user: &str) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    Ok(strata_sandbox::chown_ids(root, user)?)
}

/// `/`-rooted and cleaned (`..` stops at the root).
pub(crate) fn clean_absolute(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `EXPOSE` values as config keys: `80` → `80/tcp`, ranges expanded.
pub(crate) fn expose(spec: &str) -> Result<Vec<String>> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_lowercase()),
        None => (spec, "tcp".to_owned()),
    };
    let bad = || Error::Invalid(format!("invalid port `{spec}`"));
    let (low, high) = match ports.split_once('-') {
        Some((a, b)) => (
            a.parse::<u16>().map_err(|_| bad())?,
            b.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = ports.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if high < low {
        return Err(bad());
    }
    Ok((low..=high).map(|p| format!("{p}/{proto}")).collect())
}

/// `HEALTHCHECK` as the config stores it (durations in nanoseconds).
fn healthcheck(check: &Healthcheck, shell: &[String]) -> serde_json::Value {
    let _ = shell;
    match check {
        Healthcheck::None => json!({ "Test": ["NONE"] }),
        Healthcheck::Check {
            test,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        } => {
            let mut value = json!({
                "Test": match test {
                    CommandLine::Exec(argv) => std::iter::once("CMD".to_owned()).chain(argv.iter().cloned()).collect::<Vec<_>>(),
                    CommandLine::Shell(text) => vec!["CMD-SHELL".to_owned(), text.clone()],
                },
            });
            for (name, duration) in [
                ("Interval", interval),
                ("Timeout", timeout),
                ("StartPeriod", start_period),
                ("StartInterval", start_interval),
            ] {
                if let Some(d) = duration {
                    value[name] = json!(d.as_nanos() as u64);
                }
            }
            if let Some(retries) = retries {
                value["Retries"] = json!(retries);
            }
            value
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_normalises_and_expands() {
        assert_eq!(expose("80").unwrap(), ["80/tcp"]);
        assert_eq!(expose("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(
            expose("8000-8002").unwrap(),
            ["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(expose("http").is_err());
    }

    #[test]
    fn paths_are_cleaned_inside_the_root() {
        assert_eq!(clean_absolute("/app/../../etc/./x"), "/etc/x");
        assert_eq!(clean_absolute("app//src/"), "/app/src");
    }
}
