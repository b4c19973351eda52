//! End-to-end builds against a real registry, judged by skopeo and umoci.

mod common;

use std::fs;

use common::{Fixture, describe, layout, run, skopeo_config, umoci_rootfs};
use strata::cache::{Change, InputKind, MissReason};
use strata::{Build, Event, ImageSource, LayerStep, Platform};
use strata_testkit::ContextBuilder;

#[tokio::test(flavor = "multi_thread")]
async fn config_instructions_reach_the_image_config() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let dockerfile = r#"FROM {base}
ENV A=1 B="two words"
ENV PATH=/custom:$PATH
LABEL org.example.team="build tools" version=2
MAINTAINER someone@example.com
EXPOSE 80 53/udp 8000-8001
USER app
WORKDIR /srv/app
WORKDIR sub
VOLUME ["/data", "/cache"]
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5s --retries=3 CMD ["true"]
SHELL ["/bin/sh", "-eu", "-c"]
ENTRYPOINT ["/bin/sh"]
CMD echo hi
ONBUILD RUN echo triggered
ARG NOT_PERSISTED=1
"#;
    let (image, _) = run(fx.build(context.path(), dockerfile)).await;
    let image = image.unwrap();
    let (work, layout) = layout(&image);
    let config = skopeo_config(&layout);
    let c = &config["config"];
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"A=1"), "{env:?}");
    assert!(env.contains(&"B=two words"), "{env:?}");
    assert!(
        env.iter()
            .any(|e| e.starts_with("PATH=/custom:/usr/local/sbin")),
        "{env:?}"
    );
    assert!(!env.iter().any(|e| e.starts_with("NOT_PERSISTED")));
    assert_eq!(c["Labels"]["org.example.team"], "build tools");
    assert_eq!(c["Labels"]["version"], "2");
    assert_eq!(config["author"], "someone@example.com");
    let ports: Vec<&String> = c["ExposedPorts"].as_object().unwrap().keys().collect();
    assert_eq!(ports, ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
    assert_eq!(c["User"], "app");
    assert_eq!(c["WorkingDir"], "/srv/app/sub");
    let volumes: Vec<&String> = c["Volumes"].as_object().unwrap().keys().collect();
    assert_eq!(volumes, ["/cache", "/data"]);
    assert_eq!(c["StopSignal"], "SIGQUIT");
    assert_eq!(c["Healthcheck"]["Test"], serde_json::json!(["CMD", "true"]));
    assert_eq!(c["Healthcheck"]["Interval"], 5_000_000_000u64);
    assert_eq!(c["Healthcheck"]["Retries"], 3);
    assert_eq!(c["Shell"], serde_json::json!(["/bin/sh", "-eu", "-c"]));
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh"]));
    // CMD after ENTRYPOINT stays; shell form goes through the current SHELL.
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["/bin/sh", "-eu", "-c", "echo hi"])
    );
    assert_eq!(c["OnBuild"], serde_json::json!(["RUN echo triggered"]));
    // History: the base's entry, then one per instruction but ONBUILD (which BuildKit
    // records in the config only); only WORKDIR made layers.
    let history = config["history"].as_array().unwrap();
    assert_eq!(history.len(), 1 + 15);
    let layers = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(layers, 1 + 2, "the base layer and one layer per WORKDIR");
    assert_eq!(image.layers().len(), 3);
    // WORKDIR created the directories, owned by the USER at the time.
    let rootfs = umoci_rootfs(work.path(), &layout);
    assert_eq!(describe(&rootfs.join("srv/app")), "755 1000:1000 dir");
    assert_eq!(describe(&rootfs.join("srv/app/sub")), "755 1000:1000 dir");
}

#[tokio::test(flavor = "multi_thread")]
async fn entrypoint_resets_an_inherited_cmd() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let (image, _) =
        run(fx.build(context.path(), "FROM {base}\nENTRYPOINT [\"/bin/echo\"]\n")).await;
    let image = image.unwrap();
    // The busybox base has Cmd ["/bin/sh"]; BuildKit drops it when ENTRYPOINT is set.
    assert!(image.config().config.cmd.is_none());
    assert_eq!(
        image.config().config.entrypoint.as_deref(),
        Some(&["/bin/echo".to_owned()][..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_places_files_with_their_modes_owners_and_links() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("app/main.sh", "#!/bin/sh\necho main\n")
        .file_with_mode("app/run.sh", "run\n", 0o755)
        .file("app/lib/util.txt", "util\n")
        .symlink("app/current", "main.sh")
        .file("notes/a.md", "a\n")
        .file("notes/b.md", "b\n")
        .file("notes/c.txt", "c\n")
        .file("secret.key", "no\n")
        .file(".dockerignore", "secret.key\n**/*.tmp\n")
        .file("app/junk.tmp", "junk\n")
        .build()
        .unwrap();
    let dockerfile = r#"FROM {base}
COPY app /opt/app
COPY --chown=app:staff --chmod=640 notes/*.md /docs/
WORKDIR /work
COPY app/run.sh relative.sh
COPY <<EOF /etc/motd
hello from a heredoc
EOF
"#;
    let (image, _) = run(fx.build(context.path(), dockerfile)).await;
    let image = image.unwrap();
    let (work, layout) = layout(&image);
    let rootfs = umoci_rootfs(work.path(), &layout);
    assert_eq!(
        describe(&rootfs.join("opt/app/main.sh")),
        "644 0:0 = \"#!/bin/sh\\necho main\\n\""
    );
    assert_eq!(
        describe(&rootfs.join("opt/app/run.sh")),
        "755 0:0 = \"run\\n\""
    );
    assert_eq!(
        describe(&rootfs.join("opt/app/lib/util.txt")),
        "644 0:0 = \"util\\n\""
    );
    assert_eq!(
        describe(&rootfs.join("opt/app/current")),
        "777 0:0 -> main.sh"
    );
    assert!(
        !rootfs.join("opt/app/junk.tmp").exists(),
        ".dockerignore applies"
    );
    assert_eq!(
        describe(&rootfs.join("docs/a.md")),
        "640 1000:50 = \"a\\n\""
    );
    assert_eq!(
        describe(&rootfs.join("docs/b.md")),
        "640 1000:50 = \"b\\n\""
    );
    assert!(!rootfs.join("docs/c.txt").exists());
    assert_eq!(
        describe(&rootfs.join("work/relative.sh")),
        "755 0:0 = \"run\\n\""
    );
    assert_eq!(
        describe(&rootfs.join("etc/motd")),
        "644 0:0 = \"hello from a heredoc\\n\""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_errors_name_the_path_and_the_line() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("real.txt", "x\n")
        .file("other.txt", "y\n")
        .file("secret.key", "no\n")
        .file(".dockerignore", "secret.key\n")
        .build()
        .unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), context.path().join("escape")).unwrap();
    for (line, expected) in [
        (
            "COPY missing.txt /x",
            "`missing.txt` not found in the build context",
        ),
        (
            "COPY ../etc/passwd /x",
            "`../etc/passwd` is outside the build context",
        ),
        ("COPY escape /x", "`escape` leads outside the build context"),
        ("COPY secret.key /x", "excluded by .dockerignore"),
        ("COPY real.txt other.txt /x", "must be a directory"),
    ] {
        let dockerfile = format!("FROM {{base}}\nENV A=1\n{line}\n");
        let (result, _) = run(fx.build(context.path(), &dockerfile)).await;
        let err = result.err().unwrap();
        let text = err.to_string();
        assert!(text.contains(expected), "{line}: {text}");
        assert_eq!(err.position().map(|p| p.line), Some(3), "{line}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_steps_change_the_filesystem_and_failures_say_where() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let dockerfile = r#"FROM {base}
ARG GREETING=hello
RUN echo "$GREETING from $(id -un)" > /greeting && rm /bin/vi && mkdir -p /var/lib/x
USER app
RUN id -u > /tmp/uid
RUN <<EOF
echo heredoc > /tmp/heredoc
EOF
"#;
    let (image, events) = run(fx.build(context.path(), dockerfile)).await;
    let image = image.unwrap();
    let (work, layout) = layout(&image);
    let rootfs = umoci_rootfs(work.path(), &layout);
    assert_eq!(
        fs::read_to_string(rootfs.join("greeting")).unwrap(),
        "hello from root\n"
    );
    assert!(
        !rootfs.join("bin/vi").exists(),
        "a deletion becomes a whiteout"
    );
    assert!(rootfs.join("bin/sh").exists());
    assert!(rootfs.join("var/lib/x").is_dir());
    assert_eq!(
        fs::read_to_string(rootfs.join("tmp/uid")).unwrap(),
        "1000\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("tmp/heredoc")).unwrap(),
        "heredoc\n"
    );
    // Nothing of the sandbox's own mounts got into the layers.
    assert!(!rootfs.join("etc/hosts").exists());
    assert!(fs::read_dir(rootfs.join("proc")).unwrap().next().is_none());
    assert!(events.iter().any(|e| matches!(e, Event::CacheMiss { .. })));

    let failing = "FROM {base}\nENV X=1\nRUN echo about to fail; echo oops >&2; exit 7\n";
    let (result, events) = run(fx.build(context.path(), failing)).await;
    let err = result.err().unwrap();
    let text = err.to_string();
    assert_eq!(err.position().map(|p| p.line), Some(3), "{text}");
    assert!(text.contains("exit code 7"), "{text}");
    assert!(text.contains("oops"), "the last lines of output: {text}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Output { text, stderr: true, .. } if text == "oops"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_rebuild_hits_every_step_and_gives_the_same_digest() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("src/main.txt", "v1\n")
        .file("src/other.txt", "other\n")
        .file("README", "readme\n")
        .build()
        .unwrap();
    let dockerfile = r#"FROM {base}
COPY README /README
RUN echo built > /built
COPY src /src
RUN cat /src/main.txt > /copied
"#;
    let (first, _) = run(fx.build(context.path(), dockerfile)).await;
    let first = first.unwrap();
    assert_eq!(first.cache_hits(), (0, 4));
    let (second, events) = run(fx.build(context.path(), dockerfile)).await;
    let second = second.unwrap();
    assert_eq!(second.cache_hits(), (4, 4));
    assert_eq!(second.digest(), first.digest());
    assert!(
        !events.iter().any(|e| matches!(e, Event::Output { .. })),
        "nothing ran"
    );

    // Touching a file's time changes nothing; changing a byte misses from the step that
    // copies it, and the miss says why.
    strata_testkit::set_mtime(&context.path().join("src/main.txt"), 1_000_000).unwrap();
    let (third, _) = run(fx.build(context.path(), dockerfile)).await;
    assert_eq!(third.unwrap().cache_hits(), (4, 4));
    fs::write(context.path().join("src/main.txt"), "v2\n").unwrap();
    let (fourth, events) = run(fx.build(context.path(), dockerfile)).await;
    let fourth = fourth.unwrap();
    assert_eq!(fourth.cache_hits(), (2, 4));
    let reasons: Vec<&Vec<MissReason>> = events
        .iter()
        .filter_map(|e| match e {
            Event::CacheMiss { line, reasons, .. } if *line == 4 => Some(reasons),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [&vec![MissReason::Input {
            kind: InputKind::File,
            name: "src/main.txt".to_owned(),
            change: Change::Changed,
        }]]
    );
    assert_eq!(reasons[0][0].to_string(), "file src/main.txt changed");
    let (work, layout) = layout(&fourth);
    let rootfs = umoci_rootfs(work.path(), &layout);
    assert_eq!(fs::read_to_string(rootfs.join("copied")).unwrap(), "v2\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_miss_in_a_large_context_names_the_directory_and_its_record_stays_small() {
    // 12,000 files: more than a key lists one by one, so they are grouped by directory.
    let fx = Fixture::new();
    let mut context = ContextBuilder::new();
    for n in 0..12_000 {
        context = context.file(format!("d{:02}/f{n}.txt", n % 12), format!("{n}\n"));
    }
    let context = context.build().unwrap();
    let dockerfile = "FROM scratch\nCOPY . /app\n";
    let (first, _) = run(fx.build(context.path(), dockerfile)).await;
    assert_eq!(first.unwrap().cache_hits(), (0, 1));
    fs::write(context.path().join("d07/f19.txt"), "changed\n").unwrap();
    let (second, events) = run(fx.build(context.path(), dockerfile)).await;
    assert_eq!(second.unwrap().cache_hits(), (0, 1));
    let reasons: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::CacheMiss { reasons, .. } => Some(reasons.iter().map(ToString::to_string)),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(reasons, ["file d07/** changed"]);
    // What explains the next miss is a line per directory, not per file.
    let steps = fx.state.path().join("cache/steps");
    for record in fs::read_dir(&steps).unwrap() {
        let size = record.unwrap().metadata().unwrap().len();
        assert!(size < 8_192, "a step's record takes {size} bytes");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_stage_builds_copy_from_finished_stages() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("input.txt", "input\n")
        .build()
        .unwrap();
    let dockerfile = r#"FROM {base} AS one
COPY input.txt /work/input.txt
RUN tr a-z A-Z < /work/input.txt > /work/upper.txt

FROM {base} AS two
RUN echo two > /two.txt

FROM scratch
COPY --from=one /work/upper.txt /out/
COPY --from=two /two.txt /bin/busybox /out/
COPY --from=0 /work /from-index
"#;
    let (image, events) = run(fx.build(context.path(), dockerfile)).await;
    let image = image.unwrap();
    let (work, layout) = layout(&image);
    let rootfs = umoci_rootfs(work.path(), &layout);
    assert_eq!(
        fs::read_to_string(rootfs.join("out/upper.txt")).unwrap(),
        "INPUT\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("out/two.txt")).unwrap(),
        "two\n"
    );
    assert!(rootfs.join("out/busybox").is_file());
    assert!(rootfs.join("from-index/input.txt").is_file());
    let stages: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Event::StageStarted { stage, .. } => Some(stage),
            _ => None,
        })
        .collect();
    assert_eq!(stages.len(), 3);

    // The source stage rebuilt (its RUN output has a new time) but the copied file is the
    // same: the final stage's COPY still hits.
    let (again, _) = run(fx.build(context.path(), dockerfile).cache(true)).await;
    assert_eq!(again.unwrap().digest(), image.digest());
}

#[tokio::test(flavor = "multi_thread")]
async fn images_are_pushed_and_written_as_docker_archives() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("f", "f\n").build().unwrap();
    let (image, _) = run(fx.build(context.path(), "FROM {base}\nCOPY f /f\n")).await;
    let image = image.unwrap();
    let target = format!("{}/team/app:v1", fx.registry.host());
    let digest = image.push(&target).await.unwrap();
    assert_eq!(digest, image.digest());
    let skopeo = strata_testkit::find_program("skopeo", "skopeo").unwrap();
    let output = std::process::Command::new(&skopeo)
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let inspected: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(inspected["Digest"], image.digest());
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    image
        .write_docker_archive(&archive, &["example.com/app:v1"])
        .unwrap();
    let output = std::process::Command::new(&skopeo)
        .args(["inspect", "--config"])
        .arg(format!("docker-archive:{}", archive.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn reproducible_builds_give_the_same_digest_from_separate_states() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("f", "f\n").build().unwrap();
    let dockerfile = "FROM {base}\nCOPY f /f\nRUN echo made > /made\n";
    let mut digests = Vec::new();
    for _ in 0..2 {
        let state = tempfile::tempdir().unwrap();
        let build = fx
            .build(context.path(), dockerfile)
            .state_dir(state.path())
            .reproducible(1_700_000_000);
        let (image, _) = run(build).await;
        let image = image.unwrap();
        assert_eq!(image.cache_hits(), (0, 2), "separate states share no cache");
        assert_eq!(
            image.config().created.as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        digests.push(image.digest().to_owned());
    }
    assert_eq!(digests[0], digests[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_base_image_names_the_reference() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let missing = format!("{}/nope/nothing:1", fx.registry.host());
    let (result, _) = run(fx.build(context.path(), &format!("FROM {missing}\n"))).await;
    let text = result.err().unwrap().to_string();
    assert!(text.contains("nope/nothing"), "{text}");
    assert!(text.contains(":1"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_from_an_image_and_bases_from_an_oci_layout() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    // An image built first, written as an OCI layout, then used as a base by path.
    let (first, _) = run(fx.build(context.path(), "FROM {base}\nRUN echo first > /first\n")).await;
    let first = first.unwrap();
    let dir = tempfile::tempdir().unwrap();
    first
        .write_oci_layout(&dir.path().join("layout"), "v1")
        .unwrap();
    let dockerfile = format!(
        "FROM oci-layout://{}:v1\nCOPY --from={{base}} /etc/passwd /copied-passwd\n",
        dir.path().join("layout").display()
    );
    let (image, _) = run(fx.build(context.path(), &dockerfile)).await;
    let image = image.unwrap();
    let (work, layout) = layout(&image);
    let rootfs = umoci_rootfs(work.path(), &layout);
    assert_eq!(fs::read_to_string(rootfs.join("first")).unwrap(), "first\n");
    assert!(
        fs::read_to_string(rootfs.join("copied-passwd"))
            .unwrap()
            .contains("app:x:1000")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_base_needs_no_registry_once_pulled() {
    let mut fx = Fixture::new();
    let context = ContextBuilder::new().file("f", "f\n").build().unwrap();
    let (first, _) = run(fx.build(context.path(), "FROM {base}\nCOPY f /f\n")).await;
    let first = first.unwrap();
    fx.registry.stop();
    let pinned = format!("{}@{}", fx.base, fx.base_digest);
    let dockerfile = format!("FROM {pinned}\nCOPY f /f\n");
    let (image, events) = run(fx.build(context.path(), &dockerfile)).await;
    let image = image.expect("the state directory has every blob");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Pulled { downloaded: 0, .. }))
    );
    assert_eq!(image.layers(), first.layers());
}

#[tokio::test(flavor = "multi_thread")]
async fn tar_contexts_from_a_file_and_a_stream() {
    let fx = Fixture::new();
    let source = ContextBuilder::new()
        .file("app/main.txt", "main\n")
        .file(".dockerignore", "app/skip.txt\n")
        .file("app/skip.txt", "skip\n")
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("context.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(source.path())
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let dockerfile = "FROM {base}\nCOPY app /app\n".replace("{base}", &fx.base);
    for context in [
        strata::ContextSource::Tar(tarball.clone()),
        strata::ContextSource::TarStream(Box::new(fs::File::open(&tarball).unwrap())),
    ] {
        let build = strata::Build::new(context)
            .dockerfile_text(dockerfile.clone())
            .state_dir(fx.state.path());
        let (image, _) = run(build).await;
        let image = image.unwrap();
        let (work, layout) = layout(&image);
        let rootfs = umoci_rootfs(work.path(), &layout);
        assert_eq!(
            fs::read_to_string(rootfs.join("app/main.txt")).unwrap(),
            "main\n"
        );
        assert!(
            !rootfs.join("app/skip.txt").exists(),
            "the archive's .dockerignore applies"
        );
    }
    // A context archive with an entry that climbs out is refused.
    let evil = dir.path().join("evil.tar");
    let mut builder = tar_builder(&evil);
    builder
        .append_path_with_name_unchecked(&tarball, "../escape")
        .ok();
    drop(builder);
    let build = strata::Build::new(strata::ContextSource::Tar(evil))
        .dockerfile_text(dockerfile)
        .state_dir(fx.state.path());
    let (result, _) = run(build).await;
    let text = result.err().unwrap().to_string();
    assert!(text.contains("context archive"), "{text}");
}

fn tar_builder(path: &std::path::Path) -> RawTar {
    RawTar {
        path: path.to_owned(),
    }
}

/// Writes a one-entry tar whose name is taken as given (`../escape`), as a hostile client
/// could send.
struct RawTar {
    path: std::path::PathBuf,
}

impl RawTar {
    fn append_path_with_name_unchecked(
        &mut self,
        _: &std::path::Path,
        name: &str,
    ) -> std::io::Result<()> {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..107].copy_from_slice(b"0000644");
        header[108..115].copy_from_slice(b"0000000");
        header[116..123].copy_from_slice(b"0000000");
        header[124..135].copy_from_slice(b"00000000004");
        header[136..147].copy_from_slice(b"00000000000");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut bytes = header.to_vec();
        let mut data = b"evil".to_vec();
        data.resize(512, 0);
        bytes.extend(data);
        bytes.extend([0u8; 1024]);
        fs::write(&self.path, bytes)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_mounts_bind_cache_secret_and_tmpfs() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("src/input.txt", "from the context\n")
        .build()
        .unwrap();
    let secrets = tempfile::tempdir().unwrap();
    fs::write(secrets.path().join("token"), "s3cr3t").unwrap();
    let dockerfile = r#"FROM {base}
RUN --mount=type=bind,source=src,target=/mnt/src cat /mnt/src/input.txt > /bound
RUN --mount=type=cache,target=/var/cache/x echo run >> /var/cache/x/log && cat /var/cache/x/log > /cache-log
RUN --mount=type=secret,id=token cat /run/secrets/token > /seen-secret-length && wc -c < /run/secrets/token > /seen-secret-length
RUN --mount=type=tmpfs,target=/scratch touch /scratch/gone && ls /scratch > /tmpfs-listing
RUN --network=none sh -c 'wget -q -T 1 http://127.0.0.1:1/ 2>&1; echo exit=$?' > /network
"#;
    let build = fx
        .build(context.path(), dockerfile)
        .secret("token", strata::Secret::File(secrets.path().join("token")));
    let (image, _) = run(build).await;
    let image = image.unwrap();
    let (work, layout) = layout(&image);
    let rootfs = umoci_rootfs(work.path(), &layout);
    assert_eq!(
        fs::read_to_string(rootfs.join("bound")).unwrap(),
        "from the context\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("cache-log")).unwrap(),
        "run\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("seen-secret-length"))
            .unwrap()
            .trim(),
        "6"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("tmpfs-listing")).unwrap(),
        "gone\n"
    );
    assert!(
        fs::read_to_string(rootfs.join("network"))
            .unwrap()
            .contains("exit=1")
    );
    for mount_point in ["mnt", "var/cache/x", "run", "scratch"] {
        assert!(
            !rootfs.join(mount_point).exists(),
            "{mount_point} left in the image"
        );
    }
    // The secret is in no layer.
    for layer in image.layers() {
        let blob = fx
            .state
            .path()
            .join("blobs/sha256")
            .join(layer.digest.digest());
        let mut text = Vec::new();
        let mut decoder = flate2_read(&blob);
        std::io::Read::read_to_end(&mut decoder, &mut text).unwrap();
        assert!(!text.windows(6).any(|w| w == b"s3cr3t"));
    }
}

fn flate2_read(path: &std::path::Path) -> impl std::io::Read {
    std::process::Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .stdout
        .unwrap()
}

/// Serves `body` with a `Last-Modified` header to every request, on loopback.
fn serve(body: &'static [u8]) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body);
        }
    });
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread")]
async fn add_extracts_local_archives_and_downloads_urls() {
    let fx = Fixture::new();
    let content = tempfile::tempdir().unwrap();
    fs::create_dir(content.path().join("pkg")).unwrap();
    fs::write(content.path().join("pkg/data.txt"), "packed\n").unwrap();
    let context = ContextBuilder::new()
        .file("plain.gz.txt", "not an archive\n")
        .build()
        .unwrap();
    for (flag, name) in [
        ("-czf", "a.tar.gz"),
        ("-cjf", "b.tar.bz2"),
        ("-cJf", "c.tar.xz"),
        ("-cf", "d.tar"),
    ] {
        let status = std::process::Command::new("tar")
            .arg(flag)
            .arg(context.path().join(name))
            .arg("--owner=1234")
            .arg("--group=99")
            .arg("-C")
            .arg(content.path())
            .arg("pkg")
            .status()
            .unwrap();
        assert!(status.success());
    }
    let url = serve(b"downloaded bytes\n");
    let digest = format!("sha256:{}", hex_sha256(b"downloaded bytes\n"));
    let dockerfile = format!(
        "FROM {{base}}\nADD a.tar.gz /gz\nADD b.tar.bz2 /bz2/\nADD c.tar.xz /xz\nADD d.tar /plain\n\
         ADD --unpack=false d.tar /kept/\nADD plain.gz.txt /copied.txt\n\
         ADD --checksum={digest} {url}/files/tool.bin /downloads/\nADD {url}/x /named\n"
    );
    let (image, _) = run(fx.build(context.path(), &dockerfile)).await;
    let image = image.unwrap();
    let (work, layout) = layout(&image);
    let rootfs = umoci_rootfs(work.path(), &layout);
    for dir in ["gz", "bz2", "xz", "plain"] {
        let path = rootfs.join(dir).join("pkg/data.txt");
        assert_eq!(describe(&path), "644 1234:99 = \"packed\\n\"", "{dir}");
    }
    assert!(
        rootfs.join("kept/d.tar").is_file(),
        "--unpack=false copies the archive"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("copied.txt")).unwrap(),
        "not an archive\n"
    );
    assert_eq!(
        describe(&rootfs.join("downloads/tool.bin")),
        "600 0:0 = \"downloaded bytes\\n\""
    );
    let mtime = fs::metadata(rootfs.join("named"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        mtime,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
    );

    let wrong = format!(
        "FROM {{base}}\nADD --checksum=sha256:{} {url}/f /f\n",
        "0".repeat(64)
    );
    let (result, _) = run(fx.build(context.path(), &wrong)).await;
    let text = result.err().unwrap().to_string();
    assert!(text.contains("checksum mismatch"), "{text}");
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn onbuild_triggers_run_in_the_image_built_on_top() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("trigger.txt", "copied by a trigger\n")
        .build()
        .unwrap();
    let parent = "FROM {base}\nONBUILD COPY trigger.txt /from-trigger\nONBUILD RUN echo ran > /trigger-ran\n";
    let (parent, _) = run(fx.build(context.path(), parent)).await;
    let parent = parent.unwrap();
    let reference = format!("{}/team/onbuild:1", fx.registry.host());
    parent.push(&reference).await.unwrap();
    let child = format!("FROM {reference}\nRUN cat /from-trigger /trigger-ran > /both\n");
    let (child, events) = run(fx.build(context.path(), &child)).await;
    let child = child.unwrap();
    // Each trigger is a step of its own: both share the FROM line, and their identities
    // (index, ONBUILD) differ from each other and from the stage's own first step.
    let started: Vec<(usize, usize, bool)> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted {
                line,
                index,
                onbuild,
                ..
            } => Some((*line, *index, *onbuild)),
            _ => None,
        })
        .collect();
    assert_eq!(started, [(1, 0, true), (1, 1, true), (2, 0, false)]);
    let finished = events
        .iter()
        .filter(|e| matches!(e, Event::StepFinished { onbuild: true, .. }))
        .count();
    assert_eq!(finished, 2);
    assert!(
        child.config().config.on_build.is_none(),
        "triggers are not inherited"
    );
    let (work, layout) = layout(&child);
    let rootfs = umoci_rootfs(work.path(), &layout);
    assert_eq!(
        fs::read_to_string(rootfs.join("both")).unwrap(),
        "copied by a trigger\nran\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_parents_and_symbolic_chmod() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("a/b/one.txt", "one\n")
        .file("a/c/two.txt", "two\n")
        .file_with_mode("tool", "#!/bin/sh\n", 0o640)
        .build()
        .unwrap();
    let dockerfile = "FROM {base}\nCOPY --parents a/b/one.txt a/c /keep/\nCOPY --chmod=u=rwx,go=rx tool /tool\nCOPY --chmod=a+X a/b /x/\n";
    let (image, _) = run(fx.build(context.path(), dockerfile)).await;
    let image = image.unwrap();
    let (work, layout) = layout(&image);
    let rootfs = umoci_rootfs(work.path(), &layout);
    assert_eq!(
        fs::read_to_string(rootfs.join("keep/a/b/one.txt")).unwrap(),
        "one\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("keep/a/c/two.txt")).unwrap(),
        "two\n"
    );
    assert_eq!(describe(&rootfs.join("tool")), "755 0:0 = \"#!/bin/sh\\n\"");
    assert_eq!(
        describe(&rootfs.join("x/one.txt")),
        "644 0:0 = \"one\\n\"",
        "X leaves files alone"
    );
}

/// A cache repository that refuses writes costs later builds a miss, never this build: the
/// refusal is a warning, and the image is built.
#[tokio::test(flavor = "multi_thread")]
async fn a_cache_repository_that_refuses_writes_is_a_warning_not_a_failure() {
    let fx = Fixture::new();
    let read_only = strata_testkit::TestRegistry::builder()
        .read_only()
        .start()
        .unwrap();
    let context = ContextBuilder::new().file("f", "f\n").build().unwrap();
    let repo = format!("{}/team/cache", read_only.host());
    let dockerfile = "FROM {base}\nCOPY f /f\nRUN echo ran > /ran\n";
    let client = strata_registry::RegistryClient::builder()
        .retries(0)
        .build();
    let build = fx
        .build(context.path(), dockerfile)
        .cache_repo(&repo)
        .registry(client);
    let (image, events) = run(build).await;
    let image = image.expect("the build succeeds although the cache repository refuses writes");
    assert_eq!(image.cache_hits(), (0, 2));
    let warnings: Vec<(Option<usize>, &String)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Warning { line, message, .. } => Some((*line, message)),
            _ => None,
        })
        .collect();
    assert_eq!(
        warnings.iter().map(|(line, _)| *line).collect::<Vec<_>>(),
        [Some(2), Some(3)],
        "one warning per step that ran: {warnings:?}"
    );
    assert!(
        warnings.iter().all(|(_, m)| m.contains(&repo)),
        "{warnings:?}"
    );
    // The local cache has both steps all the same.
    let (again, _) = run(fx.build(context.path(), dockerfile)).await;
    assert_eq!(again.unwrap().cache_hits(), (2, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_repository_serves_a_second_machine() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("f", "f\n").build().unwrap();
    let repo = format!("{}/team/cache", fx.registry.host());
    let dockerfile = "FROM {base}\nCOPY f /f\nRUN echo ran > /ran\n";
    let (first, _) = run(fx.build(context.path(), dockerfile).cache_repo(&repo)).await;
    let first = first.unwrap();
    assert_eq!(first.cache_hits(), (0, 2));
    // Another machine: an empty state directory, the same registry.
    let other = tempfile::tempdir().unwrap();
    let build = fx
        .build(context.path(), dockerfile)
        .state_dir(other.path())
        .cache_repo(&repo);
    let (second, events) = run(build).await;
    let second = second.unwrap();
    assert_eq!(second.cache_hits(), (2, 2));
    assert_eq!(second.digest(), first.digest());
    assert!(
        !events.iter().any(|e| matches!(e, Event::Output { .. })),
        "nothing ran"
    );
    // The entries are ordinary images in the repository.
    let skopeo = strata_testkit::find_program("skopeo", "skopeo").unwrap();
    let output = std::process::Command::new(skopeo)
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{repo}"))
        .output()
        .unwrap();
    let tags: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(tags["Tags"].as_array().unwrap().len(), 2, "{tags}");
    // Pushing the image to the same registry uploads only its config: the step layers are
    // mounted from the cache repository, the base layer from the base's repository.
    let app = format!("{}/team/app:1", fx.registry.host());
    second.push(&app).await.unwrap();
    let log = fx.registry.log();
    let uploads = log
        .lines()
        .filter(|l| l.contains("\"PUT /v2/team/app/blobs/uploads/"))
        .count();
    assert_eq!(uploads, 1, "only the config is uploaded:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_snapshot_gives_one_layer_with_the_same_tree() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("f", "f\n").build().unwrap();
    let dockerfile = "FROM {base}\nCOPY f /f\nRUN echo a > /a && rm /bin/vi && mkdir /d && echo x > /d/x\nRUN rm /a && rm -r /d && echo b > /b\nENV DONE=1\n";
    let (layered, _) = run(fx.build(context.path(), dockerfile)).await;
    let layered = layered.unwrap();
    let (single, _) = run(fx.build(context.path(), dockerfile).single_snapshot(true)).await;
    let single = single.unwrap();
    assert_eq!(layered.layers().len(), 4);
    assert_eq!(single.layers().len(), 2, "the base layer and one more");
    let history = &single.config().history;
    assert_eq!(history.iter().filter(|h| !h.empty_layer).count(), 2);
    let unpack = |image: &strata::Image| {
        let (work, layout) = layout(image);
        let rootfs = umoci_rootfs(work.path(), &layout);
        let mut found = Vec::new();
        for path in ["f", "a", "b", "d", "bin/vi", "bin/sh"] {
            found.push((path, rootfs.join(path).symlink_metadata().is_ok()));
        }
        (work, found)
    };
    let (_w1, ours) = unpack(&single);
    let (_w2, reference) = unpack(&layered);
    assert_eq!(ours, reference);
    assert_eq!(
        ours,
        [
            ("f", true),
            ("a", false),
            ("b", true),
            ("d", false),
            ("bin/vi", false),
            ("bin/sh", true)
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scratch_of_killed_builds_is_removed_and_live_builds_are_left_alone() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("f", "f\n").build().unwrap();
    let tmp = fx.state.path().join("tmp");
    fs::create_dir_all(tmp.join("build-killed")).unwrap();
    fs::write(tmp.join("build-killed/.lock"), "").unwrap();
    fs::write(tmp.join("build-killed/half-written"), "x").unwrap();
    fs::create_dir_all(tmp.join("build-running")).unwrap();
    let lock = fs::File::create(tmp.join("build-running/.lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let (image, _) = run(fx.build(context.path(), "FROM {base}\nCOPY f /f\n")).await;
    image.unwrap();
    assert!(!tmp.join("build-killed").exists());
    assert!(tmp.join("build-running/.lock").exists());
    let left: Vec<_> = fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["build-running"],
        "the finished build removed its own scratch"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn independent_stages_run_at_the_same_time() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let dockerfile = "FROM {base} AS left\nRUN sleep 1; echo left > /left\n\nFROM {base} AS right\nRUN sleep 1; echo right > /right\n\nFROM scratch\nCOPY --from=left /left /\nCOPY --from=right /right /\n";
    let (image, events) = run(fx.build(context.path(), dockerfile)).await;
    image.unwrap();
    let position = |wanted: &dyn Fn(&Event) -> bool| events.iter().position(wanted).unwrap();
    let right_started =
        position(&|e| matches!(e, Event::StageStarted { stage, .. } if stage == "right"));
    let left_finished =
        position(&|e| matches!(e, Event::StepFinished { stage, line: 2, .. } if stage == "left"));
    assert!(
        right_started < left_finished,
        "the second stage started while the first one's RUN was running"
    );
}

/// A subscriber that takes its time with every event never slows the step that sends them,
/// and has every event, in order, by the time the build returns.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_event_subscriber_does_not_stall_a_running_step() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let dockerfile =
        "FROM {base}\nRUN i=0; while [ $i -lt 100 ]; do echo line $i; i=$((i+1)); done\n";
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    let image = fx
        .build(context.path(), dockerfile)
        .on_event(move |event| {
            std::thread::sleep(std::time::Duration::from_millis(30));
            record.lock().unwrap().push(event.clone());
        })
        .run()
        .await
        .unwrap();
    let events = seen.lock().unwrap().clone();
    let outputs = events
        .iter()
        .filter(|e| matches!(e, Event::Output { .. }))
        .count();
    assert_eq!(outputs, 100, "every line was delivered");
    assert!(
        matches!(events.last(), Some(Event::Built { digest }) if digest == image.digest()),
        "the last event, delivered before run() returned: {:?}",
        events.last()
    );
    let run_took = events
        .iter()
        .find_map(|e| match e {
            Event::StepFinished {
                line: 2, duration, ..
            } => Some(*duration),
            _ => None,
        })
        .unwrap();
    assert!(
        run_took < std::time::Duration::from_millis(2500),
        "the RUN took {run_took:?}: it waited for a subscriber that needs 3 s for its output"
    );
}

/// A stage starts as soon as the stages it needs are done, not when a whole wave is: C
/// needs only A (fast), so it finishes while B (slow) is still running.
#[tokio::test(flavor = "multi_thread")]
async fn a_stage_starts_when_its_own_dependencies_are_done() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let dockerfile = "FROM {base} AS a\nRUN echo a > /a\n\
                      FROM {base} AS b\nRUN sleep 3; echo b > /b\n\
                      FROM {base} AS c\nCOPY --from=a /a /c\n\
                      FROM scratch\nCOPY --from=b /b /\nCOPY --from=c /c /\n";
    let (image, events) = run(fx.build(context.path(), dockerfile)).await;
    image.unwrap();
    let finished = |name: &str| {
        events
            .iter()
            .position(|e| matches!(e, Event::StageFinished { stage, .. } if stage == name))
            .unwrap_or_else(|| panic!("stage {name} finished: {events:?}"))
    };
    assert!(
        finished("c") < finished("b"),
        "C, which needs only A, finished before the slow B: {events:?}"
    );
}

/// The first stage to fail stops the others at once: a sibling's long RUN is killed, and the
/// error is the failing step's.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_stage_cancels_the_stages_beside_it() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let dockerfile = "FROM {base} AS slow\nRUN sleep 60\nRUN touch /never\n\
                      FROM {base} AS bad\nRUN sleep 1; exit 3\n\
                      FROM scratch\nCOPY --from=slow /never /\nCOPY --from=bad /bin/sh /\n";
    let started = std::time::Instant::now();
    let (result, events) = run(fx.build(context.path(), dockerfile)).await;
    let elapsed = started.elapsed();
    let error = result.expect_err("the build fails");
    assert_eq!(error.position().map(|p| p.line), Some(5), "{error}");
    assert!(error.to_string().contains("exit code 3"), "{error}");
    assert!(
        elapsed < std::time::Duration::from_secs(30),
        "the 60-second RUN beside it was killed, not waited for ({elapsed:?})"
    );
    let failed = events
        .iter()
        .position(|e| matches!(e, Event::BuildFailed { .. }))
        .expect("a build-failed event");
    assert!(
        !events[failed..]
            .iter()
            .any(|e| matches!(e, Event::StepStarted { line: 3, .. })),
        "no step of the cancelled stage starts after the failure"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn walk_and_overlay_snapshots_give_the_same_image_tree() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let dockerfile = "FROM {base}\nRUN mkdir -p /a/b && echo 1 > /a/b/f && ln -s b /a/l && rm /bin/vi\nRUN rm -r /a/b && mkdir /a/b && echo 2 > /a/b/g && chmod 700 /home/app && chown app /etc/group\nRUN mkfifo /fifo && echo x > /tmp/x && rm /tmp/x\n";
    let mut trees = Vec::new();
    for mode in [strata::SnapshotMode::Overlay, strata::SnapshotMode::Walk] {
        let state = tempfile::tempdir().unwrap();
        let build = fx
            .build(context.path(), dockerfile)
            .state_dir(state.path())
            .snapshot_mode(mode);
        let (image, _) = run(build).await;
        let image = image.unwrap();
        let (work, layout) = layout(&image);
        let mut tree = common::tree(&umoci_rootfs(work.path(), &layout));
        // Directory times differ between runs; modes, owners and contents must not.
        tree.retain(|path, _| {
            !path.starts_with("proc") && !path.starts_with("sys") && !path.starts_with("dev")
        });
        trees.push(tree);
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0]["a/b/g"], "644 0:0 = \"2\\n\"");
    assert!(
        !trees[0].contains_key("a/b/f"),
        "the opaque directory hides the old file"
    );
    assert!(!trees[0].contains_key("bin/vi"));
    assert!(!trees[0].contains_key("tmp/x"));
}

#[tokio::test(flavor = "multi_thread")]
async fn exclude_ignore_paths_stage_mounts_and_env_secrets() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("src/keep.rs", "keep\n")
        .file("src/gen/skip.rs", "skip\n")
        .file("src/skip.tmp", "tmp\n")
        .build()
        .unwrap();
    let dockerfile = r#"FROM {base} AS tools
RUN echo tool > /tool.txt

FROM {base}
COPY --exclude=gen --exclude=*.tmp src /src
RUN --mount=type=bind,from=tools,source=/tool.txt,target=/mnt/tool.txt cp /mnt/tool.txt /copied-tool
RUN --mount=type=secret,id=api,env=API_TOKEN sh -c 'echo -n "$API_TOKEN" | wc -c > /token-length; test -e /run/secrets/api || echo no-file >> /token-length'
RUN mkdir -p /var/log/app && echo noisy > /var/log/app/log && echo kept > /kept
"#;
    // An environment variable every cargo test process has.
    let value = std::env::var("CARGO_PKG_NAME").unwrap();
    let build = fx
        .build(context.path(), dockerfile)
        .secret("api", strata::Secret::Env("CARGO_PKG_NAME".to_owned()))
        .ignore_path("/var/log");
    let (image, _) = run(build).await;
    let image = image.unwrap();
    let (work, layout) = layout(&image);
    let rootfs = umoci_rootfs(work.path(), &layout);
    assert!(rootfs.join("src/keep.rs").is_file());
    assert!(!rootfs.join("src/gen").exists(), "--exclude=gen");
    assert!(!rootfs.join("src/skip.tmp").exists(), "--exclude=*.tmp");
    assert_eq!(
        fs::read_to_string(rootfs.join("copied-tool")).unwrap(),
        "tool\n"
    );
    assert!(!rootfs.join("var/log/app").exists(), "--ignore-path");
    assert!(rootfs.join("kept").is_file());
    let lengths = fs::read_to_string(rootfs.join("token-length")).unwrap();
    assert_eq!(
        lengths,
        format!("{}\nno-file\n", value.len()),
        "env= gives a variable, no file"
    );
    let env = image.config().config.env.clone().unwrap_or_default();
    assert!(
        !env.iter().any(|e| e.starts_with("API_TOKEN")),
        "not in the config: {env:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn named_build_contexts_stand_in_for_images() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let (first, _) = run(fx.build(context.path(), "FROM {base}\nRUN echo first > /first\n")).await;
    let first = first.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("layout");
    first.write_oci_layout(&saved, "v1").unwrap();
    // `app-base` is not a stage: FROM and COPY --from take the image the context names.
    let dockerfile = "FROM app-base\nCOPY --from=tools /etc/passwd /copied-passwd\n";
    let build = fx
        .build(context.path(), dockerfile)
        .build_context(
            "app-base",
            format!("oci-layout://{}:v1", saved.display())
                .parse()
                .unwrap(),
        )
        .build_context(
            "tools",
            format!("docker-image://{}", fx.base).parse().unwrap(),
        );
    let (image, events) = run(build).await;
    let image = image.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Pulled { reference, .. }
        if reference.starts_with("oci-layout://") && reference.ends_with(":v1")))
    );
    let (work, layout) = layout(&image);
    let rootfs = umoci_rootfs(work.path(), &layout);
    assert_eq!(fs::read_to_string(rootfs.join("first")).unwrap(), "first\n");
    assert!(
        fs::read_to_string(rootfs.join("copied-passwd"))
            .unwrap()
            .contains("app:x:1000")
    );
    // A stage of that name wins over the context, as in BuildKit.
    let staged = "FROM {base} AS tools\nRUN echo stage > /from-stage\nFROM scratch\nCOPY --from=tools /from-stage /s\n";
    let build = fx
        .build(context.path(), staged)
        .build_context("tools", "oci-layout:///nonexistent".parse().unwrap());
    let (image, _) = run(build).await;
    image.unwrap();
    // Sources strata cannot use are refused by name when they are parsed.
    let error = "/some/dir".parse::<ImageSource>().unwrap_err();
    assert_eq!(error.kind(), strata::ErrorKind::Invalid);
    let text = error.to_string();
    assert!(
        text.contains("/some/dir") && text.contains("oci-layout://"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_layers_can_be_left_out_of_the_cache() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("f", "f\n").build().unwrap();
    let dockerfile = "FROM {base}\nCOPY f /f\nRUN date +%s%N > /stamp\n";
    let build = || {
        fx.build(context.path(), dockerfile)
            .cache_layers_of(LayerStep::Run, false)
    };
    let (first, _) = run(build()).await;
    assert_eq!(first.unwrap().cache_hits(), (0, 2));
    let (second, events) = run(build()).await;
    // COPY is answered by the cache, RUN runs again and says why.
    assert_eq!(second.unwrap().cache_hits(), (1, 2));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::CacheMiss { line: 3, reasons, .. }
        if reasons == &[MissReason::CacheOff { instruction: "RUN".to_owned() }]))
    );
    // With the cache on again, RUN still misses once (nothing was recorded), then hits.
    let (third, _) = run(fx.build(context.path(), dockerfile)).await;
    assert_eq!(third.unwrap().cache_hits(), (1, 2));
    let (fourth, _) = run(fx.build(context.path(), dockerfile)).await;
    assert_eq!(fourth.unwrap().cache_hits(), (2, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_and_pushes_report_byte_progress() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("big", "x".repeat(3 << 20))
        .build()
        .unwrap();
    let build = fx
        .build(context.path(), "FROM {base}\nCOPY big /big\n")
        .compression(strata::layer::Compression::Zstd { level: -5 });
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&events);
    let image = build
        .on_event(move |e| sink.lock().unwrap().push(e.clone()))
        .run()
        .await
        .unwrap();
    let target = format!("{}/team/progress:1", fx.registry.host());
    image.push(&target).await.unwrap();
    let events = events.lock().unwrap().clone();
    let transfers = |push: bool| -> Vec<(String, u64, u64)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Transfer {
                    digest,
                    push: p,
                    done,
                    total,
                    ..
                } if *p == push => Some((digest.clone(), *done, *total)),
                _ => None,
            })
            .collect()
    };
    // The base's layer was pulled: its progress starts at 0 and ends at its size.
    let pulled = transfers(false);
    let base_layer = &image.layers()[0];
    let of: Vec<_> = pulled
        .iter()
        .filter(|(d, ..)| *d == base_layer.digest.as_ref())
        .collect();
    assert_eq!(of.first().map(|t| t.1), Some(0), "{pulled:?}");
    assert_eq!(
        of.last().map(|t| (t.1, t.2)),
        Some((base_layer.size, base_layer.size))
    );
    // The new layer was uploaded with progress in between; the base layer was mounted from
    // the base's repository, not uploaded.
    let pushed = transfers(true);
    let layer = &image.layers()[1];
    let of: Vec<_> = pushed
        .iter()
        .filter(|(d, ..)| *d == layer.digest.as_ref())
        .collect();
    assert!(of.len() >= 2, "{pushed:?}");
    assert_eq!(of.last().unwrap().1, layer.size);
    assert!(
        !pushed
            .iter()
            .any(|(d, ..)| *d == image.layers()[0].digest.as_ref())
    );
    assert!(
        events.iter().any(
            |e| matches!(e, Event::Pushed { reference, uploaded: 2, mounted: 1, .. }
        if reference.ends_with("team/progress:1"))
        ),
        "{:?}",
        events.last()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_put_for_registries_oci_layouts_and_docker_archives() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("f", "f\n").build().unwrap();
    let (image, _) = run(fx.build(context.path(), "FROM {base}\nCOPY f /f\n")).await;
    let image = image.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let skopeo = strata_testkit::find_program("skopeo", "skopeo").unwrap();
    let targets = [
        format!("docker://{}/team/put:1", fx.registry.host()),
        format!("oci:{}:v1", dir.path().join("layout").display()),
        format!(
            "docker-archive:{}:example.com/put:1",
            dir.path().join("image.tar").display()
        ),
    ];
    for target in &targets {
        assert_eq!(image.put(target).await.unwrap(), image.digest(), "{target}");
        // skopeo reads each with the same transport name.
        let output = std::process::Command::new(&skopeo)
            .args(["inspect", "--tls-verify=false", "--config", target])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{target}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let config: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"].as_array().unwrap().len(),
            2,
            "{target}"
        );
    }
    let err = image.put("oci:").await.unwrap_err().to_string();
    assert!(err.contains("needs a directory"), "{err}");
}

/// Builds, unpacks with umoci and returns (the work dir, the root filesystem, the config's
/// `os/architecture` as skopeo reads it).
async fn unpacked(build: strata::Build) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let (image, _) = run(build).await;
    let image = image.unwrap();
    let (work, oci) = layout(&image);
    let rootfs = umoci_rootfs(work.path(), &oci);
    let config = skopeo_config(&oci);
    let platform = format!(
        "{}/{}",
        config["os"].as_str().unwrap(),
        config["architecture"].as_str().unwrap()
    );
    (work, rootfs, platform)
}

/// `FROM --platform` picks the base image of that platform from an index, with BuildKit's
/// `BUILDPLATFORM` and `TARGETPLATFORM`; the image's own platform is the target's.
#[tokio::test(flavor = "multi_thread")]
async fn from_platform_picks_that_platforms_image_from_an_index() {
    let fx = Fixture::new();
    let host = match std::env::consts::ARCH {
        "aarch64" => "linux/arm64",
        _ => "linux/amd64",
    };
    let foreign = if host == "linux/arm64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    };
    let multi = strata_testkit::push_platform_index(
        &fx.registry,
        "base/multi",
        "1",
        &["linux/amd64", "linux/arm64"],
    )
    .unwrap();
    let context = ContextBuilder::new().build().unwrap();
    let read =
        |rootfs: &std::path::Path, name: &str| fs::read_to_string(rootfs.join(name)).unwrap();

    // The host's platform is the target: one stage on the foreign image, one on the build
    // platform's.
    let dockerfile = format!(
        "ARG WANT={foreign}\n\
         FROM --platform=$WANT {multi} AS foreign\n\
         FROM --platform=$BUILDPLATFORM {multi} AS native\n\
         FROM {multi}\n\
         COPY --from=foreign /platform /foreign\n\
         COPY --from=native /platform /native\n"
    );
    let (_work, rootfs, platform) = unpacked(fx.build(context.path(), &dockerfile)).await;
    assert_eq!(read(&rootfs, "platform"), format!("{host}\n"));
    assert_eq!(read(&rootfs, "foreign"), format!("{foreign}\n"));
    assert_eq!(read(&rootfs, "native"), format!("{host}\n"));
    assert_eq!(platform, host);

    // Another target platform: the final stage's base is that platform's image, a stage on
    // `$BUILDPLATFORM` still the host's, and `$TARGETPLATFORM` names the target.
    let dockerfile = format!(
        "FROM --platform=$BUILDPLATFORM {multi} AS tools\n\
         FROM --platform=$TARGETPLATFORM {multi}\n\
         COPY --from=tools /platform /build-platform\n"
    );
    let build = fx
        .build(context.path(), &dockerfile)
        .platform(foreign.parse().unwrap());
    let (_work, rootfs, platform) = unpacked(build).await;
    assert_eq!(read(&rootfs, "platform"), format!("{foreign}\n"));
    assert_eq!(read(&rootfs, "build-platform"), format!("{host}\n"));
    assert_eq!(platform, foreign);

    // A platform the index lacks, and one that is not a platform: errors naming the line.
    for (platform, wanted) in [("linux/s390x", "linux/s390x"), ("nonsense", "nonsense")] {
        let dockerfile = format!("FROM scratch\nFROM --platform={platform} {multi}\n");
        let (result, _) = run(fx.build(context.path(), &dockerfile)).await;
        let error = result.expect_err("the build fails");
        assert_eq!(error.position().map(|p| p.line), Some(2), "{error}");
        assert!(error.to_string().contains(wanted), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_written_as_it_is_walked_makes_the_layer_a_gathered_copy_makes() {
    // `COPY a /app` is written entry by entry as the walk finds it; `COPY a e /app/` (two
    // sources, `e` empty with `a`'s mode and time) gathers every entry and sorts them. The
    // layers must be the same bytes, for names that sort differently as paths and as
    // strings (`x/…` against `x.y`, `x-y`, `x y`), links, modes, excludes and --chown.
    use std::os::unix::fs::{PermissionsExt, symlink};
    let fx = Fixture::new();
    let context = tempfile::tempdir().unwrap();
    let a = context.path().join("a");
    for dir in ["x/deep/er", "x.y", "x-y/z", "x y", "é", "skip"] {
        fs::create_dir_all(a.join(dir)).unwrap();
    }
    for (n, file) in [
        "x/1",
        "x/deep/2",
        "x/deep/er/3",
        "x.y/4",
        "x-y/z/5",
        "x y/6",
        "é/7",
        "x0",
        "top.sh",
        "skip/8",
        "x/skip.log",
    ]
    .iter()
    .enumerate()
    {
        fs::write(a.join(file), format!("{n}\n")).unwrap();
    }
    fs::set_permissions(a.join("top.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(a.join("x.y"), fs::Permissions::from_mode(0o700)).unwrap();
    symlink("x/1", a.join("link")).unwrap();
    symlink("../x.y", a.join("x/up")).unwrap();
    fs::create_dir(context.path().join("e")).unwrap();
    for dir in [a.as_path(), &context.path().join("e")] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o750)).unwrap();
        strata_testkit::set_mtime(dir, 1_700_000_000).unwrap();
    }
    async fn layers(fx: &Fixture, context: &std::path::Path, dockerfile: &str) -> Vec<String> {
        let (image, _) = run(fx.build(context, dockerfile)).await;
        image
            .unwrap()
            .layers()
            .iter()
            .map(|l| l.diff_id.to_string())
            .collect()
    }
    let last = |layers: Vec<String>| layers.last().cloned().unwrap();
    let ctx = context.path();
    for flags in [
        "",
        "--exclude=skip --exclude=**/*.log ",
        "--chown=7:8 --chmod=640 ",
    ] {
        let walked = layers(&fx, ctx, &format!("FROM scratch\nCOPY {flags}a /app\n")).await;
        let gathered = layers(&fx, ctx, &format!("FROM scratch\nCOPY {flags}a e /app/\n")).await;
        assert_eq!(walked.len(), 1);
        assert_eq!(walked, gathered, "flags `{flags}`");
    }
    // Onto a directory the image has (made by WORKDIR).
    let onto = "FROM scratch\nWORKDIR /app/x\nWORKDIR /\n";
    assert_eq!(
        last(layers(&fx, ctx, &format!("{onto}COPY a /app\n")).await),
        last(layers(&fx, ctx, &format!("{onto}COPY a e /app/\n")).await),
    );
    // Onto a symbolic link in the image: `a/x` goes where `/app/x` leads.
    fs::create_dir(ctx.join("l")).unwrap();
    symlink("/target", ctx.join("l/x")).unwrap();
    let onto = "FROM scratch\nWORKDIR /target\nCOPY l /app\n";
    let walked = layers(&fx, ctx, &format!("{onto}COPY a /app\n")).await;
    assert_eq!(
        last(walked),
        last(layers(&fx, ctx, &format!("{onto}COPY a e /app/\n")).await),
    );
    // Below a directory `.dockerignore` excludes but looks inside (for an exception), onto
    // a symbolic link in the image: `a/x/deep` goes where `/app/x/deep` leads.
    fs::create_dir_all(ctx.join("l2/x")).unwrap();
    symlink("/t2", ctx.join("l2/x/deep")).unwrap();
    fs::write(ctx.join(".dockerignore"), "a/x\n!a/x/deep\n").unwrap();
    let onto = "FROM scratch\nWORKDIR /t2\nCOPY l2 /app\n";
    assert_eq!(
        last(layers(&fx, ctx, &format!("{onto}COPY a /app\n")).await),
        last(layers(&fx, ctx, &format!("{onto}COPY a e /app/\n")).await),
    );
    fs::remove_file(ctx.join(".dockerignore")).unwrap();
    // Hard links among the files: linked to the first met, as gathering does, and kept.
    fs::hard_link(a.join("x/1"), a.join("x/hard")).unwrap();
    fs::hard_link(a.join("x/1"), a.join("x.y/hard")).unwrap();
    assert_eq!(
        layers(&fx, ctx, "FROM scratch\nCOPY a /app\n").await,
        layers(&fx, ctx, "FROM scratch\nCOPY a e /app/\n").await,
    );
    let (image, _) = run(fx.build(ctx, "FROM scratch\nCOPY a /app\n")).await;
    let (work, layout) = layout(&image.unwrap());
    let rootfs = umoci_rootfs(work.path(), &layout);
    let inode =
        |p: &str| std::os::unix::fs::MetadataExt::ino(&fs::metadata(rootfs.join(p)).unwrap());
    assert_eq!(inode("app/x/1"), inode("app/x/hard"));
    assert_eq!(inode("app/x/1"), inode("app/x.y/hard"));
}

#[tokio::test(flavor = "multi_thread")]
async fn options_are_checked_at_once_before_anything_is_read_or_written() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // Typed values are refused when parsed, with the kind a build would give.
    for platform in ["linux", "linux/arm64/v8/extra", "linux/am d64"] {
        let error = strata::Error::from(platform.parse::<Platform>().unwrap_err());
        assert_eq!(error.kind(), strata::ErrorKind::Invalid, "{platform}");
        assert!(error.to_string().contains(platform), "{error}");
    }
    for step in ["FROM", "WORKDIR"] {
        let error = step.parse::<LayerStep>().unwrap_err();
        assert_eq!(error.kind(), strata::ErrorKind::Invalid, "{step}");
    }
    for source in ["ftp://example.com/base", "docker-image://Not A Reference"] {
        let error = source.parse::<ImageSource>().unwrap_err();
        assert_eq!(error.kind(), strata::ErrorKind::Invalid, "{source}");
    }
    // What stays text is checked by `validate`, and by `run` before anything else.
    let base: ImageSource = "docker-image://alpine:3".parse().unwrap();
    let bad = [
        Build::new(dir.path()).cache_repo("Not A Repository"),
        Build::new(dir.path()).cache_from("UPPER/case:1"),
        Build::new(dir.path()).build_context("", base.clone()),
        Build::new(dir.path()).build_context("two words", base.clone()),
    ];
    for build in bad {
        let shown = format!("{build:?}");
        assert_eq!(
            build.validate().unwrap_err().kind(),
            strata::ErrorKind::Invalid,
            "{shown}"
        );
        // `run` says the same before it opens the state directory or reads the context
        // (there is no Dockerfile here).
        let err = build.state_dir(&state).run().await.unwrap_err();
        assert_eq!(err.kind(), strata::ErrorKind::Invalid, "{shown}: {err}");
        assert!(!state.exists());
    }
    Build::new(dir.path())
        .platform("linux/arm64/v8".parse().unwrap())
        .cache_layers_of("run".parse().unwrap(), false)
        .cache_layers_of(LayerStep::Copy, true)
        .cache_repo("localhost:5000/cache")
        .cache_from("localhost:5000/app:1")
        .build_context("base", base)
        .build_context("local", "oci-layout:///tmp/layout:tag".parse().unwrap())
        .validate()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_cause_is_printed_once_in_an_error_chain() {
    // An error either says its cause in its own message or gives it as its source, never
    // both: a `Caused by:` printer (anyhow's, the command line's) must not repeat a line.
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("f", "f\n").build().unwrap();
    let missing_base = format!("{}/no/such-image:1", fx.registry.host());
    let cases = [
        // A step whose cause is the context (and under it, the filesystem).
        fx.build(context.path(), "FROM {base}\nCOPY missing /m\n"),
        // A RUN that exits non-zero.
        fx.build(context.path(), "FROM {base}\nRUN exit 3\n"),
        // A registry that has no such image (HTTP 404).
        fx.build(context.path(), &format!("FROM {missing_base}\n")),
        // A Dockerfile that is not there (a file system error).
        fx.build(context.path(), "")
            .dockerfile(context.path().join("nope/Dockerfile")),
    ];
    for build in cases {
        let (result, _) = run(build).await;
        let error = result.expect_err("the build fails");
        let mut parent: &dyn std::error::Error = &error;
        let mut depth = 0;
        while let Some(cause) = parent.source() {
            let (outer, inner) = (parent.to_string(), cause.to_string());
            assert!(
                !outer.contains(&inner),
                "`{inner}` is printed by `{outer}` and again as its source"
            );
            parent = cause;
            depth += 1;
        }
        assert!(depth < 8, "{error}");
        // The message alone still names what failed.
        assert!(!error.to_string().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_base_image_whose_config_names_no_digest_as_diff_id_is_refused() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    // A base image whose one layer is real but whose config's diff_id is a path, not a
    // digest: strata must refuse it where the config is read, naming the value.
    let client = fx.registry.client();
    let layer = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &[0u8; 1024]).unwrap();
        gz.finish().unwrap()
    };
    let layer_digest = client.push_blob("bad/diffid", &layer).unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": strata::Platform::host().architecture,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:../../etc/passwd"]},
    }))
    .unwrap();
    let config_digest = client.push_blob("bad/diffid", &config).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    client
        .put_manifest(
            "bad/diffid",
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
        .unwrap();
    let dockerfile = format!("FROM {}/bad/diffid:v1\nLABEL a=b\n", fx.registry.host());
    let (image, _) = run(fx.build(context.path(), &dockerfile)).await;
    let error = image.unwrap_err();
    assert_eq!(error.kind(), strata::ErrorKind::Invalid, "{error}");
    let text = format!("{error:#}");
    assert!(text.contains("sha256:../../etc/passwd"), "{text}");
}
