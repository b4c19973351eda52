//! RUN in the in-container mode: the step runs as a plain child process in the container's
//! own `/`, which holds the stage's layers; its change set is a metadata scan of `/` before
//! and after, the ignore list excluded. `RUN --mount`s are made without mount privileges:
//! a bind source or a secret is copied into place and removed after, a cache directory is
//! moved into place and back, a tmpfs is an empty directory; whatever stood at a target is
//! set aside for the step and put back, and the targets' parents keep their times.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use strata_sandbox::{Mount as SandboxMount, MountKind, Network, Step};
use strata_snapshot::IgnoreList;

use crate::engine::run::{BindCopy, check_outcome, copy_tree};
use crate::engine::{Engine, InContainer, StageImage, StepAt};
use crate::error::{Error, Result};

/// What a RUN step asks for, already resolved by [`Engine::run`].
pub(crate) struct InPlaceStep {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub user: String,
    pub network: Network,
    pub mounts: Vec<SandboxMount>,
    /// Bind mounts whose source is copied with `.dockerignore` applied (by index).
    pub bind_copies: Vec<(usize, BindCopy)>,
}

/// A mount made in place, undone when the step ends.
struct Placed {
    /// The target, on the host (`/` + the target).
    target: PathBuf,
    /// What stood at the target before, set aside beside it.
    hidden: Option<PathBuf>,
    /// A cache directory to move back to (and whether it was copied, not moved).
    cache: Option<(PathBuf, bool)>,
    /// Directories made for the target, deepest last.
    made: Vec<PathBuf>,
    /// The parent's modification time before.
    parent_time: Option<std::time::SystemTime>,
}

impl Engine {
    /// Runs one RUN step in `/` and records its layer (the step missed the cache).
    pub(crate) fn run_in_place(
        &self,
        mode: &InContainer,
        image: &mut StageImage,
        key: strata_cache::CacheKey,
        at: &StepAt<'_>,
        step: InPlaceStep,
        created_by: String,
    ) -> Result<()> {
        if step.network == Network::None {
            return Err(Error::Invalid(
                "RUN --network=none needs a network namespace, which the in-container mode \
                 does not have (use the namespaces isolation for it)"
                    .to_owned(),
            ));
        }
        self.materialize_slash(mode, &image.layers)?;
        // Resolved in the stage's filesystem, now in place.
        for mount in &step.mounts {
            let inner = strata_sandbox::resolve_in_root(Path::new("/"), &mount.target)?;
            let inner = inner.trim_start_matches('/');
            // On or below one of them, or holding one.
            let target = IgnoreList::new([inner]);
            if let Some(mounted) = mode
                .untouchable
                .iter()
                .find(|u| IgnoreList::new([u.as_str()]).contains(inner) || target.contains(u))
            {
                return Err(Error::Invalid(format!(
                    "RUN --mount target {} is on or holds /{mounted}, a mount point or strata's own \
                     directory, which the in-container mode never touches",
                    mount.target
                )));
            }
        }
        let root = Path::new("/");
        let scanner = strata_snapshot::Scanner::new(root).ignore(&mode.ignore);
        let before = scanner.scan()?;
        let mut placed = Vec::new();
        let made = self.place_mounts(&step, &mut placed);
        let outcome = made.map(|()| {
            let command = Step::exec(root, step.argv.clone())
                .envs(step.env.clone())
                .workdir(step.workdir.clone())
                .user(step.user.clone());
            let mut tail: VecDeque<String> = VecDeque::new();
            let outcome = strata_sandbox::run_in_place(&command, &self.cancel, |stream, line| {
                self.step_output(at, &mut tail, stream, line)
            });
            (outcome, tail)
        });
        // The mounts go whatever happened, before anything is scanned.
        let undone = unplace(placed);
        let (outcome, tail) = outcome?;
        undone?;
        check_outcome(outcome?, &step.argv, &tail)?;
        let after = scanner.scan()?;
        // The scanner left the ignore list out of both snapshots.
        let changes = strata_snapshot::diff(&before, &after);
        let entries = crate::changes::entries(&changes)?;
        let layer = self.write_layer(entries)?;
        self.slash_made(mode, Some(&layer))?;
        self.finish_miss(image, key, at, Some(layer), created_by)
    }

    /// Makes each mount of `step` in `/`, recording in `placed` what to undo.
    fn place_mounts(&self, step: &InPlaceStep, placed: &mut Vec<Placed>) -> Result<()> {
        for (index, mount) in step.mounts.iter().enumerate() {
            let inner = strata_sandbox::resolve_in_root(Path::new("/"), &mount.target)?;
            let target = PathBuf::from(&inner);
            if target == Path::new("/") {
                return Err(Error::Invalid("a RUN mount cannot cover /".to_owned()));
            }
            let mut record = Placed {
                target: target.clone(),
                hidden: None,
                cache: None,
                made: Vec::new(),
                parent_time: None,
            };
            // Missing parents are made (and removed after); the parent keeps its time.
            let parent = target.parent().unwrap_or(Path::new("/")).to_owned();
            let mut missing = Vec::new();
            let mut dir = parent.clone();
            while !dir.exists() {
                missing.push(dir.clone());
                match dir.parent() {
                    Some(up) => dir = up.to_owned(),
                    None => break,
                }
            }
            record.parent_time = fs::metadata(&dir).and_then(|m| m.modified()).ok();
            for dir in missing.iter().rev() {
                fs::create_dir(dir).map_err(Error::io(dir))?;
                record.made.push(dir.clone());
            }
            if fs::symlink_metadata(&target).is_ok() {
                let hidden = hidden_name(&target);
                fs::rename(&target, &hidden).map_err(Error::io(&target))?;
                record.hidden = Some(hidden);
            }
            // Recorded before it is filled, so a failure still undoes it.
            placed.push(record);
            let record = placed
                .last_mut()
                .ok_or_else(|| Error::Task("lost a mount".into()))?;
            match &mount.kind {
                MountKind::Bind { source, .. } => {
                    match step.bind_copies.iter().find(|(i, _)| *i == index) {
                        Some((_, BindCopy::Context(source))) => {
                            self.context.copy_out(source, &target)?
                        }
                        Some((_, BindCopy::Tree(host))) => copy_tree(host, &target)?,
                        None => copy_tree(source, &target)?,
                    }
                }
                MountKind::Cache { dir, .. } => {
                    // Moved in when on the same filesystem, else copied (and copied back).
                    if fs::rename(dir, &target).is_ok() {
                        record.cache = Some((dir.clone(), false));
                    } else {
                        copy_tree(dir, &target)?;
                        record.cache = Some((dir.clone(), true));
                    }
                }
                MountKind::Tmpfs { .. } => {
                    fs::create_dir(&target).map_err(Error::io(&target))?;
                }
                MountKind::Secret {
                    source,
                    mode,
                    uid,
                    gid,
                } => {
                    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
                    let bytes = fs::read(source).map_err(Error::io(source))?;
                    let mut file = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&target)
                        .map_err(Error::io(&target))?;
                    std::io::Write::write_all(&mut file, &bytes).map_err(Error::io(&target))?;
                    std::os::unix::fs::fchown(&file, Some(*uid), Some(*gid))
                        .map_err(Error::io(&target))?;
                    file.set_permissions(fs::Permissions::from_mode(*mode))
                        .map_err(Error::io(&target))?;
                }
            }
        }
        Ok(())
    }
}

/// A free name beside `target` to set what stood there aside.
fn hidden_name(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut n = 0;
    loop {
        let candidate = target.with_file_name(format!(".{name}.strata-{}-{n}", std::process::id()));
        if fs::symlink_metadata(&candidate).is_err() {
            return candidate;
        }
        n += 1;
    }
}

/// Undoes the mounts, last first: the cache goes home, the copy and the secret go away, what
/// stood at the target comes back, made directories go, and parents get their times back.
fn unplace(placed: Vec<Placed>) -> Result<()> {
    let mut first_error = None;
    let mut keep = |result: std::io::Result<()>, path: &Path| {
        if let Err(e) = result
            && first_error.is_none()
        {
            first_error = Some(Error::io(path)(e));
        }
    };
    for record in placed.into_iter().rev() {
        let target = &record.target;
        match &record.cache {
            Some((home, false)) => keep(fs::rename(target, home), target),
            Some((home, true)) => {
                let _ = fs::remove_dir_all(home);
                keep(
                    copy_tree(target, home).map_err(|e| std::io::Error::other(e.to_string())),
                    home,
                );
                keep(remove_any(target), target);
            }
            None => keep(remove_any(target), target),
        }
        if let Some(hidden) = &record.hidden {
            keep(fs::rename(hidden, target), target);
        }
        for dir in record.made.iter().rev() {
            keep(fs::remove_dir(dir), dir);
        }
        if let (Some(time), Some(parent)) = (record.parent_time, first_existing(target))
            && let Ok(dir) = fs::File::open(&parent)
        {
            keep(dir.set_modified(time), &parent);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The nearest existing ancestor of `path`.
fn first_existing(path: &Path) -> Option<PathBuf> {
    let mut dir = path.parent()?.to_owned();
    while !dir.exists() {
        dir = dir.parent()?.to_owned();
    }
    Some(dir)
}
