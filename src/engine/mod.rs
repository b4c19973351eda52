//! The engine: stages built in dependency order (independent ones at once), each instruction
//! turned into config changes and layers, every layer step looked up in the cache first.
//!
//! A stage's filesystem is its list of layers; it becomes a directory (`Rootfs`) only when
//! an instruction must look at it (a `RUN`, a `COPY` that missed the cache, a `COPY --from`
//! of it), by extracting the layers not yet applied. A fully cached build never extracts
//! anything.
//!
//! One module per concern: [`stage`] (a stage's lifecycle), [`config`] (configuration
//! instructions and WORKDIR), [`copy`] (COPY and ADD), [`run`] (RUN), [`cache`] (lookups and
//! records), [`rootfs`] (the directories steps see, and the layers they write).

mod cache;
mod config;
mod copy;
mod rootfs;
pub(crate) mod run;
mod stage;

pub(crate) use config::expose;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde_json::json;
use strata_cache::{CacheEntry, CacheKey, CacheStore, KeyBuilder, LocalStore};
use strata_dockerfile::{
    Base, CommandLine, Healthcheck, Instruction, Located, Plan, Stage, Step as PlannedStep, StepId,
};
use strata_layer::{Compression, Entry, EntryKind, Extractor, LayerWriter, Metadata, Mtime};
use strata_oci::{ImageManifest, Layout, Manifest, Platform};
use strata_registry::{Reference, RegistryClient};

use crate::remote_cache::RegistryStore;
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
    pub named_contexts: BTreeMap<String, crate::options::ImageSource>,
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
    /// The current WORKDIR (`/` when none was set).
    pub(crate) fn workdir(&self) -> String {
        self.config
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".to_owned())
    }

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
    /// Whether the state directory's filesystem makes reflinks (decided once).
    reflinks: OnceLock<bool>,
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
    /// Stages only a base image's ONBUILD trigger names, built on first use.
    on_demand: Mutex<HashMap<usize, Arc<StageResult>>>,
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
    /// The step's place in its stage (among the ONBUILD triggers, for one of them).
    pub(crate) index: usize,
    /// The step is a trigger the base image's ONBUILD left.
    pub(crate) onbuild: bool,
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
            reflinks: OnceLock::new(),
            layers,
            resolved: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            cache_from: OnceLock::new(),
            images: Mutex::new(HashMap::new()),
            rootfs_count: AtomicUsize::new(0),
            on_demand: Mutex::new(HashMap::new()),
            planned: Mutex::new(HashMap::new()),
            looked_up: Mutex::new(HashMap::new()),
            in_container: None,
            namespaces_probe: None,
            id_map: None,
        }
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

    /// Where `step` of the stage named `name` is: its identity for events, errors, the
    /// cache's explanations and the keys worked out ahead.
    pub(crate) fn step_at<'a>(
        &self,
        name: &'a str,
        step: &'a PlannedStep,
        done: &'a HashMap<usize, Arc<StageResult>>,
    ) -> StepAt<'a> {
        let StepId { index, onbuild, .. } = step.id;
        let id = if onbuild {
            format!("{}/{name}/onbuild-{index}", self.file_name)
        } else {
            format!("{}/{name}/{index}", self.file_name)
        };
        StepAt {
            stage: name,
            id,
            line: step.instruction.start_line,
            index,
            onbuild,
            original: &step.original,
            done,
        }
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
