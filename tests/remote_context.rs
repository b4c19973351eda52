//! Remote build contexts against real servers on loopback: git repositories served by
//! `git http-backend` behind lighttpd (HTTP, and HTTPS with basic auth) and by `git daemon`,
//! and tar archives served over HTTPS. Each image must equal the one built from the same
//! files as a directory context.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::run;
use strata::{Build, ContextSource, ErrorKind, Event, GitSource, PullMethod};
use strata_testkit::{ContextBuilder, GitServer, SshServer, commit_files, files_containing, git};

const PASSWORD: &str = "s3cret-git-password";
const DOCKERFILE: &str = "FROM scratch\nCOPY . /src/\n";

/// Bare repositories `app.git`, `lib.git` (a submodule of app) and `evil.git` (a link out),
/// served by real git servers, with the commits the tests name.
struct Repos {
    dir: tempfile::TempDir,
    server: GitServer,
    /// The working tree of `app` (main), for directory builds and `git archive`.
    work: std::path::PathBuf,
    /// The first commit of main (not its tip).
    first: String,
    /// main's tip.
    tip: String,
}

fn repos() -> Repos {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("repos");
    fs::create_dir(&bare).unwrap();
    // lib: one file.
    let lib = dir.path().join("lib");
    commit_files(
        &lib,
        &ContextBuilder::new().file("lib.txt", "library\n"),
        "lib",
    )
    .unwrap();
    git(
        dir.path(),
        &["clone", "-q", "--bare", "lib", "repos/lib.git"],
    )
    .unwrap();
    // app: two commits on main, a branch, an annotated tag, a pull-request ref, a
    // submodule, an executable, an inner symlink, a subdirectory with its own Dockerfile.
    let work = dir.path().join("app");
    let first = commit_files(
        &work,
        &ContextBuilder::new()
            .file("Dockerfile", DOCKERFILE)
            .file("a.txt", "first\n"),
        "one",
    )
    .unwrap();
    ContextBuilder::new()
        .file("a.txt", "second\n")
        .file_with_mode("run.sh", "#!/bin/sh\necho hi\n", 0o755)
        .symlink("link", "a.txt")
        .file("sub/dir/Dockerfile", "FROM scratch\nCOPY b.txt /b.txt\n")
        .file("sub/dir/b.txt", "in the subdirectory\n")
        .write_into(&work)
        .unwrap();
    git(&work, &["add", "."]).unwrap();
    let lib_url = format!("{}/repos/lib.git", dir.path().display());
    git(&work, &["submodule", "add", "-q", &lib_url, "lib"]).unwrap();
    // The superproject records a relative URL, as real projects do.
    git(
        &work,
        &[
            "config",
            "-f",
            ".gitmodules",
            "submodule.lib.url",
            "../lib.git",
        ],
    )
    .unwrap();
    git(&work, &["add", ".gitmodules"]).unwrap();
    git(&work, &["commit", "-qm", "two"]).unwrap();
    let tip = git(&work, &["rev-parse", "HEAD"]).unwrap();
    git(&work, &["tag", "-a", "v1", "-m", "version 1", &first]).unwrap();
    git(&work, &["checkout", "-qb", "feature"]).unwrap();
    fs::write(work.join("a.txt"), "feature\n").unwrap();
    git(&work, &["commit", "-qam", "feature"]).unwrap();
    git(&work, &["checkout", "-qb", "pr"]).unwrap();
    fs::write(work.join("a.txt"), "pull request\n").unwrap();
    git(&work, &["commit", "-qam", "pr"]).unwrap();
    git(&work, &["checkout", "-q", "main"]).unwrap();
    git(
        dir.path(),
        &["clone", "-q", "--bare", "app", "repos/app.git"],
    )
    .unwrap();
    let app = bare.join("app.git");
    git(&app, &["update-ref", "refs/pull/7/head", "refs/heads/pr"]).unwrap();
    git(&app, &["branch", "-D", "pr"]).unwrap();
    // evil: a link that leads out of the repository.
    let evil = dir.path().join("evil");
    let evil_files = ContextBuilder::new()
        .file("Dockerfile", DOCKERFILE)
        .symlink("passwd", "../../../../etc/passwd");
    commit_files(&evil, &evil_files, "evil").unwrap();
    git(
        dir.path(),
        &["clone", "-q", "--bare", "evil", "repos/evil.git"],
    )
    .unwrap();
    let server = GitServer::start(&bare, "builder", PASSWORD).unwrap();
    Repos {
        dir,
        server,
        work,
        first,
        tip,
    }
}

impl Repos {
    fn https(&self, fragment: &str) -> GitSource {
        let (user, password) = self.server.credentials();
        GitSource::parse(&format!("{}{fragment}", self.server.https_url("app.git")))
            .unwrap()
            .credentials(user, password)
            .ca_file(self.server.ca_path())
    }

    /// The files of `rev` (with `git archive`, so no `.git`) as a directory.
    fn export(&self, rev: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut archive = Command::new("git")
            .current_dir(&self.work)
            .args(["-c", "tar.umask=022", "archive", "--format=tar", rev])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let status = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(dir.path())
            .stdin(archive.stdout.take().unwrap())
            .status()
            .unwrap();
        assert!(status.success() && archive.wait().unwrap().success());
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }
}

fn build(context: impl Into<ContextSource>, state: &Path) -> Build {
    Build::new(context)
        .state_dir(state)
        .reproducible(0)
        .isolation(strata::Isolation::Namespaces)
}

fn fetched(events: &[Event]) -> Option<(String, Option<String>)> {
    events.iter().find_map(|e| match e {
        Event::ContextFetched {
            source, revision, ..
        } => Some((source.clone(), revision.clone())),
        _ => None,
    })
}

fn files(image: &strata::Image) -> std::collections::BTreeMap<String, String> {
    let (work, layout) = common::layout(image);
    let root = common::umoci_rootfs(work.path(), &layout);
    common::tree(&root)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_repository_with_basic_auth_builds_as_its_directory_does() {
    let repos = repos();
    let state = tempfile::tempdir().unwrap();
    let (image, events) = run(build(ContextSource::Git(repos.https("")), state.path())).await;
    let image = image.unwrap();
    let (source, revision) = fetched(&events).expect("a context event");
    assert_eq!(source, repos.server.https_url("app.git"));
    assert_eq!(revision.as_deref(), Some(repos.tip.as_str()));
    let labels = image.config().config.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("org.opencontainers.image.revision"),
        Some(&repos.tip)
    );
    assert_eq!(
        labels.get("org.opencontainers.image.source"),
        Some(&repos.server.https_url("app.git"))
    );
    let tree = files(&image);
    assert!(
        !tree.keys().any(|k| k.contains(".git/")),
        "no .git directory in the context: {tree:?}"
    );
    assert!(tree.get("src/run.sh").unwrap().contains("755"), "{tree:?}");
    assert!(tree.get("src/link").unwrap().contains("a.txt"), "{tree:?}");
    // Without recurse-submodules the submodule is an empty directory, as after a clone.
    assert!(tree.contains_key("src/lib"));
    assert!(!tree.contains_key("src/lib/lib.txt"));

    // The same files as a directory: the same image, once the labels the git context adds
    // are given to the directory build too.
    let dir = repos.export("HEAD");
    let (from_dir, _) = run(build(dir.path(), state.path())
        .label("org.opencontainers.image.revision", &repos.tip)
        .label(
            "org.opencontainers.image.source",
            repos.server.https_url("app.git"),
        ))
    .await;
    let from_dir = from_dir.unwrap();
    assert_eq!(files(&from_dir), tree);
    assert_eq!(from_dir.config(), image.config());
    assert_eq!(from_dir.digest(), image.digest());
}

#[tokio::test(flavor = "multi_thread")]
async fn branches_tags_pull_requests_commits_and_subdirectories() {
    let repos = repos();
    let state = tempfile::tempdir().unwrap();
    let a = |image: &strata::Image| files(image).get("src/a.txt").cloned().unwrap();
    let cases = [
        ("#feature", "feature"),
        ("#refs/heads/feature", "feature"),
        ("#v1", "first"),
        ("#refs/tags/v1", "first"),
        ("#refs/pull/7/head", "pull request"),
    ];
    for (fragment, expected) in cases {
        let (image, _) = run(build(
            ContextSource::Git(repos.https(fragment)),
            state.path(),
        ))
        .await;
        let image = image.unwrap_or_else(|e| panic!("{fragment}: {e}"));
        let text = a(&image);
        assert!(text.contains(expected), "{fragment}: {text}");
    }
    // Kaniko's form over plain HTTP: a commit that is not the tip of its branch.
    let location = repos
        .server
        .http_url("app.git")
        .trim_start_matches("http://")
        .to_owned();
    let source = GitSource::kaniko(
        &format!("{location}#refs/heads/main#{}", repos.first),
        PullMethod::Http,
    )
    .unwrap();
    let (image, events) = run(build(ContextSource::Git(source), state.path())).await;
    let image = image.unwrap();
    assert!(a(&image).contains("first"));
    assert_eq!(
        fetched(&events).unwrap().1.as_deref(),
        Some(repos.first.as_str())
    );
    // A subdirectory as the context, with its own Dockerfile.
    let (image, _) = run(build(
        ContextSource::Git(repos.https("#main:sub/dir")),
        state.path(),
    ))
    .await;
    let tree = files(&image.unwrap());
    assert_eq!(tree.keys().collect::<Vec<_>>(), vec!["b.txt"], "{tree:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn submodules_and_the_git_protocol() {
    let repos = repos();
    let state = tempfile::tempdir().unwrap();
    let source = GitSource::new(repos.server.git_url("app.git"))
        .unwrap()
        .submodules(true);
    let (image, _) = run(build(ContextSource::Git(source), state.path())).await;
    let tree = files(&image.unwrap());
    assert!(tree.contains_key("src/lib/lib.txt"), "{tree:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_with_a_key_and_known_hosts() {
    let repos = repos();
    let ssh = SshServer::start().unwrap();
    let state = tempfile::tempdir().unwrap();
    let url = ssh.url(&repos.dir.path().join("repos/app.git"));
    let source = GitSource::parse(&format!("{url}#feature"))
        .unwrap()
        .ssh_command(ssh.ssh_command(None));
    let (image, events) = run(build(ContextSource::Git(source), state.path())).await;
    let image = image.unwrap();
    assert!(files(&image)["src/a.txt"].contains("feature"));
    assert_eq!(fetched(&events).unwrap().0, url);
    // A host whose key is not known is refused, never trusted on first use.
    let empty = state.path().join("known_hosts");
    fs::write(&empty, "").unwrap();
    let source = GitSource::parse(&url)
        .unwrap()
        .ssh_command(ssh.ssh_command(Some(&empty)));
    let (result, _) = run(build(ContextSource::Git(source), state.path())).await;
    let error = result.unwrap_err();
    assert!(
        error.to_string().contains("known_hosts"),
        "the host key check is named: {error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_or_missing_credentials_are_auth_errors_that_do_not_echo_them() {
    let repos = repos();
    let state = tempfile::tempdir().unwrap();
    let wrong = GitSource::parse(&repos.server.https_url("app.git"))
        .unwrap()
        .credentials("builder", "not-the-password-123")
        .ca_file(repos.server.ca_path());
    let (result, events) = run(build(ContextSource::Git(wrong), state.path())).await;
    let error = result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth, "{error}");
    let shown = format!("{error} {error:?} {events:?}");
    assert!(!shown.contains("not-the-password-123"), "{shown}");
    let none = GitSource::parse(&repos.server.https_url("app.git"))
        .unwrap()
        .ca_file(repos.server.ca_path());
    let (result, _) = run(build(ContextSource::Git(none), state.path())).await;
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Auth);
    // An untrusted certificate is refused, never silently accepted.
    let untrusted = GitSource::parse(&repos.server.https_url("app.git"))
        .unwrap()
        .credentials("builder", PASSWORD);
    let (result, _) = run(build(ContextSource::Git(untrusted), state.path())).await;
    assert!(result.is_err());
    // The password never reaches the state directory.
    let holding = files_containing(state.path(), PASSWORD.as_bytes());
    assert!(holding.is_empty(), "the password is in {holding:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_out_of_the_repository_is_refused_and_named() {
    let repos = repos();
    let state = tempfile::tempdir().unwrap();
    let source = GitSource::new(repos.server.http_url("evil.git")).unwrap();
    let (result, _) = run(build(ContextSource::Git(source), state.path())).await;
    let error = result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Context, "{error}");
    assert!(error.to_string().contains("passwd"), "{error}");
    // A missing ref or repository is an error, not an empty context.
    let source = GitSource::new(repos.server.http_url("app.git"))
        .unwrap()
        .reference("no-such-branch");
    assert!(
        run(build(ContextSource::Git(source), state.path()))
            .await
            .0
            .is_err()
    );
    let source = GitSource::new(repos.server.http_url("none.git")).unwrap();
    assert!(
        run(build(ContextSource::Git(source), state.path()))
            .await
            .0
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_label_the_dockerfile_sets_wins_over_the_revision() {
    let repos = repos();
    let state = tempfile::tempdir().unwrap();
    let source = GitSource::new(repos.server.http_url("app.git")).unwrap();
    let (image, _) = run(
        build(ContextSource::Git(source), state.path()).dockerfile_text(
            "FROM scratch\nLABEL org.opencontainers.image.revision=mine\nCOPY a.txt /\n",
        ),
    )
    .await;
    let labels = image.unwrap().config().config.labels.clone().unwrap();
    assert_eq!(labels["org.opencontainers.image.revision"], "mine");
}

#[tokio::test(flavor = "multi_thread")]
async fn tar_archives_over_https() {
    let repos = repos();
    let state = tempfile::tempdir().unwrap();
    let context = ContextBuilder::new()
        .file("Dockerfile", DOCKERFILE)
        .file("x/y.txt", "over https\n")
        .build()
        .unwrap();
    type Tar = tar::Builder<flate2::write::GzEncoder<Vec<u8>>>;
    let tar_gz = |name: &str, extra: &dyn Fn(&mut Tar)| {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        builder.append_dir_all(".", context.path()).unwrap();
        extra(&mut builder);
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        fs::write(repos.server.www().join(name), &bytes).unwrap();
        bytes
    };
    let good = tar_gz("good.tar.gz", &|_| {});
    let https = |name: &str| ContextSource::Url(repos.server.file_url(name));
    let with_ca = |build: Build| {
        build.registry(
            strata::registry::RegistryClient::builder()
                .ca_pem(fs::read(repos.server.ca_path()).unwrap())
                .build(),
        )
    };
    let (image, events) = run(with_ca(build(https("good.tar.gz"), state.path()))).await;
    let image = image.unwrap();
    assert!(fetched(&events).is_some());
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(context.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (from_dir, _) = run(build(context.path(), state.path())).await;
    let from_dir = from_dir.unwrap();
    assert_eq!(
        files(&from_dir),
        files(&image),
        "the same files as the directory"
    );
    assert_eq!(from_dir.digest(), image.digest());
    // Truncated: an error, no image.
    fs::write(
        repos.server.www().join("short.tar.gz"),
        &good[..good.len() / 2],
    )
    .unwrap();
    let (result, _) = run(with_ca(build(https("short.tar.gz"), state.path()))).await;
    assert!(result.is_err());
    // Larger than the download limit.
    let (result, _) = run(with_ca(
        build(https("good.tar.gz"), state.path()).max_download_size(good.len() as u64 / 2),
    ))
    .await;
    assert!(result.is_err());
    // Entries that climb out.
    tar_gz("hostile.tar.gz", &|b| {
        let mut header = tar::Header::new_gnu();
        header.set_size(4);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        let name = b"../../escaped.txt";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        b.append(&header, &b"evil"[..]).unwrap();
    });
    let (result, _) = run(with_ca(build(https("hostile.tar.gz"), state.path()))).await;
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Context);
    assert!(!repos.server.www().join("escaped.txt").exists());
    // No such archive.
    let (result, _) = run(with_ca(build(https("none.tar.gz"), state.path()))).await;
    assert_eq!(result.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn add_of_a_repository_with_and_without_its_git_dir() {
    let repos = repos();
    let state = tempfile::tempdir().unwrap();
    let context = ContextBuilder::new().build().unwrap();
    let dockerfile = format!(
        "FROM scratch\nADD {}#v1 /tagged\nADD --keep-git-dir {} /kept/\n",
        repos.server.http_url("app.git"),
        repos.server.git_url("app.git"),
    );
    let (image, _) = run(build(context.path(), state.path()).dockerfile_text(dockerfile)).await;
    let image = image.unwrap();
    let (work, layout) = common::layout(&image);
    let root = common::umoci_rootfs(work.path(), &layout);
    assert_eq!(
        fs::read_to_string(root.join("tagged/a.txt")).unwrap(),
        "first\n"
    );
    assert!(!root.join("tagged/.git").exists());
    assert_eq!(
        fs::read_to_string(root.join("kept/a.txt")).unwrap(),
        "second\n"
    );
    // The kept repository is a clean checkout of the commit, for git itself.
    let kept = root.join("kept");
    let head = git(&kept, &["rev-parse", "HEAD"]).unwrap();
    assert_eq!(head, repos.tip);
    let status = git(&kept, &["status", "--porcelain", "--ignore-submodules"]).unwrap();
    assert_eq!(status, "", "a clean checkout");
    // Over HTTPS, the repository's server is trusted as the registry client trusts it (its
    // CA certificates); credentials in the URL are moved out of it.
    let https = repos.server.https_url("app.git").replacen(
        "https://",
        &format!("https://builder:{PASSWORD}@"),
        1,
    );
    let registry = strata::registry::RegistryClient::builder()
        .ca_pem(fs::read(repos.server.ca_path()).unwrap())
        .build();
    let (image, _) = run(build(context.path(), state.path())
        .registry(registry)
        .dockerfile_text(format!("FROM scratch\nADD {https}#feature /https/\n")))
    .await;
    let tree = files(&image.unwrap());
    assert!(tree["https/a.txt"].contains("feature"), "{tree:?}");
    // A second build with nothing changed hits the cache: the commit is the key.
    let dockerfile = format!(
        "FROM scratch\nADD {}#v1 /tagged\n",
        repos.server.http_url("app.git")
    );
    let (again, _) = run(build(context.path(), state.path()).dockerfile_text(dockerfile)).await;
    assert_eq!(again.unwrap().cache_hits().0, 1);
}
