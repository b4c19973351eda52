//! How the executor shows a build: a live display on a terminal, timestamped lines in a log,
//! or one JSON object per event.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use strata::Event;

/// Where and how events are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A terminal: a live line per running step and a byte bar per blob in flight; finished
    /// steps and RUN output scroll above them.
    Tty,
    /// A log: one line per event, with a timestamp unless `stamps` is false.
    Plain {
        /// Prefix each line with an RFC 3339 time.
        stamps: bool,
    },
    /// One JSON object per event, on standard error.
    Json,
}

/// Shows events as they come, from any thread.
pub struct Display {
    mode: Mode,
    explain: bool,
    live: Option<MultiProgress>,
    state: Mutex<Live>,
}

/// What the terminal display is showing.
#[derive(Default)]
struct Live {
    /// Running steps by identity (stage, index, ONBUILD trigger): their bar and their text.
    steps: HashMap<(String, usize, bool), (ProgressBar, String)>,
    /// Blobs in flight by (push, digest).
    transfers: HashMap<(bool, String), ProgressBar>,
}

impl Display {
    /// A display in `mode`; `explain` adds the reasons of each cache miss.
    pub fn new(mode: Mode, explain: bool) -> Display {
        let live = (mode == Mode::Tty)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Display {
            mode,
            explain,
            live,
            state: Mutex::new(Live::default()),
        }
    }

    /// Shows one event.
    pub fn event(&self, event: &Event) {
        match self.mode {
            Mode::Tty => self.live_event(event),
            Mode::Plain { stamps } => {
                if let Some(text) = self.text(event) {
                    if stamps {
                        eprintln!("{} {text}", now());
                    } else {
                        eprintln!("{text}");
                    }
                }
            }
            Mode::Json => {
                if let Some(object) = self.json(event) {
                    eprintln!("{object}");
                }
            }
        }
    }

    /// Prints a line of the final report on standard output, below the live display.
    pub fn report(&self, text: &str) {
        self.clear();
        println!("{text}");
    }

    /// Removes whatever the live display still shows (a failed build leaves steps running).
    pub fn clear(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (_, (bar, _)) in state.steps.drain() {
            bar.finish_and_clear();
        }
        for (_, bar) in state.transfers.drain() {
            bar.finish_and_clear();
        }
    }

    fn live_event(&self, event: &Event) {
        let Some(live) = &self.live else { return };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::StepStarted {
                stage,
                line,
                index,
                onbuild,
                text,
                ..
            } => {
                let label = format!("[{stage}] {line:>3} {text}");
                let bar = live.add(ProgressBar::new_spinner());
                bar.set_style(style("{spinner:.cyan} {wide_msg} {elapsed:>4}"));
                bar.set_message(label.clone());
                bar.enable_steady_tick(Duration::from_millis(100));
                state
                    .steps
                    .insert((stage.clone(), *index, *onbuild), (bar, label));
            }
            Event::StepFinished {
                stage,
                index,
                onbuild,
                duration,
                cached,
                ..
            } => {
                if let Some((bar, label)) = state.steps.remove(&(stage.clone(), *index, *onbuild)) {
                    bar.finish_and_clear();
                    let outcome = if *cached {
                        "CACHED".to_owned()
                    } else {
                        format!("{:.2}s", duration.as_secs_f64())
                    };
                    let _ = live.println(format!("✔ {label}  {outcome}"));
                }
            }
            Event::Transfer {
                reference,
                digest,
                push,
                done,
                total,
            } => {
                let key = (*push, digest.clone());
                if done >= total {
                    if let Some(bar) = state.transfers.remove(&key) {
                        bar.finish_and_clear();
                    }
                    return;
                }
                let bar = state.transfers.entry(key).or_insert_with(|| {
                    let bar = live.add(ProgressBar::new(*total));
                    bar.set_style(style(
                        "  {prefix} [{bar:24.cyan/blue}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
                    ));
                    let verb = if *push { "push" } else { "pull" };
                    bar.set_prefix(format!("{verb} {reference} {}", short(digest)));
                    bar
                });
                bar.set_position(*done);
            }
            other => {
                if let Some(text) = self.text(other) {
                    let _ = live.println(text);
                }
            }
        }
    }

    /// An event as a log line; `None` for the byte progress in between. Long on purpose: one
    /// short match arm per event kind.
    fn text(&self, event: &Event) -> Option<String> {
        // Details a terminal's live display leaves out (plain and JSON logs keep them).
        if self.mode == Mode::Tty
            && matches!(
                event,
                Event::LayerExtracted { .. }
                    | Event::CacheLookups { .. }
                    | Event::RunTimings { .. }
                    | Event::StageFinished { .. }
            )
        {
            return None;
        }
        Some(match event {
            Event::StageStarted { stage, base } => format!("[{stage}] FROM {base}"),
            Event::Pulling { reference } => format!("pulling {reference}"),
            Event::Pulled {
                reference,
                digest,
                downloaded,
            } => format!("pulled {reference} ({digest}, {downloaded} blobs downloaded)"),
            Event::StepStarted {
                stage, line, text, ..
            } => format!("[{stage}] line {line}: {text}"),
            Event::CacheHit { stage, line, .. } => format!("[{stage}] line {line}: cached"),
            Event::CacheMiss {
                stage,
                line,
                reasons,
                ..
            } => {
                if self.explain && !reasons.is_empty() {
                    let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                    format!("[{stage}] line {line}: not cached: {}", reasons.join("; "))
                } else if self.mode == Mode::Tty {
                    return None;
                } else {
                    format!("[{stage}] line {line}: not cached")
                }
            }
            Event::Output { stage, text, .. } => format!("[{stage}] | {text}"),
            Event::StepFinished {
                stage,
                line,
                duration,
                ..
            } => format!(
                "[{stage}] line {line}: done in {:.3}s",
                duration.as_secs_f64()
            ),
            Event::Transfer {
                reference,
                digest,
                push,
                done,
                total,
            } => {
                if done < total {
                    return None;
                }
                let verb = if *push { "pushed" } else { "pulled" };
                format!("{verb} {reference} blob {digest} ({})", HumanBytes(*total))
            }
            Event::Pushed {
                reference,
                digest,
                uploaded,
                mounted,
                skipped,
            } => format!(
                "pushed {reference}@{digest} ({uploaded} blobs uploaded, {mounted} mounted, {skipped} already there)"
            ),
            Event::Built { digest } => format!("built {digest}"),
            Event::Isolation { mode, reason } => format!("RUN steps: {mode} ({reason})"),
            Event::ContextFetched {
                source,
                revision,
                bytes,
                duration,
            } => match revision {
                Some(commit) => format!(
                    "context {source} at {commit}: {bytes} bytes in {:.1}s",
                    duration.as_secs_f64()
                ),
                None => format!(
                    "context {source}: {bytes} bytes in {:.1}s",
                    duration.as_secs_f64()
                ),
            },
            Event::LayerExtracted { diff_id, duration } => {
                format!(
                    "extracted layer {diff_id} in {:.3}s",
                    duration.as_secs_f64()
                )
            }
            Event::CacheLookups {
                stage,
                keys,
                found,
                duration,
            } => {
                format!(
                    "[{stage}] cache repository: {found} of {keys} steps found in {:.3}s (looked up together)",
                    duration.as_secs_f64()
                )
            }
            Event::RunTimings {
                stage,
                line,
                prepare,
                command,
                layer,
                ..
            } => {
                format!(
                    "[{stage}] line {line}: prepared in {:.3}s, command {:.3}s, layer {:.3}s",
                    prepare.as_secs_f64(),
                    command.as_secs_f64(),
                    layer.as_secs_f64()
                )
            }
            Event::StageFinished { stage, duration } => {
                format!("[{stage}] stage done in {:.3}s", duration.as_secs_f64())
            }
            Event::Warning {
                stage,
                line,
                message,
            } => match (stage, line) {
                (Some(stage), Some(line)) => format!("[{stage}] line {line}: warning: {message}"),
                _ => format!("warning: {message}"),
            },
            // The error itself ends the output; the JSON log has it as an event too.
            Event::BuildFailed { .. } => return None,
            other => format!("{other:?}"),
        })
    }

    /// An event as a JSON object: the event's own serde form (`event`, its kind, and its
    /// fields), with `time` and `message` (the log line). Byte progress only at the start and
    /// end of each blob, as `push-blob` or `pull-blob`.
    fn json(&self, event: &Event) -> Option<Value> {
        let mut object = serde_json::to_value(event).ok()?;
        if let Event::Transfer {
            push, done, total, ..
        } = event
        {
            if *done != 0 && done < total {
                return None;
            }
            object["event"] = json!(if *push { "push-blob" } else { "pull-blob" });
        }
        object["time"] = json!(now());
        if let Some(text) = self.text(event) {
            object["message"] = Value::String(text);
        }
        Some(object)
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// `sha256:0123456789ab`: enough of a digest to tell blobs apart.
fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// The time now, RFC 3339 with milliseconds.
pub fn now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = strata::config::rfc3339(now.as_secs() as i64);
    format!(
        "{}.{:03}Z",
        stamp.trim_end_matches('Z'),
        now.subsec_millis()
    )
}
