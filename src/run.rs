//! `RUN`: the command runs in the sandbox on an overlay of the stage's filesystem (the
//! upper directory is the change set) or, where overlays are unavailable, on the filesystem
//! itself between two scans.

use std::collections::VecDeque;
use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};
use strata_cache::KeyBuilder;
use strata_dockerfile::{
    CommandLine, Instruction, MountType, Network as RunNetwork, Run, Security,
};
use strata_sandbox::{Mount as SandboxMount, Network, Sharing, Step, Stream};

use crate::engine::{Engine, Rootfs, Secret, StageImage, StepAt, canonical, clean_absolute};
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
        let argv = match &run.command {
            CommandLine::Exec(argv) => argv.clone(),
            CommandLine::Shell(text) => {
                let script = if run.files.is_empty() {
                    text.clone()
                } else {
                    let word = text.trim().trim_start_matches("<<").trim_start_matches('-');
                    let word = word.trim_matches(|c| c == '"' || c == '\'');
                    match run.files.as_slice() {
                        [file] if file.name == word => file.data.clone(),
                        _ => {
                            return Err(Error::Unsupported(
                                "RUN with a heredoc used as a command's input or as an extra file"
                                    .to_owned(),
                            ));
                        }
                    }
                };
                let mut argv = shell.clone();
                argv.push(script);
                argv
            }
        };
        let mut env: Vec<(String, String)> = run.build_args.clone();
        for (k, v) in config.env_pairs() {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        let user = config.user.clone().unwrap_or_default();
        let workdir = config.working_dir.clone().unwrap_or_else(|| "/".to_owned());
        let network = match run.network {
            RunNetwork::None => Network::None,
            RunNetwork::Default | RunNetwork::Host => Network::Host,
        };
        let mut key = KeyBuilder::new(&image.key).instruction(&canonical(instruction));
        for (k, v) in config.env_pairs() {
            key = key.env(&k, &v);
        }
        for (k, v) in &run.build_args {
            key = key.build_arg(k, v);
        }
        key = key.flag("user", &user).flag("workdir", &workdir);

        // Mounts: what they are for the key, and what the sandbox gets.
        let mut mounts = Vec::new();
        let mut secret_env: Vec<(String, String)> = Vec::new();
        for mount in &run.mounts {
            let target = if mount.target.starts_with('/') {
                mount.target.clone()
            } else {
                clean_absolute(&format!("{workdir}/{}", mount.target))
            };
            key = key.flag(&format!("mount {target}"), &format!("{mount:?}"));
            match mount.kind {
                MountType::Bind => {
                    let source = mount.source.clone().unwrap_or_default();
                    let host = match &mount.from {
                        None => {
                            let sources = self.context.sources(std::slice::from_ref(&source))?;
                            let mut memo = self
                                .memo
                                .lock()
                                .map_err(|_| Error::Task("context memo poisoned".to_owned()))?;
                            let digest = self.context.digest(&sources, &[], &mut memo)?;
                            key = key.file(&format!("mount {target}"), &digest.digest);
                            let first = sources.first().map(|s| s.path.clone()).unwrap_or_default();
                            self.context.root().join(first)
                        }
                        Some(from) => {
                            let stage = self.source_stage(from, at)?;
                            for layer in &stage.image.layers {
                                key = key.file(&format!("mount {target} layer"), &layer.diff_id);
                            }
                            let dir = self.stage_rootfs(&stage)?;
                            let inner = strata_sandbox::resolve_in_root(&dir, &source)?;
                            dir.join(inner.trim_start_matches('/'))
                        }
                    };
                    let m = SandboxMount::bind(host, target);
                    mounts.push(if mount.readonly { m } else { m.read_write() });
                }
                MountType::Cache => {
                    let id = mount.id.clone().unwrap_or_else(|| target.clone());
                    let dir = self.state.cache_mount(&id);
                    fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
                    let sharing = match mount.sharing {
                        strata_dockerfile::Sharing::Shared => Sharing::Shared,
                        strata_dockerfile::Sharing::Private => Sharing::Private,
                        strata_dockerfile::Sharing::Locked => Sharing::Locked,
                    };
                    mounts.push(SandboxMount::cache(dir, target, sharing));
                }
                MountType::Tmpfs => mounts.push(SandboxMount {
                    target,
                    kind: strata_sandbox::MountKind::Tmpfs { size: mount.size },
                }),
                MountType::Secret => {
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
                            let value = std::env::var(var).map_err(|_| {
                                Error::Invalid(format!("secret {id}: ${var} is not set"))
                            })?;
                            let path = self.work.join(format!(
                                "secret-{}",
                                hex::encode(Sha256::digest(id.as_bytes()))
                            ));
                            write_private(&path, value.as_bytes())?;
                            path
                        }
                        None if mount.required => {
                            return Err(Error::Invalid(format!(
                                "secret {id} is required but was not given"
                            )));
                        }
                        None => continue,
                    };
                    if let Some(var) = &mount.env {
                        // Exposed as an environment variable of this step only: never in
                        // the image config, the cache key or a layer.
                        let value = read_secret(&file)?;
                        secret_env.push((var.clone(), value));
                        if mount.target.is_empty() {
                            continue;
                        }
                    }
                    mounts.push(SandboxMount {
                        target,
                        kind: strata_sandbox::MountKind::Secret {
                            source: file,
                            mode: mount.mode.unwrap_or(0o400),
                            uid: mount.uid.unwrap_or(0),
                            gid: mount.gid.unwrap_or(0),
                        },
                    });
                }
                MountType::Ssh => {
                    return Err(Error::Unsupported("RUN --mount=type=ssh".to_owned()));
                }
            }
        }
        key = key.flag("network", &format!("{network:?}"));
        let key = key.build();
        if self.cache_hit(image, &key, at)? {
            return Ok(true);
        }

        let root = self.materialize(rootfs, &image.layers)?;
        let sandbox = self.sandbox()?;
        let overlay = self.use_overlay(sandbox)?;
        let scratch = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&self.work)
            .map_err(Error::io(&self.work))?;
        let upper = scratch.path().join("upper");
        let merged = scratch.path().join("merged");
        let step_root = if overlay {
            merged.clone()
        } else {
            root.clone()
        };
        let mut step = Step::exec(&step_root, argv.clone())
            .envs(env)
            .workdir(workdir)
            .user(user)
            .network(network);
        for mount in mounts {
            step = step.mount(mount);
        }
        step = step.envs(secret_env);
        let mut tail: VecDeque<String> = VecDeque::new();
        let mut on_output = |stream: Stream, line: &[u8]| {
            let text = String::from_utf8_lossy(line).into_owned();
            if tail.len() == 20 {
                tail.pop_front();
            }
            tail.push_back(text.clone());
            self.emit(Event::Output {
                stage: at.stage.to_owned(),
                line: at.line,
                stderr: stream == Stream::Stderr,
                text,
            });
        };
        let entries;
        if overlay {
            let work = scratch.path().join("work");
            for dir in [&upper, &work, &merged] {
                fs::create_dir(dir).map_err(Error::io(dir))?;
            }
            let mount = strata_snapshot::overlay::OverlayMount::mount(
                std::slice::from_ref(&root),
                &upper,
                &work,
                &merged,
            )?;
            let outcome = sandbox.run(&step, &self.cancel, &mut on_output);
            mount.unmount()?;
            check_outcome(outcome?, &argv, &tail)?;
            let mut changes =
                strata_snapshot::overlay::upper_changes(&upper, std::slice::from_ref(&root))?;
            self.drop_ignored(&mut changes);
            entries = crate::changes::entries(&changes)?;
            let layer = self.write_layer(entries)?;
            // The root filesystem gets the layer when a later step needs it.
            self.finish_miss(image, key, at, layer)?;
        } else {
            let mut ignore = vec!["proc".to_owned(), "sys".to_owned(), "dev".to_owned()];
            ignore.extend(self.opts.ignore_paths.iter().cloned());
            let before = strata_snapshot::Scanner::new(&root)
                .ignore(&ignore)
                .scan()?;
            let outcome = sandbox.run(&step, &self.cancel, &mut on_output);
            check_outcome(outcome?, &argv, &tail)?;
            let after = strata_snapshot::Scanner::new(&root)
                .ignore(&ignore)
                .scan()?;
            let mut changes = strata_snapshot::diff(&before, &after);
            self.drop_ignored(&mut changes);
            entries = crate::changes::entries(&changes)?;
            let layer = self.write_layer(entries)?;
            let made = layer.is_some();
            self.finish_miss(image, key, at, layer)?;
            // The directory already holds the step's changes.
            if let Some(state) = rootfs.as_mut()
                && made
            {
                state.applied += 1;
            }
        }
        Ok(false)
    }

    /// Leaves out of a change set the paths the caller asked to ignore (`--ignore-path`).
    fn drop_ignored(&self, changes: &mut strata_snapshot::ChangeSet) {
        if self.opts.ignore_paths.is_empty() {
            return;
        }
        changes.changes.retain(|change| {
            !self.opts.ignore_paths.iter().any(|ignored| {
                change.path == *ignored
                    || change
                        .path
                        .strip_prefix(ignored.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        });
    }
}

fn check_outcome(
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

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(path))?;
    file.write_all(bytes).map_err(Error::io(path))
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
