//! `strata build`: Kaniko's executor. Validates the flags into a [`strata::Build`], runs it,
//! writes the outputs and the digest files, and reports.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use strata::registry::{Credentials, RegistryClient};
use strata::{Build, ContextSource, Secret};

use crate::Failure;
use crate::cli::{self, BuildArgs, LogFormat, Progress, Verbosity};
use crate::display::{Display, Mode};

/// Runs `strata build`.
pub fn run(args: BuildArgs) -> Result<(), Failure> {
    refuse_unsupported(&args)?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::Build(format!("cannot start the async runtime: {e}")))?;
    let mode = match (args.log_format, args.progress) {
        (LogFormat::Json, _) => Mode::Json,
        (_, Progress::Tty) => Mode::Tty,
        (_, Progress::Auto)
            if std::io::stderr().is_terminal()
                && std::env::var("TERM").map_or(true, |t| t != "dumb") =>
        {
            Mode::Tty
        }
        _ => Mode::Plain {
            stamps: args.log_timestamp,
        },
    };
    let level = match args.verbosity {
        Verbosity::Debug => Some(tracing::Level::DEBUG),
        Verbosity::Trace => Some(tracing::Level::TRACE),
        _ => None,
    };
    if let Some(level) = level {
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .init();
    }
    let display = Arc::new(Display::new(mode, args.explain_cache));
    let outcome = runtime.block_on(build(args, Arc::clone(&display)));
    display.clear();
    outcome
}

/// Kaniko flags strata refuses: a usage error naming the flag and why.
fn refuse_unsupported(args: &BuildArgs) -> Result<(), Failure> {
    match cli::REFUSED.iter().find(|(_, _, given)| given(args)) {
        Some((flag, why, _)) => Err(Failure::Usage(format!(
            "{flag} is not supported by strata: {why}"
        ))),
        None => Ok(()),
    }
}

/// `KEY=VALUE` split, or a usage error naming the flag.
fn key_value<'a>(flag: &str, text: &'a str, form: &str) -> Result<(&'a str, &'a str), Failure> {
    text.split_once('=')
        .ok_or_else(|| Failure::Usage(format!("{flag} {text}: expected {form}")))
}

fn build_args(values: &[String]) -> BTreeMap<String, String> {
    values
        .iter()
        .map(|text| match text.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            // `K` alone takes the value from the environment, as Kaniko does.
            None => (text.clone(), std::env::var(text).unwrap_or_default()),
        })
        .collect()
}

fn secret(text: &str) -> Result<(String, Secret), Failure> {
    let bad = || {
        Failure::Usage(format!(
            "--secret {text}: expected id=ID,src=PATH or id=ID,env=VAR"
        ))
    };
    let mut id = None;
    let mut secret = None;
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("id", v)) => id = Some(v.to_owned()),
            Some(("src" | "source", v)) => secret = Some(Secret::File(v.into())),
            Some(("env", v)) => secret = Some(Secret::Env(v.to_owned())),
            _ => return Err(bad()),
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok((id, secret)),
        _ => Err(bad()),
    }
}

/// The state directory from `--state-dir` and Kaniko's `--cache-dir`, which must agree.
fn state_dir(args: &BuildArgs) -> Result<Option<PathBuf>, Failure> {
    match (&args.state_dir, &args.cache_dir) {
        (Some(state), Some(cache)) if state != cache => Err(Failure::Usage(format!(
            "--cache-dir {} and --state-dir {} differ: strata keeps base images in its state \
             directory, so give one of them",
            cache.display(),
            state.display()
        ))),
        (Some(dir), _) | (None, Some(dir)) => Ok(Some(dir.clone())),
        (None, None) => Ok(None),
    }
}

async fn build(args: BuildArgs, display: Arc<Display>) -> Result<(), Failure> {
    let started = Instant::now();
    let (context, name) = context_source(&args)?;
    let Configured {
        build,
        state,
        prune_to,
    } = configure(&args, context)?;
    let (build, isolation) = with_display(build, &args, &display);
    let image = build.run().await?;
    let (mut outputs, pushed) = deliver(&image, &args, &name).await?;
    write_digest_files(&image, &args)?;
    if let Some(line) = isolation.lock().ok().and_then(|slot| slot.clone()) {
        outputs.push(line);
    }
    let (hits, steps) = image.cache_hits();
    let digest = image.digest().to_owned();
    drop(image);
    if let Some(max_size) = prune_to {
        let dir = state.clone().unwrap_or_else(strata::default_state_dir);
        let report = strata::prune_state(&dir, &strata::PruneOptions::new().max_size(max_size))?;
        outputs.push(report.to_string());
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.log_format == LogFormat::Json {
        let summary = json!({
            "digest": digest,
            "destinations": pushed,
            "outputs": outputs,
            "seconds": seconds,
            "cache_hits": hits,
            "steps": steps,
        });
        display.report(&summary.to_string());
    } else {
        display.report(&format!("digest {digest}"));
        for line in outputs {
            display.report(&line);
        }
        display.report(&format!(
            "done in {seconds:.2}s, {hits} of {steps} steps from the cache"
        ));
    }
    Ok(())
}

/// A build set up from Kaniko's flags, with what the command does after it.
struct Configured {
    build: Build,
    /// `--state-dir` (or Kaniko's `--kaniko-dir`), when given.
    state: Option<PathBuf>,
    /// `--cache-max-size`: the state directory is pruned to it after the build.
    prune_to: Option<u64>,
}

/// The build the flags ask for (everything but the display): a flag whose value is wrong is
/// a usage error naming it.
fn configure(args: &BuildArgs, context: ContextSource) -> Result<Configured, Failure> {
    let context_dir = match &context {
        ContextSource::Dir(dir) => Some(dir.clone()),
        _ => None,
    };
    let mut build = Build::new(context);
    if let Some(dockerfile) = &args.dockerfile {
        // Kaniko: a relative --dockerfile is looked up in the context when it exists there
        // (a tar context: inside the archive, which the library does).
        build = match &context_dir {
            Some(dir) if dockerfile.is_relative() && dir.join(dockerfile).is_file() => {
                build.dockerfile(dir.join(dockerfile))
            }
            _ => build.dockerfile(dockerfile),
        };
    }
    for (k, v) in build_args(&args.build_args) {
        build = build.build_arg(k, v);
    }
    for text in &args.labels {
        let (k, v) = key_value("--label", text, "KEY=VALUE")?;
        build = build.label(k, v);
    }
    if let Some(target) = &args.target {
        build = build.target(target);
    }
    if let Some(platform) = &args.custom_platform {
        let platform = platform
            .parse::<strata::Platform>()
            .map_err(|e| Failure::Usage(format!("--custom-platform: {e}")))?;
        build = build.platform(platform);
    }
    let state = state_dir(args)?;
    if let Some(dir) = &state {
        build = build.state_dir(dir);
    }
    if args.reproducible {
        let epoch = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        build = build.reproducible(epoch);
    }
    for text in &args.secrets {
        let (id, secret) = secret(text)?;
        build = build.secret(id, secret);
    }
    build = build
        .cache(args.cache)
        .snapshot_mode(match args.snapshot_mode {
            cli::SnapshotMode::Auto => strata::SnapshotMode::Auto,
            cli::SnapshotMode::Overlay => strata::SnapshotMode::Overlay,
            _ => strata::SnapshotMode::Walk,
        })
        .single_snapshot(args.single_snapshot)
        .cache_layers_of(strata::LayerStep::Run, args.cache_run_layers)
        .cache_layers_of(strata::LayerStep::Copy, args.cache_copy_layers)
        .cache_layers_of(strata::LayerStep::Add, args.cache_copy_layers)
        .cache_repo_writes(!args.no_push_cache)
        .isolation(match args.isolation {
            cli::IsolationMode::Auto => strata::Isolation::Auto,
            cli::IsolationMode::Namespaces => strata::Isolation::Namespaces,
            cli::IsolationMode::InContainer => strata::Isolation::InContainer,
        })
        .force(args.force)
        .ignore_var_run(args.ignore_var_run);
    for text in &args.build_contexts {
        let (name, source) = key_value("--build-context", text, "NAME=oci-layout://DIR[:TAG]")?;
        let source = source
            .parse::<strata::ImageSource>()
            .map_err(|e| Failure::Usage(format!("--build-context {name}: {e}")))?;
        build = build.build_context(name, source);
    }
    for path in &args.ignore_paths {
        build = build.ignore_path(path);
    }
    build = cache_and_layer_flags(build, args)?;
    let prune_to = args
        .cache_max_size
        .as_deref()
        .map(|text| {
            parse_size(text).ok_or_else(|| {
                Failure::Usage(format!(
                    "--cache-max-size {text}: expected a size like 10GiB or 500M"
                ))
            })
        })
        .transpose()?;
    build = build.registry(registry_client(args)?);
    Ok(Configured {
        build,
        state,
        prune_to,
    })
}

/// The remote cache (`--cache-repo`, `--cache-from`, `--cache-ttl`), layer compression and
/// the download limit.
fn cache_and_layer_flags(mut build: Build, args: &BuildArgs) -> Result<Build, Failure> {
    if let Some(repo) = &args.cache_repo {
        if repo.starts_with("oci:") {
            return Err(Failure::Usage(format!(
                "--cache-repo {repo}: a cache in an OCI layout is not supported by strata; \
                 the local cache lives in --state-dir"
            )));
        }
        build = build.cache_repo(repo);
    }
    for image in &args.cache_from {
        build = build.cache_from(image);
    }
    if let Some(ttl) = &args.cache_ttl {
        let ttl = go_duration(ttl).ok_or_else(|| {
            Failure::Usage(format!(
                "--cache-ttl {ttl}: expected a duration like 6h or 90m"
            ))
        })?;
        build = build.cache_ttl(ttl);
    }
    let level = args.compression_level;
    build = build.compression(match args.compression {
        cli::Compression::Gzip => strata::layer::Compression::Gzip {
            level: if level < 0 {
                6
            } else {
                level.clamp(1, 9) as u32
            },
        },
        cli::Compression::Zstd => strata::layer::Compression::Zstd {
            level: if level < 0 { 3 } else { level.clamp(1, 22) },
        },
    });
    let max_download = parse_size(&args.max_download_size).ok_or_else(|| {
        Failure::Usage(format!(
            "--max-download-size {}: expected a size like 10GiB or 500M",
            args.max_download_size
        ))
    })?;
    build = build.max_download_size(max_download);
    Ok(build)
}

/// The build with its events sent to the display (unless the verbosity hides them), and
/// where the isolation RUN steps used is kept for the final report.
fn with_display(
    build: Build,
    args: &BuildArgs,
    display: &Arc<Display>,
) -> (Build, Arc<std::sync::Mutex<Option<String>>>) {
    let verbose = !matches!(
        args.verbosity,
        Verbosity::Panic | Verbosity::Fatal | Verbosity::Error
    );
    // Which isolation ran goes into the final report too.
    let isolation: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let sink = Arc::clone(display);
    let slot = Arc::clone(&isolation);
    let build = build.on_event(move |event| {
        if let strata::Event::Isolation { mode, reason } = event
            && let Ok(mut slot) = slot.lock()
        {
            *slot = Some(format!("RUN steps ran with {mode} isolation: {reason}"));
        }
        if verbose {
            sink.event(event);
        }
    });
    (build, isolation)
}

/// Pushes to each destination and writes the local outputs asked for (an OCI layout under
/// `out/` when nothing was); returns what was done, as lines and as JSON for the pushes.
async fn deliver(
    image: &strata::Image,
    args: &BuildArgs,
    name: &str,
) -> Result<(Vec<String>, Vec<serde_json::Value>), Failure> {
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
    if outputs.is_empty() && args.no_push {
        // Kaniko's meaning: build only. (The image stays in the state directory.)
        outputs.push(
            "no output asked for (--no-push): the image is in the state directory".to_owned(),
        );
    } else if outputs.is_empty() && args.destinations.is_empty() {
        let dir = PathBuf::from("out").join(name);
        image.write_oci_layout(&dir, "latest")?;
        outputs.push(format!(
            "wrote OCI layout {0}:latest (push it with: skopeo copy oci:{0}:latest docker://REGISTRY/{1}:latest)",
            dir.display(),
            name
        ));
    }
    Ok((outputs, pushed))
}

/// `--digest-file`, `--image-name-with-digest-file` and `--image-name-tag-with-digest-file`,
/// each written through a temporary file.
fn write_digest_files(image: &strata::Image, args: &BuildArgs) -> Result<(), Failure> {
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
    write(&args.image_name_with_digest_file, names(false))?;
    write(&args.image_name_tag_with_digest_file, names(true))?;
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
fn context_source(args: &BuildArgs) -> Result<(ContextSource, String), Failure> {
    let text = context_text(args)?;
    let text = text.as_str();
    let sub = args.context_sub_path.as_deref();
    let git_options = args.git.as_deref();
    if let Some(options) = git_options
        && !is_git(text)
    {
        return Err(Failure::Usage(format!(
            "--git {options}: the context {} is not a git repository",
            strata::redact_url(text)
        )));
    }
    if is_git(text) {
        return git_context(text, git_options, sub);
    }
    let http = text.starts_with("https://") || text.starts_with("http://");
    let archive = ContextSource::is_object_url(text) || http || text == "-";
    if sub.is_some() && (archive || text.starts_with("tar://")) {
        return Err(Failure::Usage(
            "--context-sub-path needs a directory or git context".to_owned(),
        ));
    }
    if ContextSource::is_object_url(text) {
        let name = object_name(text);
        return Ok((ContextSource::Object(text.to_owned()), name));
    }
    if http {
        let name = object_name(text);
        return Ok((ContextSource::Url(text.to_owned()), name));
    }
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
            "--context {}: {scheme}:// contexts are not supported by strata yet; \
             fetch the context first and pass a directory or a tar file",
            strata::redact_url(text)
        )));
    }
    if let Some(path) = text.strip_prefix("tar://") {
        let name = Path::new(path).file_stem().map_or("image".to_owned(), |s| {
            s.to_string_lossy().trim_end_matches(".tar").to_owned()
        });
        return Ok((ContextSource::Tar(path.into()), name));
    }
    let mut dir = PathBuf::from(text.strip_prefix("dir://").unwrap_or(text));
    if let Some(sub) = sub {
        dir = dir.join(sub);
    }
    if !dir.is_dir() {
        return Err(Failure::Usage(format!(
            "--context {}: not a directory",
            dir.display()
        )));
    }
    let name = std::fs::canonicalize(&dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().to_lowercase()))
        .unwrap_or_else(|| "image".to_owned());
    Ok((ContextSource::Dir(dir), name))
}

/// The context's text: `--context`, or Kaniko's `--bucket` (Google Cloud Storage unless a
/// scheme is given, whose context.tar.gz holds the context); both is a usage error.
fn context_text(args: &BuildArgs) -> Result<String, Failure> {
    let Some(bucket) = &args.bucket else {
        return Ok(args.context.clone());
    };
    if args.context != "." {
        return Err(Failure::Usage(format!(
            "--bucket {bucket} and --context {} both name the context: give one",
            strata::redact_url(&args.context)
        )));
    }
    Ok(if bucket.contains("://") {
        bucket.clone()
    } else {
        format!("gs://{bucket}")
    })
}

/// A git context (`git://HOST/PATH` as Kaniko spells it, or a git URL) with `--git`'s
/// options and `--context-sub-path` below its own subdirectory; named after its repository.
fn git_context(
    text: &str,
    git_options: Option<&str>,
    sub: Option<&str>,
) -> Result<(ContextSource, String), Failure> {
    let mut source = match text.strip_prefix("git://") {
        // Kaniko's form: the host and path, fetched over HTTPS unless GIT_PULL_METHOD
        // says otherwise.
        Some(rest) => strata::GitSource::kaniko(rest, strata::PullMethod::from_env()),
        None => strata::GitSource::parse(text),
    }
    .map_err(|e| Failure::Usage(format!("--context: {e}")))?
    .credentials_from_env();
    if let Some(options) = git_options {
        source = git_flag(source, options)?;
    }
    if let Some(sub) = sub {
        let joined = match source.subdir_path() {
            Some(first) => format!("{}/{sub}", first.trim_end_matches('/')),
            None => sub.to_owned(),
        };
        source = source.subdir(joined);
    }
    let name = source
        .url()
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .map(|n| n.trim_end_matches(".git").to_lowercase())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "image".to_owned());
    Ok((ContextSource::Git(source), name))
}

/// The output name for an archive context: its file name less the archive extensions.
fn object_name(text: &str) -> String {
    text.split(['?', '#'])
        .next()
        .and_then(|u| u.trim_end_matches('/').rsplit('/').next())
        .map(|n| {
            n.trim_end_matches(".gz")
                .trim_end_matches(".zst")
                .trim_end_matches(".tgz")
                .trim_end_matches(".tar")
                .to_lowercase()
        })
        .filter(|n| !n.is_empty() && *n != "context")
        .unwrap_or_else(|| "image".to_owned())
}

/// Whether a context names a git repository: Kaniko's `git://`, `ssh://`, `git@HOST:PATH`,
/// or an http(s) URL whose path ends in `.git` or that has a `#` fragment (BuildKit's rule).
fn is_git(text: &str) -> bool {
    let fragment = text.split_once('#').map_or("", |(_, f)| f);
    strata::is_git_url(text)
        || ((text.starts_with("https://") || text.starts_with("http://")) && !fragment.is_empty())
}

/// Kaniko's `--git` options: `branch=NAME,single-branch=BOOL,recurse-submodules=BOOL,
/// insecure-skip-tls=BOOL`.
fn git_flag(mut source: strata::GitSource, text: &str) -> Result<strata::GitSource, Failure> {
    let boolean = |key: &str, value: &str| match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Failure::Usage(format!(
            "--git {key}={value}: expected true or false"
        ))),
    };
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            Failure::Usage(format!(
                "--git {part}: expected KEY=VALUE (branch, single-branch, recurse-submodules, \
                 insecure-skip-tls)"
            ))
        })?;
        match key {
            "branch" => source = source.reference(value),
            // strata always fetches the one ref it builds.
            "single-branch" => {
                boolean(key, value)?;
            }
            "recurse-submodules" => source = source.submodules(boolean(key, value)?),
            "insecure-skip-tls" => source = source.insecure_skip_tls(boolean(key, value)?),
            _ => {
                return Err(Failure::Usage(format!(
                    "--git {key}: unknown option (branch, single-branch, recurse-submodules, \
                     insecure-skip-tls)"
                )));
            }
        }
    }
    Ok(source)
}

fn registry_client(args: &BuildArgs) -> Result<RegistryClient, Failure> {
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
    builder = builder
        .skip_tls_verify(args.skip_tls_verify)
        .skip_tls_verify_pull(args.skip_tls_verify_pull);
    // A registry named with TLS settings is a TLS registry, even on loopback.
    for host in &args.skip_tls_verify_registries {
        builder = builder.skip_tls_verify_for(host).https(host);
    }
    for text in &args.registry_certificates {
        let (host, path) = key_value("--registry-certificate", text, "HOST=PATH")?;
        builder = builder.https(host);
        let pem = std::fs::read(path)
            .map_err(|e| Failure::Usage(format!("--registry-certificate {path}: {e}")))?;
        builder = builder.ca_pem(pem);
    }
    for mirror in &args.registry_mirrors {
        builder = builder.mirror(mirror);
    }
    for text in &args.registry_maps {
        let (registry, mirrors) = key_value("--registry-map", text, "REGISTRY=MIRROR[;MIRROR...]")?;
        for mirror in mirrors.split(';').filter(|m| !m.is_empty()) {
            builder = builder.registry_mirror(registry, mirror);
        }
    }
    builder = builder.insecure_pull(args.insecure_pull);
    // One retry count for every request, the largest given.
    let retries = [
        args.push_retry,
        args.image_fs_extract_retry,
        args.image_download_retry,
    ]
    .into_iter()
    .flatten()
    .max();
    if let Some(retries) = retries {
        builder = builder.retries(retries);
    }
    Ok(builder.build())
}

/// A Go duration as Kaniko takes it (`336h`, `1h30m`, `90s`), and days (`7d`).
pub fn go_duration(text: &str) -> Option<Duration> {
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
            ('d', _) => 86_400.0,
            ('h', _) => 3600.0,
            ('m', _) => 60.0,
            ('s', _) => 1.0,
            _ => return None,
        };
        total += number.parse::<f64>().ok()? * unit;
        number.clear();
        any = true;
    }
    (any && number.is_empty() && total.is_finite()).then(|| Duration::from_secs_f64(total))
}

/// A size: bytes, or a number with K, M, G, T (powers of 1024; `KiB`, `KB`, `k` alike).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    let bytes = number * scale as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_as_kaniko_and_people_write_them() {
        assert_eq!(go_duration("336h"), Some(Duration::from_secs(336 * 3600)));
        assert_eq!(go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration("1y"), None);
        assert_eq!(parse_size("10G"), Some(10 << 30));
        assert_eq!(parse_size("500MiB"), Some(500 << 20));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }
}
