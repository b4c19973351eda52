//! [`Build`]: the builder embedders configure and run.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_cache::LocalStore;
use strata_dockerfile::{Plan, PlanOptions};
use strata_layer::Compression;
use strata_oci::Platform;
use strata_registry::RegistryClient;

use crate::Isolation;
use crate::config::{LayerRef, manifest};
use crate::context::{Context, ContextSource};
use crate::engine::{Engine, Options, Secret, SnapshotMode, StageResult};
use crate::error::{Error, Result};
use crate::event::{Event, EventSink};
use crate::image::Image;
use crate::options::{ImageSource, LayerStep};
use crate::state::{State, default_state_dir};

/// Where the Dockerfile comes from.
#[derive(Debug, Clone)]
enum DockerfileSource {
    /// `Dockerfile` in the context (the default).
    Default,
    /// A path: absolute, or relative to the current directory.
    Path(PathBuf),
    /// The text itself.
    Text(String),
}

/// A build, configured with chained calls and started with [`Build::run`].
///
/// Run by an ordinary user, a build gives root's image when the program first re-executes
/// itself in a user namespace with [`crate::sandbox::enter_user_namespace`] (the `strata`
/// command does); in the caller's own process, steps' files get the ids they had inside, but
/// base images' owners are not applied on disk.
///
/// Every setting has a default: the `Dockerfile` at the context's root, the host's platform,
/// the state directory of [`default_state_dir`], the local cache on, gzip layers, events
/// nowhere.
///
/// ```no_run
/// # async fn example() -> strata::Result<()> {
/// let image = strata::Build::new("path/to/context").run().await?;
/// image.push("registry.example.com/team/app:latest").await?;
/// # Ok(())
/// # }
/// ```
pub struct Build {
    context: ContextSource,
    dockerfile: DockerfileSource,
    build_args: BTreeMap<String, String>,
    target: Option<String>,
    platform: Option<Platform>,
    labels: BTreeMap<String, String>,
    state_dir: Option<PathBuf>,
    cache: bool,
    cache_repo: Option<String>,
    cache_ttl: Option<std::time::Duration>,
    single_snapshot: bool,
    ignore_paths: Vec<String>,
    registry: Option<RegistryClient>,
    snapshot_mode: SnapshotMode,
    reproducible: Option<i64>,
    compression: Compression,
    events: Option<EventSink>,
    secrets: BTreeMap<String, Secret>,
    named_contexts: BTreeMap<String, ImageSource>,
    uncached: Vec<String>,
    max_download: u64,
    cache_repo_writes: bool,
    cache_from: Vec<String>,
    isolation: Isolation,
    force: bool,
    ignore_var_run: bool,
}

impl std::fmt::Debug for Build {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Build")
            .field("context", &self.context)
            .field("dockerfile", &self.dockerfile)
            .field("build_args", &self.build_args.keys().collect::<Vec<_>>())
            .field("target", &self.target)
            .field("platform", &self.platform)
            .field("state_dir", &self.state_dir)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl Build {
    /// A build of `context`: a directory, or a tar file (see [`ContextSource`]).
    pub fn new(context: impl Into<ContextSource>) -> Build {
        Build {
            context: context.into(),
            dockerfile: DockerfileSource::Default,
            build_args: BTreeMap::new(),
            target: None,
            platform: None,
            labels: BTreeMap::new(),
            state_dir: None,
            cache: true,
            cache_repo: None,
            cache_ttl: None,
            single_snapshot: false,
            ignore_paths: Vec::new(),
            registry: None,
            snapshot_mode: SnapshotMode::Auto,
            reproducible: None,
            compression: Compression::default(),
            events: None,
            secrets: BTreeMap::new(),
            named_contexts: BTreeMap::new(),
            uncached: Vec::new(),
            max_download: strata_registry::DEFAULT_DOWNLOAD_LIMIT,
            cache_repo_writes: true,
            cache_from: Vec::new(),
            isolation: Isolation::Auto,
            force: false,
            ignore_var_run: true,
        }
    }

    /// The Dockerfile's path (default: `Dockerfile` in the context).
    pub fn dockerfile(mut self, path: impl AsRef<Path>) -> Build {
        self.dockerfile = DockerfileSource::Path(path.as_ref().to_owned());
        self
    }

    /// The Dockerfile's text.
    pub fn dockerfile_text(mut self, text: impl Into<String>) -> Build {
        self.dockerfile = DockerfileSource::Text(text.into());
        self
    }

    /// A build arg (`--build-arg NAME=VALUE`).
    pub fn build_arg(mut self, name: impl Into<String>, value: impl Into<String>) -> Build {
        self.build_args.insert(name.into(), value.into());
        self
    }

    /// The stage to build (default: the last).
    pub fn target(mut self, stage: impl Into<String>) -> Build {
        self.target = Some(stage.into());
        self
    }

    /// The platform to build for (default: the host's); parse one from text with
    /// `"linux/arm64".parse::<Platform>()`.
    pub fn platform(mut self, platform: Platform) -> Build {
        self.platform = Some(platform);
        self
    }

    /// A label on the final image.
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Build {
        self.labels.insert(name.into(), value.into());
        self
    }

    /// The state directory (blobs, cache, scratch; see [`default_state_dir`]).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Build {
        self.state_dir = Some(dir.into());
        self
    }

    /// Whether to use the local cache (default: on).
    pub fn cache(mut self, on: bool) -> Build {
        self.cache = on;
        self
    }

    /// A registry repository (`registry/name`) that keeps cache entries for every machine
    /// (Kaniko's `--cache-repo`): looked up when the local cache misses, written after every
    /// step that ran.
    pub fn cache_repo(mut self, repository: impl Into<String>) -> Build {
        self.cache_repo = Some(repository.into());
        self
    }

    /// An image built earlier by strata (`registry/name:tag`) whose layers answer the
    /// steps they were made by, without a cache repository (repeatable; BuildKit's and
    /// buildah's `--cache-from`). strata records each layer's cache key in the manifest
    /// annotation [`crate::CACHE_KEYS_ANNOTATION`]; images without it are ignored with a
    /// warning. Hits leave the layers in the image's repository until something needs them.
    pub fn cache_from(mut self, image: impl Into<String>) -> Build {
        self.cache_from.push(image.into());
        self
    }

    /// One layer for everything the target stage adds to its base (Kaniko's
    /// `--single-snapshot`); steps are still cached one by one.
    pub fn single_snapshot(mut self, on: bool) -> Build {
        self.single_snapshot = on;
        self
    }

    /// Where RUN steps execute (default [`Isolation::Auto`]: namespaces where the machine
    /// allows them, else the in-container mode inside a container). The event stream says
    /// which ran and why.
    pub fn isolation(mut self, isolation: Isolation) -> Build {
        self.isolation = isolation;
        self
    }

    /// Allows the in-container mode outside a container (Kaniko's `--force`): it replaces
    /// this machine's root filesystem with the image's. Only for machines made for the build.
    pub fn force(mut self, force: bool) -> Build {
        self.force = force;
        self
    }

    /// Whether the in-container mode leaves `/var/run` and `/run` alone (default: yes, as
    /// Kaniko's `--ignore-var-run`).
    pub fn ignore_var_run(mut self, ignore: bool) -> Build {
        self.ignore_var_run = ignore;
        self
    }

    /// Whether steps that ran are recorded in the cache repository (default: yes). `false` is
    /// Kaniko's `--no-push-cache`: the repository is still looked up.
    pub fn cache_repo_writes(mut self, on: bool) -> Build {
        self.cache_repo_writes = on;
        self
    }

    /// The most bytes one download (`ADD https://…`) may bring (default 10 GiB): a server
    /// that sends more ends the build with an error, and nothing of it is kept.
    pub fn max_download_size(mut self, bytes: u64) -> Build {
        self.max_download = bytes;
        self
    }

    /// Leaves `path` (absolute, inside the image) and what is below it out of the layers RUN
    /// steps make (Kaniko's `--ignore-path`).
    pub fn ignore_path(mut self, path: impl AsRef<str>) -> Build {
        let path = path.as_ref().trim_matches('/').to_owned();
        if !path.is_empty() {
            self.ignore_paths.push(path);
        }
        self
    }

    /// Whether the layers of `instruction` steps (`RUN`, `COPY` or `ADD`) are cached (default:
    /// all are). Kaniko's `--cache-run-layers` and `--cache-copy-layers`; unlike Kaniko,
    /// strata caches COPY layers by default, because their keys hold the copied content's
    /// digest.
    pub fn cache_layers_of(mut self, step: LayerStep, on: bool) -> Build {
        let keyword = step.keyword().to_owned();
        self.uncached.retain(|k| *k != keyword);
        if !on {
            self.uncached.push(keyword);
        }
        self
    }

    /// A named build context: `name` in `FROM`, `COPY --from` and `RUN --mount from=` stands
    /// for the image `source`, unless a stage has that name. BuildKit's `--build-context`;
    /// parse a source from its text (`oci-layout://PATH[:TAG]`, `docker-image://REFERENCE`)
    /// with `str::parse::<ImageSource>`. Directories are not supported yet.
    pub fn build_context(mut self, name: impl Into<String>, source: ImageSource) -> Build {
        self.named_contexts.insert(name.into(), source);
        self
    }

    /// Cache entries older than `ttl` are not used (default: no limit).
    pub fn cache_ttl(mut self, ttl: std::time::Duration) -> Build {
        self.cache_ttl = Some(ttl);
        self
    }

    /// The registry client for base images and pushes (default: credentials from the
    /// Docker config, plain HTTP only for loopback registries).
    pub fn registry(mut self, client: RegistryClient) -> Build {
        self.registry = Some(client);
        self
    }

    /// How RUN steps find their changes (default: [`SnapshotMode::Auto`]).
    pub fn snapshot_mode(mut self, mode: SnapshotMode) -> Build {
        self.snapshot_mode = mode;
        self
    }

    /// Reproducible output: every timestamp in layers, history and config is at most
    /// `epoch` seconds (like `SOURCE_DATE_EPOCH`). A `SOURCE_DATE_EPOCH` build arg does the
    /// same, and wins over this, as in BuildKit.
    pub fn reproducible(mut self, epoch: i64) -> Build {
        self.reproducible = Some(epoch);
        self
    }

    /// Layer compression (default: gzip level 6).
    pub fn compression(mut self, compression: Compression) -> Build {
        self.compression = compression;
        self
    }

    /// Sends progress events to `sink`.
    pub fn on_event(mut self, sink: impl Fn(&Event) + Send + Sync + 'static) -> Build {
        self.events = Some(Arc::new(sink));
        self
    }

    /// A secret for `RUN --mount=type=secret,id=ID`.
    pub fn secret(mut self, id: impl Into<String>, secret: Secret) -> Build {
        self.secrets.insert(id.into(), secret);
        self
    }

    /// Checks the options given as text that can be wrong on their own, all at once, before
    /// anything is read or written: the cache repository and `--cache-from` images
    /// (references), and the names of build contexts. (Platforms, layer steps and build
    /// context sources are typed, so they were checked when they were parsed.) [`Build::run`]
    /// starts with it; an embedder can call it when the options are set. Errors are
    /// [`ErrorKind::Invalid`](crate::ErrorKind::Invalid).
    ///
    /// ```
    /// let build = strata::Build::new(".").cache_repo("Not A Repository");
    /// assert_eq!(build.validate().unwrap_err().kind(), strata::ErrorKind::Invalid);
    /// ```
    pub fn validate(&self) -> Result<()> {
        for reference in self.cache_repo.iter().chain(&self.cache_from) {
            strata_registry::Reference::parse(reference)?;
        }
        for name in self.named_contexts.keys() {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':'));
            if !valid {
                return Err(Error::Invalid(format!(
                    "build context name `{name}`: use letters, digits, `_`, `-`, `.`, `/` and `:`"
                )));
            }
        }
        Ok(())
    }

    /// The platform to build for: the one set, or the host's.
    fn target_platform(&self) -> Platform {
        self.platform.clone().unwrap_or_else(Platform::host)
    }

    /// Runs the build and returns the image, whose blobs are in the state directory.
    ///
    /// Events reach the [`Build::on_event`] subscriber on a thread of their own (a slow
    /// subscriber never stalls a step), in order, and all of them before this returns.
    pub async fn run(mut self) -> Result<Image> {
        self.validate()?;
        let runtime = tokio::runtime::Handle::current();
        let state_dir = self.state_dir.clone().unwrap_or_else(default_state_dir);
        // The engine sends to the delivery's queue; the image gets the subscriber itself.
        let subscriber = self.events.take();
        let delivery = match &subscriber {
            Some(subscriber) => {
                let (delivery, sink) = crate::delivery::Delivery::start(Arc::clone(subscriber))
                    .map_err(|e| Error::Task(format!("cannot start event delivery: {e}")))?;
                self.events = Some(sink);
                Some(delivery)
            }
            None => None,
        };
        let prepared = tokio::task::spawn_blocking(move || self.prepare(&state_dir, runtime))
            .await
            .map_err(|e| Error::Task(e.to_string()));
        let result = match prepared {
            Ok(Ok((engine, work))) => {
                let engine = Arc::new(engine);
                let _cancel_on_drop = CancelOnDrop(engine.cancel.clone());
                let result = build_stages(&engine).await;
                engine.save_memo();
                drop(work);
                result
            }
            Ok(Err(e)) | Err(e) => Err(e),
        };
        if let Some(delivery) = delivery {
            // Waiting is blocking work: off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || delivery.flush()).await;
        }
        // The image reports its own later events (pushes) to the subscriber directly.
        result.map(|image| image.with_events(subscriber))
    }

    /// Everything a build needs before its first stage: the state directory, the context
    /// (fetched when remote), the Dockerfile and its plan, the caches, and where RUN executes.
    fn prepare(
        self,
        state_dir: &Path,
        runtime: tokio::runtime::Handle,
    ) -> Result<(Engine, crate::state::WorkDir)> {
        let target_platform = self.target_platform();
        let state = self.open_state(state_dir)?;
        let work = state.work_dir()?;
        let ignore = self.ignore_file()?;
        let dir_dockerfile = match &self.context {
            ContextSource::Dir(dir) => Some(default_dockerfile(dir)),
            _ => None,
        };
        let named_contexts = self.named_contexts.clone();
        let registry = with_transfer_events(
            self.registry
                .unwrap_or_else(|| RegistryClient::builder().build()),
            &self.events,
        );
        let (cache, remote) = cache_stores(
            self.cache.then_some(self.cache_ttl),
            self.cache_repo.as_deref(),
            &state,
            &registry,
            &runtime,
        )?;
        let fetch = Fetch {
            registry: &registry,
            work: work.path(),
            runtime: &runtime,
            max_download: self.max_download,
            events: &self.events,
        };
        let (context, default_labels) = fetch.context(self.context, ignore.as_deref())?;
        let (file_name, text) = read_dockerfile(&self.dockerfile, &context, dir_dockerfile)?;
        let dockerfile_error = |error| Error::Dockerfile {
            file: file_name.clone(),
            error,
        };
        let file = strata_dockerfile::parse(&text).map_err(dockerfile_error)?;
        let plan = Plan::new(
            &file,
            &PlanOptions {
                build_args: self.build_args.clone(),
                target: self.target.clone(),
                target_platform: target_platform.clone(),
                build_platform: Platform::host(),
            },
        )
        .map_err(dockerfile_error)?;
        let reproducible = source_date_epoch(&self.build_args, self.reproducible)?;
        let mut engine = Engine::new(
            state,
            cache,
            remote,
            registry,
            plan,
            file_name,
            context,
            work.path().to_owned(),
            Options {
                platform: target_platform,
                reproducible,
                compression: self.compression,
                labels: self.labels,
                default_labels,
                secrets: self.secrets,
                snapshot_mode: self.snapshot_mode,
                single_snapshot: self.single_snapshot,
                ignore_paths: self.ignore_paths,
                named_contexts,
                uncached: self.uncached,
                max_download: self.max_download,
                cache_repo_writes: self.cache_repo_writes,
                cache_from: self.cache_from,
                isolation: self.isolation,
                force: self.force,
                ignore_var_run: self.ignore_var_run,
            },
            self.events,
            runtime,
        );
        let has_run = file.nodes.iter().any(|n| {
            n.instruction == "run" || n.onbuild.as_ref().is_some_and(|t| t.instruction == "run")
        });
        set_isolation(&mut engine, state_dir, has_run)?;
        Ok((engine, work))
    }

    /// Opens the state directory; when that fails in a container that allows nothing, says
    /// what the build needs rather than only what failed.
    fn open_state(&self, state_dir: &Path) -> Result<State> {
        match State::open(state_dir) {
            Ok(state) => Ok(state),
            // Not root in a container where namespaces are denied: the state directory is
            // rarely the only trouble, so say what the build needs.
            Err(e)
                if self.isolation != Isolation::Namespaces
                    && !rustix::process::geteuid().is_root()
                    && crate::incontainer::container_marker().is_some()
                    && !strata_sandbox::probe().namespaces.is_yes() =>
            {
                let why = crate::incontainer::check(self.force)
                    .err()
                    .map_or_else(String::new, |e| format!("{e}; "));
                Err(Error::Invalid(format!("{why}{e}")))
            }
            Err(e) => Err(e),
        }
    }

    /// A directory context's `.dockerignore` text: `<Dockerfile>.dockerignore` beside the
    /// Dockerfile first.
    fn ignore_file(&self) -> Result<Option<String>> {
        let ContextSource::Dir(dir) = &self.context else {
            return Ok(None);
        };
        let dockerfile_path = match &self.dockerfile {
            DockerfileSource::Path(p) => p.clone(),
            _ => default_dockerfile(dir),
        };
        strata_dockerfile::ignore_file_for(dir, &dockerfile_path)
            .map(|p| std::fs::read_to_string(&p).map_err(Error::io(&p)))
            .transpose()
    }
}

/// The registry client, reporting its transfers as events (and to the fault tests' points).
fn with_transfer_events(registry: RegistryClient, events: &Option<EventSink>) -> RegistryClient {
    if events.is_none() && !crate::failpoint::any() {
        return registry;
    }
    let sink = events.clone();
    registry.with_progress(Arc::new(move |t: &strata_registry::Transfer| {
        let push = t.direction == strata_registry::Direction::Push;
        if !push && t.done == t.total {
            crate::failpoint::hit("blob-staged");
        }
        if push && t.done > 0 && t.done < t.total {
            crate::failpoint::hit("mid-push");
        }
        if let Some(sink) = &sink {
            sink(&Event::Transfer {
                reference: t.reference.clone(),
                digest: t.digest.clone(),
                push,
                done: t.done,
                total: t.total,
            })
        }
    }))
}

/// What fetching a remote context needs.
struct Fetch<'a> {
    registry: &'a RegistryClient,
    work: &'a Path,
    runtime: &'a tokio::runtime::Handle,
    max_download: u64,
    events: &'a Option<EventSink>,
}

impl Fetch<'_> {
    /// The build context on disk, and the labels it gives the image (a git context's
    /// revision and source).
    fn context(
        &self,
        source: ContextSource,
        ignore: Option<&str>,
    ) -> Result<(Context, BTreeMap<String, String>)> {
        let mut labels = BTreeMap::new();
        let started = std::time::Instant::now();
        let context = match source {
            ContextSource::Git(git) => {
                let git = git.with_tls_of(self.registry);
                let dir = Context::scratch_dir(self.work)?;
                let checkout =
                    crate::git::checkout(&git, self.work, dir.path(), self.max_download, false)?;
                emit_fetched(
                    self.events,
                    checkout.url.clone(),
                    Some(checkout.commit.clone()),
                    checkout.bytes,
                    started,
                );
                labels.insert(
                    "org.opencontainers.image.revision".to_owned(),
                    checkout.commit.clone(),
                );
                labels.insert(
                    "org.opencontainers.image.source".to_owned(),
                    checkout.url.clone(),
                );
                Context::open_unpacked(dir, None)?
            }
            ContextSource::Url(url) => {
                let fetched = self.runtime.block_on(self.registry.fetch_url(
                    &url,
                    self.work,
                    self.max_download,
                ))?;
                let shown = crate::git::redact(&url);
                let context = archive_context(fetched.file.path(), self.work, &shown)?;
                emit_fetched(self.events, shown, None, fetched.size, started);
                context
            }
            ContextSource::Object(url) => {
                let fetched = self.runtime.block_on(crate::objects::fetch(
                    &url,
                    self.work,
                    self.max_download,
                ))?;
                let context = archive_context(fetched.file.path(), self.work, &url)?;
                emit_fetched(self.events, url, None, fetched.size, started);
                context
            }
            local => Context::open(local, self.work, ignore)?,
        };
        Ok((context, labels))
    }
}

/// The Dockerfile's name (for messages) and text: a tar context's is inside the archive
/// (`Dockerfile`, or a relative --dockerfile found there), as Kaniko reads it.
fn read_dockerfile(
    source: &DockerfileSource,
    context: &Context,
    dir_dockerfile: Option<PathBuf>,
) -> Result<(String, String)> {
    let path = match source {
        DockerfileSource::Text(text) => return Ok(("Dockerfile".to_owned(), text.clone())),
        DockerfileSource::Path(path) => {
            let inside = context.root().join(path);
            if !context.is_dir_source() && path.is_relative() && inside.is_file() {
                inside
            } else {
                path.clone()
            }
        }
        DockerfileSource::Default => match dir_dockerfile {
            Some(path) => path,
            None => {
                let path = default_dockerfile(context.root());
                let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
                return Ok(("Dockerfile".to_owned(), text));
            }
        },
    };
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    Ok((path.display().to_string(), text))
}

/// BuildKit's rule: a SOURCE_DATE_EPOCH build arg is the epoch of the image's dates (strata
/// clamps file times to it too, as with `reproducible`); a value that is not a number of
/// seconds is an error, never ignored.
fn source_date_epoch(
    build_args: &BTreeMap<String, String>,
    reproducible: Option<i64>,
) -> Result<Option<i64>> {
    match build_args.get("SOURCE_DATE_EPOCH") {
        Some(text) => text.trim().parse::<i64>().map(Some).map_err(|_| {
            Error::Invalid(format!(
                "build arg SOURCE_DATE_EPOCH={text}: not a Unix time in seconds"
            ))
        }),
        None => Ok(reproducible),
    }
}

/// Chooses where RUN executes and sets the engine up for it: the user namespace's map when
/// rootless, and in the container's own `/`, what replacing `/` must leave alone.
fn set_isolation(engine: &mut Engine, state_dir: &Path, has_run: bool) -> Result<()> {
    let (mode, reason, probed) = choose_isolation(&engine.opts, has_run)?;
    engine.namespaces_probe = probed;
    if mode == Isolation::Namespaces && !rustix::process::geteuid().is_root() {
        engine.id_map = Some(strata_sandbox::UserNamespaceMap::for_caller());
    }
    if mode == Isolation::InContainer {
        // The build's inputs may be plain directories of the container, not volumes:
        // replacing `/` must not take them away.
        let mut inputs = vec![engine.context.root().to_owned()];
        for secret in engine.opts.secrets.values() {
            if let Secret::File(path) = secret {
                inputs.push(path.clone());
            }
        }
        for source in engine.opts.named_contexts.values() {
            if let ImageSource::OciLayout { path, .. } = source {
                inputs.push(path.clone());
            }
        }
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            inputs.push(PathBuf::from(dir));
        }
        engine.in_container = Some(crate::engine::InContainer {
            ignore: crate::incontainer::ignore_list(
                state_dir,
                &inputs,
                &engine.opts.ignore_paths,
                engine.opts.ignore_var_run,
            ),
            untouchable: crate::incontainer::untouchable(state_dir, &inputs),
            slash: std::sync::Mutex::new(None),
        });
    }
    if has_run {
        engine.emit(Event::Isolation {
            mode: mode.name().to_owned(),
            reason,
        });
    }
    Ok(())
}

/// Cancels the running steps when the build's future is dropped.
struct CancelOnDrop(strata_sandbox::Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Builds the needed stages, each as soon as the stages it needs are done (independent
/// stages at the same time, at most [`stage_limit`] at once), and assembles the target's
/// image. The first stage to fail cancels the others (their running steps are killed, their
/// next steps never start), is reported at once as [`Event::BuildFailed`], and is the error
/// returned once they have stopped.
async fn build_stages(engine: &Arc<Engine>) -> Result<Image> {
    let mut done: HashMap<usize, Arc<StageResult>> = HashMap::new();
    // In dependency order: in the in-container mode (one stage at a time) this is the order.
    let mut waiting: Vec<usize> = engine.plan.needed.clone();
    let limit = stage_limit(engine.in_container.is_some());
    let mut running: tokio::task::JoinSet<(usize, Result<StageResult>)> =
        tokio::task::JoinSet::new();
    let mut failure: Option<Error> = None;
    loop {
        while failure.is_none() && running.len() < limit {
            let ready = waiting.iter().position(|i| {
                engine.plan.stages[*i]
                    .dependencies
                    .iter()
                    .all(|d| done.contains_key(d))
            });
            let Some(position) = ready else { break };
            let index = waiting.remove(position);
            let engine = Arc::clone(engine);
            // Every stage done so far (a base image's ONBUILD trigger may name one).
            let finished = done.clone();
            running.spawn_blocking(move || (index, engine.build_stage(index, &finished)));
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let outcome = match joined {
            Ok((index, Ok(result))) => {
                done.insert(index, Arc::new(result));
                continue;
            }
            Ok((_, Err(error))) => error,
            Err(join) => Error::Task(join.to_string()),
        };
        // The first failure wins; what the cancelled stages report after it is noise.
        if failure.is_none() {
            engine.cancel.cancel();
            engine.emit(Event::BuildFailed {
                message: outcome.to_string(),
            });
            failure = Some(outcome);
        }
    }
    if let Some(error) = failure {
        return Err(error);
    }
    if !waiting.is_empty() {
        return Err(Error::Invalid(
            "the stages depend on each other in a cycle".to_owned(),
        ));
    }
    let target = done
        .get(&engine.plan.target)
        .ok_or_else(|| Error::Invalid("the target stage was not built".to_owned()))?;
    let engine2 = Arc::clone(engine);
    let image = target.image.clone();
    tokio::task::spawn_blocking(move || assemble(&engine2, image))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// How many stages build at once: one in the in-container mode (one root filesystem), else
/// one per core, at least two (stages wait on the network and on RUN commands as much as
/// they compute).
fn stage_limit(in_container: bool) -> usize {
    if in_container {
        1
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
    }
}

/// Where this build's RUN steps execute, and why; with what the namespace probe found, when
/// it ran (the sandbox then need not probe again).
fn choose_isolation(
    opts: &Options,
    has_run: bool,
) -> Result<(Isolation, String, Option<strata_sandbox::Support>)> {
    match opts.isolation {
        Isolation::Namespaces => Ok((Isolation::Namespaces, "asked for".to_owned(), None)),
        Isolation::InContainer => {
            let why = crate::incontainer::check(opts.force)?;
            Ok((Isolation::InContainer, format!("asked for; {why}"), None))
        }
        _ if !has_run => Ok((Isolation::Namespaces, "no RUN step".to_owned(), None)),
        _ => {
            let support = strata_sandbox::probe().namespaces;
            let (mode, reason) = match &support {
                strata_sandbox::Support::Yes => {
                    (Isolation::Namespaces, "namespaces work here".to_owned())
                }
                strata_sandbox::Support::No(reason) => {
                    match crate::incontainer::container_marker() {
                        Some(_) => {
                            let why = crate::incontainer::check(opts.force)?;
                            (
                                Isolation::InContainer,
                                format!("namespaces are not allowed here ({reason}); {why}"),
                            )
                        }
                        None => (
                            Isolation::Namespaces,
                            format!("not in a container, though namespaces fail: {reason}"),
                        ),
                    }
                }
            };
            Ok((mode, reason, Some(support)))
        }
    }
}

/// The context in the downloaded archive `file`, `shown` naming it in errors.
fn archive_context(file: &Path, scratch: &Path, shown: &str) -> Result<Context> {
    let reader = std::fs::File::open(file).map_err(Error::io(file))?;
    Context::open_stream(Box::new(std::io::BufReader::new(reader)), scratch, shown)
}

/// Reports a remote context on disk (with the commit, for a git context).
fn emit_fetched(
    events: &Option<EventSink>,
    source: String,
    revision: Option<String>,
    bytes: u64,
    started: std::time::Instant,
) {
    if let Some(sink) = events {
        sink(&Event::ContextFetched {
            source,
            revision,
            bytes,
            duration: started.elapsed(),
        });
    }
}

/// The Dockerfile a context holds when none is named: `Dockerfile`, else `dockerfile` (as
/// BuildKit falls back to it).
fn default_dockerfile(dir: &Path) -> PathBuf {
    let upper = dir.join("Dockerfile");
    let lower = dir.join("dockerfile");
    if upper.symlink_metadata().is_err() && lower.symlink_metadata().is_ok() {
        lower
    } else {
        upper
    }
}

/// The build's cache stores: the state directory's (when the cache is on, with its time to
/// live), and the cache repository (`--cache-repo`) in front of it.
fn cache_stores(
    cache: Option<Option<std::time::Duration>>,
    cache_repo: Option<&str>,
    state: &State,
    registry: &RegistryClient,
    runtime: &tokio::runtime::Handle,
) -> Result<(
    Option<LocalStore>,
    Option<crate::remote_cache::RegistryStore>,
)> {
    let Some(ttl) = cache else {
        return Ok((None, None));
    };
    let local = LocalStore::open(state.root().join("cache"))?.ttl(ttl);
    let remote = match cache_repo {
        Some(repository) => Some(
            crate::remote_cache::RegistryStore::new(
                registry.clone(),
                repository,
                state.layout.clone(),
                runtime.clone(),
            )?
            .ttl(ttl),
        ),
        None => None,
    };
    Ok((Some(local), remote))
}

/// Writes the final config and manifest into the state's blobs.
fn assemble(engine: &Engine, stage: crate::engine::StageImage) -> Result<Image> {
    let mut config = stage.config;
    if !engine.opts.labels.is_empty() || !engine.opts.default_labels.is_empty() {
        let labels = config.config.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in &engine.opts.labels {
            labels.insert(k.clone(), v.clone());
        }
        for (k, v) in &engine.opts.default_labels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    config.created = Some(stage.clock.clone());
    config.rootfs.diff_ids = stage.layers.iter().map(|l| l.diff_id.to_string()).collect();
    let config_bytes =
        serde_json::to_vec(&config).map_err(|e| Error::Invalid(format!("image config: {e}")))?;
    let config_blob = engine.state.layout.write_blob_bytes(&config_bytes)?;
    let layers: Vec<LayerRef> = stage.layers.clone();
    // The steps' cache keys, for `--cache-from` (aligned with the layers).
    let keys: Vec<Option<&(String, String)>> = (0..layers.len())
        .map(|at| stage.layer_keys.get(&at))
        .collect();
    // One annotation at most: oci-spec keeps them in a HashMap, whose order would make the
    // manifest's bytes vary from build to build if there were more.
    let mut annotations = BTreeMap::new();
    if keys.iter().any(Option::is_some) {
        let text = serde_json::to_string(&keys)
            .map_err(|e| Error::Invalid(format!("image manifest: {e}")))?;
        annotations.insert(crate::engine::CACHE_KEYS_ANNOTATION.to_owned(), text);
    }
    let manifest_bytes = serde_json::to_vec(&manifest(&config_blob, &layers, annotations)?)
        .map_err(|e| Error::Invalid(format!("image manifest: {e}")))?;
    let manifest_blob = engine.state.layout.write_blob_bytes(&manifest_bytes)?;
    engine.emit(Event::Built {
        digest: manifest_blob.digest.to_string(),
    });
    Ok(Image::new(
        engine.state.clone(),
        engine.registry.clone(),
        manifest_blob,
        config_blob.digest.to_string(),
        config,
        layers,
        stage.base_reference,
        engine.remote.as_ref().map(|r| r.repository()),
        (
            engine.hits.load(std::sync::atomic::Ordering::Relaxed),
            engine.steps.load(std::sync::atomic::Ordering::Relaxed),
        ),
        engine.events.clone(),
        engine.runtime.clone(),
        engine.blob_sources()?,
        engine.opts.cache_from.clone(),
    ))
}
