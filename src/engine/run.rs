//! `RUN`: the command runs in the sandbox on an overlay of the stage's filesystem (the
//! upper directory is the change set) or, where overlays are unavailable, on the filesystem
//! itself between two scans.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use strata_cache::{CacheKey, KeyBuilder};
use strata_dockerfile::{
    CommandLine, Instruction, MountType, Network as RunNetwork, Run, Security,
};
use strata_sandbox::{Mount as SandboxMount, Network, Sharing, Step, Stream};
use strata_snapshot::{Kind, TreeEntry};

use crate::engine::{
    Engine, Rootfs, Secret, StageImage, StepAt, canonical, clean_absolute, key_text,
};
use crate::error::{Error, Result};
use crate::event::Event;

impl Engine {
    pub(crate) fn run(
        &self,
        image: &mut StageImage,
        rootfs: &mut Option<Rootfs>,
        run: &Run,
        instruction: &Instruction,
        at: &StepAt<'_>,
    ) -> Result<bool> {
        if run.security == Security::Insecure {
            return Err(Error::Unsupported("RUN --security=insecure".to_owned()));
        }
        let config = &image.config.config;
        let shell = config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".to_owned(), "-c".to_owned()]);
        let (argv, shebang_script) = self.run_argv(run, &shell)?;
        let mut env: Vec<(String, String)> = run.build_args.clone();
        for (k, v) in config.env_pairs() {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        let user = config.user.clone().unwrap_or_default();
        let workdir = image.workdir();
        let network = match run.network {
            RunNetwork::None => Network::None,
            RunNetwork::Default | RunNetwork::Host => Network::Host,
        };
        let key = match self.take_planned(at, &image.key) {
            Some(key) => key,
            None => self.run_key(image, run, instruction, at)?,
        };

        let created_by = crate::history::run(&argv);
        if self.cache_hit(image, &key, at, &created_by)? {
            return Ok(true);
        }
        // Only for a step that runs: a source stage's filesystem, secrets, copies.
        let prepare_started = std::time::Instant::now();
        let StepMounts {
            mut mounts,
            secret_env,
            secret_files: _secret_files,
            bind_copies,
        } = self.run_mounts(run, &workdir, shebang_script, at)?;

        if let Some(mode) = &self.in_container {
            let mut env = env;
            env.extend(secret_env);
            let step = crate::inplace::InPlaceStep {
                argv,
                env,
                workdir,
                user,
                network,
                mounts,
                bind_copies,
            };
            self.run_in_place(mode, image, key, at, step, created_by)?;
            return Ok(false);
        }
        let sandbox = self.sandbox()?;
        let overlay = self.use_overlay(sandbox)?;
        let store = overlay && self.use_store();
        let lowers = self.run_lowers(store, image, rootfs)?;
        let root = lowers.first().cloned().unwrap_or_default();
        let scratch = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&self.work)
            .map_err(Error::io(&self.work))?;
        let step_root = if overlay {
            scratch.path().join("merged")
        } else {
            root.clone()
        };
        let mut step = Step::exec(&step_root, argv.clone())
            .envs(env)
            .workdir(workdir)
            .user(user)
            .network(network);
        self.place_bind_copies(bind_copies, &mut mounts, scratch.path())?;
        for mount in mounts {
            step = step.mount(mount);
        }
        let command = Command {
            sandbox,
            step: step.envs(secret_env),
            argv,
            at,
            prepare_started,
        };
        let done = StepDone { key, created_by };
        if overlay {
            self.run_on_overlay(&command, image, rootfs, done, lowers, store, scratch.path())?;
        } else {
            self.run_between_scans(&command, image, rootfs, done, &root)?;
        }
        Ok(false)
    }

    /// The overlay's lower directories, the top-most first: with the layer `store`, its
    /// directories of the stage's layers; else one private directory the layers are
    /// extracted into, which a RUN without overlay runs in.
    fn run_lowers(
        &self,
        store: bool,
        image: &StageImage,
        rootfs: &mut Option<Rootfs>,
    ) -> Result<Vec<PathBuf>> {
        if !store {
            return Ok(vec![self.materialize(rootfs, &image.layers)?]);
        }
        let mut lowers = self.layer_dirs(&image.layers)?;
        if lowers.is_empty() {
            lowers.push(self.empty_dir()?);
        }
        Ok(lowers)
    }

    /// Makes the private copies bind mounts get (context sources, a stage's files) in
    /// `scratch`, and points their mounts at them.
    fn place_bind_copies(
        &self,
        bind_copies: Vec<(usize, BindCopy)>,
        mounts: &mut [SandboxMount],
        scratch: &Path,
    ) -> Result<()> {
        for (index, copy) in bind_copies {
            let dest = scratch.join(format!("bind-{index}"));
            match copy {
                BindCopy::Context(source) => self.context.copy_out(&source, &dest)?,
                BindCopy::Tree(host) => copy_tree(&host, &dest)?,
            }
            if let Some(SandboxMount {
                kind: strata_sandbox::MountKind::Bind { source, .. },
                ..
            }) = mounts.get_mut(index)
            {
                *source = dest;
            }
        }
        Ok(())
    }

    /// Runs the command on an overlay of `lowers` whose upper directory becomes the step's
    /// layer (and, when it holds exactly the layer, the layer store's directory for it).
    #[allow(clippy::too_many_arguments)]
    fn run_on_overlay(
        &self,
        command: &Command<'_, '_>,
        image: &mut StageImage,
        rootfs: &mut Option<Rootfs>,
        done: StepDone,
        mut lowers: Vec<PathBuf>,
        mut store: bool,
        scratch: &Path,
    ) -> Result<()> {
        let (upper, work, merged) = (
            scratch.join("upper"),
            scratch.join("work"),
            scratch.join("merged"),
        );
        for dir in [&upper, &work, &merged] {
            fs::create_dir(dir).map_err(Error::io(dir))?;
        }
        let mount = match strata_snapshot::overlay::OverlayMount::mount(
            &lowers, &upper, &work, &merged,
        ) {
            Ok(mount) => mount,
            // A stack this kernel cannot mount (too deep for one page of options
            // before Linux 6.8's `lowerdir+`): the layers in one private directory.
            Err(strata_snapshot::Error::OverlayUnavailable { reason }) if store => {
                tracing::info!(%reason, layers = lowers.len(), "layer stack not mountable; extracting into one directory");
                store = false;
                lowers = vec![self.private_rootfs(rootfs, &image.layers)?];
                strata_snapshot::overlay::OverlayMount::mount(&lowers, &upper, &work, &merged)?
            }
            Err(e) => return Err(e.into()),
        };
        let ran = self.execute(command);
        mount.unmount()?;
        let (command_started, command_ended) = ran.check(&command.argv)?;
        let changes = strata_snapshot::overlay::upper_changes(&upper, &lowers)?;
        // A step that changes nothing still gets a layer, the empty one (BuildKit's
        // layer count and history). The upper directory holds exactly the layer unless
        // something was left out of it (an ignored path, a socket): then the store extracts
        // the layer when needed.
        let (layer, exact) = self.layer_of(changes)?;
        // With clamped times (`--reproducible`, SOURCE_DATE_EPOCH) the upper directory's
        // times are not the layer's: a later step reading them would make the build
        // depend on the clock, so the layer is extracted from its blob when needed.
        if exact && self.opts.reproducible.is_none() && store {
            // No second extraction for the next step or the next build.
            let mut ids: Vec<&str> = image.layers.iter().map(|l| l.diff_id.as_ref()).collect();
            ids.push(layer.diff_id.as_ref());
            if let Some(chain) = crate::layers::chain_ids(ids).pop()
                && let Err(error) = self.layers.adopt(&chain, &upper, &self.work)
            {
                // Only a saving lost: the store extracts the layer when it is needed.
                tracing::debug!(%error, "upper directory not moved into the layer store");
            }
        }
        // Other root filesystems get the layer when a later step needs it.
        self.record_run(
            command,
            image,
            done,
            layer,
            (command_started, command_ended),
        )
    }

    /// Runs the command in the private directory `root` itself; its layer is the difference
    /// of a scan before and a scan after.
    fn run_between_scans(
        &self,
        command: &Command<'_, '_>,
        image: &mut StageImage,
        rootfs: &mut Option<Rootfs>,
        done: StepDone,
        root: &Path,
    ) -> Result<()> {
        let mut ignore = vec!["proc".to_owned(), "sys".to_owned(), "dev".to_owned()];
        ignore.extend(self.opts.ignore_paths.iter().cloned());
        let before = strata_snapshot::Scanner::new(root).ignore(&ignore).scan()?;
        let (command_started, command_ended) = self.execute(command).check(&command.argv)?;
        let after = strata_snapshot::Scanner::new(root).ignore(&ignore).scan()?;
        let (layer, _) = self.layer_of(strata_snapshot::diff(&before, &after))?;
        self.record_run(
            command,
            image,
            done,
            layer,
            (command_started, command_ended),
        )?;
        // The directory already holds the step's changes.
        if let Some(Rootfs::Private { applied, .. }) = rootfs.as_mut() {
            *applied += 1;
        }
        Ok(())
    }

    /// The layer of a step's change set, less the paths the build ignores; and whether it
    /// holds the change set whole (nothing ignored, no socket left out).
    fn layer_of(
        &self,
        mut changes: strata_snapshot::ChangeSet,
    ) -> Result<(crate::config::LayerRef, bool)> {
        let all = changes.changes.len();
        self.drop_ignored(&mut changes);
        let whole = changes.changes.len() == all
            && !changes.changes.iter().any(|c| {
                c.info
                    .as_ref()
                    .is_some_and(|i| i.kind == strata_snapshot::Kind::Socket)
            });
        let mut entries = crate::changes::entries(&changes)?;
        self.ids_inside(&mut entries)?;
        Ok((self.write_layer(entries)?, whole))
    }

    /// Records a step that ran: its layer and history, the cache entry, the timings event.
    fn record_run(
        &self,
        command: &Command<'_, '_>,
        image: &mut StageImage,
        done: StepDone,
        layer: crate::config::LayerRef,
        (started, ended): (std::time::Instant, std::time::Instant),
    ) -> Result<()> {
        self.finish_miss(image, done.key, command.at, Some(layer), done.created_by)?;
        self.emit_run_timings(command.at, command.prepare_started, started, ended);
        Ok(())
    }

    /// Runs the step's command in the sandbox, its output sent as events as it comes.
    fn execute(&self, command: &Command<'_, '_>) -> Ran {
        let mut tail: VecDeque<String> = VecDeque::new();
        let started = std::time::Instant::now();
        let outcome = command
            .sandbox
            .run(&command.step, &self.cancel, |stream, line| {
                self.step_output(command.at, &mut tail, stream, line)
            });
        Ran {
            outcome,
            tail,
            started,
            ended: std::time::Instant::now(),
        }
    }

    /// The command line a RUN runs with `shell`, and the script a `#!` heredoc becomes:
    /// (where it is mounted, its content).
    fn run_argv(&self, run: &Run, shell: &[String]) -> Result<(Vec<String>, Option<Script>)> {
        // A heredoc that starts with `#!` is run as a file by its interpreter (mounted at
        // /dev/pipes/NAME for the step, as BuildKit does): (target, content).
        let mut shebang_script: Option<Script> = None;
        let argv = match &run.command {
            CommandLine::Exec(argv) => argv.clone(),
            CommandLine::Shell(text) => {
                let script = if run.files.is_empty() {
                    text.clone()
                } else {
                    let word = text.trim().trim_start_matches("<<").trim_start_matches('-');
                    let word = word.trim_matches(|c| c == '"' || c == '\'');
                    match run.files.as_slice() {
                        [file] if file.name == word && file.data.starts_with("#!") => {
                            if self.in_container.is_some() {
                                return Err(Error::Unsupported(
                                    "a RUN heredoc with a #! line in the in-container mode (it \
                                     is run from /dev/pipes, which that mode never touches)"
                                        .to_owned(),
                                ));
                            }
                            let target = format!("/dev/pipes/{}", file.name);
                            shebang_script = Some((target.clone(), file.data.clone()));
                            target
                        }
                        // The heredoc is the script: the shell runs its content.
                        [file] if file.name == word => file.data.clone(),
                        // Heredocs used as input (`cat <<EOF`, `python3 <<A 3<<B`): the
                        // command and its documents go to the shell, which reads them itself
                        // (BuildKit's way).
                        files => {
                            let mut whole = text.clone();
                            for file in files {
                                whole.push('\n');
                                whole.push_str(&file.data);
                                if !file.data.is_empty() && !file.data.ends_with('\n') {
                                    whole.push('\n');
                                }
                                whole.push_str(&file.name);
                            }
                            whole
                        }
                    }
                };
                let mut argv = shell.to_vec();
                argv.push(script);
                argv
            }
        };
        Ok((argv, shebang_script))
    }

    /// The `run-timings` of a RUN that ran: before its command, the command, and since.
    fn emit_run_timings(
        &self,
        at: &StepAt<'_>,
        prepare_started: std::time::Instant,
        command_started: std::time::Instant,
        command_ended: std::time::Instant,
    ) {
        self.emit(Event::RunTimings {
            stage: at.stage.to_owned(),
            line: at.line,
            index: at.index,
            onbuild: at.onbuild,
            prepare: command_started - prepare_started,
            command: command_ended - command_started,
            layer: command_ended.elapsed(),
        });
    }

    /// What the sandbox mounts for a RUN's `--mount` flags (and its `#!` script), with the
    /// secrets it gets as environment variables, the private files that hold secrets until
    /// the step ends, and the bind mounts that need a throwaway copy.
    fn run_mounts(
        &self,
        run: &Run,
        workdir: &str,
        shebang_script: Option<Script>,
        at: &StepAt<'_>,
    ) -> Result<StepMounts> {
        let mut out = StepMounts {
            mounts: Vec::new(),
            secret_env: Vec::new(),
            secret_files: Vec::new(),
            bind_copies: Vec::new(),
        };
        for mount in &run.mounts {
            let target = mount_target(workdir, &mount.target);
            match mount.kind {
                MountType::Bind => {
                    let (host, copy) = self.bind_source(mount, at)?;
                    if let Some(copy) = copy {
                        out.bind_copies.push((out.mounts.len(), copy));
                    }
                    let m = SandboxMount::bind(host, target);
                    out.mounts
                        .push(if mount.readonly { m } else { m.read_write() });
                }
                MountType::Cache => out.mounts.push(self.cache_mount(mount, target)?),
                MountType::Tmpfs => out.mounts.push(SandboxMount {
                    target,
                    kind: strata_sandbox::MountKind::Tmpfs { size: mount.size },
                }),
                MountType::Secret => self.secret_mount(mount, target, &mut out)?,
                MountType::Ssh => {
                    return Err(Error::Unsupported("RUN --mount=type=ssh".to_owned()));
                }
            }
        }
        if let Some((target, content)) = &shebang_script {
            let script = tempfile::Builder::new()
                .prefix("heredoc-")
                .tempfile_in(&self.work)
                .map_err(Error::io(&self.work))?;
            fs::write(script.path(), content).map_err(Error::io(script.path()))?;
            out.mounts.push(SandboxMount {
                target: target.clone(),
                // A private read-only copy with its mode, removed after the step: what a
                // secret gets, and what the script needs.
                kind: strata_sandbox::MountKind::Secret {
                    source: script.path().to_owned(),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
            });
            out.secret_files.push(script);
        }
        Ok(out)
    }

    /// Where a bind mount's source is on the host, and the throwaway copy the step sees
    /// instead when it may write (writes never reach the context or the source stage) or when
    /// `.dockerignore` hides part of the context (the step sees only what COPY could see).
    fn bind_source(
        &self,
        mount: &strata_dockerfile::Mount,
        at: &StepAt<'_>,
    ) -> Result<(PathBuf, Option<BindCopy>)> {
        let source = mount.source.clone().unwrap_or_default();
        let (host, copy) = match &mount.from {
            None => {
                let sources = self.context.sources(std::slice::from_ref(&source))?;
                let first = sources.into_iter().next().ok_or_else(|| {
                    Error::Context(format!("`{source}` matches nothing to mount"))
                })?;
                let host = self.context.root().join(&first.path);
                let filtered = self.context.ignores_anything();
                let copy = (!mount.readonly || filtered).then_some(BindCopy::Context(first));
                (host, copy)
            }
            Some(from) => {
                let stage = self.source_stage(from, at)?;
                let dir = self.stage_rootfs(&stage)?;
                let inner = strata_sandbox::resolve_in_root(&dir, &source)?;
                let host = dir.join(inner.trim_start_matches('/'));
                let copy = (!mount.readonly).then(|| BindCopy::Tree(host.clone()));
                (host, copy)
            }
        };
        Ok((host, copy))
    }

    /// A cache mount's directory in the state (created with its owner and mode the first
    /// time).
    fn cache_mount(
        &self,
        mount: &strata_dockerfile::Mount,
        target: String,
    ) -> Result<SandboxMount> {
        let id = mount.id.clone().unwrap_or_else(|| target.clone());
        // Another owner or mode is another cache (as in BuildKit, where they make
        // the directory the cache starts from): never the old directory with the
        // old owner.
        let dir = match (mount.uid, mount.gid, mount.mode) {
            (None, None, None) => self.state.cache_mount(&id),
            (uid, gid, mode) => self.state.cache_mount(&format!(
                "{id}\0uid={}\0gid={}\0mode={:o}",
                uid.unwrap_or(0),
                gid.unwrap_or(0),
                mode.unwrap_or(0o755)
            )),
        };
        if !dir.exists() {
            new_cache_dir(&dir, mount.uid, mount.gid, mount.mode)?;
        }
        let sharing = match mount.sharing {
            strata_dockerfile::Sharing::Shared => Sharing::Shared,
            strata_dockerfile::Sharing::Private => Sharing::Private,
            strata_dockerfile::Sharing::Locked => Sharing::Locked,
        };
        Ok(SandboxMount::cache(dir, target, sharing))
    }

    /// A secret mount: a file (the given file, or a private copy of an environment
    /// variable's value) and/or an environment variable of this step only.
    fn secret_mount(
        &self,
        mount: &strata_dockerfile::Mount,
        target: String,
        out: &mut StepMounts,
    ) -> Result<()> {
        let id = mount.id.clone().unwrap_or_else(|| {
            Path::new(&target)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let target = if mount.target.is_empty() {
            format!("/run/secrets/{id}")
        } else {
            target
        };
        let file = match self.opts.secrets.get(&id) {
            Some(Secret::File(path)) => path.clone(),
            Some(Secret::Env(var)) => {
                let value = std::env::var(var)
                    .map_err(|_| Error::Invalid(format!("secret {id}: ${var} is not set")))?;
                if let Some(name) = mount.env.as_ref().filter(|_| mount.target.is_empty()) {
                    // Only an environment variable: no file at all.
                    out.secret_env.push((name.clone(), value));
                    return Ok(());
                }
                let file = private_file(value.as_bytes())?;
                let path = file.path().to_owned();
                out.secret_files.push(file);
                path
            }
            None if mount.required => {
                return Err(Error::Invalid(format!(
                    "secret {id} is required but was not given"
                )));
            }
            None => return Ok(()),
        };
        if let Some(var) = &mount.env {
            // Exposed as an environment variable of this step only: never in
            // the image config, the cache key or a layer.
            let value = read_secret(&file)?;
            out.secret_env.push((var.clone(), value));
            if mount.target.is_empty() {
                return Ok(());
            }
        }
        out.mounts.push(SandboxMount {
            target,
            kind: strata_sandbox::MountKind::Secret {
                source: file,
                mode: mount.mode.unwrap_or(0o400),
                uid: mount.uid.unwrap_or(0),
                gid: mount.gid.unwrap_or(0),
            },
        });
        Ok(())
    }

    /// The cache key of `run` on `image`: the command, the environment and build arguments
    /// it sees, its user, directory and network, and its mounts (with the content digest of
    /// what a bind mount shows). It depends on the instructions and sources only, never on
    /// the stage's filesystem, so it is known before the step runs.
    pub(crate) fn run_key(
        &self,
        image: &StageImage,
        run: &Run,
        instruction: &Instruction,
        at: &StepAt<'_>,
    ) -> Result<CacheKey> {
        let config = &image.config.config;
        let user = config.user.clone().unwrap_or_default();
        let workdir = image.workdir();
        let mut key = KeyBuilder::new(&image.key).instruction(&canonical(instruction)?);
        for (k, v) in config.env_pairs() {
            key = key.env(&k, &v);
        }
        for (k, v) in &run.build_args {
            key = key.build_arg(k, v);
        }
        key = key.flag("user", &user).flag("workdir", &workdir);
        for mount in &run.mounts {
            let target = mount_target(&workdir, &mount.target);
            key = key.flag(&format!("mount {target}"), &key_text(mount)?);
            if mount.kind != MountType::Bind {
                continue;
            }
            match &mount.from {
                None => {
                    let source = mount.source.clone().unwrap_or_default();
                    let sources = self.context.sources(std::slice::from_ref(&source))?;
                    let mut memo = self
                        .memo
                        .lock()
                        .map_err(|_| Error::Task("context memo poisoned".to_owned()))?;
                    let digest = self.context.digest(&sources, &[], &mut memo)?;
                    key = key.file(&format!("mount {target}"), &digest.digest);
                }
                Some(from) => {
                    let stage = self.source_stage(from, at)?;
                    for layer in &stage.image.layers {
                        key = key.file(&format!("mount {target} layer"), layer.diff_id.as_ref());
                    }
                }
            }
        }
        // The network the step gets (`default` and `host` are the same one here).
        let network = match run.network {
            RunNetwork::None => "none",
            RunNetwork::Default | RunNetwork::Host => "host",
        };
        Ok(key.flag("network", network).build())
    }

    /// One line of a RUN step's output: an event, and the last 20 lines kept for the error
    /// of a failed step.
    pub(crate) fn step_output(
        &self,
        at: &StepAt<'_>,
        tail: &mut VecDeque<String>,
        stream: Stream,
        line: &[u8],
    ) {
        let text = String::from_utf8_lossy(line).into_owned();
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(text.clone());
        self.emit(Event::Output {
            stage: at.stage.to_owned(),
            line: at.line,
            index: at.index,
            onbuild: at.onbuild,
            stderr: stream == Stream::Stderr,
            text,
        });
    }

    /// Leaves out of a change set the paths the caller asked to ignore (`--ignore-path`).
    fn drop_ignored(&self, changes: &mut strata_snapshot::ChangeSet) {
        if self.opts.ignore_paths.is_empty() {
            return;
        }
        let ignored = strata_snapshot::IgnoreList::new(&self.opts.ignore_paths);
        changes
            .changes
            .retain(|change| !ignored.contains(&change.path));
    }
}

/// Where a RUN mount goes: `target` as written when absolute, else in `workdir`.
fn mount_target(workdir: &str, target: &str) -> String {
    if target.starts_with('/') {
        target.to_owned()
    } else {
        clean_absolute(&format!("{workdir}/{target}"))
    }
}

/// A `#!` heredoc run as a file: (where it is mounted, its content).
type Script = (String, String);

/// A RUN's mounts, ready for the sandbox ([`Engine::run_mounts`]).
struct StepMounts {
    mounts: Vec<SandboxMount>,
    /// Secrets the step gets as environment variables (never in the image or the key).
    secret_env: Vec<(String, String)>,
    /// Secrets that must be files, and the `#!` script: removed when the step ends.
    secret_files: Vec<tempfile::NamedTempFile>,
    /// Bind mounts (by index in `mounts`) whose source the step gets a copy of.
    bind_copies: Vec<(usize, BindCopy)>,
}

/// A RUN command ready to start in the sandbox.
struct Command<'e, 'a> {
    sandbox: &'e strata_sandbox::Sandbox,
    step: Step,
    argv: Vec<String>,
    at: &'e StepAt<'a>,
    prepare_started: std::time::Instant,
}

/// What a step that ran records: its key and its history entry.
struct StepDone {
    key: CacheKey,
    created_by: String,
}

/// A command that ran: how it ended, its last lines, and when it ran.
struct Ran {
    outcome: strata_sandbox::Result<strata_sandbox::Outcome>,
    tail: VecDeque<String>,
    started: std::time::Instant,
    ended: std::time::Instant,
}

impl Ran {
    /// When it started and ended, if it succeeded; else the error that says how it failed.
    fn check(self, argv: &[String]) -> Result<(std::time::Instant, std::time::Instant)> {
        check_outcome(self.outcome?, argv, &self.tail)?;
        Ok((self.started, self.ended))
    }
}

pub(crate) fn check_outcome(
    outcome: strata_sandbox::Outcome,
    argv: &[String],
    tail: &VecDeque<String>,
) -> Result<()> {
    if outcome.status.success() {
        return Ok(());
    }
    Err(Error::RunFailed {
        command: argv.join(" "),
        status: outcome.status,
        output: tail.iter().cloned().collect(),
    })
}

/// Makes a cache mount's directory, owned `uid:gid` (default 0:0) with `mode` (default
/// 0755), under a private name first so that no step ever sees it half made.
fn new_cache_dir(dir: &Path, uid: Option<u32>, gid: Option<u32>, mode: Option<u32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let parent = dir
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{}: no parent", dir.display())))?;
    fs::create_dir_all(parent).map_err(Error::io(parent))?;
    let fresh = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(parent)
        .map_err(Error::io(parent))?;
    let path = fresh.path();
    std::os::unix::fs::chown(path, Some(uid.unwrap_or(0)), Some(gid.unwrap_or(0)))
        .map_err(Error::io(path))?;
    fs::set_permissions(
        path,
        fs::Permissions::from_mode(mode.unwrap_or(0o755) & 0o7777),
    )
    .map_err(Error::io(path))?;
    let made = fresh.keep();
    match fs::rename(&made, dir) {
        Ok(()) => Ok(()),
        // Another build made it first: theirs is as good.
        Err(_) if dir.is_dir() => {
            let _ = fs::remove_dir(&made);
            Ok(())
        }
        Err(e) => Err(Error::io(dir)(e)),
    }
}

/// What a bind mount gets a private copy of.
pub(crate) enum BindCopy {
    /// A source of the build context, filtered by `.dockerignore`.
    Context(crate::context::Source),
    /// A file or directory of a stage's root filesystem.
    Tree(PathBuf),
}

/// A private file (mode 0600) holding `bytes` in `/dev/shm`: a secret given through the
/// environment never touches a disk, and never falls back to one. Removed when dropped.
fn private_file(bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let shm = Path::new("/dev/shm");
    let mut file = tempfile::Builder::new()
        .prefix("strata-secret-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(shm)
        .map_err(|e| Error::Io {
            path: shm.to_owned(),
            error: std::io::Error::new(
                e.kind(),
                format!(
                    "{e} (strata keeps a secret given by environment variable only in \
                         memory-backed storage, and /dev/shm is not usable here)"
                ),
            ),
        })?;
    file.write_all(bytes).map_err(Error::io(file.path()))?;
    Ok(file)
}

/// Copies the file or directory `from` to `to` (a new path): directories with their modes,
/// symbolic links as links, regular files with their contents (a reflink where the
/// filesystem offers one), owners kept where the caller may set them; other kinds are left
/// out.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(from).map_err(Error::io(from))?;
    let mut dirs = Vec::new();
    copy_entry(
        from,
        to,
        &TreeEntry::from_metadata(String::new(), &meta, None),
        &mut dirs,
    )?;
    let mut stack = vec![(from.to_owned(), to.to_owned())];
    while meta.is_dir()
        && let Some((src, dst)) = stack.pop()
    {
        for entry in fs::read_dir(&src).map_err(Error::io(&src))? {
            let entry = entry.map_err(Error::io(&src))?;
            let meta = entry.metadata().map_err(Error::io(entry.path()))?;
            let target = dst.join(entry.file_name());
            let found = TreeEntry::from_metadata(String::new(), &meta, None);
            copy_entry(&entry.path(), &target, &found, &mut dirs)?;
            if meta.is_dir() {
                stack.push((entry.path(), target));
            }
        }
    }
    finish_dirs(dirs)
}

/// One entry of a copy. Directories are made writable for the copy; their own modes are
/// set by [`finish_dirs`] once their contents are in.
pub(crate) fn copy_entry(
    from: &Path,
    to: &Path,
    entry: &TreeEntry,
    dirs: &mut Vec<(PathBuf, u32)>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match entry.kind {
        Kind::Dir => {
            fs::create_dir(to).map_err(Error::io(to))?;
            fs::set_permissions(to, fs::Permissions::from_mode(0o700)).map_err(Error::io(to))?;
            dirs.push((to.to_owned(), entry.mode));
        }
        Kind::Symlink => {
            let target = fs::read_link(from).map_err(Error::io(from))?;
            std::os::unix::fs::symlink(target, to).map_err(Error::io(to))?;
        }
        Kind::File => {
            fs::copy(from, to).map_err(Error::io(to))?;
        }
        _ => return Ok(()),
    }
    // Not allowed for an ordinary user: the copy is then theirs, as the files would be.
    let _ = std::os::unix::fs::lchown(to, Some(entry.uid), Some(entry.gid));
    Ok(())
}

/// Gives copied directories their modes, deepest first.
pub(crate) fn finish_dirs(mut dirs: Vec<(PathBuf, u32)>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (dir, mode) in dirs {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(Error::io(&dir))?;
    }
    Ok(())
}

/// A secret's value for an environment variable (at most 1 MiB, UTF-8).
fn read_secret(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(1 << 20).read_to_end(&mut bytes))
        .map_err(Error::io(path))?;
    String::from_utf8(bytes)
        .map_err(|_| Error::Invalid(format!("secret {} is not UTF-8 text", path.display())))
}
