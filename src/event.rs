//! Progress events: what a build is doing, for progress displays and logs.

use std::sync::Arc;
use std::time::Duration;

/// Something that happened during a build. Events of one stage come in order; stages that
/// run in parallel interleave.
///
/// Events serialise (serde) as flat objects tagged by `event` (`stage`, `pulling`, `pulled`,
/// `context`, `step`, `cache-hit`, `cache-miss`, `output`, `step-done`, `transfer`, `pushed`,
/// `isolation`, `stage-finished`, `build-failed`, `warning`, `cache-lookups`, `run-timings`,
/// `built`), with durations in
/// seconds: the form `strata build --log-format json` writes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Event {
    /// A stage started.
    #[serde(rename = "stage")]
    StageStarted {
        /// Its name, or its index.
        stage: String,
        /// Its base (`scratch`, an image reference, or a stage).
        base: String,
    },
    /// A base image is being resolved and pulled.
    Pulling {
        /// The reference.
        reference: String,
    },
    /// A base image is in the state directory.
    Pulled {
        /// The reference.
        reference: String,
        /// Its manifest digest.
        digest: String,
        /// Blobs downloaded (0 when the state directory had them all).
        downloaded: usize,
    },
    /// An instruction started.
    #[serde(rename = "step")]
    StepStarted {
        /// The stage.
        stage: String,
        /// The instruction's line in the Dockerfile.
        line: usize,
        /// The step's place in its stage, from 0; with `line`, `stage` and `onbuild`, the step's
        /// identity (ONBUILD triggers share their stage's `FROM` line).
        index: usize,
        /// The step is a trigger the base image's `ONBUILD` left (`index` counts the triggers).
        #[serde(skip_serializing_if = "is_false")]
        onbuild: bool,
        /// The instruction, expanded.
        #[serde(rename = "instruction")]
        text: String,
    },
    /// The cache had the step's result.
    CacheHit {
        /// The stage.
        stage: String,
        /// The instruction's line.
        line: usize,
        /// The step's place in its stage, from 0; with `line`, `stage` and `onbuild`, the step's
        /// identity (ONBUILD triggers share their stage's `FROM` line).
        index: usize,
        /// The step is a trigger the base image's `ONBUILD` left (`index` counts the triggers).
        #[serde(skip_serializing_if = "is_false")]
        onbuild: bool,
    },
    /// The cache did not have it; `reasons` say what changed since the last build, when
    /// a previous build of the same step is known.
    CacheMiss {
        /// The stage.
        stage: String,
        /// The instruction's line.
        line: usize,
        /// The step's place in its stage, from 0; with `line`, `stage` and `onbuild`, the step's
        /// identity (ONBUILD triggers share their stage's `FROM` line).
        index: usize,
        /// The step is a trigger the base image's `ONBUILD` left (`index` counts the triggers).
        #[serde(skip_serializing_if = "is_false")]
        onbuild: bool,
        /// What differs from the last build of this step (or that the cache was off).
        reasons: Vec<strata_cache::MissReason>,
    },
    /// A line of a `RUN` command's output.
    Output {
        /// The stage.
        stage: String,
        /// The instruction's line.
        line: usize,
        /// The step's place in its stage, from 0; with `line`, `stage` and `onbuild`, the step's
        /// identity (ONBUILD triggers share their stage's `FROM` line).
        index: usize,
        /// The step is a trigger the base image's `ONBUILD` left (`index` counts the triggers).
        #[serde(skip_serializing_if = "is_false")]
        onbuild: bool,
        /// Standard error rather than standard output.
        stderr: bool,
        /// The text, without its newline.
        text: String,
    },
    /// An instruction finished.
    #[serde(rename = "step-done")]
    StepFinished {
        /// The stage.
        stage: String,
        /// The instruction's line.
        line: usize,
        /// The step's place in its stage, from 0; with `line`, `stage` and `onbuild`, the step's
        /// identity (ONBUILD triggers share their stage's `FROM` line).
        index: usize,
        /// The step is a trigger the base image's `ONBUILD` left (`index` counts the triggers).
        #[serde(skip_serializing_if = "is_false")]
        onbuild: bool,
        /// How long it took.
        #[serde(rename = "seconds", serialize_with = "seconds")]
        duration: Duration,
        /// Whether the cache answered it.
        cached: bool,
    },
    /// Bytes of one blob moved to or from a registry: a base image's layers being pulled,
    /// the image's blobs being pushed. Sent when a blob starts, about every MiB, and when it
    /// ends (`done == total`).
    Transfer {
        /// The image reference.
        reference: String,
        /// The blob.
        digest: String,
        /// A push (else a pull).
        push: bool,
        /// Bytes moved so far.
        done: u64,
        /// The blob's size.
        total: u64,
    },
    /// [`crate::Image::push`] finished.
    Pushed {
        /// Where to.
        reference: String,
        /// The manifest digest.
        digest: String,
        /// Blobs uploaded.
        uploaded: usize,
        /// Blobs mounted from another repository of the registry.
        mounted: usize,
        /// Blobs the registry had already.
        skipped: usize,
    },
    /// A layer was extracted into the state directory's layer store (once per layer and
    /// state directory: later steps and builds stack the extracted directory).
    #[serde(rename = "extracted")]
    LayerExtracted {
        /// The layer's diff_id.
        diff_id: String,
        /// How long the extraction took.
        #[serde(rename = "seconds", serialize_with = "seconds")]
        duration: Duration,
    },
    /// A remote build context (a git repository, an archive URL) is on disk.
    #[serde(rename = "context")]
    ContextFetched {
        /// Where it came from, without credentials.
        source: String,
        /// The commit that was checked out, for a git context.
        #[serde(skip_serializing_if = "Option::is_none")]
        revision: Option<String>,
        /// Bytes of files (git) or of the archive (URL) fetched.
        bytes: u64,
        /// How long fetching and unpacking took.
        #[serde(rename = "seconds", serialize_with = "seconds")]
        duration: Duration,
    },
    /// Where this build's RUN steps execute, and why (before the first stage).
    Isolation {
        /// `namespaces` or `in-container`.
        mode: String,
        /// Why that mode: asked for, or what the probe found.
        reason: String,
    },
    /// A stage finished: every step of it done (the build may go on with other stages).
    StageFinished {
        /// Its name, or its index.
        stage: String,
        /// How long it took, its base included.
        #[serde(rename = "seconds", serialize_with = "seconds")]
        duration: Duration,
    },
    /// The build failed: sent as soon as the first stage fails, before the stages running
    /// beside it have stopped (they are cancelled); the build's error follows.
    BuildFailed {
        /// The error, as it will be returned.
        #[serde(rename = "error")]
        message: String,
    },
    /// Something went wrong that does not fail the build (a cache repository that refused
    /// a write, for example).
    Warning {
        /// The stage it concerns, when one.
        stage: Option<String>,
        /// The instruction's line, when one.
        line: Option<usize>,
        /// What happened.
        #[serde(rename = "warning")]
        message: String,
    },
    /// The cache repository was asked, all at once, for the steps of a stage whose cache keys
    /// are known before they run (and that the local cache lacks): `keys` requests in flight
    /// together (at most 16 at a time), so about one round trip for the stage instead of one
    /// per step.
    CacheLookups {
        /// The stage.
        stage: String,
        /// Keys asked for.
        keys: usize,
        /// Keys the cache repository had.
        found: usize,
        /// How long the lookups took together.
        #[serde(rename = "seconds", serialize_with = "seconds")]
        duration: Duration,
    },
    /// Where a RUN step that ran (in namespaces) spent its time after its cache miss:
    /// `prepare` up to its command's start (its mounts, a source stage's filesystem included,
    /// the layer store's directories, bind copies, the overlay mount, or the first scan
    /// without overlays), `command` the command itself,
    /// `layer` from its end to the step's (unmount, the change set, the layer written, the
    /// upper directory moved into the layer store). The step's whole time is in `step-done`.
    RunTimings {
        /// The stage.
        stage: String,
        /// The instruction's line.
        line: usize,
        /// The step's place in its stage (as in `step`).
        index: usize,
        /// The step is an `ONBUILD` trigger (as in `step`).
        #[serde(skip_serializing_if = "is_false")]
        onbuild: bool,
        /// Before the command.
        #[serde(rename = "prepare_seconds", serialize_with = "seconds")]
        prepare: Duration,
        /// The command.
        #[serde(rename = "command_seconds", serialize_with = "seconds")]
        command: Duration,
        /// After the command.
        #[serde(rename = "layer_seconds", serialize_with = "seconds")]
        layer: Duration,
    },
    /// The image is complete.
    Built {
        /// Its manifest digest.
        digest: String,
    },
}

/// A duration as seconds (a float), the way logs and JSON readers want it.
fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Where events go: any `Fn(&Event)` that can be shared between threads.
pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_flat_with_their_kind_and_seconds() {
        let event = Event::StepFinished {
            stage: "build".to_owned(),
            line: 4,
            index: 2,
            onbuild: false,
            duration: Duration::from_millis(1500),
            cached: true,
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({
                "event": "step-done", "stage": "build", "line": 4, "index": 2, "seconds": 1.5,
                "cached": true
            })
        );
        let event = Event::StepStarted {
            stage: "0".to_owned(),
            line: 2,
            index: 0,
            onbuild: true,
            text: "RUN make".to_owned(),
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({
                "event": "step", "stage": "0", "line": 2, "index": 0, "onbuild": true,
                "instruction": "RUN make"
            })
        );
        let event = Event::CacheMiss {
            stage: "0".to_owned(),
            line: 3,
            index: 1,
            onbuild: false,
            reasons: vec![
                strata_cache::MissReason::CacheOff {
                    instruction: "RUN".to_owned(),
                },
                strata_cache::MissReason::InstructionChanged {
                    was: "RUN make".to_owned(),
                },
            ],
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({
                "event": "cache-miss", "stage": "0", "line": 3, "index": 1,
                "reasons": [
                    {"reason": "cache-off", "instruction": "RUN"},
                    {"reason": "instruction-changed", "was": "RUN make"},
                ]
            })
        );
    }
}
