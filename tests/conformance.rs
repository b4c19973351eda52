//! Where strata follows BuildKit's Dockerfile semantics, one behaviour per test, each taken
//! from a difference that a run of BuildKit's own assertions (and Kaniko's integration
//! Dockerfiles) found.

mod common;

use std::fs;
use std::process::Command;

use common::{Fixture, layout, run, skopeo_config, umoci_rootfs};
use strata_testkit::ContextBuilder;

/// Builds `dockerfile` and returns (the unpacked root filesystem's work dir, its path, config).
async fn build(
    fx: &Fixture,
    context: &std::path::Path,
    dockerfile: &str,
) -> (tempfile::TempDir, std::path::PathBuf, serde_json::Value) {
    let (image, _) = run(fx.build(context, dockerfile)).await;
    let image = image.unwrap_or_else(|e| panic!("{dockerfile}: {e}"));
    let (work, oci) = layout(&image);
    let rootfs = umoci_rootfs(work.path(), &oci);
    let config = skopeo_config(&oci);
    (work, rootfs, config)
}

/// Builds `dockerfile` and pushes it to the fixture's registry as `name`; its reference.
async fn pushed(fx: &Fixture, context: &std::path::Path, dockerfile: &str, name: &str) -> String {
    let (image, _) = run(fx.build(context, dockerfile)).await;
    let reference = format!("{}/{name}", fx.registry.host());
    image.unwrap().push(&reference).await.unwrap();
    reference
}

#[tokio::test(flavor = "multi_thread")]
async fn scratch_images_work_in_slash_and_root_needs_no_passwd_file() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("f", "f\n").build().unwrap();
    // FROM scratch gets `/` as its working directory; `USER root` is 0:0 where no
    // /etc/passwd says so, so WORKDIR can create its directory.
    let (_work, rootfs, config) = build(
        &fx,
        context.path(),
        // (umoci, which unpacks the image here, cannot look `root` up either: USER 0 last.)
        "FROM scratch\nCOPY f /f\nUSER root\nWORKDIR /made\nUSER 0\n",
    )
    .await;
    assert_eq!(config["config"]["WorkingDir"], "/made");
    assert!(rootfs.join("made").is_dir());
    let (_work, _rootfs, config) = build(&fx, context.path(), "FROM scratch\nCOPY f /f\n").await;
    assert_eq!(config["config"]["WorkingDir"], "/");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_numeric_user_without_an_entry_keeps_its_primary_group() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    // BuildKit's fix for CVE-2023-25173: the primary group is a supplementary group too.
    let (_work, rootfs, _) = build(
        &fx,
        context.path(),
        "FROM {base}\nUSER 4242:77\nRUN grep '^Groups:' /proc/self/status > /tmp/groups\n",
    )
    .await;
    let groups = fs::read_to_string(rootfs.join("tmp/groups")).unwrap();
    assert_eq!(
        groups.split_whitespace().collect::<Vec<_>>(),
        ["Groups:", "77"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wildcards_count_as_the_sources_written() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("a.txt", "a\n")
        .file("b.txt", "b\n")
        .build()
        .unwrap();
    // A wildcard that matches nothing copies nothing; one that matches several files copies
    // them into the destination as a directory, with or without its trailing slash.
    let (_work, rootfs, _) = build(
        &fx,
        context.path(),
        "FROM {base}\nCOPY nomatch* /none/\nCOPY *.txt /dst\n",
    )
    .await;
    assert!(
        !rootfs.join("none").exists(),
        "nothing copied, nothing made"
    );
    assert_eq!(fs::read_to_string(rootfs.join("dst/a.txt")).unwrap(), "a\n");
    assert_eq!(fs::read_to_string(rootfs.join("dst/b.txt")).unwrap(), "b\n");
    // Two sources as written still need a directory destination.
    let (result, _) = run(fx.build(context.path(), "FROM {base}\nCOPY a.txt b.txt /dst\n")).await;
    let error = result.expect_err("two sources to a file");
    assert!(error.to_string().contains("must be a directory"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_mounts_clean_their_id_and_honour_owner_and_mode() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let dockerfile = "FROM {base}\n\
        RUN --mount=type=cache,target=/tmp/a/ echo kept > /tmp/a/f\n\
        RUN --mount=type=cache,target=/tmp/a cp /tmp/a/f /seen\n\
        RUN --mount=type=cache,target=/c,uid=1000,gid=1000,mode=0700 stat -c '%u %g %a' /c > /owned\n\
        RUN --mount=type=cache,target=/c stat -c '%u %g %a' /c > /plain\n";
    let (_work, rootfs, _) = build(&fx, context.path(), dockerfile).await;
    assert_eq!(
        fs::read_to_string(rootfs.join("seen")).unwrap(),
        "kept\n",
        "`/tmp/a/` and `/tmp/a` are one cache"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("owned")).unwrap(),
        "1000 1000 700\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("plain")).unwrap(),
        "0 0 755\n",
        "another owner and mode is another cache"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_from_a_stage_keeps_owners_and_chmod_reaches_made_parents() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("f", "f\n").build().unwrap();
    let dockerfile = |owner: &str| {
        format!(
            "FROM {{base}} AS src\n\
             RUN mkdir /d && echo x > /d/f && chown -R {owner} /d\n\
             FROM {{base}}\n\
             COPY --from=src /d /copied\n\
             COPY --from=src --chown=7:8 /d/f /chowned\n\
             COPY --chmod=0700 f /made/sub/f\n"
        )
    };
    let (_work, rootfs, _) = build(&fx, context.path(), &dockerfile("1000:1000")).await;
    let owner = |path: &str| {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::symlink_metadata(rootfs.join(path)).unwrap();
        (meta.uid(), meta.gid(), meta.mode() & 0o7777)
    };
    assert_eq!(
        owner("copied/f"),
        (1000, 1000, 0o644),
        "the source's owner is kept"
    );
    assert_eq!(owner("chowned"), (7, 8, 0o644), "--chown still wins");
    assert_eq!(
        owner("made"),
        (0, 0, 0o700),
        "--chmod reaches the parents COPY makes"
    );
    assert_eq!(owner("made/sub"), (0, 0, 0o700));
    assert_eq!(owner("made/sub/f"), (0, 0, 0o700));
    // The same files with another owner in the source stage: the copy is not a cache hit
    // with the old owner.
    let (_work, rootfs, _) = build(&fx, context.path(), &dockerfile("2000:2000")).await;
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(rootfs.join("copied/f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (2000, 2000));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_symlink_source_is_copied_under_its_own_name_and_a_socket_as_an_empty_file() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("target.txt", "the target\n")
        .build()
        .unwrap();
    std::os::unix::fs::symlink("target.txt", context.path().join("link")).unwrap();
    let _listener =
        std::os::unix::net::UnixListener::bind(context.path().join("control.sock")).unwrap();
    let (_work, rootfs, _) = build(
        &fx,
        context.path(),
        "FROM scratch\nCOPY link /\nCOPY control.sock /run/\n",
    )
    .await;
    let link = fs::symlink_metadata(rootfs.join("link")).unwrap();
    assert!(
        link.is_file(),
        "the link's target content, under the link's name"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("link")).unwrap(),
        "the target\n"
    );
    assert!(!rootfs.join("target.txt").exists());
    let socket = fs::symlink_metadata(rootfs.join("run/control.sock")).unwrap();
    assert!(
        socket.is_file() && socket.len() == 0,
        "an empty regular file"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_heredocs_with_a_shebang_or_as_input_go_where_buildkit_sends_them() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    // A heredoc that starts with #! runs by its interpreter; heredocs used as a command's
    // input (also on another descriptor) reach the shell whole.
    let dockerfile = "FROM {base}\n\
        RUN <<EOF\n#!/bin/awk -f\nBEGIN { print \"from awk\" > \"/awk-out\" }\nEOF\n\
        RUN cat <<EOF > /stdin-out\nline one\nline two\nEOF\n\
        RUN <<A 3<<B cat /dev/stdin /proc/self/fd/3 > /both\nfirst\nA\nsecond\nB\n";
    let (_work, rootfs, _) = build(&fx, context.path(), dockerfile).await;
    assert_eq!(
        fs::read_to_string(rootfs.join("awk-out")).unwrap(),
        "from awk\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("stdin-out")).unwrap(),
        "line one\nline two\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("both")).unwrap(),
        "first\nsecond\n"
    );
    assert!(
        !rootfs.join("dev/pipes").exists(),
        "the script is in no layer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_onbuild_run_heredoc_keeps_its_body() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let parent = "FROM {base}\nONBUILD RUN <<EOF\necho from the trigger > /triggered\nEOF\n";
    let reference = pushed(&fx, context.path(), parent, "team/onbuild-heredoc:1").await;
    let (_work, rootfs, _) = build(&fx, context.path(), &format!("FROM {reference}\n")).await;
    assert_eq!(
        fs::read_to_string(rootfs.join("triggered")).unwrap(),
        "from the trigger\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_parents_keeps_the_path_after_a_pivot() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("a/b/c.txt", "c\n")
        .file("a/b/d/e.txt", "e\n")
        .build()
        .unwrap();
    let dockerfile = "FROM scratch\n\
        COPY --parents a/./b/c.txt /dst/\n\
        COPY --parents a/./b/*/e.txt /wild/\n\
        COPY --parents a/b/./d /dir/\n";
    let (_work, rootfs, _) = build(&fx, context.path(), dockerfile).await;
    assert_eq!(
        fs::read_to_string(rootfs.join("dst/b/c.txt")).unwrap(),
        "c\n"
    );
    assert!(!rootfs.join("dst/a").exists());
    assert_eq!(
        fs::read_to_string(rootfs.join("wild/b/d/e.txt")).unwrap(),
        "e\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("dir/d/e.txt")).unwrap(),
        "e\n"
    );
}

/// Squashing the target stage's layers (`--single-snapshot`) keeps the base's directories as
/// they were: two COPYs into /tmp leave its 1777 mode alone (they made it 0755).
#[tokio::test(flavor = "multi_thread")]
async fn a_single_snapshot_keeps_the_mode_of_base_directories() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("a", "a\n")
        .file("b", "b\n")
        .build()
        .unwrap();
    let dockerfile =
        "FROM {base}\nCOPY a /tmp/a\nCOPY b /tmp/deeper/b\nRUN mkdir -p /home/app/new\n";
    let build = fx.build(context.path(), dockerfile).single_snapshot(true);
    let (image, _) = run(build).await;
    let image = image.unwrap();
    assert_eq!(
        image.layers().len(),
        2,
        "the base's layer and one squashed layer"
    );
    let (work, oci) = layout(&image);
    let rootfs = umoci_rootfs(work.path(), &oci);
    use std::os::unix::fs::MetadataExt;
    let meta = |path: &str| {
        let meta = fs::symlink_metadata(rootfs.join(path)).unwrap();
        (meta.mode() & 0o7777, meta.uid(), meta.gid())
    };
    assert_eq!(meta("tmp"), (0o1777, 0, 0));
    assert_eq!(
        meta("home/app"),
        (0o755, 1000, 1000),
        "the base's owner stays"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("tmp/deeper/b")).unwrap(),
        "b\n"
    );
}

/// A SOURCE_DATE_EPOCH build arg dates the image (BuildKit's rule), also without
/// `reproducible`, and wins over it; a value that is not a time is an error.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_date_epoch_build_arg_dates_the_image() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("f", "f\n").build().unwrap();
    let dockerfile = "FROM scratch\nCOPY f /f\nENTRYPOINT [\"/f\"]\n";
    for reproducible in [None, Some(0)] {
        let mut build = fx
            .build(context.path(), dockerfile)
            .build_arg("SOURCE_DATE_EPOCH", "1700000000");
        if let Some(epoch) = reproducible {
            build = build.reproducible(epoch);
        }
        let (image, _) = run(build).await;
        let image = image.unwrap();
        let (_work, oci) = layout(&image);
        let config = skopeo_config(&oci);
        assert_eq!(
            config["created"], "2023-11-14T22:13:20Z",
            "{reproducible:?}"
        );
        for entry in config["history"].as_array().unwrap() {
            assert_eq!(
                entry["created"], "2023-11-14T22:13:20Z",
                "{reproducible:?}: {entry}"
            );
        }
    }
    let build = fx
        .build(context.path(), dockerfile)
        .build_arg("SOURCE_DATE_EPOCH", "not-a-timestamp");
    let (result, _) = run(build).await;
    let error = result.expect_err("an invalid epoch");
    assert!(
        error
            .to_string()
            .contains("SOURCE_DATE_EPOCH=not-a-timestamp"),
        "{error}"
    );
}

/// A stage that only a base image's ONBUILD trigger names is built when the trigger runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_stage_named_only_by_an_onbuild_trigger_is_built() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let parent = "FROM {base}\nONBUILD COPY --from=src /made /from-src\n";
    let reference = pushed(&fx, context.path(), parent, "team/onbuild-from:1").await;
    let child = format!(
        "FROM {{base}} AS src\nRUN echo made by src > /made\nFROM {reference}\nRUN cat /from-src\n"
    );
    let (_work, rootfs, _) = build(&fx, context.path(), &child).await;
    assert_eq!(
        fs::read_to_string(rootfs.join("from-src")).unwrap(),
        "made by src\n"
    );
    // Once: the trigger's COPY asks for the stage for its key and again to copy from it.
    let fresh = tempfile::tempdir().unwrap();
    let (image, events) = run(fx.build(context.path(), &child).state_dir(fresh.path())).await;
    image.unwrap();
    let started = events
        .iter()
        .filter(|e| matches!(e, strata::Event::StageStarted { stage, .. } if stage == "src"))
        .count();
    assert_eq!(started, 1, "{events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_heredocs_keep_their_quotes_and_several_fill_one_file() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    // Only variables expand in a COPY heredoc (quotes stay, `\$` is a dollar); several
    // heredocs to a file destination are written to it in order.
    let (_work, rootfs, _) = build(
        &fx,
        context.path(),
        "FROM scratch\nENV name=x\nCOPY <<EOF /f\n\"${name}\" '${name}' \\$name\nEOF\n\
         COPY <<A <<B /out\naaa\nA\nbbb\nB\n",
    )
    .await;
    assert_eq!(
        fs::read_to_string(rootfs.join("f")).unwrap(),
        "\"x\" 'x' $name\n"
    );
    assert_eq!(fs::read_to_string(rootfs.join("out")).unwrap(), "bbb\n");
}

/// The well-known empty layer (gzip of an empty tar), which BuildKit records for a step that
/// changes nothing.
const EMPTY_LAYER: &str = "sha256:4f4fb700ef54461cfa02571ae0db9a0dc1e0cdb5577484a6d75e68dc38e8acc1";
const EMPTY_DIFF_ID: &str =
    "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

#[tokio::test(flavor = "multi_thread")]
async fn history_and_layers_read_as_buildkit_writes_them() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("foo", "contents0")
        .build()
        .unwrap();
    // BuildKit's testExportedHistory, then the other instructions' forms and steps that
    // change nothing.
    let dockerfile = "FROM {base} AS base\nENV foo=bar\nCOPY foo /foo2\n\
        FROM {base}\nLABEL lbl=val\nCOPY --from=base foo2 foo3\nWORKDIR /\nRUN echo bar > foo4\n\
        RUN [\"ls\"]\nEXPOSE 2375 5000 1234/udp\n\
        RUN true\nWORKDIR /tmp\nCOPY --link --chmod=600 foo /tmp/\n\
        ENV a=1 b=\"two words\"\nUSER 1:2\nVOLUME /data /cache\nSHELL [\"/bin/sh\", \"-ec\"]\n\
        CMD echo \"hi\"\nENTRYPOINT [\"/bin/env\"]\nSTOPSIGNAL SIGINT\n\
        HEALTHCHECK --interval=5m --timeout=1500ms CMD true\nONBUILD RUN true\nMAINTAINER me\n";
    let (_work, rootfs, config) = build(&fx, context.path(), dockerfile).await;
    assert_eq!(fs::read_to_string(rootfs.join("foo4")).unwrap(), "bar\n");
    let history = config["history"].as_array().unwrap();
    let lines: Vec<(&str, bool)> = history
        .iter()
        .map(|h| {
            (
                h["created_by"].as_str().unwrap(),
                h["empty_layer"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        lines[1..],
        [
            ("LABEL lbl=val", true),
            ("COPY foo2 foo3", false),
            ("WORKDIR /", true),
            ("RUN /bin/sh -c echo bar > foo4 # buildkit", false),
            ("RUN ls # buildkit", false),
            ("EXPOSE [1234/udp 2375/tcp 5000/tcp]", true),
            ("RUN /bin/sh -c true # buildkit", false),
            ("WORKDIR /tmp", false),
            ("COPY --chmod=600 foo /tmp/", false),
            ("ENV a=1 b=two words", true),
            ("USER 1:2", true),
            ("VOLUME [/data /cache]", true),
            ("SHELL [/bin/sh -ec]", true),
            ("CMD [\"/bin/sh\" \"-ec\" \"echo \\\"hi\\\"\"]", true),
            ("ENTRYPOINT [\"/bin/env\"]", true),
            ("STOPSIGNAL SIGINT", true),
            (
                "HEALTHCHECK {Test:[CMD-SHELL true] Interval:5m0s Timeout:1.5s StartPeriod:0s \
                 StartInterval:0s Retries:0}",
                true
            ),
            // ONBUILD goes to the config only, as in BuildKit.
            ("MAINTAINER me", true),
        ],
    );
    // One layer per history entry that has one; the steps that changed nothing (`RUN ls`,
    // `RUN true`, `WORKDIR /tmp` where /tmp is) have the empty layer.
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(
        diff_ids.len(),
        1 + lines[1..].iter().filter(|(_, e)| !e).count()
    );
    assert_eq!(diff_ids.len(), 7);
    assert_eq!(
        diff_ids.iter().filter(|d| **d == EMPTY_DIFF_ID).count(),
        3,
        "{diff_ids:?}"
    );
    assert_ne!(diff_ids[2], EMPTY_DIFF_ID, "RUN echo changed a file");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_empty_layer_is_pushed_as_the_well_known_blob() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let reference = pushed(
        &fx,
        context.path(),
        "FROM {base}\nRUN true\nRUN true\n",
        "app/empty",
    )
    .await;
    let manifest = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(manifest.status.success(), "{manifest:?}");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.stdout).unwrap();
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(layers.len(), 3);
    assert_eq!(layers[1..], [EMPTY_LAYER, EMPTY_LAYER]);
}

#[tokio::test(flavor = "multi_thread")]
async fn add_follows_links_in_the_image_and_keeps_hard_links() {
    let fx = Fixture::new();
    // BuildKit's testDockerfileAddArchiveThroughAbsoluteSymlink: an image where /var/run
    // links to /run, and an archive of var/run/act/... with a hard link in it.
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("image");
    fs::create_dir_all(image.join("run")).unwrap();
    fs::create_dir_all(image.join("var")).unwrap();
    std::os::unix::fs::symlink("/run", image.join("var/run")).unwrap();
    let payload = work.path().join("payload");
    let git = payload.join("var/run/act/actions/broad/.git");
    fs::create_dir_all(&git).unwrap();
    fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    fs::hard_link(git.join("HEAD"), git.join("HEAD.link")).unwrap();
    let context = ContextBuilder::new().file("plain", "p\n").build().unwrap();
    // Hard links in the context are kept too.
    fs::hard_link(context.path().join("plain"), context.path().join("again")).unwrap();
    let tar = |dir: &std::path::Path, out: &str, paths: &[&str]| {
        let status = Command::new("tar")
            .arg("-cf")
            .arg(context.path().join(out))
            .arg("-C")
            .arg(dir)
            .args(paths)
            .status()
            .unwrap();
        assert!(status.success());
    };
    tar(&image, "rootfs.tar", &["run", "var"]);
    tar(&payload, "payload.tar", &["var/run/act"]);
    let (_work, rootfs, _) = build(
        &fx,
        context.path(),
        "FROM scratch\nADD rootfs.tar /\nADD payload.tar /\nCOPY plain again /ctx/\n",
    )
    .await;
    assert!(
        fs::symlink_metadata(rootfs.join("var/run"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link in the image stays"
    );
    let head = rootfs.join("run/act/actions/broad/.git/HEAD");
    let link = rootfs.join("run/act/actions/broad/.git/HEAD.link");
    assert_eq!(fs::read_to_string(&head).unwrap(), "ref: refs/heads/main\n");
    assert_eq!(fs::read_to_string(&link).unwrap(), "ref: refs/heads/main\n");
    let inode =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    assert_eq!(inode(&head), inode(&link), "the hard link is kept");
    assert_eq!(
        inode(&rootfs.join("ctx/plain")),
        inode(&rootfs.join("ctx/again"))
    );
}
