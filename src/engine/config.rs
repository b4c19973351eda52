//! Instructions that change the image's configuration (ENV, LABEL, USER, CMD, ...), WORKDIR,
//! and the dispatch of each instruction to its family (copy and run have modules of their own).

use super::*;

impl Engine {
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

    pub(crate) fn workdir(
        &self,
        image: &mut StageImage,
        rootfs: &mut Option<Rootfs>,
        path: &str,
        at: &StepAt<'_>,
    ) -> Result<bool> {
        let (dir, key) = enter_workdir(image, path);
        let user = image.config.config.user.clone().unwrap_or_default();
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
}

/// `path` in `image` as an absolute, clean path (relative to the current WORKDIR): the
/// directory `WORKDIR path` makes current, or where `COPY … path` copies to.
pub(super) fn workdir_of(image: &StageImage, path: &str) -> String {
    let previous = image.workdir();
    clean_absolute(&if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{previous}/{path}")
    })
}

/// Makes `path` the current WORKDIR of `image`: the directory (absolute, clean) and the
/// step's cache key (the directory and the user, on the chain head; no file is read).
pub(super) fn enter_workdir(image: &mut StageImage, path: &str) -> (String, CacheKey) {
    let dir = workdir_of(image, path);
    image.config.config.working_dir = Some(dir.clone());
    let user = image.config.config.user.clone().unwrap_or_default();
    let key = KeyBuilder::new(&image.key)
        .instruction(&format!("WORKDIR {dir}"))
        .flag("user", &user)
        .build();
    (dir, key)
}

/// The owner `WORKDIR` gives the directories it creates: the current `USER`.
fn owner_of(root: &Path, user: &str) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    Ok(strata_sandbox::chown_ids(root, user)?)
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
