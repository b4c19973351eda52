//! The executor: builds an image from a Dockerfile with Kaniko's flags.
//!
//! ```sh
//! cargo run --release --example build -- --context examples/hello
//! cargo run --release --example build -- --context . --destination registry.example.com/app:1
//! ```
//!
//! Kaniko's flags keep Kaniko's spelling and meaning; the few strata does not implement are
//! refused with a message (exit 2), never ignored. With no destination and no output flag,
//! the image is written as an OCI layout under `./out/<name>`. Exit codes: 0 success, 1 build
//! error (with the Dockerfile position), 2 usage error.

mod display;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use display::{Display, Mode};
use serde_json::json;
use strata::registry::{Credentials, RegistryClient};
use strata::{Build, ContextSource, Secret, SnapshotMode};

const USAGE: &str = "usage: build --context DIR|dir://DIR|tar://FILE|tar://stdin|- [--dockerfile PATH] \
[--destination REF]... [--no-push] [--tar-path FILE] [--oci-layout-path DIR] [--build-arg K[=V]]... \
[--target STAGE] [--label K=V]... [--cache=true|false] [--cache-repo REPO] [--cache-ttl DURATION] [--single-snapshot] [--ignore-path PATH]... [--state-dir DIR] [--snapshot-mode MODE] \
[--reproducible] [--custom-platform OS/ARCH] [--insecure] [--insecure-registry HOST]... \
[--skip-tls-verify] [--skip-tls-verify-registry HOST]... [--registry-certificate HOST=PATH]... \
[--registry-mirror HOST]... [--push-retry N] [--digest-file FILE] \
[--image-name-with-digest-file FILE] [--image-name-tag-with-digest-file FILE] \
[--compression gzip|zstd] [--compression-level N] [--secret id=ID,src=PATH|env=VAR]... \
[--explain-cache] [--log-format text|json] [--log-timestamp=true|false] [--verbosity LEVEL] \
[--context-sub-path DIR] [--cleanup] [--cache-dir DIR] [--cache-copy-layers=true|false] \
[--cache-run-layers=true|false] [--image-fs-extract-retry N] [--registry-map REGISTRY=MIRROR[;MIRROR]]... \
[--insecure-pull] [--build-context NAME=oci-layout://DIR[:TAG]|docker-image://REF]... \
[--progress auto|tty|plain]";

/// Kaniko flags this executor does not implement: refused by name, never ignored.
const NOT_SUPPORTED: &[(&str, &str)] = &[
    (
        "--use-new-run",
        "strata always snapshots RUN steps from an overlay or a filesystem walk",
    ),
    (
        "--kaniko-dir",
        "strata keeps its state in --state-dir and never writes to the host's root",
    ),
    (
        "--skip-push-permission-check",
        "strata checks push access only when it pushes",
    ),
    (
        "--force",
        "strata never runs in place of the host's root filesystem",
    ),
    (
        "--git",
        "git contexts are not supported yet; clone first and pass the directory",
    ),
];

#[derive(Default)]
struct Args {
    context: Option<String>,
    dockerfile: Option<PathBuf>,
    destinations: Vec<String>,
    no_push: bool,
    tar_path: Option<PathBuf>,
    oci_layout_path: Option<PathBuf>,
    build_args: BTreeMap<String, String>,
    target: Option<String>,
    labels: BTreeMap<String, String>,
    cache: bool,
    cache_repo: Option<String>,
    single_snapshot: bool,
    ignore_paths: Vec<String>,
    cache_ttl: Option<std::time::Duration>,
    state_dir: Option<PathBuf>,
    snapshot_mode: SnapshotMode,
    reproducible: bool,
    platform: Option<String>,
    insecure: bool,
    insecure_registries: Vec<String>,
    skip_tls_verify: bool,
    skip_tls_verify_registries: Vec<String>,
    certificates: Vec<(String, PathBuf)>,
    mirrors: Vec<String>,
    push_retry: Option<u32>,
    digest_file: Option<PathBuf>,
    name_digest_file: Option<PathBuf>,
    name_tag_digest_file: Option<PathBuf>,
    compression: Option<String>,
    compression_level: Option<i32>,
    secrets: Vec<(String, Secret)>,
    explain_cache: bool,
    json: bool,
    context_sub_path: Option<String>,
    no_timestamps: bool,
    cache_copy_layers: bool,
    cache_run_layers: bool,
    extract_retry: Option<u32>,
    registry_maps: Vec<(String, String)>,
    insecure_pull: bool,
    build_contexts: Vec<(String, String)>,
    progress: Option<String>,
    verbosity: Verbosity,
}

/// How much the executor says besides errors and the final report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Verbosity {
    /// Nothing (`--verbosity error` and below).
    Quiet,
    /// Every build event (`info`, the default, and `warn`: strata has no separate warnings).
    #[default]
    Events,
    /// Events and the libraries' tracing records at this level (`debug`, `trace`).
    Trace(tracing::Level),
}

fn parse(argv: Vec<String>) -> Result<Args, String> {
    let mut args = Args {
        cache: true,
        cache_copy_layers: true,
        cache_run_layers: true,
        ..Args::default()
    };
    let mut cache_dir: Option<PathBuf> = None;
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if arg.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if let Some((_, why)) = NOT_SUPPORTED.iter().find(|(f, _)| *f == flag) {
            return Err(format!("{flag} is not supported by strata: {why}"));
        }
        let boolean = |inline: &Option<String>| -> Result<bool, String> {
            match inline.as_deref() {
                None | Some("true") => Ok(true),
                Some("false") => Ok(false),
                Some(other) => Err(format!("{flag}: expected true or false, got `{other}`")),
            }
        };
        let mut value = |inline: Option<String>| -> Result<String, String> {
            inline
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--context" | "-c" => args.context = Some(value(inline)?),
            "--dockerfile" | "-f" => args.dockerfile = Some(value(inline)?.into()),
            "--destination" | "-d" => args.destinations.push(value(inline)?),
            "--no-push" => args.no_push = boolean(&inline)?,
            "--tar-path" => args.tar_path = Some(value(inline)?.into()),
            "--oci-layout-path" => args.oci_layout_path = Some(value(inline)?.into()),
            "--build-arg" => {
                let text = value(inline)?;
                let (k, v) = match text.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    // `K` alone takes the value from the environment, as Kaniko does.
                    None => (text.clone(), std::env::var(&text).unwrap_or_default()),
                };
                args.build_args.insert(k, v);
            }
            "--target" => args.target = Some(value(inline)?),
            "--label" => {
                let text = value(inline)?;
                let (k, v) = text
                    .split_once('=')
                    .ok_or_else(|| format!("--label {text}: expected KEY=VALUE"))?;
                args.labels.insert(k.to_owned(), v.to_owned());
            }
            "--cache" => args.cache = boolean(&inline)?,
            "--cache-repo" => args.cache_repo = Some(value(inline)?),
            "--single-snapshot" => args.single_snapshot = boolean(&inline)?,
            "--ignore-path" => args.ignore_paths.push(value(inline)?),
            "--cache-ttl" => {
                let text = value(inline)?;
                args.cache_ttl = Some(go_duration(&text).ok_or_else(|| {
                    format!("--cache-ttl {text}: expected a duration like 6h or 90m")
                })?);
            }
            "--state-dir" => args.state_dir = Some(value(inline)?.into()),
            "--snapshot-mode" => {
                args.snapshot_mode = match value(inline)?.as_str() {
                    "auto" => SnapshotMode::Auto,
                    "overlay" => SnapshotMode::Overlay,
                    // Kaniko's full, redo and time all compare the filesystem before and after.
                    "full" | "redo" | "time" | "walk" => SnapshotMode::Walk,
                    other => {
                        return Err(format!(
                            "--snapshot-mode {other}: expected auto, overlay, full, redo or time"
                        ));
                    }
                }
            }
            "--reproducible" => args.reproducible = boolean(&inline)?,
            "--custom-platform" => args.platform = Some(value(inline)?),
            "--insecure" => args.insecure = boolean(&inline)?,
            "--insecure-registry" => args.insecure_registries.push(value(inline)?),
            "--context-sub-path" => args.context_sub_path = Some(value(inline)?),
            // Kaniko empties the container's filesystem after a build; strata never changes the
            // host's filesystem, so there is nothing to clean.
            "--cleanup" => {
                boolean(&inline)?;
            }
            "--log-timestamp" => args.no_timestamps = !boolean(&inline)?,
            "--skip-tls-verify" => args.skip_tls_verify = boolean(&inline)?,
            "--skip-tls-verify-registry" => args.skip_tls_verify_registries.push(value(inline)?),
            "--registry-certificate" => {
                let text = value(inline)?;
                let (host, path) = text
                    .split_once('=')
                    .ok_or_else(|| format!("--registry-certificate {text}: expected HOST=PATH"))?;
                args.certificates.push((host.to_owned(), path.into()));
            }
            "--registry-mirror" => args.mirrors.push(value(inline)?),
            "--push-retry" => {
                args.push_retry = Some(
                    value(inline)?
                        .parse()
                        .map_err(|_| "--push-retry: expected a number")?,
                )
            }
            "--digest-file" => args.digest_file = Some(value(inline)?.into()),
            "--image-name-with-digest-file" => args.name_digest_file = Some(value(inline)?.into()),
            "--image-name-tag-with-digest-file" => {
                args.name_tag_digest_file = Some(value(inline)?.into())
            }
            "--compression" => args.compression = Some(value(inline)?),
            "--compression-level" => {
                args.compression_level = Some(
                    value(inline)?
                        .parse()
                        .map_err(|_| "--compression-level: expected a number")?,
                )
            }
            "--secret" => {
                let text = value(inline)?;
                let mut id = None;
                let mut secret = None;
                for part in text.split(',') {
                    match part.split_once('=') {
                        Some(("id", v)) => id = Some(v.to_owned()),
                        Some(("src" | "source", v)) => secret = Some(Secret::File(v.into())),
                        Some(("env", v)) => secret = Some(Secret::Env(v.to_owned())),
                        _ => {
                            return Err(format!(
                                "--secret {text}: expected id=ID,src=PATH or id=ID,env=VAR"
                            ));
                        }
                    }
                }
                match (id, secret) {
                    (Some(id), Some(secret)) => args.secrets.push((id, secret)),
                    _ => {
                        return Err(format!(
                            "--secret {text}: expected id=ID,src=PATH or id=ID,env=VAR"
                        ));
                    }
                }
            }
            "--explain-cache" => args.explain_cache = boolean(&inline)?,
            // Kaniko keeps base images in --cache-dir; strata keeps them, and its layer
            // cache, in the state directory, so the same volume serves both.
            "--cache-dir" => cache_dir = Some(value(inline)?.into()),
            "--cache-copy-layers" => args.cache_copy_layers = boolean(&inline)?,
            "--cache-run-layers" => args.cache_run_layers = boolean(&inline)?,
            "--image-fs-extract-retry" => {
                args.extract_retry = Some(
                    value(inline)?
                        .parse()
                        .map_err(|_| "--image-fs-extract-retry: expected a number")?,
                )
            }
            "--registry-map" => {
                let text = value(inline)?;
                let (registry, mirrors) = text.split_once('=').ok_or_else(|| {
                    format!("--registry-map {text}: expected REGISTRY=MIRROR[;MIRROR...]")
                })?;
                for mirror in mirrors.split(';').filter(|m| !m.is_empty()) {
                    args.registry_maps
                        .push((registry.to_owned(), mirror.to_owned()));
                }
            }
            "--insecure-pull" => args.insecure_pull = boolean(&inline)?,
            "--build-context" => {
                let text = value(inline)?;
                let (name, source) = text.split_once('=').ok_or_else(|| {
                    format!("--build-context {text}: expected NAME=oci-layout://DIR[:TAG]")
                })?;
                args.build_contexts
                    .push((name.to_owned(), source.to_owned()));
            }
            "--progress" => {
                let mode = value(inline)?;
                if !matches!(mode.as_str(), "auto" | "tty" | "plain") {
                    return Err(format!("--progress {mode}: expected auto, tty or plain"));
                }
                args.progress = Some(mode);
            }
            "--log-format" => match value(inline)?.as_str() {
                "text" | "color" => args.json = false,
                "json" => args.json = true,
                other => return Err(format!("--log-format {other}: expected text or json")),
            },
            "--verbosity" | "-v" => {
                let level = value(inline)?;
                args.verbosity = match level.as_str() {
                    "panic" | "fatal" | "error" => Verbosity::Quiet,
                    "warn" | "info" => Verbosity::Events,
                    "debug" => Verbosity::Trace(tracing::Level::DEBUG),
                    "trace" => Verbosity::Trace(tracing::Level::TRACE),
                    other => {
                        return Err(format!(
                            "--verbosity {other}: expected panic, fatal, error, warn, info, debug or trace"
                        ));
                    }
                };
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    match (&args.state_dir, cache_dir) {
        (Some(state), Some(cache)) if *state != cache => {
            return Err(format!(
                "--cache-dir {} and --state-dir {} differ: strata keeps base images in its \
                 state directory, so give one of them",
                cache.display(),
                state.display()
            ));
        }
        (None, Some(cache)) => args.state_dir = Some(cache),
        _ => {}
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1).collect()) {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("build: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("build: {e}");
            return ExitCode::from(1);
        }
    };
    let mode = match (args.json, args.progress.as_deref()) {
        (true, _) => Mode::Json,
        (false, Some("tty")) => Mode::Tty,
        (false, Some("auto") | None)
            if std::io::stderr().is_terminal()
                && std::env::var("TERM").map_or(true, |t| t != "dumb") =>
        {
            Mode::Tty
        }
        _ => Mode::Plain {
            stamps: !args.no_timestamps,
        },
    };
    if let Verbosity::Trace(level) = args.verbosity {
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .init();
    }
    let display = Arc::new(Display::new(mode, args.explain_cache));
    let outcome = runtime.block_on(build(args, Arc::clone(&display)));
    display.clear();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("build: {message}");
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Build(message)) => {
            eprintln!("build: error: {message}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Usage(String),
    Build(String),
}

impl From<strata::Error> for Failure {
    fn from(e: strata::Error) -> Failure {
        Failure::Build(e.to_string())
    }
}

async fn build(args: Args, display: Arc<Display>) -> Result<(), Failure> {
    let started = Instant::now();
    let mut context_text = args.context.clone().unwrap_or_else(|| ".".to_owned());
    if let Some(sub) = &args.context_sub_path {
        if context_text.starts_with("tar://") || context_text == "-" {
            return Err(Failure::Usage(
                "--context-sub-path needs a directory context".to_owned(),
            ));
        }
        let base = context_text.trim_start_matches("dir://").to_owned();
        context_text = Path::new(&base).join(sub).display().to_string();
    }
    let (context, name) = context_source(&context_text)?;
    let mut build = Build::new(context);
    if let Some(dockerfile) = &args.dockerfile {
        // Kaniko: a relative --dockerfile is looked up in the context when it exists there.
        let in_context = Path::new(context_text.trim_start_matches("dir://")).join(dockerfile);
        build = build.dockerfile(if dockerfile.is_relative() && in_context.is_file() {
            in_context
        } else {
            dockerfile.clone()
        });
    } else if !Path::new(context_text.trim_start_matches("dir://")).is_dir() {
        return Err(Failure::Usage(
            "a tar context needs --dockerfile".to_owned(),
        ));
    }
    for (k, v) in &args.build_args {
        build = build.build_arg(k, v);
    }
    for (k, v) in &args.labels {
        build = build.label(k, v);
    }
    if let Some(target) = &args.target {
        build = build.target(target);
    }
    if let Some(platform) = &args.platform {
        build = build.platform(platform);
    }
    if let Some(dir) = &args.state_dir {
        build = build.state_dir(dir);
    }
    if args.reproducible {
        let epoch = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        build = build.reproducible(epoch);
    }
    for (id, secret) in args.secrets.clone() {
        build = build.secret(id, secret);
    }
    build = build.cache(args.cache).snapshot_mode(args.snapshot_mode);
    build = build.single_snapshot(args.single_snapshot);
    build = build
        .cache_layers_of("RUN", args.cache_run_layers)
        .cache_layers_of("COPY", args.cache_copy_layers)
        .cache_layers_of("ADD", args.cache_copy_layers);
    for (name, source) in &args.build_contexts {
        build = build.build_context(name, source);
    }
    for path in &args.ignore_paths {
        build = build.ignore_path(path);
    }
    if let Some(repo) = &args.cache_repo {
        build = build.cache_repo(repo);
    }
    if let Some(ttl) = args.cache_ttl {
        build = build.cache_ttl(ttl);
    }
    build = build.compression(
        match (args.compression.as_deref(), args.compression_level) {
            (None | Some("gzip"), level) => strata::layer::Compression::Gzip {
                level: level.map_or(6, |l| l.clamp(1, 9) as u32),
            },
            (Some("zstd"), level) => strata::layer::Compression::Zstd {
                level: level.unwrap_or(3),
            },
            (Some(other), _) => {
                return Err(Failure::Usage(format!(
                    "--compression {other}: expected gzip or zstd"
                )));
            }
        },
    );
    build = build.registry(registry_client(&args)?);
    if args.verbosity != Verbosity::Quiet {
        let sink = Arc::clone(&display);
        build = build.on_event(move |event| sink.event(event));
    }

    let image = build.run().await?;
    let mut outputs = Vec::new();
    let mut pushed = Vec::new();
    if !args.no_push {
        for destination in &args.destinations {
            let digest = image.push(destination).await?;
            outputs.push(format!("pushed {destination}@{digest}"));
            pushed.push(json!({ "reference": destination, "digest": digest }));
        }
    }
    if let Some(path) = &args.tar_path {
        let tags: Vec<&str> = args.destinations.iter().map(String::as_str).collect();
        image.write_docker_archive(path, &tags)?;
        outputs.push(format!("wrote docker-archive {}", path.display()));
    }
    if let Some(dir) = &args.oci_layout_path {
        image.write_oci_layout(dir, "latest")?;
        outputs.push(format!("wrote OCI layout {}:latest", dir.display()));
    }
    if outputs.is_empty() && (args.destinations.is_empty() || args.no_push) {
        let dir = PathBuf::from("out").join(&name);
        image.write_oci_layout(&dir, "latest")?;
        outputs.push(format!(
            "wrote OCI layout {0}:latest (push it with: skopeo copy oci:{0}:latest docker://REGISTRY/{1}:latest)",
            dir.display(),
            name
        ));
    }
    let write = |path: &Option<PathBuf>, text: String| -> Result<(), Failure> {
        match path {
            Some(path) => write_atomic(path, text.as_bytes())
                .map_err(|e| Failure::Build(format!("{}: {e}", path.display()))),
            None => Ok(()),
        }
    };
    write(&args.digest_file, image.digest().to_owned())?;
    let names = |tagged: bool| {
        args.destinations
            .iter()
            .map(|d| {
                let base = if tagged {
                    d.clone()
                } else {
                    d.rsplit_once(':')
                        .filter(|(_, t)| !t.contains('/'))
                        .map_or(d.clone(), |(n, _)| n.to_owned())
                };
                format!("{base}@{}\n", image.digest())
            })
            .collect::<String>()
    };
    write(&args.name_digest_file, names(false))?;
    write(&args.name_tag_digest_file, names(true))?;
    let (hits, steps) = image.cache_hits();
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let summary = json!({
            "digest": image.digest(),
            "destinations": pushed,
            "outputs": outputs,
            "seconds": seconds,
            "cache_hits": hits,
            "steps": steps,
        });
        display.report(&summary.to_string());
    } else {
        display.report(&format!("digest {}", image.digest()));
        for line in outputs {
            display.report(&line);
        }
        display.report(&format!(
            "done in {seconds:.2}s, {hits} of {steps} steps from the cache"
        ));
    }
    Ok(())
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into place: a reader
/// sees the old file or the whole new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The context source and the name an unnamed output gets.
fn context_source(text: &str) -> Result<(ContextSource, String), Failure> {
    if text == "-" || text == "tar://stdin" {
        return Ok((
            ContextSource::TarStream(Box::new(std::io::stdin())),
            "image".to_owned(),
        ));
    }
    if let Some((scheme, _)) = text.split_once("://")
        && !matches!(scheme, "dir" | "tar")
    {
        return Err(Failure::Usage(format!(
            "--context {text}: {scheme}:// contexts are not supported by strata yet; \
             fetch the context first and pass a directory or a tar file"
        )));
    }
    if let Some(path) = text.strip_prefix("tar://") {
        let name = Path::new(path).file_stem().map_or("image".to_owned(), |s| {
            s.to_string_lossy().trim_end_matches(".tar").to_owned()
        });
        return Ok((ContextSource::Tar(path.into()), name));
    }
    let dir = PathBuf::from(text.strip_prefix("dir://").unwrap_or(text));
    if !dir.is_dir() {
        return Err(Failure::Usage(format!("--context {text}: not a directory")));
    }
    let name = std::fs::canonicalize(&dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().to_lowercase()))
        .unwrap_or_else(|| "image".to_owned());
    Ok((ContextSource::Dir(dir), name))
}

fn registry_client(args: &Args) -> Result<RegistryClient, Failure> {
    let mut builder = RegistryClient::builder().credentials(Credentials::from_env());
    if args.insecure {
        for destination in &args.destinations {
            if let Some((host, _)) = destination.split_once('/') {
                builder = builder.insecure(host);
            }
        }
    }
    for host in &args.insecure_registries {
        builder = builder.insecure(host);
    }
    builder = builder.skip_tls_verify(args.skip_tls_verify);
    for host in &args.skip_tls_verify_registries {
        builder = builder.skip_tls_verify_for(host);
    }
    for (_, path) in &args.certificates {
        let pem = std::fs::read(path).map_err(|e| {
            Failure::Usage(format!("--registry-certificate {}: {e}", path.display()))
        })?;
        builder = builder.ca_pem(pem);
    }
    for mirror in &args.mirrors {
        builder = builder.mirror(mirror);
    }
    for (registry, mirror) in &args.registry_maps {
        builder = builder.registry_mirror(registry, mirror);
    }
    builder = builder.insecure_pull(args.insecure_pull);
    // One retry count for every request: the larger of --push-retry and
    // --image-fs-extract-retry (strata extracts from verified local blobs, so only the
    // downloads can fail in a way that passes).
    if let Some(retries) = args.push_retry.max(args.extract_retry) {
        builder = builder.retries(retries);
    }
    Ok(builder.build())
}

/// A Go duration as Kaniko takes it (`336h`, `1h30m`, `90s`).
fn go_duration(text: &str) -> Option<std::time::Duration> {
    let mut total = 0f64;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                0.001
            }
            ('h', _) => 3600.0,
            ('m', _) => 60.0,
            ('s', _) => 1.0,
            _ => return None,
        };
        total += number.parse::<f64>().ok()? * unit;
        number.clear();
        any = true;
    }
    (any && number.is_empty()).then(|| std::time::Duration::from_secs_f64(total))
}
