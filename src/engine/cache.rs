//! The cache around each layer step: keys worked out ahead and looked up together in the
//! cache repository, hits (local store, cache repository, `--cache-from` images) and misses
//! recorded, and where each lazily known blob lives.

use super::config::enter_workdir;
use super::*;

impl Engine {
    /// Works out the cache keys of the stage's steps ahead of running them, and asks the
    /// cache repository for all the ones the local cache lacks at once
    /// ([`RegistryStore::lookup_many`]): a fresh pod's cached build then waits about one round
    /// trip per stage, not one per step. A key never depends on the stage's filesystem (only
    /// on the instructions, the context and other stages), so every step's key is known
    /// before the first runs, up to an `ADD` of a URL or a repository (fetched only when its
    /// step runs). Speculative: anything that fails here is left for the step itself to
    /// meet and report, and a step whose chain head differs works its key out again.
    pub(super) fn look_ahead(
        &self,
        image: &StageImage,
        steps: &[PlannedStep],
        name: &str,
        done: &HashMap<usize, Arc<StageResult>>,
    ) {
        let (Some(remote), Some(local)) = (&self.remote, &self.cache) else {
            return;
        };
        let mut ahead = image.clone();
        let mut cmd_set = true;
        let mut wanted: Vec<String> = Vec::new();
        // (step id, chain head, key) of every key worked out.
        let mut candidates = Vec::new();
        for step in steps {
            let located = &step.instruction;
            let at = self.step_at(name, step, done);
            let instruction = &located.value;
            // `None`: the keys from here on are not known before the steps run.
            let key = match instruction {
                Instruction::Run(run) => Some(self.run_key(&ahead, run, instruction, &at)),
                Instruction::Copy(copy) => {
                    self.copy_key_ahead(&ahead.key, copy, None, instruction, &at)
                }
                Instruction::Add(add) => {
                    self.copy_key_ahead(&ahead.key, &add.copy, Some(add), instruction, &at)
                }
                Instruction::Workdir { path } => Some(Ok(enter_workdir(&mut ahead, path).1)),
                // Configuration: applied to the copy, which moves its chain head on.
                _ => match self.step(&mut ahead, &mut None, located, &at, &mut cmd_set) {
                    Ok(_) => continue,
                    Err(_) => None,
                },
            };
            let Some(Ok(key)) = key else { break };
            let digest = key.digest.clone();
            if self.uncached(&at).is_none() && matches!(local.lookup(&digest), Ok(None)) {
                wanted.push(digest.clone());
            }
            candidates.push((at.id.clone(), ahead.key.clone(), key));
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
            // A step takes the key worked out here only when it is a hit, which reads no
            // file: a step that runs works its key out again when it starts, so the key
            // describes the files it copies even if the context changed meanwhile.
            if let Ok(mut planned) = self.planned.lock() {
                for (id, head, key) in candidates {
                    if looked_up.get(&key.digest).is_some_and(Option::is_some) {
                        planned.insert(id, (head, key));
                    }
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
                index: at.index,
                onbuild: at.onbuild,
                reasons: vec![strata_cache::MissReason::CacheOff {
                    instruction: keyword.to_ascii_uppercase(),
                }],
            });
            return Ok(false);
        }
        if let Some(entry) = self.find_entry(store, key)? {
            self.take_hit(image, key, &entry, created_by);
            image.key = key.digest.clone();
            store.remember(&at.id, key)?;
            self.steps.fetch_add(1, Ordering::Relaxed);
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.emit(Event::CacheHit {
                stage: at.stage.to_owned(),
                line: at.line,
                index: at.index,
                onbuild: at.onbuild,
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
            index: at.index,
            onbuild: at.onbuild,
            reasons,
        });
        Ok(false)
    }

    /// The cache entry for `key`: the local store's (its layer copied into the state when
    /// missing), else the cache repository's (recorded locally), else an image of
    /// `--cache-from` that was built with the step.
    fn find_entry(&self, store: &LocalStore, key: &CacheKey) -> Result<Option<CacheEntry>> {
        let mut found = store.lookup(&key.digest)?;
        if let Some(layer) = found.as_ref().and_then(|e| e.layer.as_ref())
            && !self.state.layout.has_blob(&layer.digest)
        {
            let blob = store.open_layer(layer)?;
            self.state
                .layout
                .write_blob(blob, Some(layer.digest.as_ref()))?;
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
                    self.note_source(layer.digest.as_ref(), &remote.repository())?;
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
                self.note_source(layer.digest.as_ref(), source)?;
            }
            found = Some(CacheEntry {
                key: key.clone(),
                layer: Some(layer.clone()),
                config: json!({ "created": created }),
                created_unix: 0,
            });
        }
        Ok(found)
    }

    /// The image after a cache hit: the entry's layer (and time, as the image's clock) and
    /// a history line.
    fn take_hit(
        &self,
        image: &mut StageImage,
        key: &CacheKey,
        entry: &CacheEntry,
        created_by: &str,
    ) {
        if let Some(created) = entry.config["created"].as_str() {
            image.clock = created.to_owned();
        }
        if let Some(layer) = &entry.layer {
            image.layer_keys.insert(
                image.layers.len(),
                (key.digest.clone(), image.clock.clone()),
            );
            image.layers.push(layer.clone());
        }
        image.config.history.push(History {
            created: Some(image.clock.clone()),
            created_by: Some(created_by.to_owned()),
            empty_layer: entry.layer.is_none(),
            ..History::default()
        });
    }

    /// The cache repository's answer for `digest` when [`Engine::look_ahead`] asked for it
    /// (taken: asked once).
    fn looked_up_answer(&self, digest: &str) -> Option<Option<CacheEntry>> {
        self.looked_up.lock().ok()?.remove(digest)
    }

    /// The content digest of what a `COPY --from` copies, as the cache repository recorded
    /// it under `name` (the source stage's layers and the sources,
    /// [`Engine::copy_key`]): a fresh pod learns the step's key without the source stage's
    /// files, so a cached COPY --from downloads nothing.
    pub(super) fn shared_content_digest(&self, name: &str) -> Option<String> {
        let remote = self.remote.as_ref().filter(|_| self.cache.is_some())?;
        let entry = remote.lookup(&content_alias(name)).ok()??;
        let digest = entry.config["content"].as_str()?;
        crate::state::sha256_hex(digest).map(|_| digest.to_owned())
    }

    /// Records in the cache repository the content digest of what a `COPY --from` copies
    /// ([`Engine::shared_content_digest`]); a refused write is a warning.
    pub(super) fn share_content_digest(&self, name: &str, digest: &str, at: &StepAt<'_>) {
        let Some(remote) = self.remote.as_ref().filter(|_| self.opts.cache_repo_writes) else {
            return;
        };
        let entry = CacheEntry {
            key: CacheKey {
                digest: content_alias(name),
                inputs: strata_cache::KeyInputs::default(),
            },
            layer: None,
            config: json!({ "content": digest }),
            created_unix: 0,
        };
        if let Err(error) = remote.record(&entry, None) {
            tracing::warn!(%error, "a COPY --from source's digest was not recorded in the cache repository");
            self.not_recorded(remote, at, &error);
        }
    }

    /// The warning for a write the cache repository refused: it costs later builds a miss,
    /// never this build.
    fn not_recorded(&self, remote: &RegistryStore, at: &StepAt<'_>, error: &strata_cache::Error) {
        self.emit(Event::Warning {
            stage: Some(at.stage.to_owned()),
            line: Some(at.line),
            message: format!(
                "not recorded in the cache repository {}: {error}",
                remote.repository()
            ),
        });
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
                layer: layer.clone(),
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
                self.not_recorded(remote, at, &error);
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
        let image = self.image_in_state(pulled.manifest_digest.as_ref(), &self.opts.platform)?;
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
}

/// The cache-repository name of a `COPY --from` source's content digest: apart from every
/// step key (those hash other bytes).
fn content_alias(name: &str) -> String {
    let mut hasher = strata_oci::Hasher::new();
    hasher.update(b"strata COPY --from content\n");
    hasher.update(name.as_bytes());
    hasher.finish()
}
