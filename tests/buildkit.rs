//! BuildKit's own Dockerfile tests, ported: the test functions of moby/buildkit's
//! `frontend/dockerfile/dockerfile_*_test.go` that need no network, secrets agent or other
//! platform, each rebuilt here with its Dockerfile, context and assertions (facts taken from
//! BuildKit's tests, the code written here). The images are read as BuildKit's tests read
//! them: the root filesystem (unpacked by umoci) and the config (read by skopeo).
//!
//! `busybox` and `alpine` resolve, through a registry mirror on loopback, to the test kit's
//! busybox with Docker Hub busybox's users and groups (`daemon`, `wheel`, `nobody`), which
//! several tests check, and an `adduser` script stands in for its applet (Debian's static
//! busybox has none). Where a BuildKit test builds for Windows too, the Unix side is ported;
//! where it checks an exported directory, the image's root filesystem is read instead.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{Fixture, layout, run, skopeo_config, umoci_raw_rootfs};
use strata::Build;
use strata_testkit::ContextBuilder;

/// The users and groups of Docker Hub's busybox that BuildKit's tests rely on.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
                      nobody:x:65534:65534:nobody:/home:/bin/false\n";
const GROUP: &str = "root:x:0:\ndaemon:x:1:\nwheel:x:10:root\nnobody:x:65534:\n";

/// `adduser -D NAME` as Docker Hub busybox's applet does it for these tests (Debian's static
/// busybox has no adduser): the first free id from 1000 for the user and its own group.
const ADDUSER: &str = r#"#!/bin/sh
name="$2"
id=1000
while cut -d: -f3 /etc/passwd /etc/group | grep -qx "$id"; do id=$((id + 1)); done
echo "$name:x:$id:$id:Linux User,,,:/home/$name:/bin/sh" >> /etc/passwd
echo "$name:x:$id:" >> /etc/group
mkdir -p "/home/$name" && chown "$id:$id" "/home/$name"
"#;

/// A registry holding `library/busybox` and `library/alpine`, and builds that pull Docker
/// Hub names from it.
struct Bk {
    fx: Fixture,
}

impl Bk {
    async fn new() -> Bk {
        let fx = Fixture::new();
        let context = ContextBuilder::new()
            .file("passwd", PASSWD)
            .file("group", GROUP)
            .file_with_mode("adduser", ADDUSER, 0o755)
            .build()
            .unwrap();
        let (image, _) = run(fx.build(
            context.path(),
            "FROM {base}\nCOPY passwd group /etc/\nCOPY adduser /bin/\n",
        ))
        .await;
        let image = image.unwrap();
        for name in ["library/busybox:latest", "library/alpine:latest"] {
            image
                .push(&format!("{}/{name}", fx.registry.host()))
                .await
                .unwrap();
        }
        Bk { fx }
    }

    fn build(&self, context: &Path, dockerfile: &str) -> Build {
        self.build_in(context).dockerfile_text(dockerfile)
    }

    /// A build of `context` with its own Dockerfile.
    fn build_in(&self, context: &Path) -> Build {
        Build::new(context)
            .state_dir(self.fx.state.path())
            .isolation(strata::Isolation::Namespaces)
            .registry(
                strata::registry::RegistryClient::builder()
                    .mirror(self.fx.registry.host())
                    .build(),
            )
    }

    /// Builds; the unpacked root filesystem (its work dir, its path) and the config.
    async fn ok(&self, build: Build) -> (tempfile::TempDir, PathBuf, serde_json::Value) {
        let (image, _) = run(build).await;
        let image = image.unwrap_or_else(|e| panic!("{}", chain(&e)));
        let (work, oci) = layout(&image);
        let rootfs = umoci_raw_rootfs(work.path(), &oci);
        let config = skopeo_config(&oci);
        (work, rootfs, config)
    }

    /// Builds `dockerfile` in `context`; the root filesystem.
    async fn rootfs(&self, context: &Path, dockerfile: &str) -> (tempfile::TempDir, PathBuf) {
        let (work, rootfs, _) = self.ok(self.build(context, dockerfile)).await;
        (work, rootfs)
    }

    /// A build that must fail; its error with its causes.
    async fn fails(&self, build: Build) -> String {
        let (image, _) = run(build).await;
        match image {
            Ok(_) => panic!("the build succeeded"),
            Err(e) => chain(&e),
        }
    }
}

/// An error and its causes, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn empty() -> tempfile::TempDir {
    ContextBuilder::new().build().unwrap()
}

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A tar of regular files (name, content, mode).
fn tar_of(files: &[(&str, &str, u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, content.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

// dockerfile_add_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_dockerfile_add_archive() {
    let bk = Bk::new().await;
    let plain = tar_of(&[("foo", "content0", 0o644)]);
    let gz = gzip(&plain);
    let context = empty();
    fs::write(context.path().join("t.tar"), &plain).unwrap();
    fs::write(context.path().join("t.tar.gz"), &gz).unwrap();
    let (_w, root) = bk
        .rootfs(context.path(), "FROM scratch\nADD t.tar /\n")
        .await;
    assert_eq!(read(&root, "foo"), "content0");
    let (_w, root) = bk
        .rootfs(context.path(), "FROM scratch\nADD t.tar.gz /\n")
        .await;
    assert_eq!(read(&root, "foo"), "content0");
    let (_w, root) = bk
        .rootfs(
            context.path(),
            "\tFROM scratch\n\tADD --unpack=false t.tar.gz /\n",
        )
        .await;
    assert!(!root.join("foo").exists());
    assert_eq!(fs::read(root.join("t.tar.gz")).unwrap(), gz);
    let (_w, root) = bk
        .rootfs(context.path(), "FROM scratch\nCOPY t.tar.gz /\n")
        .await;
    assert_eq!(fs::read(root.join("t.tar.gz")).unwrap(), gz);
}

#[tokio::test(flavor = "multi_thread")]
async fn test_dockerfile_add_archive_with_implied_parent_dir() {
    let bk = Bk::new().await;
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder
        .append_data(&mut dir, "etc/dnf/", std::io::empty())
        .unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_size(8);
    file.set_mode(0o644);
    builder
        .append_data(&mut file, "etc/dnf/dnf.conf", &b"content0"[..])
        .unwrap();
    let context = empty();
    fs::write(
        context.path().join("t.tar.gz"),
        gzip(&builder.into_inner().unwrap()),
    )
    .unwrap();
    let (_w, root) = bk
        .rootfs(context.path(), "FROM scratch\nADD t.tar.gz /\n")
        .await;
    assert_eq!(read(&root, "etc/dnf/dnf.conf"), "content0");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_dockerfile_add_chown_archive() {
    let bk = Bk::new().await;
    let context = empty();
    fs::write(
        context.path().join("t.tar"),
        tar_of(&[("foo", "content0", 0o644)]),
    )
    .unwrap();
    let (_w, root) = bk
        .rootfs(
            context.path(),
            "FROM scratch\nADD --chown=100:200 t.tar /out/\n",
        )
        .await;
    assert_eq!(read(&root, "out/foo"), "content0");
    for path in ["out/foo", "out"] {
        let meta = fs::metadata(root.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (100, 200), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_dockerfile_add_archive_wildcard() {
    let bk = Bk::new().await;
    let context = empty();
    fs::write(
        context.path().join("t.tar"),
        tar_of(&[("foo", "content0", 0o644)]),
    )
    .unwrap();
    fs::write(
        context.path().join("b.tar"),
        tar_of(&[("bar", "content1", 0o644)]),
    )
    .unwrap();
    let (_w, root) = bk
        .rootfs(context.path(), "FROM scratch\nADD *.tar /dest\n")
        .await;
    assert_eq!(read(&root, "dest/foo"), "content0");
    assert_eq!(read(&root, "dest/bar"), "content1");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_add_and_copy_invalid_chmod() {
    // testAddInvalidChmod and testCopyInvalidChmod.
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("foo", "foo-contents")
        .build()
        .unwrap();
    for verb in ["ADD", "COPY"] {
        for mode in ["64a", "10000"] {
            let error = bk
                .fails(bk.build(
                    context.path(),
                    &format!("FROM scratch\n{verb} --chmod={mode} foo /\n"),
                ))
                .await;
            assert!(error.contains(&format!("--chmod={mode}")), "{error}");
        }
    }
}

// dockerfile_args_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_global_arg_errors() {
    let bk = Bk::new().await;
    let context = empty();
    let dockerfile = "ARG FOO=${FOO:?\"custom error\"}\nFROM busybox\n";
    let error = bk.fails(bk.build(context.path(), dockerfile)).await;
    assert!(error.contains("FOO: custom error"), "{error}");
    bk.ok(bk.build(context.path(), dockerfile).build_arg("FOO", "bar"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_arg_default_expansion() {
    let bk = Bk::new().await;
    let context = empty();
    let dockerfile = "FROM scratch\nARG FOO\nARG BAR=${FOO:?\"foo missing\"}\n";
    let error = bk.fails(bk.build(context.path(), dockerfile)).await;
    assert!(error.contains("FOO: foo missing"), "{error}");
    bk.ok(bk.build(context.path(), dockerfile).build_arg("FOO", "123"))
        .await;
    bk.ok(bk.build(context.path(), dockerfile).build_arg("BAR", "123"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_multi_args() {
    let bk = Bk::new().await;
    let dockerfile = "ARG a1=\"foo bar\" a2=box\nARG a3=\"$a2-foo\"\nFROM busy$a2 AS build\n\
        ARG a3 a4=\"123 456\" a1\nRUN echo -n \"$a1:$a3:$a4\" > /out\nFROM scratch\n\
        COPY --from=build /out .\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    assert_eq!(read(&root, "out"), "foo bar:box-foo:123 456");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_quoted_meta_args() {
    let bk = Bk::new().await;
    let dockerfile = "ARG a1=\"box\"\nARG a2=\"$a1-foo\"\nFROM busy$a1 AS build\nARG a2\n\
        ARG a3=\"bar-$a2\"\nRUN echo -n $a3 > /out\nFROM scratch\nCOPY --from=build /out .\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    assert_eq!(read(&root, "out"), "bar-box-foo");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_empty_string_arg_in_env() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox AS build\nARG FOO\nARG BAR=\nRUN env > env.txt\n\n\
        FROM scratch\nCOPY --from=build env.txt .\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    let env = read(&root, "env.txt");
    assert!(env.contains("BAR="), "{env}");
    assert!(!env.contains("FOO="), "{env}");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_env_empty_formatting() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox AS build\nENV myenv foo%sbar\nRUN [ \"$myenv\" = 'foo%sbar' ]\n";
    bk.ok(bk.build(empty().path(), dockerfile)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_default_env_with_args() {
    let bk = Bk::new().await;
    let dockerfile = "\nARG image=idlebox\nFROM busy${image#idle} AS build\nARG my_arg\n\
        ENV my_arg \"my_arg=${my_arg:-def_val}\"\nENV my_trimmed_arg \"${my_arg%%e*}\"\n\
        COPY myscript.sh myscript.sh\nRUN ./myscript.sh $my_arg $my_trimmed_arg\n\
        FROM scratch\nCOPY --from=build /out /out\n";
    let context = ContextBuilder::new()
        .file_with_mode(
            "myscript.sh",
            "\n#!/usr/bin/env sh\necho -n $my_arg $* > /out\n",
            0o700,
        )
        .build()
        .unwrap();
    for (value, expected) in [
        (None, "my_arg=def_val my_arg=def_val my_arg=d"),
        (Some(""), "my_arg=def_val my_arg=def_val my_arg=d"),
        (
            Some("override"),
            "my_arg=override my_arg=override my_arg=ov",
        ),
    ] {
        let mut build = bk.build(context.path(), dockerfile);
        if let Some(value) = value {
            build = build.build_arg("my_arg", value);
        }
        let (_w, root, _) = bk.ok(build).await;
        assert_eq!(read(&root, "out"), expected, "{value:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_global_arg() {
    let bk = Bk::new().await;
    let dockerfile = "ARG tag=nosuchtag\nFROM busybox:${tag}\n";
    bk.ok(bk
        .build(empty().path(), dockerfile)
        .build_arg("tag", "latest"))
        .await;
}

// dockerfile_copy_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_dockerfile_copy_from_args() {
    let bk = Bk::new().await;
    let error = bk
        .fails(bk.build(empty().path(), "FROM scratch\nCOPY --from=$FOO . .\n"))
        .await;
    assert!(
        error.contains("variable expansion is not supported for --from"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn test_mount_from_error() {
    let bk = Bk::new().await;
    let error = bk
        .fails(bk.build(
            empty().path(),
            "FROM busybox as test\nRUN touch /tmp/test\n\nFROM busybox\nENV ttt=test\n\
             RUN --mount=from=$ttt,type=cache,target=/tmp ls\n",
        ))
        .await;
    assert!(
        error.contains("'from' doesn't support variable expansion"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn test_empty_dest_dir() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("testfile", "contents0")
        .build()
        .unwrap();
    let dockerfile = "FROM busybox\nENV empty=\"\"\nCOPY testfile $empty\n\
        RUN [ \"$(cat testfile)\" == \"contents0\" ]\n";
    bk.ok(bk.build(context.path(), dockerfile)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_link_dot_and_empty_dest_dir() {
    // testCopyLinkDotDestDir and testCopyLinkEmptyDestDir.
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("testfile", "contents0")
        .build()
        .unwrap();
    for dest in [".", "$empty"] {
        let dockerfile = format!(
            "FROM busybox\nENV empty=\"\"\nWORKDIR /var/www\nCOPY --link testfile {dest}\n\
             RUN [ \"$(cat testfile)\" == \"contents0\" ]\n"
        );
        bk.ok(bk.build(context.path(), &dockerfile)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_preserve_dest_dir_slash() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("testfile", "contents0")
        .build()
        .unwrap();
    let dockerfile = "FROM busybox\nCOPY testfile /sample/\nRUN [ \"$(cat /sample/testfile)\" == \"contents0\" ]\n";
    bk.ok(bk.build(context.path(), dockerfile)).await;
}

const CHOWN_EXISTING: &str = r#"FROM busybox AS source
RUN touch /file && chown 100:200 /file \
 && mkdir -p /dir/subdir \
 && touch /dir/subdir/nestedfile \
 && chown 100:200 /dir \
 && chown 101:201 /dir/subdir \
 && chown 102:202 /dir/subdir/nestedfile

FROM busybox AS test_base
RUN mkdir -p /existingdir/existingsubdir \
 && touch /existingdir/existingfile \
 && chown 500:600 /existingdir \
 && chown 501:601 /existingdir/existingsubdir \
 && chown 501:601 /existingdir/existingfile

FROM test_base AS copy_from
COPY --from=source /file .
COPY --from=source /dir /dir
COPY --from=source /dir/. /existingdir
RUN ls -ln / /dir /dir/subdir /existingdir /existingdir/subdir > /owners

FROM test_base AS copy_from_chowned
COPY --from=source --chown=300:400 /file .
COPY --from=source --chown=300:400 /dir /dir
COPY --from=source --chown=300:400 /dir/. /existingdir
"#;

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_chown_existing_dir() {
    let bk = Bk::new().await;
    let owner = |root: &Path, path: &str| {
        let meta = fs::symlink_metadata(root.join(path.trim_start_matches('/'))).unwrap();
        format!("{}:{}", meta.uid(), meta.gid())
    };
    let (_w, root, _) = bk
        .ok(bk.build(empty().path(), CHOWN_EXISTING).target("copy_from"))
        .await;
    for (path, expected) in [
        ("/file", "100:200"),
        ("/dir", "0:0"),
        ("/dir/subdir", "101:201"),
        ("/dir/subdir/nestedfile", "102:202"),
        ("/existingdir", "500:600"),
        ("/existingdir/existingsubdir", "501:601"),
        ("/existingdir/existingfile", "501:601"),
        ("/existingdir/subdir", "101:201"),
        ("/existingdir/subdir/nestedfile", "102:202"),
    ] {
        assert_eq!(owner(&root, path), expected, "{path} (copy_from)");
    }
    let (_w, root, _) = bk.ok(bk.build(empty().path(), CHOWN_EXISTING)).await;
    for (path, expected) in [
        ("/file", "300:400"),
        ("/dir", "300:400"),
        ("/dir/subdir", "300:400"),
        ("/dir/subdir/nestedfile", "300:400"),
        ("/existingdir", "500:600"),
        ("/existingdir/existingsubdir", "501:601"),
        ("/existingdir/existingfile", "501:601"),
        ("/existingdir/subdir", "300:400"),
        ("/existingdir/subdir/nestedfile", "300:400"),
    ] {
        assert_eq!(owner(&root, path), expected, "{path} (copy_from_chowned)");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_chown_create_dest() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox\nARG group\nENV owner user01\nRUN adduser -D user\n\
        RUN adduser -D user01\nCOPY --chown=user:user . /dest\n\
        COPY --chown=${owner}:${group} . /dest01\n\
        RUN [ \"$(stat -c \"%U %G\" /dest)\" == \"user user\" ]\n\
        RUN [ \"$(stat -c \"%U %G\" /dest01)\" == \"user01 user\" ]\n";
    bk.ok(bk
        .build(empty().path(), dockerfile)
        .build_arg("group", "user"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_through_symlink_context() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .dir("sub", 0o700)
        .file("sub/foo", "contents")
        .symlink("link", "sub")
        .build()
        .unwrap();
    let (_w, root) = bk
        .rootfs(context.path(), "FROM scratch\nCOPY link/foo .\n")
        .await;
    assert_eq!(read(&root, "foo"), "contents");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_through_symlink_multi_stage() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox AS build\n\
        RUN mkdir -p /out/sub && ln -s /out/sub /sub && ln -s out/sub /sub2 && echo -n \"data\" > /sub/foo\n\
        FROM scratch\nCOPY --from=build /sub/foo .\nCOPY --from=build /sub2/foo bar\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    assert_eq!(read(&root, "foo"), "data");
    assert_eq!(read(&root, "bar"), "data");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_socket() {
    let bk = Bk::new().await;
    let context = empty();
    let _listener =
        std::os::unix::net::UnixListener::bind(context.path().join("socket.sock")).unwrap();
    let (_w, root) = bk.rootfs(context.path(), "FROM scratch\nCOPY . /\n").await;
    assert!(
        fs::symlink_metadata(root.join("socket.sock"))
            .unwrap()
            .file_type()
            .is_file()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_symlinks() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("bar", "bar-contents")
        .symlink("foo", "bar")
        .dir("sub", 0o700)
        .file("sub/lfile", "lfile-contents")
        .symlink("sub/l0", "subfile")
        .file("sub/subfile", "subfile-contents")
        .symlink("sub/l1", "second")
        .symlink("sub/second", "baz")
        .file("sub/baz", "baz-contents")
        .build()
        .unwrap();
    let (_w, root) = bk
        .rootfs(
            context.path(),
            "FROM scratch\nCOPY foo /\nCOPY sub/l* alllinks/\n",
        )
        .await;
    assert_eq!(read(&root, "foo"), "bar-contents");
    assert_eq!(read(&root, "alllinks/l0"), "subfile-contents");
    assert_eq!(read(&root, "alllinks/lfile"), "lfile-contents");
    assert_eq!(read(&root, "alllinks/l1"), "baz-contents");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_chown() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("foo", "foo-contents")
        .dir("bar", 0o700)
        .file("bar/sub", "")
        .build()
        .unwrap();
    let dockerfile = "FROM busybox AS base\nENV owner 1000\nRUN mkdir -m 0777 /out\n\
        COPY --chown=daemon foo /\nCOPY --chown=1000:nobody bar /baz\nARG group\n\
        COPY --chown=${owner}:${group} foo /foobis\n\
        RUN stat -c \"%U %G\" /foo  > /out/fooowner\n\
        RUN stat -c \"%u %G\" /baz/sub  > /out/subowner\n\
        RUN stat -c \"%u %G\" /foobis  > /out/foobisowner\n\
        FROM scratch\nCOPY --from=base /out /\n";
    let (_w, root, _) = bk
        .ok(bk
            .build(context.path(), dockerfile)
            .build_arg("group", "nobody"))
        .await;
    assert_eq!(read(&root, "fooowner"), "daemon daemon\n");
    assert_eq!(read(&root, "subowner"), "1000 nobody\n");
    assert_eq!(read(&root, "foobisowner"), "1000 nobody\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_chmod() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file_with_mode("foo", "foo-contents", 0o600)
        .file_with_mode("bar", "bar-contents", 0o700)
        .build()
        .unwrap();
    let dockerfile = "FROM busybox AS base\n\nRUN mkdir -m 0777 /out\n\
        COPY --chmod=0644 foo /\nCOPY --chmod=777 bar /baz\nCOPY --chmod=0 foo /foobis\n\
        COPY --chmod=777 foo /parent/foo\nCOPY --chmod=770 foo /parent/sub/foo\n\n\
        ARG mode\nCOPY --chmod=${mode} foo /footer\n\n\
        RUN stat -c \"%04a\" /foo  > /out/fooperm\n\
        RUN stat -c \"%04a\" /baz  > /out/barperm\n\
        RUN stat -c \"%04a\" /foobis  > /out/foobisperm\n\
        RUN stat -c \"%04a\" /parent  > /out/parentperm\n\
        RUN stat -c \"%04a\" /parent/sub  > /out/subparentperm\n\
        RUN stat -c \"%04a\" /footer  > /out/footerperm\n\
        FROM scratch\nCOPY --from=base /out /\n";
    let (_w, root, _) = bk
        .ok(bk
            .build(context.path(), dockerfile)
            .build_arg("mode", "755"))
        .await;
    for (file, mode) in [
        ("fooperm", "0644\n"),
        ("barperm", "0777\n"),
        ("foobisperm", "0000\n"),
        ("parentperm", "0777\n"),
        ("subparentperm", "0770\n"),
        ("footerperm", "0755\n"),
    ] {
        assert_eq!(read(&root, file), mode, "{file}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_wildcards() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("foo.go", "foo-contents")
        .file("bar.go", "bar-contents")
        .dir("sub", 0o700)
        .dir("sub/dir1", 0o700)
        .dir("sub/dir1/dir2", 0o700)
        .file("sub/dir1/dir2/foo", "foo-contents")
        .build()
        .unwrap();
    let dockerfile = "FROM scratch AS base\nCOPY *.go /gofiles/\nCOPY f*.go foo2.go\n\
        COPY sub/* /subdest/\nCOPY sub/*/dir2/foo /subdest2/\nCOPY sub/*/dir2/foo /subdest3/bar\n\
        COPY . all/\nCOPY sub/dir1/ subdest4\nCOPY sub/dir1/. subdest5\nCOPY sub/dir1 subdest6\n";
    let (_w, root) = bk.rootfs(context.path(), dockerfile).await;
    for (path, content) in [
        ("gofiles/foo.go", "foo-contents"),
        ("gofiles/bar.go", "bar-contents"),
        ("foo2.go", "foo-contents"),
        ("subdest/dir2/foo", "foo-contents"),
        ("subdest2/foo", "foo-contents"),
        ("subdest3/bar", "foo-contents"),
        ("all/foo.go", "foo-contents"),
        ("subdest4/dir2/foo", "foo-contents"),
        ("subdest5/dir2/foo", "foo-contents"),
        ("subdest6/dir2/foo", "foo-contents"),
    ] {
        assert_eq!(read(&root, path), content, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_relative() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new().file("foo", "hello").build().unwrap();
    let dockerfile = r#"FROM busybox
WORKDIR /test1
WORKDIR test2
RUN sh -c "[ "$PWD" = '/test1/test2' ]"
COPY foo ./
RUN sh -c "[ $(cat /test1/test2/foo) = 'hello' ]"
ADD foo ./bar/baz
RUN sh -c "[ $(cat /test1/test2/bar/baz) = 'hello' ]"
COPY foo ./bar/baz2
RUN sh -c "[ $(cat /test1/test2/bar/baz2) = 'hello' ]"
WORKDIR ..
COPY foo ./
RUN sh -c "[ $(cat /test1/foo) = 'hello' ]"
COPY foo /test3/
RUN sh -c "[ $(cat /test3/foo) = 'hello' ]"
WORKDIR /test4
COPY . .
RUN sh -c "[ $(cat /test4/foo) = 'hello' ]"
WORKDIR /test5/test6
COPY foo ../
RUN sh -c "[ $(cat /test5/foo) = 'hello' ]"
"#;
    bk.ok(bk.build(context.path(), dockerfile)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_unicode_path() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("test-äöü.txt", "foo")
        .file("test-%C3%A4%C3%B6%C3%BC.txt", "bar")
        .file("test+aou.txt", "baz")
        .build()
        .unwrap();
    let dockerfile = "FROM alpine\nCOPY test-äöü.txt /\nCOPY test-%C3%A4%C3%B6%C3%BC.txt /\n\
        COPY test+aou.txt /\n";
    let (_w, root) = bk.rootfs(context.path(), dockerfile).await;
    assert_eq!(read(&root, "test-äöü.txt"), "foo");
    assert_eq!(read(&root, "test-%C3%A4%C3%B6%C3%BC.txt"), "bar");
    assert_eq!(read(&root, "test+aou.txt"), "baz");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_chmod_non_octal() {
    let bk = Bk::new().await;
    let dockerfile = "FROM alpine as base\nRUN <<eot\n\tset -ex\n\tmkdir /input\n\ttouch /input/file\n\
        \tchmod 666 /input/file\n\tmkdir /input/dir\n\tchmod 124 /input/dir\neot\n\
        RUN mkdir -p /input/dirs/d1 && cp -a /input/dir /input/dirs/d1/d1\n\
        RUN mkdir -p /input/dirs/d2 && cp -a /input/dir /input/dirs/d2/d2\n\
        RUN mkdir -p /input/dirs/d3 && cp -a /input/dir /input/dirs/d3/d3\n\n\
        FROM scratch as result\n\
        COPY --from=base --chmod=go-w /input/file /f1\n\
        COPY --from=base --chmod=u=rw,g=r,o=r /input/file /f2\n\
        COPY --from=base --chmod=a+X /input/file /f3\n\
        COPY --from=base --chmod=go-w /input/dirs/d1 /\n\
        COPY --from=base --chmod=u+rw,g+r,o-x,o+w /input/dirs/d2 /\n\
        COPY --from=base --chmod=a+X /input/dirs/d3 /\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    // What chmod(1) makes of the same inputs (file 0666, directory 0124).
    for (path, mode) in [
        ("f1", 0o644),
        ("f2", 0o644),
        ("f3", 0o666),
        ("d1", 0o104),
        ("d2", 0o766),
        ("d3", 0o135),
    ] {
        let actual = fs::symlink_metadata(root.join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(actual, mode, "{path}: {actual:o}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_override_files() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .dir("sub", 0o700)
        .dir("sub/dir1", 0o700)
        .dir("sub/dir1/dir2", 0o700)
        .file("sub/dir1/dir2/foo", "foo-contents")
        .build()
        .unwrap();
    let dockerfile = "FROM scratch AS base\nCOPY sub sub\nCOPY sub sub\nCOPY files/foo.go dest/foo.go\n\
        COPY files/foo.go dest/foo.go\nCOPY files dest\n";
    fs::create_dir(context.path().join("files")).unwrap();
    fs::write(context.path().join("files/foo.go"), "foo.go-contents").unwrap();
    let (_w, root) = bk.rootfs(context.path(), dockerfile).await;
    assert_eq!(read(&root, "sub/dir1/dir2/foo"), "foo-contents");
    assert_eq!(read(&root, "dest/foo.go"), "foo.go-contents");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_var_substitution() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("bar", "bar-contents")
        .build()
        .unwrap();
    let (_w, root) = bk
        .rootfs(context.path(), "FROM scratch\nENV FOO bar\nCOPY $FOO baz\n")
        .await;
    assert_eq!(read(&root, "baz"), "bar-contents");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_follow_all_symlinks() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("bar", "bar-contents")
        .dir("foo", 0o700)
        .symlink("foo/sub", "../bar")
        .build()
        .unwrap();
    bk.ok(bk.build(
        context.path(),
        "FROM scratch\nCOPY foo /\nCOPY foo/sub bar\n",
    ))
    .await;
}

// dockerfile_core_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_symlink_destination() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("foo", "content0")
        .build()
        .unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_mode(0o755);
    header.set_size(0);
    builder
        .append_link(&mut header, "symlink", "../tmp/symlink-target")
        .unwrap();
    fs::write(context.path().join("t.tar"), builder.into_inner().unwrap()).unwrap();
    let (_w, root) = bk
        .rootfs(
            context.path(),
            "FROM scratch\nADD t.tar /\nCOPY foo /symlink/\n",
        )
        .await;
    assert_eq!(read(&root, "tmp/symlink-target/foo"), "content0");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_expose_expansion() {
    let bk = Bk::new().await;
    let (_w, _root, config) = bk
        .ok(bk.build(
            empty().path(),
            "FROM scratch\nARG PORTS=\"3000 4000/udp\"\nEXPOSE $PORTS\nEXPOSE 5000\n",
        ))
        .await;
    let ports: Vec<&String> = config["config"]["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(ports, ["3000/tcp", "4000/udp", "5000/tcp"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn test_labels() {
    let bk = Bk::new().await;
    let (_w, _root, config) = bk
        .ok(bk
            .build(empty().path(), "FROM scratch\nLABEL foo=bar\n")
            .label("bar", "baz"))
        .await;
    assert_eq!(config["config"]["Labels"]["foo"], "bar");
    assert_eq!(config["config"]["Labels"]["bar"], "baz");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_user() {
    let bk = Bk::new().await;
    let dockerfile = r#"FROM busybox AS base
RUN mkdir -m 0777 /out
RUN id -un > /out/rootuser

# Make sure our defaults work
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)" = '0:0/root:root' ]

USER root
RUN [ "$(id -G):$(id -Gn)" = '0 10:root wheel' ]

# Setup dockerio user and group
RUN echo 'dockerio:x:1001:1001::/bin:/bin/false' >> /etc/passwd && \
	echo 'dockerio:x:1001:' >> /etc/group

# Make sure we can switch to our user and all the information is exactly as we expect it to be
USER dockerio
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001:dockerio' ]

# Switch back to root and double check that worked exactly as we might expect it to
USER root
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '0:0/root:root/0 10:root wheel' ] && \
        # Add a "supplementary" group for our dockerio user
	echo 'supplementary:x:1002:dockerio' >> /etc/group

# ... and then go verify that we get it like we expect
USER dockerio
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001 1002:dockerio supplementary' ]
USER 1001
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001 1002:dockerio supplementary' ]

# super test the new "user:group" syntax
USER dockerio:dockerio
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001:dockerio' ]
USER 1001:dockerio
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001:dockerio' ]
USER dockerio:1001
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001:dockerio' ]
USER 1001:1001
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1001/dockerio:dockerio/1001:dockerio' ]
USER dockerio:supplementary
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1002/dockerio:supplementary/1002:supplementary' ]
USER dockerio:1002
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1002/dockerio:supplementary/1002:supplementary' ]
USER 1001:supplementary
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1002/dockerio:supplementary/1002:supplementary' ]
USER 1001:1002
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1001:1002/dockerio:supplementary/1002:supplementary' ]

# make sure unknown uid/gid still works properly
USER 1042:1043
RUN [ "$(id -u):$(id -g)/$(id -un):$(id -gn)/$(id -G):$(id -Gn)" = '1042:1043/1042:1043/1043:1043' ]
USER daemon
RUN id -un > /out/daemonuser
FROM scratch
COPY --from=base /out /
USER nobody
"#;
    let (_w, root, config) = bk.ok(bk.build(empty().path(), dockerfile)).await;
    assert_eq!(read(&root, "rootuser"), "root\n");
    assert_eq!(read(&root, "daemonuser"), "daemon\n");
    assert_eq!(config["config"]["User"], "nobody");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_user_additional_gids() {
    let bk = Bk::new().await;
    let dockerfile = r#"FROM busybox
SHELL ["/bin/sh", "-euxc"]
RUN [ "$(id)" = "uid=0(root) gid=0(root) groups=0(root),10(wheel)" ]
USER 1234
RUN [ "$(id)" = "uid=1234 gid=0(root) groups=0(root)" ]
USER 1234:1234
RUN [ "$(id)" = "uid=1234 gid=1234 groups=1234" ]
USER daemon
RUN [ "$(id)" = "uid=1(daemon) gid=1(daemon) groups=1(daemon)" ]
"#;
    bk.ok(bk.build(empty().path(), dockerfile)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_target_mistype() {
    let bk = Bk::new().await;
    let dockerfile =
        "FROM scratch AS build\nCOPY Dockerfile /out\n\nFROM scratch\nCOPY --from=build /out /\n";
    let error = bk
        .fails(bk.build(empty().path(), dockerfile).target("bulid"))
        .await;
    assert!(
        error.contains("target stage \"bulid\" could not be found (did you mean build?)"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn test_dockerfile_lowercase() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("dockerfile", "FROM scratch\nCOPY dockerfile /\n")
        .build()
        .unwrap();
    bk.ok(bk.build_in(context.path())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_symlinked_dockerfile() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("Dockerfile.web", "FROM scratch\nENV foo bar\n")
        .symlink("Dockerfile", "Dockerfile.web")
        .build()
        .unwrap();
    bk.ok(bk.build_in(context.path())).await;
}

// dockerfile_dockerignore_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_dockerignore() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("foo", "foo-contents")
        .file("bar", "bar-contents")
        .file("baz", "baz-contents")
        .file("bay", "bay-contents")
        .file(".dockerignore", "\nba*\nDockerfile\n!bay\n.dockerignore\n")
        .file("Dockerfile", "FROM scratch\nCOPY . .\n")
        .build()
        .unwrap();
    let (_w, root, _) = bk.ok(bk.build_in(context.path())).await;
    assert_eq!(read(&root, "foo"), "foo-contents");
    assert_eq!(read(&root, "bay"), "bay-contents");
    for absent in [".dockerignore", "Dockerfile", "bar", "baz"] {
        assert!(!root.join(absent).exists(), "{absent}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_dockerignore_override() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file(
            "Dockerfile",
            "FROM busybox\nCOPY . .\nRUN [ -f foo ] && [ ! -f bar ]\n",
        )
        .file("Dockerfile.dockerignore", "\nbar\n")
        .file(
            "Dockerfile2",
            "FROM busybox\nCOPY . .\nRUN [ ! -f foo ] && [ -f bar ]\n",
        )
        .file("Dockerfile2.dockerignore", "\nfoo\n")
        .file("foo", "contents0")
        .file("bar", "contents0")
        .build()
        .unwrap();
    for name in ["Dockerfile", "Dockerfile2"] {
        bk.ok(bk
            .build_in(context.path())
            .dockerfile(context.path().join(name)))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_dockerignore_invalid() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file(".dockerignore", "!\n")
        .build()
        .unwrap();
    bk.fails(bk.build(context.path(), "FROM scratch\nCOPY . .\n"))
        .await;
}

// dockerfile_heredoc_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_heredoc() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox AS build\n\nRUN adduser -D user\nWORKDIR /dest\n\n\
        COPY <<EOF single\nsingle file\nEOF\n\n\
        COPY <<EOF <<EOF2 double/\nfirst file\nEOF\nsecond file\nEOF2\n\n\
        RUN mkdir -p /permfiles\n\
        COPY --chmod=777 <<EOF /permfiles/all\ndummy content\nEOF\n\
        COPY --chmod=0644 <<EOF /permfiles/rw\ndummy content\nEOF\n\
        COPY --chown=user:user <<EOF /permfiles/owned\ndummy content\nEOF\n\
        RUN stat -c \"%04a\" /permfiles/all >> perms && \\\n\
        \tstat -c \"%04a\" /permfiles/rw >> perms && \\\n\
        \tstat -c \"%U:%G\" /permfiles/owned >> perms\n\n\
        FROM scratch\nCOPY --from=build /dest /\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    assert_eq!(read(&root, "single"), "single file\n");
    assert_eq!(read(&root, "double/EOF"), "first file\n");
    assert_eq!(read(&root, "double/EOF2"), "second file\n");
    assert_eq!(read(&root, "perms"), "0777\n0644\nuser:user\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_heredoc_special_symbols() {
    let bk = Bk::new().await;
    let dockerfile = "FROM scratch\n\nCOPY <<EOF quotefile\n\"quotes in file\"\nEOF\n\n\
        COPY <<EOF slashfile1\n\\\nEOF\nCOPY <<EOF slashfile2\n\\\\\nEOF\n\
        COPY <<EOF slashfile3\n\\$\nEOF\n\n\
        COPY <<\"EOF\" rawslashfile1\n\\\nEOF\nCOPY <<\"EOF\" rawslashfile2\n\\\\\nEOF\n\
        COPY <<\"EOF\" rawslashfile3\n\\$\nEOF\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    for (path, content) in [
        ("quotefile", "\"quotes in file\"\n"),
        ("slashfile1", "\n"),
        ("slashfile2", "\\\n"),
        ("slashfile3", "$\n"),
        ("rawslashfile1", "\\\n"),
        ("rawslashfile2", "\\\\\n"),
        ("rawslashfile3", "\\$\n"),
    ] {
        assert_eq!(read(&root, path), content, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_run_basic_heredoc() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox AS build\n\nRUN <<EOF\necho \"i am\" >> /dest\nwhoami >> /dest\nEOF\n\n\
        FROM scratch\nCOPY --from=build /dest /dest\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    assert_eq!(read(&root, "dest"), "i am\nroot\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_run_fake_heredoc() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox AS build\n\nSHELL [\"/bin/awk\"]\nRUN <<EOF\nBEGIN {\n\
        \tprint \"foo\" > \"/dest\"\n}\nEOF\n\nFROM scratch\nCOPY --from=build /dest /dest\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    assert_eq!(read(&root, "dest"), "foo\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_run_complex_heredoc() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox AS build\n\nWORKDIR /dest\n\n\
        RUN cat <<EOF1 | tr '[:upper:]' '[:lower:]' > ./out1; \\\n\
        \tcat <<EOF2 | tr '[:lower:]' '[:upper:]' > ./out2\nhello WORLD\nEOF1\nHELLO world\nEOF2\n\n\
        RUN <<EOF 3<<IN1 4<<IN2 awk -f -\nBEGIN {\n\
        \twhile ((getline line < \"/proc/self/fd/3\") > 0)\n\t\tprint tolower(line) > \"./fd3\"\n\
        \twhile ((getline line < \"/proc/self/fd/4\") > 0)\n\t\tprint toupper(line) > \"./fd4\"\n}\n\
        EOF\nhello WORLD\nIN1\nHELLO world\nIN2\n\nFROM scratch\nCOPY --from=build /dest /\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    assert_eq!(read(&root, "out1"), "hello world\n");
    assert_eq!(read(&root, "out2"), "HELLO WORLD\n");
    assert_eq!(read(&root, "fd3"), "hello world\n");
    assert_eq!(read(&root, "fd4"), "HELLO WORLD\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_heredoc_indent() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox AS build\n\n\
        COPY <<EOF /dest/foo-copy\n\tfoo\nEOF\n\n\
        COPY <<-EOF /dest/bar-copy\n\tbar\nEOF\n\n\
        RUN <<EOF\necho \"\n\tfoo\" > /dest/foo-run\nEOF\n\n\
        RUN <<-EOF\necho \"\n\tbar\" > /dest/bar-run\nEOF\n\n\
        RUN <<EOF\n#!/bin/sh\necho \"\n\tfoo\" > /dest/foo2-run\nEOF\n\n\
        RUN <<-EOF\n#!/bin/sh\necho \"\n\tbar\" > /dest/bar2-run\nEOF\n\n\
        RUN <<EOF sh > /dest/foo3-run\necho \"\n\tfoo\"\nEOF\n\n\
        RUN <<-EOF sh > /dest/bar3-run\necho \"\n\tbar\"\nEOF\n\n\
        FROM scratch\nCOPY --from=build /dest /\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    for (path, content) in [
        ("foo-copy", "\tfoo\n"),
        ("bar-copy", "bar\n"),
        ("foo-run", "\n\tfoo\n"),
        ("bar-run", "\nbar\n"),
        ("foo2-run", "\n\tfoo\n"),
        ("bar2-run", "\nbar\n"),
        ("foo3-run", "\n\tfoo\n"),
        ("bar3-run", "\nbar\n"),
    ] {
        assert_eq!(read(&root, path), content, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_heredoc_var_substitution() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox as build\n\nARG name=world\n\n\
        COPY <<EOF /dest/c1\nHello ${name}!\nEOF\nCOPY <<'EOF' /dest/c2\nHello ${name}!\nEOF\n\
        COPY <<\"EOF\" /dest/c3\nHello ${name}!\nEOF\n\n\
        COPY <<EOF /dest/q1\nHello '${name}'!\nEOF\nCOPY <<EOF /dest/q2\nHello \"${name}\"!\nEOF\n\
        COPY <<'EOF' /dest/qsingle1\nHello '${name}'!\nEOF\nCOPY <<'EOF' /dest/qsingle2\nHello \"${name}\"!\nEOF\n\
        COPY <<\"EOF\" /dest/qdouble1\nHello '${name}'!\nEOF\nCOPY <<\"EOF\" /dest/qdouble2\nHello \"${name}\"!\nEOF\n\n\
        RUN <<EOF\ngreeting=\"Hello\"\necho \"${greeting} ${name}!\" > /dest/r1\nEOF\n\
        RUN <<EOF\nname=\"new world\"\necho \"Hello ${name}!\" > /dest/r2\nEOF\n\n\
        FROM scratch\nCOPY --from=build /dest /\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    for (path, content) in [
        ("c1", "Hello world!\n"),
        ("c2", "Hello ${name}!\n"),
        ("c3", "Hello ${name}!\n"),
        ("q1", "Hello 'world'!\n"),
        ("q2", "Hello \"world\"!\n"),
        ("qsingle1", "Hello '${name}'!\n"),
        ("qsingle2", "Hello \"${name}\"!\n"),
        ("qdouble1", "Hello '${name}'!\n"),
        ("qdouble2", "Hello \"${name}\"!\n"),
        ("r1", "Hello world!\n"),
        ("r2", "Hello new world!\n"),
    ] {
        assert_eq!(read(&root, path), content, "{path}");
    }
}

// dockerfile_image_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_dockerfile_scratch_config() {
    let bk = Bk::new().await;
    let (_w, _root, config) = bk
        .ok(bk.build(empty().path(), "FROM scratch\nENV foo=bar\n"))
        .await;
    assert_ne!(config["os"], "");
    assert_ne!(config["architecture"], "");
    assert_ne!(config["config"]["WorkingDir"], "");
    assert_eq!(config["rootfs"]["type"], "layers");
    assert!(
        config["rootfs"]["diff_ids"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    let history = config["history"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert!(
        history[0]["created_by"]
            .as_str()
            .unwrap()
            .contains("ENV foo=bar")
    );
    assert_eq!(history[0]["empty_layer"], true);
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"foo=bar"));
    assert!(env.iter().any(|e| e.starts_with("PATH=")));
}

// dockerfile_mount_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_mount_context() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("testfile", "contents0")
        .build()
        .unwrap();
    bk.ok(bk.build(
        context.path(),
        "FROM busybox\nRUN --mount=target=/context [ \"$(cat /context/testfile)\" == \"contents0\" ]\n",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_mount_invalid() {
    let bk = Bk::new().await;
    for (dockerfile, expected, hint) in [
        (
            "FROM scratch\nRUN --mont=target=/mytmp,type=tmpfs /bin/true\n",
            "unknown flag: --mont",
            "did you mean mount?",
        ),
        (
            "\tFROM scratch\n\tRUN --mount=typ=tmpfs /bin/true\n",
            "unexpected key 'typ'",
            "did you mean type?",
        ),
        (
            "\tFROM scratch\n\tRUN --mount=type=tmp /bin/true\n",
            "unsupported mount type \"tmp\"",
            "did you mean tmpfs?",
        ),
    ] {
        let error = bk.fails(bk.build(empty().path(), dockerfile)).await;
        assert!(error.contains(expected), "{dockerfile}: {error}");
        assert!(error.contains(hint), "{dockerfile}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_mount_env_var() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox\nENV SOME_PATH=/mycache\n\
        RUN --mount=type=cache,target=/mycache touch /mycache/foo\n\
        RUN --mount=type=cache,target=$SOME_PATH [ -f $SOME_PATH/foo ]\n";
    bk.ok(bk.build(empty().path(), dockerfile)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_mount_tmpfs() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox\nRUN --mount=target=/mytmp,type=tmpfs touch /mytmp/foo\nRUN [ ! -f /mytmp/foo ]\n";
    bk.ok(bk.build(empty().path(), dockerfile)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_mount_duplicate() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox AS base\nRUN --mount=source=.,target=/tmp/test \\\n\
        \x20 --mount=source=b.txt,target=/tmp/b.txt \\\n\
        \x20 cat /tmp/test/a.txt /tmp/b.txt > /combined.txt\nFROM scratch\n\
        COPY --from=base /combined.txt /\n";
    let context = ContextBuilder::new()
        .file("a.txt", "foo\n")
        .file("b.txt", "bar\n")
        .build()
        .unwrap();
    let (_w, root) = bk.rootfs(context.path(), dockerfile).await;
    assert_eq!(read(&root, "combined.txt"), "foo\nbar\n");
    fs::write(context.path().join("a.txt"), "updated\n").unwrap();
    let (_w, root) = bk.rootfs(context.path(), dockerfile).await;
    assert_eq!(read(&root, "combined.txt"), "updated\nbar\n");
}

// dockerfile_multistage_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_multi_stage_implicit_from() {
    let bk = Bk::new().await;
    let (_w, root) = bk
        .rootfs(
            empty().path(),
            "FROM scratch\nCOPY --from=busybox /etc/passwd test\n",
        )
        .await;
    assert!(read(&root, "test").contains("root"));
    let (_w, root) = bk
        .rootfs(
            empty().path(),
            "FROM busybox AS golang\nRUN mkdir -p /usr/bin && echo -n foo > /usr/bin/go\n\n\
             FROM scratch\nCOPY --from=golang /usr/bin/go go\n",
        )
        .await;
    assert!(read(&root, "go").contains("foo"));
}

#[tokio::test(flavor = "multi_thread")]
async fn test_multi_stage_case_insensitive() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("foo", "foo-contents")
        .build()
        .unwrap();
    let dockerfile = "FROM scratch AS STAge0\nCOPY foo bar\nFROM scratch AS staGE1\n\
        COPY --from=staGE0 bar baz\nFROM scratch\nCOPY --from=stage1 baz bax\n";
    let (_w, root, _) = bk
        .ok(bk.build(context.path(), dockerfile).target("Stage1"))
        .await;
    assert!(read(&root, "baz").contains("foo-contents"));
}

#[tokio::test(flavor = "multi_thread")]
async fn test_out_of_order_stage() {
    let bk = Bk::new().await;
    for source in ["/", "/d2"] {
        let dockerfile = format!(
            "FROM busybox AS target\nCOPY --from=build {source} /out\n\n\
             FROM alpine AS build\nCOPY /Dockerfile /d2\n\nFROM target\n"
        );
        let error = bk.fails(bk.build(empty().path(), &dockerfile)).await;
        assert!(error.contains("cannot copy from stage"), "{error}");
        assert!(
            error.contains("needs to be defined before current stage"),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_empty_stages() {
    let bk = Bk::new().await;
    let error = bk.fails(bk.build(empty().path(), "ARG foo=bar")).await;
    assert!(
        error.contains("dockerfile contains no stages to build"),
        "{error}"
    );
}

// dockerfile_onbuild_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_on_build_inherited_stage_run() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox AS base\nONBUILD RUN mkdir -p /out && echo -n 11 >> /out/foo\n\n\
        FROM base AS mid\nRUN cp /out/foo /out/bar\n\nFROM scratch\nCOPY --from=mid /out/bar /\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    assert_eq!(read(&root, "bar"), "11");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_on_build_inherited_stage_with_from() {
    let bk = Bk::new().await;
    let dockerfile = "FROM alpine AS src\nRUN mkdir -p /in && echo -n 12 > /in/file\n\n\
        FROM busybox AS base\nONBUILD COPY --from=src /in/file /out/foo\n\n\
        FROM base AS mid\nRUN cp /out/foo /out/bar\n\nFROM scratch\nCOPY --from=mid /out/bar /\n";
    let (_w, root) = bk.rootfs(empty().path(), dockerfile).await;
    assert_eq!(read(&root, "bar"), "12");
}

// dockerfile_workdir_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_workdir_user() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox\nRUN adduser -D user\nUSER user\nWORKDIR /mydir\n\
        RUN [ \"$(stat -c \"%U %G\" /mydir)\" == \"user user\" ]\n";
    bk.ok(bk.build(empty().path(), dockerfile)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_workdir_creates_dir() {
    let bk = Bk::new().await;
    let (_w, root) = bk
        .rootfs(empty().path(), "FROM scratch\nWORKDIR /foo\nWORKDIR /\n")
        .await;
    assert!(root.join("foo").is_dir());
}

#[tokio::test(flavor = "multi_thread")]
async fn test_workdir_exists() {
    let bk = Bk::new().await;
    let dockerfile = "FROM busybox\nRUN adduser -D user\nRUN mkdir /mydir && chown user:user /mydir\n\
        WORKDIR /mydir\nRUN [ \"$(stat -c \"%U %G\" /mydir)\" == \"user user\" ]\n";
    bk.ok(bk.build(empty().path(), dockerfile)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_workdir_copy_ignore_relative() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("Dockerfile", "x")
        .build()
        .unwrap();
    let dockerfile = "FROM scratch AS base\nWORKDIR /foo\nCOPY Dockerfile /\n\
        FROM scratch\n# relative path still loaded as absolute\nCOPY --from=base Dockerfile .\n";
    bk.ok(bk.build(context.path(), dockerfile)).await;
}

// dockerfile_cmd_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_cmd_shell() {
    // The base image BuildKit builds first is a stage here.
    let bk = Bk::new().await;
    let dockerfile = "FROM scratch AS base\nCMD [\"test\"]\nFROM base\nSHELL [\"ls\"]\n\
        ENTRYPOINT my entrypoint\n";
    let (_w, _root, config) = bk.ok(bk.build(empty().path(), dockerfile)).await;
    assert!(config["config"]["Cmd"].is_null(), "{config}");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["ls", "my entrypoint"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn test_default_shell_and_path() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("Dockerfile", "x")
        .build()
        .unwrap();
    let (_w, _root, config) = bk
        .ok(bk.build(
            context.path(),
            "FROM scratch\nENTRYPOINT foo bar\nCOPY Dockerfile .\n",
        ))
        .await;
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c", "foo bar"])
    );
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    );
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn test_ignore_entrypoint() {
    let bk = Bk::new().await;
    bk.ok(bk.build(
        empty().path(),
        "FROM busybox\nENTRYPOINT [\"/nosuchcmd\"]\nRUN [\"ls\"]\n",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_invalid_json_commands() {
    let bk = Bk::new().await;
    let error = bk
        .fails(bk.build(
            empty().path(),
            "FROM alpine\nRUN [\"echo\", \"hello\"]this is invalid\n",
        ))
        .await;
    assert!(error.contains("this is invalid"), "{error}");
    let (_w, _root, config) = bk
        .ok(bk.build(empty().path(), "FROM alpine\nENTRYPOINT []random string\n"))
        .await;
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c", "[]random string"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn test_dockerfile_invalid_instruction() {
    let bk = Bk::new().await;
    let error = bk
        .fails(bk.build(
            empty().path(),
            "FROM scratch\nFNTRYPOINT [\"/bin/sh\", \"-c\", \"echo invalidinstruction\"]\n",
        ))
        .await;
    assert!(error.contains("unknown instruction: FNTRYPOINT"), "{error}");
    assert!(error.contains("did you mean ENTRYPOINT?"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_dockerfile_invalid_command() {
    let bk = Bk::new().await;
    let error = bk
        .fails(bk.build(empty().path(), "FROM busybox\nRUN invalidcmd\n"))
        .await;
    assert!(error.contains("/bin/sh -c invalidcmd"), "{error}");
    assert!(error.contains("did not complete successfully"), "{error}");
}

// dockerfile_platform_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_platform_args_implicit() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("foo", "d0")
        .file("foo2", "d1")
        .build()
        .unwrap();
    let dockerfile =
        "FROM scratch AS build-linux\nCOPY foo bar\nFROM build-${TARGETOS}\nCOPY foo2 bar2\n";
    let (_w, root) = bk.rootfs(context.path(), dockerfile).await;
    assert_eq!(read(&root, "bar"), "d0");
    assert_eq!(read(&root, "bar2"), "d1");
}

// dockerfile_parents_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_copy_parents() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("foo1/foo2/bar", "testing")
        .file("foo1/foo2/baz", "testing2")
        .build()
        .unwrap();
    let dockerfile = "FROM scratch\nCOPY --parents foo1/foo2/bar /\nWORKDIR /test\n\
        COPY --parents foo1/foo2/ba* .\n";
    let (_w, root) = bk.rootfs(context.path(), dockerfile).await;
    assert_eq!(read(&root, "foo1/foo2/bar"), "testing");
    assert_eq!(read(&root, "test/foo1/foo2/bar"), "testing");
    assert_eq!(read(&root, "test/foo1/foo2/baz"), "testing2");
}

// exclude_patterns_test.go

#[tokio::test(flavor = "multi_thread")]
async fn test_excluded_files_on_copy() {
    let bk = Bk::new().await;
    let context = ContextBuilder::new()
        .file("dir1/file-101.png", "2")
        .file("dir1/file-102.txt", "3")
        .file("dir1/file-103.jpeg", "4")
        .file("dir2/file-201.pdf", "6")
        .file("dir2/file-202.jpeg", "7")
        .file("dir2/file-203.png", "8")
        .file("dir3/file-301.mp3", "9")
        .file("dir3/file-302.mpeg", "10")
        .file("dir4/file-401.txt", "11")
        .symlink("dir4/file-402.txt", "file-401.txt")
        .symlink("dir4/file-403.txt", "file-404.txt")
        .build()
        .unwrap();
    let dockerfile = "# ignore all the image files\nFROM scratch as builder1\n\
        COPY --exclude=*/*.png --exclude=*/*.jpeg . /1\n\n\
        FROM scratch as builder2\nCOPY --exclude=*/*.pdf --exclude=*/*.txt . /2\n\n\
        FROM scratch as builder3\nADD --exclude=*.mp3 dir3/ /3/\n\n\
        FROM scratch as builder4\n\
        COPY --exclude=*.mp3 --exclude=*.jpeg --exclude=*.png --exclude=*.pdf --exclude=*.txt dir* /4/\n\n\
        FROM scratch as builder5\nADD --exclude=*.mp* --exclude=*.jpeg --exclude=*.png --exclude=*.pdf dir* /5\n\n\
        FROM scratch as builder6\nADD --exclude=* dir* /6\n\n\
        FROM scratch\nCOPY --from=builder1 / /builder1\nCOPY --from=builder2 / /builder2\n\
        COPY --from=builder3 / /builder3\nCOPY --from=builder4 / /builder4\n\
        COPY --from=builder5 / /builder5\nCOPY --from=builder6 / /builder6\n";
    let (_w, root) = bk.rootfs(context.path(), dockerfile).await;
    let link = |path: &str| {
        fs::read_link(root.join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .display()
            .to_string()
    };
    let absent = |path: &str| {
        assert!(
            fs::symlink_metadata(root.join(path)).is_err(),
            "{path} should not be there"
        );
    };
    for (path, content) in [
        ("builder1/1/dir1/file-102.txt", "3"),
        ("builder1/1/dir2/file-201.pdf", "6"),
        ("builder1/1/dir3/file-301.mp3", "9"),
        ("builder1/1/dir3/file-302.mpeg", "10"),
        ("builder1/1/dir4/file-401.txt", "11"),
        ("builder2/2/dir1/file-101.png", "2"),
        ("builder2/2/dir1/file-103.jpeg", "4"),
        ("builder2/2/dir2/file-202.jpeg", "7"),
        ("builder2/2/dir2/file-203.png", "8"),
        ("builder2/2/dir3/file-301.mp3", "9"),
        ("builder2/2/dir3/file-302.mpeg", "10"),
        ("builder3/3/file-302.mpeg", "10"),
        ("builder4/4/file-302.mpeg", "10"),
        ("builder5/5/file-102.txt", "3"),
        ("builder5/5/file-401.txt", "11"),
    ] {
        assert_eq!(read(&root, path), content, "{path}");
    }
    assert_eq!(link("builder1/1/dir4/file-402.txt"), "file-401.txt");
    assert_eq!(link("builder1/1/dir4/file-403.txt"), "file-404.txt");
    assert_eq!(link("builder5/5/file-402.txt"), "file-401.txt");
    assert_eq!(link("builder5/5/file-403.txt"), "file-404.txt");
    for path in [
        "builder1/1/dir1/file-101.png",
        "builder1/1/dir1/file-103.jpeg",
        "builder1/1/dir2/file-202.jpeg",
        "builder1/1/dir2/file-203.png",
        "builder2/2/dir1/file-102.txt",
        "builder2/2/dir2/file-201.pdf",
        "builder2/2/dir4/file-401.txt",
        "builder2/2/dir4/file-402.txt",
        "builder2/2/dir4/file-403.txt",
        "builder3/3/file-301.mp3",
        "builder4/4/file-101.png",
        "builder4/4/file-102.txt",
        "builder4/4/file-103.jpeg",
        "builder4/4/file-201.pdf",
        "builder4/4/file-202.jpeg",
        "builder4/4/file-203.png",
        "builder4/4/file-301.mp3",
        "builder4/4/dir4/file-401.txt",
        "builder4/4/dir4/file-402.txt",
        "builder4/4/dir4/file-403.txt",
        "builder5/5/file-101.png",
        "builder5/5/file-103.jpeg",
        "builder5/5/file-201.pdf",
        "builder5/5/file-202.jpeg",
        "builder5/5/file-203.png",
        "builder5/5/file-301.mp3",
        "builder5/5/file-302.mpeg",
    ] {
        absent(path);
    }
    let six = root.join("builder6/6");
    assert!(six.is_dir());
    assert_eq!(fs::read_dir(&six).unwrap().count(), 0);
}
