//! Git sources: a build context or an `ADD` source that is a repository, fetched shallowly
//! with gitoxide (`gix`) and written out with the rules of an untrusted archive.
//!
//! Only the one commit the build needs travels: a depth-1 fetch of the named ref or commit
//! into a bare repository in the build's scratch directory. The tree is then written by
//! strata itself, entry by entry, into a fresh directory: no `.git` directory, no hooks, no
//! filters, names checked, symbolic links that point out of the tree refused, and the bytes
//! written counted against the build's download limit.

use std::fs;
use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, ErrorKind, Result};

/// A git repository to build from, with the ref or commit to check out.
///
/// Parse one from the forms Kaniko and BuildKit accept ([`GitSource::parse`],
/// [`GitSource::kaniko`]) or build it from parts; credentials are never shown by `Debug`.
///
/// ```no_run
/// # async fn example() -> strata::Result<()> {
/// use strata::{Build, ContextSource, GitSource};
/// let source = GitSource::parse("https://git.example.com/team/app.git#v1.2:service")?
///     .credentials_from_env();
/// let image = Build::new(ContextSource::Git(source)).run().await?;
/// // The commit that was built is the image's `org.opencontainers.image.revision` label.
/// # let _ = image;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct GitSource {
    url: String,
    reference: Option<String>,
    commit: Option<String>,
    subdir: Option<String>,
    submodules: bool,
    insecure_skip_tls: bool,
    ca_files: Vec<PathBuf>,
    ca_pems: Vec<Vec<u8>>,
    credentials: Option<(String, String)>,
    ssh_command: Option<String>,
}

impl std::fmt::Debug for GitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSource")
            .field("url", &self.url)
            .field("reference", &self.reference)
            .field("commit", &self.commit)
            .field("subdir", &self.subdir)
            .field("submodules", &self.submodules)
            .field("insecure_skip_tls", &self.insecure_skip_tls)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// How Kaniko's `git://` contexts travel (its `GIT_PULL_METHOD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullMethod {
    /// HTTPS, Kaniko's default.
    Https,
    /// Plain HTTP (`GIT_PULL_METHOD=http`).
    Http,
    /// The git protocol itself (`GIT_PULL_METHOD=git`, strata's addition, for a `git daemon`).
    Git,
}

impl PullMethod {
    /// The method `GIT_PULL_METHOD` names; anything else is HTTPS, as in Kaniko.
    pub fn from_env() -> PullMethod {
        match std::env::var("GIT_PULL_METHOD").as_deref() {
            Ok("http") => PullMethod::Http,
            Ok("git") => PullMethod::Git,
            _ => PullMethod::Https,
        }
    }
}

impl GitSource {
    /// A repository at `url` (`https://`, `http://`, `git://`, `ssh://` or `user@host:path`),
    /// at its default branch.
    pub fn new(url: impl Into<String>) -> Result<GitSource> {
        let mut source = GitSource {
            url: url.into(),
            reference: None,
            commit: None,
            subdir: None,
            submodules: false,
            insecure_skip_tls: false,
            ca_files: Vec::new(),
            ca_pems: Vec::new(),
            credentials: None,
            ssh_command: None,
        };
        source.take_url_credentials()?;
        Ok(source)
    }

    /// BuildKit's form: `URL[#REF][:SUBDIR]`, where URL is `https://HOST/PATH[.git]`,
    /// `git://…`, `ssh://…` or `git@HOST:PATH`, REF a branch, tag, full ref or commit id, and
    /// SUBDIR the directory of the repository to use as the context.
    pub fn parse(text: &str) -> Result<GitSource> {
        let (url, fragment) = match text.split_once('#') {
            Some((url, fragment)) => (url, Some(fragment)),
            None => (text, None),
        };
        let mut source = GitSource::new(url)?;
        if let Some(fragment) = fragment {
            let (reference, subdir) = match fragment.split_once(':') {
                Some((r, s)) => (r, Some(s)),
                None => (fragment, None),
            };
            if !reference.is_empty() {
                source = source.reference(reference);
            }
            if let Some(subdir) = subdir.filter(|s| !s.is_empty()) {
                source = source.subdir(subdir);
            }
        }
        Ok(source)
    }

    /// Kaniko's form, the text after `git://`: `HOST/PATH[#REF][#COMMIT]`, fetched with
    /// `method`. REF may itself be a commit id, as in Kaniko.
    pub fn kaniko(text: &str, method: PullMethod) -> Result<GitSource> {
        let mut parts = text.split('#');
        let location = parts.next().unwrap_or_default();
        let scheme = match method {
            PullMethod::Https => "https",
            PullMethod::Http => "http",
            PullMethod::Git => "git",
        };
        let mut source = GitSource::new(format!("{scheme}://{location}"))?;
        if let Some(reference) = parts.next().filter(|r| !r.is_empty()) {
            source = source.reference(reference);
        }
        if let Some(commit) = parts.next().filter(|c| !c.is_empty()) {
            source = source.commit(commit);
        }
        if parts.next().is_some() {
            return Err(Error::Context(format!(
                "git://{}: more than two `#` parts (Kaniko's form is git://HOST/PATH#REF#COMMIT)",
                redact(text)
            )));
        }
        Ok(source)
    }

    /// The branch, tag, full ref (`refs/pull/7/head`) or commit id to check out.
    pub fn reference(mut self, reference: impl Into<String>) -> GitSource {
        self.reference = Some(reference.into());
        self
    }

    /// The commit to check out (Kaniko's third part): fetched directly when the server allows
    /// it, otherwise found in the history of the ref.
    pub fn commit(mut self, commit: impl Into<String>) -> GitSource {
        self.commit = Some(commit.into());
        self
    }

    /// The directory of the repository to use (BuildKit's `:SUBDIR`, Kaniko's
    /// `--context-sub-path`).
    pub fn subdir(mut self, subdir: impl Into<String>) -> GitSource {
        self.subdir = Some(subdir.into());
        self
    }

    /// Whether submodules are fetched and checked out too (Kaniko's
    /// `--git recurse-submodules=true`); otherwise they are empty directories, as after a
    /// plain `git clone`.
    pub fn submodules(mut self, yes: bool) -> GitSource {
        self.submodules = yes;
        self
    }

    /// Accept any certificate from an HTTPS server (Kaniko's `--git insecure-skip-tls=true`).
    pub fn insecure_skip_tls(mut self, yes: bool) -> GitSource {
        self.insecure_skip_tls = yes;
        self
    }

    /// Trust the CA certificates in this PEM file too, for an HTTPS server.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> GitSource {
        self.ca_files.push(path.into());
        self
    }

    /// Trust the CA certificates of this PEM text too, for an HTTPS server.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> GitSource {
        self.ca_pems.push(pem.into());
        self
    }

    /// The host (`name[:port]`) of an http(s) URL, for its TLS settings.
    pub(crate) fn http_host(&self) -> Option<&str> {
        let rest = self
            .url
            .strip_prefix("https://")
            .or_else(|| self.url.strip_prefix("http://"))?;
        let authority = rest.split('/').next()?;
        Some(authority.rsplit('@').next().unwrap_or(authority))
    }

    /// Trusts the extra CA certificates a registry client trusts for this repository's host.
    /// Its "accept any certificate" settings are registry settings and are not taken: a git
    /// server is skipped only by [`GitSource::insecure_skip_tls`].
    pub(crate) fn with_tls_of(mut self, registry: &strata_registry::RegistryClient) -> GitSource {
        if let Some(host) = self.http_host() {
            self.ca_pems.extend(registry.tls_for(host).ca_pems);
        }
        self
    }

    /// Basic-auth credentials for an HTTPS server.
    pub fn credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> GitSource {
        self.credentials = Some((username.into(), password.into()));
        self
    }

    /// The command that runs `ssh` for `ssh://` and `git@HOST:PATH` repositories (git's
    /// `core.sshCommand`), for a key or a known-hosts file of its own:
    /// `ssh -i KEY -o UserKnownHostsFile=FILE`. Without it, `ssh` uses the user's `~/.ssh`
    /// and `SSH_AUTH_SOCK`, and checks the host key against `~/.ssh/known_hosts`.
    pub fn ssh_command(mut self, command: impl Into<String>) -> GitSource {
        self.ssh_command = Some(command.into());
        self
    }

    /// Kaniko's credentials from the environment: `GIT_TOKEN` (sent as the user name, with no
    /// password), else `GIT_USERNAME` and `GIT_PASSWORD`; and git's `GIT_SSH_COMMAND`.
    pub fn credentials_from_env(mut self) -> GitSource {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        if let Some(command) = var("GIT_SSH_COMMAND") {
            self.ssh_command = Some(command);
        }
        match (var("GIT_TOKEN"), var("GIT_USERNAME"), var("GIT_PASSWORD")) {
            (Some(token), _, _) => self.credentials(token, ""),
            (None, None, None) => self,
            (None, user, password) => {
                self.credentials(user.unwrap_or_default(), password.unwrap_or_default())
            }
        }
    }

    /// The repository's URL, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The directory of the repository used as the context, if not its root.
    pub fn subdir_path(&self) -> Option<&str> {
        self.subdir.as_deref()
    }

    /// Moves `user:password@` out of an http(s) URL into the credentials.
    fn take_url_credentials(&mut self) -> Result<()> {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return Ok(());
        };
        if !matches!(scheme, "http" | "https") {
            return Ok(());
        }
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let decode = |text: &str| {
                percent_encoding::percent_decode_str(text)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            self.credentials = Some((decode(user), decode(password)));
            self.url = format!("{scheme}://{}", &rest[at + 1..]);
        }
        Ok(())
    }
}

/// What a checkout produced.
#[derive(Debug, Clone)]
pub(crate) struct Checkout {
    /// The commit that was checked out (hex).
    pub commit: String,
    /// The repository's URL, without credentials.
    pub url: String,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Fetches `source` into a bare repository under `scratch` and writes the commit's tree (or
/// its `subdir`) into `dest`, which must be an empty directory.
pub(crate) fn checkout(
    source: &GitSource,
    scratch: &Path,
    dest: &Path,
    limit: u64,
    keep_git_dir: bool,
) -> Result<Checkout> {
    if keep_git_dir && source.subdir.is_some() {
        return Err(Error::Invalid(format!(
            "{}: --keep-git-dir cannot be combined with a subdirectory",
            source.url
        )));
    }
    let mut budget = Budget {
        left: limit,
        limit,
        written: 0,
    };
    let commit = fetch_tree(source, scratch, dest, &mut budget, 0, keep_git_dir)?;
    // The root as a fresh clone has it (a temporary directory is 0700).
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dest, fs::Permissions::from_mode(0o755)).map_err(Error::io(dest))?;
    }
    if let Some(subdir) = &source.subdir {
        narrow_to(dest, subdir, &source.url)?;
    }
    Ok(Checkout {
        commit,
        url: source.url.clone(),
        bytes: budget.written,
    })
}

struct Budget {
    left: u64,
    limit: u64,
    written: u64,
}

/// How deep submodules may nest.
const MAX_SUBMODULE_DEPTH: usize = 8;

fn fetch_tree(
    source: &GitSource,
    scratch: &Path,
    dest: &Path,
    budget: &mut Budget,
    depth: usize,
    keep_git_dir: bool,
) -> Result<String> {
    let shown = source.url.clone();
    let repo_dir = tempfile::Builder::new()
        .prefix("git-")
        .tempdir_in(scratch)
        .map_err(Error::io(scratch))?;
    let auth = Arc::new(AuthState::default());
    let (repo, commit) = fetch(source, repo_dir.path(), &auth, budget.limit)?;
    let commit_obj = repo
        .find_commit(commit)
        .map_err(|e| fetch_error(&shown, &auth, format!("commit {commit}: {e}")))?;
    let tree = commit_obj
        .tree_id()
        .map_err(|e| fetch_error(&shown, &auth, format!("commit {commit}: {e}")))?;
    let mut writer = TreeWriter {
        repo: &repo,
        source,
        scratch,
        budget,
        url: &shown,
        depth,
        gitmodules: None,
    };
    writer.gitmodules = writer.read_gitmodules(tree.detach())?;
    writer.write_tree(tree.detach(), dest, "")?;
    if keep_git_dir {
        keep_repository(repo_dir.path(), dest, tree.detach(), &shown)?;
    }
    Ok(commit.to_string())
}

/// BuildKit's `ADD --keep-git-dir`: the fetched (shallow) repository becomes `dest/.git`,
/// no longer bare, with an index of the checked-out tree, so that `git` in later steps sees
/// a clean checkout.
fn keep_repository(repo: &Path, dest: &Path, tree: gix::ObjectId, url: &str) -> Result<()> {
    let git_dir = dest.join(".git");
    copy_tree(repo, &git_dir)?;
    let config = git_dir.join("config");
    let text = fs::read_to_string(&config).map_err(Error::io(&config))?;
    let text = text.replace("bare = true", "bare = false");
    fs::write(&config, text).map_err(Error::io(&config))?;
    let fail = |e: String| Error::Context(format!("{url}: writing .git: {e}"));
    let worktree =
        gix::open_opts(dest, gix::open::Options::isolated()).map_err(|e| fail(e.to_string()))?;
    let mut index = worktree
        .index_from_tree(&tree)
        .map_err(|e| fail(e.to_string()))?;
    index
        .write(Default::default(), Default::default())
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    create_dir(to)?;
    for entry in fs::read_dir(from).map_err(Error::io(from))? {
        let entry = entry.map_err(Error::io(from))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(Error::io(&source))?;
        if kind.is_dir() {
            copy_tree(&source, &target)?;
        } else if kind.is_file() {
            fs::copy(&source, &target).map_err(Error::io(&source))?;
        }
    }
    Ok(())
}

/// What the credentials callback saw: whether the server asked, and whether it refused what
/// it was given.
#[derive(Default)]
struct AuthState {
    /// The server asked for credentials and there were none to give.
    asked_without: AtomicBool,
    refused: AtomicBool,
}

/// The fetch: depth 1 of the one ref or commit. Returns the repository and the commit.
fn fetch(
    source: &GitSource,
    repo_dir: &Path,
    auth: &Arc<AuthState>,
    limit: u64,
) -> Result<(gix::Repository, gix::ObjectId)> {
    let shown = &source.url;
    let is_oid = |s: &str| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
    // Kaniko's `#REF#COMMIT`, or a commit id given as the ref: fetch that object directly.
    let wanted_commit = source
        .commit
        .clone()
        .or_else(|| source.reference.clone().filter(|r| is_oid(r)));
    if let Some(commit) = &wanted_commit {
        let oid = match gix::ObjectId::from_hex(commit.as_bytes()) {
            Ok(oid) if is_oid(commit) => oid,
            _ => {
                return Err(Error::Context(format!(
                    "{shown}: `{commit}` is not a full commit id (40 hex digits)"
                )));
            }
        };
        let attempt = fetch_with(source, repo_dir, auth, Revision::Exact(commit), true, limit);
        match attempt {
            Ok(repo) => return Ok((repo, oid)),
            Err(e) if e.kind() == ErrorKind::Auth => return Err(e),
            Err(_) => {
                // The server does not serve unadvertised commits: fetch the ref's history
                // and find the commit there.
                let _ = fs::remove_dir_all(repo_dir);
                let reference = source.reference.as_deref().filter(|r| !is_oid(r));
                let repo = fetch_with(
                    source,
                    repo_dir,
                    auth,
                    Revision::of(reference),
                    false,
                    limit,
                )?;
                if repo.find_commit(oid).is_err() {
                    return Err(Error::Fetch {
                        location: shown.clone(),
                        kind: ErrorKind::NotFound,
                        message: format!(
                            "commit {commit} is not in the history of {}",
                            reference.unwrap_or("the default branch")
                        ),
                    });
                }
                return Ok((repo, oid));
            }
        }
    }
    let revision = Revision::of(source.reference.as_deref());
    let repo = fetch_with(source, repo_dir, auth, revision, true, limit)?;
    let head = repo
        .head_id()
        .map_err(|e| fetch_error(shown, auth, format!("no commit was fetched: {e}")))?;
    let mut oid = head.detach();
    // An annotated tag points at a tag object: peel it to the commit.
    if let Ok(object) = repo.find_object(oid)
        && let Ok(commit) = object.peel_to_commit()
    {
        oid = commit.id;
    }
    Ok((repo, oid))
}

enum Revision<'a> {
    /// The remote's HEAD.
    Head,
    /// A full ref name or commit id.
    Exact(&'a str),
    /// A branch or tag name.
    Named(&'a str),
}

impl<'a> Revision<'a> {
    /// What a ref as written names: a full ref or `HEAD` exactly, anything else as a branch
    /// or tag, nothing the remote's HEAD.
    fn of(reference: Option<&'a str>) -> Revision<'a> {
        match reference {
            Some(r) if r.starts_with("refs/") || r == "HEAD" => Revision::Exact(r),
            Some(r) => Revision::Named(r),
            None => Revision::Head,
        }
    }
}

fn fetch_with(
    source: &GitSource,
    repo_dir: &Path,
    auth: &Arc<AuthState>,
    revision: Revision<'_>,
    shallow: bool,
    limit: u64,
) -> Result<gix::Repository> {
    let shown = source.url.clone();
    let fail = |message: String| fetch_error(&shown, auth, message);
    fs::create_dir_all(repo_dir).map_err(Error::io(repo_dir))?;
    let url = gix::url::parse(gix::bstr::BStr::new(source.url.as_bytes()))
        .map_err(|e| Error::Context(format!("{shown}: not a git URL: {e}")))?;
    let mut prepare = gix::clone::PrepareFetch::new(
        url,
        repo_dir,
        gix::create::Kind::Bare,
        gix::create::Options::default(),
        gix::open::Options::isolated(),
    )
    .map_err(|e| fail(e.to_string()))?;
    if let Some(command) = &source.ssh_command {
        prepare = prepare.with_in_memory_config_overrides([format!("core.sshCommand={command}")]);
    }
    if shallow {
        prepare = prepare.with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(NonZeroU32::MIN));
    }
    prepare = match revision {
        Revision::Head => prepare,
        Revision::Exact(r) => prepare
            .with_revision(Some(r))
            .map_err(|e| Error::Context(format!("{shown}: ref `{r}`: {e}")))?,
        Revision::Named(r) => prepare
            .with_ref_name(Some(r))
            .map_err(|e| Error::Context(format!("{shown}: ref `{r}`: {e}")))?,
    };
    prepare = with_connection(prepare, source, auth)?;
    // gix has no size limit of its own: a watchdog stops the fetch when what it wrote passes
    // the download limit (a hostile server's endless pack must not fill the disk).
    let interrupt = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let too_big = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                if disk_usage(repo_dir) > limit {
                    too_big.store(true, Ordering::SeqCst);
                    interrupt.store(true, Ordering::SeqCst);
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        let result = prepare.fetch_only(gix::progress::Discard, &interrupt);
        done.store(true, Ordering::SeqCst);
        result
    });
    if too_big.load(Ordering::SeqCst) || disk_usage(repo_dir) > limit {
        return Err(Error::Fetch {
            location: shown.clone(),
            kind: ErrorKind::Invalid,
            message: format!(
                "the repository's data is larger than the download limit of {limit} bytes"
            ),
        });
    }
    let (repo, _outcome) = result.map_err(|e| fail(format!("{e:#}")))?;
    Ok(repo)
}

/// The fetch with the source's credentials (and a note in `auth` of whether the server
/// asked without any, or refused them) and its TLS settings (extra CAs, or no verification).
fn with_connection(
    mut prepare: gix::clone::PrepareFetch,
    source: &GitSource,
    auth: &Arc<AuthState>,
) -> Result<gix::clone::PrepareFetch> {
    let credentials = source.credentials.clone();
    let mut ca = Vec::new();
    for path in &source.ca_files {
        ca.push(fs::read(path).map_err(Error::io(path))?);
    }
    ca.extend(source.ca_pems.iter().cloned());
    let insecure = source.insecure_skip_tls;
    let state = Arc::clone(auth);
    prepare = prepare.configure_connection(move |connection| {
        let credentials = credentials.clone();
        let state = Arc::clone(&state);
        connection.set_credentials(move |action| {
            use gix::credentials::helper::Action;
            match action {
                Action::Get(context) => {
                    if credentials.is_none() {
                        state.asked_without.store(true, Ordering::SeqCst);
                    }
                    match &credentials {
                        Some((username, password)) => {
                            Ok(Some(gix::credentials::protocol::Outcome {
                                credentials: gix::sec::identity::Credentials::UsernamePassword {
                                    username: username.clone(),
                                    password: password.clone(),
                                    oauth_refresh_token: None,
                                },
                                next: context.into(),
                            }))
                        }
                        None => Ok(None),
                    }
                }
                Action::Erase(_) => {
                    state.refused.store(true, Ordering::SeqCst);
                    Ok(None)
                }
                Action::Store(_) => Ok(None),
            }
        });
        connection.set_transport_options(Box::new(http_options(&ca, insecure)));
        Ok(())
    });
    Ok(prepare)
}

/// Bytes of the files below `dir`.
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The HTTP transport's options: extra CA certificates (PEM) and certificate checks.
fn http_options(
    ca_pems: &[Vec<u8>],
    insecure: bool,
) -> gix::protocol::transport::client::blocking_io::http::Options {
    use gix::error::ErrorExt;
    use gix::protocol::transport::client::blocking_io::http;
    let ca_pems = ca_pems.to_vec();
    let backend = http::reqwest::Options {
        configure_client: Some(Box::new(move |mut builder| {
            for pem in &ca_pems {
                let certificates = reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| std::io::Error::other(format!("CA certificate: {e}")).raise())?;
                for certificate in certificates {
                    builder = builder.add_root_certificate(certificate);
                }
            }
            if insecure {
                builder = builder.tls_danger_accept_invalid_certs(true);
            }
            Ok(builder)
        })),
        configure_request: None,
    };
    let backend: Arc<Mutex<dyn std::any::Any + Send + Sync>> = Arc::new(Mutex::new(backend));
    http::Options {
        backend: Some(backend),
        ..Default::default()
    }
}

fn fetch_error(shown: &str, auth: &AuthState, message: String) -> Error {
    let kind = if auth.refused.load(Ordering::SeqCst) || auth.asked_without.load(Ordering::SeqCst) {
        ErrorKind::Auth
    } else {
        ErrorKind::Context
    };
    let message = if kind == ErrorKind::Auth {
        if auth.refused.load(Ordering::SeqCst) {
            "the server refused the credentials (GIT_USERNAME/GIT_PASSWORD or GIT_TOKEN)".to_owned()
        } else {
            "the server asks for credentials: set GIT_USERNAME and GIT_PASSWORD, or GIT_TOKEN"
                .to_owned()
        }
    } else if is_ssh(shown) {
        format!(
            "{message} (ssh could not connect, or the server refused it: check the key, that \
             the host is in known_hosts, where strata never adds an unknown host, and the \
             repository path; ssh's own message is on standard error)"
        )
    } else {
        message
    };
    Error::Fetch {
        location: shown.to_owned(),
        kind,
        message,
    }
}

/// Whether a URL is fetched over SSH (`ssh://` or `USER@HOST:PATH`).
fn is_ssh(url: &str) -> bool {
    url.starts_with("ssh://") || (!url.contains("://") && url.contains('@') && url.contains(':'))
}

/// Writes a tree's entries with strata's own rules.
struct TreeWriter<'a> {
    repo: &'a gix::Repository,
    source: &'a GitSource,
    scratch: &'a Path,
    budget: &'a mut Budget,
    url: &'a str,
    depth: usize,
    /// `.gitmodules` of the top tree: submodule path → URL.
    gitmodules: Option<Vec<(String, String)>>,
}

impl TreeWriter<'_> {
    fn bad(&self, path: &str, message: impl std::fmt::Display) -> Error {
        Error::Context(format!("{}: `{path}`: {message}", self.url))
    }

    fn read_gitmodules(&self, tree: gix::ObjectId) -> Result<Option<Vec<(String, String)>>> {
        if !self.source.submodules {
            return Ok(None);
        }
        let tree = self.repo.find_tree(tree).map_err(|e| self.bad("", e))?;
        let Some(entry) = tree.find_entry(".gitmodules") else {
            return Ok(Some(Vec::new()));
        };
        let blob = self
            .repo
            .find_blob(entry.oid())
            .map_err(|e| self.bad(".gitmodules", e))?;
        let file = gix::submodule::File::from_bytes(&blob.data, None, &Default::default())
            .map_err(|e| self.bad(".gitmodules", e))?;
        let mut out = Vec::new();
        for name in file.names() {
            let path = file.path(name).map_err(|e| self.bad(".gitmodules", e))?;
            let url = file.url(name).map_err(|e| self.bad(".gitmodules", e))?;
            out.push((path.to_string(), url.to_bstring().to_string()));
        }
        Ok(Some(out))
    }

    fn write_tree(&mut self, tree: gix::ObjectId, dir: &Path, rel: &str) -> Result<()> {
        let tree = self.repo.find_tree(tree).map_err(|e| self.bad(rel, e))?;
        let mut entries = Vec::new();
        for entry in tree.iter() {
            let entry = entry.map_err(|e| self.bad(rel, e))?;
            entries.push((
                entry.filename().to_string(),
                entry.mode().kind(),
                entry.oid().to_owned(),
            ));
        }
        for (name, kind, oid) in entries {
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if name.is_empty()
                || name == "."
                || name == ".."
                || name.contains(['/', '\0'])
                || name.eq_ignore_ascii_case(".git")
            {
                return Err(self.bad(&path, "the repository has an entry with a forbidden name"));
            }
            let target = dir.join(&name);
            use gix::object::tree::EntryKind;
            match kind {
                EntryKind::Tree => {
                    create_dir(&target)?;
                    self.write_tree(oid, &target, &path)?;
                }
                EntryKind::Blob | EntryKind::BlobExecutable => {
                    let blob = self.repo.find_blob(oid).map_err(|e| self.bad(&path, e))?;
                    self.spend(&path, blob.data.len() as u64)?;
                    let mode = if kind == EntryKind::BlobExecutable {
                        0o755
                    } else {
                        0o644
                    };
                    write_file(&target, &blob.data, mode)?;
                }
                EntryKind::Link => {
                    let blob = self.repo.find_blob(oid).map_err(|e| self.bad(&path, e))?;
                    let link = String::from_utf8(blob.data.clone())
                        .map_err(|_| self.bad(&path, "the symbolic link's target is not UTF-8"))?;
                    if leads_out(&path, &link) {
                        return Err(self.bad(
                            &path,
                            format!(
                                "the symbolic link points outside the repository (to `{link}`)"
                            ),
                        ));
                    }
                    std::os::unix::fs::symlink(&link, &target).map_err(Error::io(&target))?;
                }
                EntryKind::Commit => {
                    create_dir(&target)?;
                    self.write_submodule(&path, oid, &target)?;
                }
            }
        }
        Ok(())
    }

    fn spend(&mut self, path: &str, bytes: u64) -> Result<()> {
        if bytes > self.budget.left {
            return Err(self.bad(
                path,
                format!(
                    "the checkout is larger than the download limit of {} bytes",
                    self.budget.limit
                ),
            ));
        }
        self.budget.left -= bytes;
        self.budget.written += bytes;
        Ok(())
    }

    fn write_submodule(&mut self, path: &str, commit: gix::ObjectId, target: &Path) -> Result<()> {
        let Some(modules) = &self.gitmodules else {
            // As after a plain clone: an empty directory.
            return Ok(());
        };
        if self.depth >= MAX_SUBMODULE_DEPTH {
            return Err(self.bad(path, "submodules nest too deep"));
        }
        let Some((_, url)) = modules.iter().find(|(p, _)| p == path) else {
            return Err(self.bad(path, "a submodule with no entry in .gitmodules"));
        };
        let url = resolve_relative(self.url, url);
        let mut sub = self.source.clone();
        sub.url = url;
        sub.reference = None;
        sub.commit = Some(commit.to_string());
        sub.subdir = None;
        fetch_tree(
            &sub,
            self.scratch,
            target,
            self.budget,
            self.depth + 1,
            false,
        )?;
        Ok(())
    }
}

/// Modes are git's (0644, 0755), whatever the process's umask: the same repository gives
/// the same context everywhere.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(Error::io(path))?;
    file.write_all(bytes).map_err(Error::io(path))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(Error::io(path))?;
    Ok(())
}

fn create_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir(path).map_err(Error::io(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(Error::io(path))
}

/// Whether `text` names a git repository by BuildKit's rule for `ADD` sources: `git://`,
/// `ssh://`, `git@HOST:PATH`, or an http(s) URL whose path ends in `.git`.
pub fn is_git_url(text: &str) -> bool {
    if text.starts_with("git://") || text.starts_with("ssh://") || text.starts_with("git@") {
        return true;
    }
    if text.starts_with("https://") || text.starts_with("http://") {
        let url = text.split('#').next().unwrap_or(text);
        let path = url.split('?').next().unwrap_or(url).trim_end_matches('/');
        return path.ends_with(".git");
    }
    false
}

/// Whether a link at `path` (relative to the tree's root) with `target` points outside the
/// tree: an absolute target, or one whose `..` climb above the root.
fn leads_out(path: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return true;
    }
    let mut depth = path.split('/').count() as i64 - 1;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// A submodule URL relative to its superproject (`../other.git`), resolved as git does.
fn resolve_relative(base: &str, url: &str) -> String {
    if !(url.starts_with("./") || url.starts_with("../")) {
        return url.to_owned();
    }
    let mut base = base.trim_end_matches('/').to_owned();
    let mut rest = url;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            if let Some(i) = base.rfind('/') {
                base.truncate(i);
            }
        } else {
            break;
        }
    }
    format!("{base}/{rest}")
}

/// Makes `dest` hold only the contents of `dest/subdir`.
fn narrow_to(dest: &Path, subdir: &str, url: &str) -> Result<()> {
    let clean: Vec<&str> = subdir
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if clean.contains(&"..") {
        return Err(Error::Context(format!(
            "{url}: the subdirectory `{subdir}` leads outside the repository"
        )));
    }
    if clean.is_empty() {
        return Ok(());
    }
    let inner = clean.iter().fold(dest.to_owned(), |p, c| p.join(c));
    let meta = fs::symlink_metadata(&inner).map_err(|_| Error::Fetch {
        location: url.to_owned(),
        kind: ErrorKind::NotFound,
        message: format!("the repository has no directory `{subdir}`"),
    })?;
    if !meta.is_dir() {
        return Err(Error::Context(format!(
            "{url}: `{subdir}` is not a directory of the repository"
        )));
    }
    // Move the subdirectory aside, empty `dest`, and move its entries up.
    let parent = dest.parent().unwrap_or(dest);
    let aside = tempfile::Builder::new()
        .prefix("git-subdir-")
        .tempdir_in(parent)
        .map_err(Error::io(parent))?;
    let kept = aside.path().join("kept");
    fs::rename(&inner, &kept).map_err(Error::io(&inner))?;
    for entry in fs::read_dir(dest).map_err(Error::io(dest))? {
        let entry = entry.map_err(Error::io(dest))?;
        let path = entry.path();
        if entry.file_type().map_err(Error::io(&path))?.is_dir() {
            fs::remove_dir_all(&path).map_err(Error::io(&path))?;
        } else {
            fs::remove_file(&path).map_err(Error::io(&path))?;
        }
    }
    for entry in fs::read_dir(&kept).map_err(Error::io(&kept))? {
        let entry = entry.map_err(Error::io(&kept))?;
        let to = dest.join(entry.file_name());
        fs::rename(entry.path(), &to).map_err(Error::io(&to))?;
    }
    Ok(())
}

/// `text` (a URL) with any `user:password@` removed, for messages.
pub fn redact(text: &str) -> String {
    match text.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => text.to_owned(),
            }
        }
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_parse() {
        let s = GitSource::parse("https://example.com/org/app.git#v1:sub/dir").unwrap();
        assert_eq!(s.url(), "https://example.com/org/app.git");
        assert_eq!(s.reference.as_deref(), Some("v1"));
        assert_eq!(s.subdir_path(), Some("sub/dir"));
        let s = GitSource::parse("git@example.com:org/app.git#main").unwrap();
        assert_eq!(s.url(), "git@example.com:org/app.git");
        assert_eq!(s.reference.as_deref(), Some("main"));
        let s = GitSource::kaniko(
            "example.com/org/app.git#refs/heads/main#0123456789abcdef0123456789abcdef01234567",
            PullMethod::Http,
        )
        .unwrap();
        assert_eq!(s.url(), "http://example.com/org/app.git");
        assert_eq!(s.reference.as_deref(), Some("refs/heads/main"));
        assert_eq!(
            s.commit.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert!(GitSource::kaniko("h/p#a#b#c", PullMethod::Https).is_err());
    }

    #[test]
    fn url_credentials_move_out_of_the_url() {
        let s = GitSource::new("https://user:p%40ss@example.com/app.git").unwrap();
        assert_eq!(s.url(), "https://example.com/app.git");
        assert_eq!(s.credentials, Some(("user".to_owned(), "p@ss".to_owned())));
        assert!(!format!("{s:?}").contains("p@ss"));
    }

    #[test]
    fn links_that_climb_out_are_found() {
        assert!(leads_out("a", "/etc/passwd"));
        assert!(leads_out("a", "../x"));
        assert!(leads_out("d/a", "../../x"));
        assert!(!leads_out("d/a", "../x"));
        assert!(!leads_out("d/a", "./b/../c"));
    }

    #[test]
    fn relative_submodule_urls_resolve() {
        assert_eq!(
            resolve_relative("https://h/org/app.git", "../lib.git"),
            "https://h/org/lib.git"
        );
        assert_eq!(
            resolve_relative("https://h/a", "https://x/y"),
            "https://x/y"
        );
    }
}
