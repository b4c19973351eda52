//! The command line as data: every subcommand and flag with its help and default. Usage,
//! `--help`, shell completions and the man page are all made from these definitions, and a
//! test checks the README's Kaniko table against them.
//!
//! Parsing is two phases, as in ripgrep: clap turns the arguments into these raw structs,
//! then `crate::executor` validates them into the builder's settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The names of the subcommands; any other first argument is a flag of `build`.
pub const SUBCOMMANDS: &[&str] = &[
    "build",
    "dockerfile",
    "state",
    "completions",
    "manpage",
    "version",
    "help",
];

/// Builds OCI images from Dockerfiles without a daemon, with Kaniko's executor flags.
///
/// With no subcommand, the arguments are those of `strata build`; invoked as `executor`
/// (Kaniko's `/kaniko/executor`), it is `strata build` too.
#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version = crate::VERSION,
    about,
    long_about = None,
    propagate_version = true,
    after_help = "Run `strata build --help` for the build flags (Kaniko's executor flags)."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile (Kaniko's executor flags).
    Build(Box<BuildArgs>),
    /// Print a Dockerfile's syntax tree and stages as JSON.
    Dockerfile(DockerfileArgs),
    /// Check, repair or prune a state directory.
    State(StateArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Manpage,
    /// Print the version and the commit it was built from (Kaniko's `executor version`).
    Version,
}

/// Kaniko's `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Plain text lines.
    Text,
    /// Plain text (Kaniko's default; strata does not colour its lines).
    Color,
    /// One JSON object per event on stderr, a JSON summary on stdout.
    Json,
}

/// `--progress` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// A live display on a terminal, plain lines otherwise.
    Auto,
    /// Always the live display.
    Tty,
    /// Always plain lines.
    Plain,
}

/// `--verbosity` values (Kaniko's logrus levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Verbosity {
    /// Only errors and the final report.
    Panic,
    /// Only errors and the final report.
    Fatal,
    /// Only errors and the final report.
    Error,
    /// Every event.
    Warn,
    /// Every event.
    Info,
    /// Every event and the libraries' debug records.
    Debug,
    /// Every event and the libraries' trace records.
    Trace,
}

/// `--snapshot-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnapshotMode {
    /// Overlay where the kernel allows, else a comparison of the filesystem.
    Auto,
    /// The overlay's upper directory is the change set.
    Overlay,
    /// Compare the filesystem before and after (Kaniko's modes all do).
    Full,
    /// Same as full.
    Redo,
    /// Same as full.
    Time,
    /// Same as full.
    Walk,
}

/// `--isolation` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsolationMode {
    /// Namespaces where the machine allows them, else in-container inside a container.
    Auto,
    /// Linux namespaces.
    Namespaces,
    /// The container's own root filesystem (unprivileged containers).
    InContainer,
}

/// `--compression` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    /// gzip (level 1 to 9, default 6).
    Gzip,
    /// zstd (level 1 to 22, default 3).
    Zstd,
}

/// The flags of `strata build`: Kaniko's executor flags with Kaniko's spelling and meaning,
/// and strata's own. Boolean flags take `--flag`, `--flag=true` or `--flag=false`.
#[derive(Debug, Args)]
#[command(next_display_order = None)]
pub struct BuildArgs {
    /// The build context: a directory, dir://DIR, tar://FILE (plain or compressed),
    /// tar://stdin or -; a git repository (Kaniko's git://HOST/PATH[#REF][#COMMIT], fetched
    /// over HTTPS or as GIT_PULL_METHOD says; https://HOST/PATH.git[#REF][:SUBDIR];
    /// git@HOST:PATH[#REF]); a tar archive at an https:// URL; or one in an object store
    /// (s3://BUCKET/KEY, gs://BUCKET/KEY, https://ACCOUNT.blob.core.windows.net/CONTAINER/KEY).
    #[arg(short = 'c', long, value_name = "CONTEXT", default_value = ".")]
    pub context: String,

    /// The Dockerfile; a relative path is looked up in the context first [default:
    /// Dockerfile in the context].
    #[arg(short = 'f', long, value_name = "PATH")]
    pub dockerfile: Option<PathBuf>,

    /// A subdirectory of the context to use as the context.
    #[arg(long, value_name = "DIR")]
    pub context_sub_path: Option<String>,

    /// Where to push the image (repeatable: every destination gets it).
    #[arg(short = 'd', long = "destination", value_name = "REF")]
    pub destinations: Vec<String>,

    /// Build without pushing.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_push: bool,

    /// Also write the image as a docker-archive tarball (docker load, podman load) tagged
    /// with the destinations.
    #[arg(long, value_name = "FILE", alias = "tarPath")]
    pub tar_path: Option<PathBuf>,

    /// Also write the image as an OCI layout, tagged latest.
    #[arg(long, value_name = "DIR")]
    pub oci_layout_path: Option<PathBuf>,

    /// A build argument, KEY=VALUE or KEY (the value from the environment); repeatable.
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,

    /// The stage to build [default: the last one].
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,

    /// A label for the image, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,

    /// Look steps up in the cache and record them (the local cache in the state directory
    /// costs nothing, so strata caches by default; Kaniko does not).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub cache: bool,

    /// A repository that holds cached layers, shared between machines.
    #[arg(long, value_name = "REPO")]
    pub cache_repo: Option<String>,

    /// An image built earlier by strata whose layers answer the steps that made them, with
    /// no cache repository (repeatable).
    #[arg(long = "cache-from", value_name = "IMAGE")]
    pub cache_from: Vec<String>,

    /// Kaniko's base-image cache directory: in strata the state directory, which holds
    /// base images and the layer cache.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Ignore cache entries older than this (a Go duration: 336h, 1h30m) [default: no
    /// limit].
    #[arg(long, value_name = "DURATION")]
    pub cache_ttl: Option<String>,

    /// Cache COPY and ADD layers (strata keys them on the copied content).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub cache_copy_layers: bool,

    /// Cache RUN layers; false runs every RUN again and records nothing.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub cache_run_layers: bool,

    /// Look layers up in the cache repository but record nothing there.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_push_cache: bool,

    /// Accepted for Kaniko's sake: strata streams every layer, compressed, and never holds
    /// one in memory.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub compressed_caching: bool,

    /// One layer for everything the target stage adds; steps are still cached one by one.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub single_snapshot: bool,

    /// How RUN steps are snapshotted.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value = "auto",
        alias = "snapshotMode"
    )]
    pub snapshot_mode: SnapshotMode,

    /// A path (inside the image) left out of RUN layers; repeatable.
    #[arg(long = "ignore-path", value_name = "PATH")]
    pub ignore_paths: Vec<String>,

    /// In the in-container mode, leave /var/run and /run alone (the container's own, not the
    /// image's); the namespaces mode runs on the image's own filesystem, where it has no
    /// effect.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", alias = "whitelist-var-run", value_parser = clap::builder::BoolishValueParser::new())]
    pub ignore_var_run: bool,

    /// Clamp every timestamp to SOURCE_DATE_EPOCH (0 when unset): same inputs, same digest.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub reproducible: bool,

    /// The platform to build for, OS/ARCH[/VARIANT] [default: the host's].
    #[arg(long, value_name = "PLATFORM", alias = "customPlatform")]
    pub custom_platform: Option<String>,

    /// Plain HTTP for the destinations' registries.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,

    /// Plain HTTP for this registry; repeatable (loopback registries always).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,

    /// Plain HTTP for every pull.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_pull: bool,

    /// Accept any TLS certificate from every registry. Dangerous.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub skip_tls_verify: bool,

    /// Accept any TLS certificate when pulling. Dangerous.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub skip_tls_verify_pull: bool,

    /// Accept any TLS certificate from this registry; repeatable. Dangerous.
    #[arg(long = "skip-tls-verify-registry", value_name = "HOST")]
    pub skip_tls_verify_registries: Vec<String>,

    /// A CA certificate to trust, HOST=PATH (trusted for every registry); repeatable.
    #[arg(long = "registry-certificate", value_name = "HOST=PATH")]
    pub registry_certificates: Vec<String>,

    /// A Docker Hub mirror, tried in order before Docker Hub; repeatable.
    #[arg(long = "registry-mirror", value_name = "HOST")]
    pub registry_mirrors: Vec<String>,

    /// Mirrors for any registry, REGISTRY=MIRROR[;MIRROR], tried in order before the
    /// registry itself; repeatable.
    #[arg(long = "registry-map", value_name = "REGISTRY=MIRROR")]
    pub registry_maps: Vec<String>,

    /// How many times a request that may pass is tried again (the larger of this and
    /// --image-fs-extract-retry and --image-download-retry) [default: 4].
    #[arg(long, value_name = "N")]
    pub push_retry: Option<u32>,

    /// Same as --push-retry: strata extracts from verified local blobs, so only downloads
    /// are retried.
    #[arg(long, value_name = "N")]
    pub image_fs_extract_retry: Option<u32>,

    /// Same as --push-retry.
    #[arg(long, value_name = "N")]
    pub image_download_retry: Option<u32>,

    /// Write the image's digest to this file.
    #[arg(long, value_name = "FILE")]
    pub digest_file: Option<PathBuf>,

    /// Write NAME@DIGEST of each destination to this file.
    #[arg(long, value_name = "FILE")]
    pub image_name_with_digest_file: Option<PathBuf>,

    /// Write NAME:TAG@DIGEST of each destination to this file.
    #[arg(long, value_name = "FILE")]
    pub image_name_tag_with_digest_file: Option<PathBuf>,

    /// Layer compression.
    #[arg(long, value_enum, value_name = "ALGORITHM", default_value = "gzip")]
    pub compression: Compression,

    /// Compression level; -1 for the algorithm's default (gzip 6, zstd 3).
    #[arg(
        long,
        value_name = "N",
        default_value = "-1",
        allow_negative_numbers = true
    )]
    pub compression_level: i32,

    /// Kaniko empties its container's filesystem after a build; strata never writes outside
    /// its state directory, so there is nothing to clean.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub cleanup: bool,

    /// Accepted for Kaniko's sake: strata always builds only the stages the target needs.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub skip_unused_stages: bool,

    /// Accepted for Kaniko's sake: strata's RUN snapshots are always of the fast kind (an
    /// overlay's upper directory, or a metadata comparison).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub use_new_run: bool,

    /// Accepted for Kaniko's sake: strata checks push access when it pushes, not before.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub skip_push_permission_check: bool,

    /// How much to say besides errors and the final report.
    #[arg(
        short = 'v',
        long,
        value_enum,
        value_name = "LEVEL",
        default_value = "info"
    )]
    pub verbosity: Verbosity,

    /// The log's form.
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Prefix each log line with its time (plain logs only).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub log_timestamp: bool,

    // strata's own flags.
    /// Where strata keeps base images, layers and the cache [default:
    /// $XDG_CACHE_HOME/strata, else ~/.cache/strata].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Say why each step missed the cache.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub explain_cache: bool,

    /// A secret for RUN --mount=type=secret, id=ID,src=PATH or id=ID,env=VAR; repeatable.
    #[arg(long = "secret", value_name = "id=ID,src=PATH")]
    pub secrets: Vec<String>,

    /// An image standing in for a name in FROM, COPY --from and RUN --mount from=,
    /// NAME=oci-layout://DIR[:TAG] or NAME=docker-image://REF; repeatable.
    #[arg(long = "build-context", value_name = "NAME=SOURCE")]
    pub build_contexts: Vec<String>,

    /// The display.
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    pub progress: Progress,

    /// After the build, prune the state directory to this size (LRU first), unless other
    /// builds are using it: 10G, 500MiB, bytes.
    #[arg(long, value_name = "SIZE")]
    pub cache_max_size: Option<String>,

    /// The most bytes one ADD download may bring.
    #[arg(long, value_name = "SIZE", default_value = "10GiB")]
    pub max_download_size: String,

    /// Where RUN steps execute: auto (namespaces where the machine allows them, else the
    /// in-container mode inside a container), namespaces, or in-container (Kaniko's way: the
    /// container's own root filesystem is replaced by each stage's).
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    pub isolation: IsolationMode,

    /// Allow the in-container mode outside a container: it replaces this machine's root
    /// filesystem with the image's. Only for machines made for the build.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub force: bool,

    // Kaniko flags strata refuses, each with the reason (never silently ignored).
    /// Not supported: see the message.
    #[arg(long, hide = true, value_name = "DIR")]
    pub kaniko_dir: Option<String>,

    /// Options of a git context: branch=NAME, single-branch=BOOL, recurse-submodules=BOOL,
    /// insecure-skip-tls=BOOL (comma-separated, as Kaniko's --git).
    #[arg(long, value_name = "OPTIONS")]
    pub git: Option<String>,

    /// The build context as an object-store bucket: gs://BUCKET (or BUCKET), s3://BUCKET,
    /// each holding context.tar.gz, or a full object URL (Kaniko's --bucket).
    #[arg(short = 'b', long, value_name = "BUCKET")]
    pub bucket: Option<String>,

    /// Not supported: see the message.
    #[arg(
        long = "registry-client-cert",
        hide = true,
        value_name = "HOST=CERT,KEY"
    )]
    pub registry_client_certs: Vec<String>,

    /// Not supported: see the message.
    #[arg(long, hide = true, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub skip_default_registry_fallback: Option<String>,

    /// Not supported: see the message.
    #[arg(long, hide = true, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub push_ignore_immutable_tag_errors: Option<String>,

    /// Not supported: see the message.
    #[arg(long, hide = true, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub force_build_metadata: Option<String>,
}

/// A Kaniko flag strata refuses: the flag, the reason, and whether it was given.
pub type Refused = (&'static str, &'static str, fn(&BuildArgs) -> bool);

/// Kaniko flags strata refuses, each with the reason (never silently ignored).
pub const REFUSED: &[Refused] = &[
    (
        "--kaniko-dir",
        "strata keeps its state in --state-dir, and the executor's own directory is never \
         touched by a build",
        |a| a.kaniko_dir.is_some(),
    ),
    (
        "--registry-client-cert",
        "client certificates (mutual TLS) are not supported yet",
        |a| !a.registry_client_certs.is_empty(),
    ),
    (
        "--skip-default-registry-fallback",
        "strata always tries the registry itself after its mirrors",
        |a| a.skip_default_registry_fallback.is_some(),
    ),
    (
        "--push-ignore-immutable-tag-errors",
        "strata reports every failed push",
        |a| a.push_ignore_immutable_tag_errors.is_some(),
    ),
    (
        "--force-build-metadata",
        "strata adds no metadata layers to force",
        |a| a.force_build_metadata.is_some(),
    ),
];

/// The flags of `strata dockerfile`.
#[derive(Debug, Args)]
pub struct DockerfileArgs {
    /// The Dockerfile.
    pub path: PathBuf,

    /// A build argument, KEY=VALUE or KEY (the value from the environment); repeatable.
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,

    /// The target stage [default: the last one].
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
}

/// `strata state` and its actions.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: StateAction,

    /// The state directory [default: $XDG_CACHE_HOME/strata, else ~/.cache/strata].
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// The actions of `strata state`.
#[derive(Debug, Subcommand)]
pub enum StateAction {
    /// Verify every blob against its digest and every cache entry against its layer (exit 1
    /// when something is broken).
    Check,
    /// Check, and remove what is broken so that the next build fetches or runs it again.
    Repair,
    /// Remove the least recently used cache entries, images and blobs until the state fits.
    Prune {
        /// The largest the state may stay: 10G, 500MiB, bytes.
        #[arg(long, value_name = "SIZE")]
        max_size: Option<String>,
        /// Remove everything unused for longer than this: 7d, 336h, 90m.
        #[arg(long, value_name = "DURATION")]
        max_age: Option<String>,
        /// Wait for running builds to finish instead of skipping the prune.
        #[arg(long)]
        wait: bool,
    },
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use clap::CommandFactory;

    use super::*;

    fn repository() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
    }

    /// Every long name (and alias) `strata build` accepts.
    fn build_flags() -> BTreeSet<String> {
        let command = Cli::command();
        let build = command
            .get_subcommands()
            .find(|c| c.get_name() == "build")
            .unwrap()
            .clone();
        let mut flags = BTreeSet::new();
        for arg in build.get_arguments() {
            if let Some(long) = arg.get_long() {
                flags.insert(format!("--{long}"));
            }
            for alias in arg.get_all_aliases().into_iter().flatten() {
                flags.insert(format!("--{alias}"));
            }
        }
        flags.remove("--help");
        flags
    }

    /// The flags named in the first column of the README's flag tables.
    fn readme_flags() -> BTreeSet<String> {
        let readme = std::fs::read_to_string(repository().join("README.md")).unwrap();
        let mut flags = BTreeSet::new();
        let mut in_table = false;
        for line in readme.lines() {
            if line.starts_with("| Kaniko flag |") || line.starts_with("| strata flag |") {
                in_table = true;
                continue;
            }
            if !line.starts_with('|') {
                in_table = false;
                continue;
            }
            if !in_table {
                continue;
            }
            let first = line.split('|').nth(1).unwrap_or_default();
            for token in first
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|t| t.starts_with("--"))
            {
                flags.insert(token.to_owned());
            }
        }
        flags
    }

    #[test]
    fn the_readme_tables_and_the_flag_definitions_agree() {
        let defined = build_flags();
        let documented = readme_flags();
        let undocumented: Vec<_> = defined.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&defined).collect();
        assert!(
            undocumented.is_empty(),
            "flags missing from the README's tables: {undocumented:?}"
        );
        assert!(
            unknown.is_empty(),
            "README flags the command lacks: {unknown:?}"
        );
        // Every refused flag has its reason.
        for (flag, _, _) in REFUSED {
            assert!(defined.contains(*flag), "{flag}");
        }
    }

    /// The `--flags` a manifest passes to the executor.
    fn manifest_flags(value: &serde_yaml_ng::Value, out: &mut BTreeSet<String>) {
        match value {
            serde_yaml_ng::Value::String(text) => {
                // Arguments (`--flag=value`) and script lines that call the executor.
                let calls = text.contains("/kaniko/executor") || text.contains("strata build");
                for word in text.split_whitespace() {
                    if word.starts_with("--") && (calls || text.starts_with("--")) {
                        let flag = word.split('=').next().unwrap_or(word);
                        out.insert(flag.trim_matches('"').to_owned());
                    }
                }
            }
            serde_yaml_ng::Value::Sequence(items) => {
                items.iter().for_each(|v| manifest_flags(v, out));
            }
            serde_yaml_ng::Value::Mapping(map) => {
                map.values().for_each(|v| manifest_flags(v, out));
            }
            _ => {}
        }
    }

    #[test]
    fn the_deploy_manifests_parse_use_only_real_flags_and_are_in_the_readme() {
        let readme = std::fs::read_to_string(repository().join("README.md")).unwrap();
        let defined = build_flags();
        for name in [
            "kubernetes-job.yaml",
            "tekton-task.yaml",
            "gitlab-ci.yml",
            "github-actions.yml",
        ] {
            let text = std::fs::read_to_string(repository().join("deploy").join(name)).unwrap();
            let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
                .unwrap_or_else(|e| panic!("deploy/{name} is not YAML: {e}"));
            let mut flags = BTreeSet::new();
            manifest_flags(&value, &mut flags);
            assert!(flags.len() >= 3, "deploy/{name}: no executor flags found");
            for flag in &flags {
                assert!(
                    defined.contains(flag),
                    "deploy/{name} uses {flag}, which strata lacks"
                );
            }
            assert!(
                readme.contains(&text),
                "the README does not show deploy/{name} as it is"
            );
        }
    }
}
