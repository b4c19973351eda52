//! Hostile build contexts and Dockerfiles: each gives a clear error (naming the path or
//! line) or builds, in bounded time, and nothing outside the context is read or written.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::run;
use strata::{Build, ContextSource, check_state};
use strata_testkit::ContextBuilder;

/// Builds `dockerfile` (FROM scratch only: no registry needed) in `context` with a fresh
/// state; the result as text and how long it took.
async fn build(
    context: &Path,
    dockerfile: impl Into<String>,
) -> (Result<String, String>, Duration) {
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (result, _) = run(Build::new(context)
        .dockerfile_text(dockerfile.into())
        .state_dir(state.path()))
    .await;
    let took = started.elapsed();
    let check = check_state(state.path(), false).unwrap();
    assert!(check.is_clean(), "{:#?}", check.faults);
    (
        result
            .map(|image| image.digest().to_owned())
            .map_err(|e| e.to_string()),
        took,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn contexts_cannot_reach_outside_themselves() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), "outside secret\n").unwrap();
    let parent_secret = outside.path().join("secret");
    let context = ContextBuilder::new()
        .file("etc/passwd", "context passwd\n")
        .symlink("to-outside", outside.path())
        .symlink("to-secret", &parent_secret)
        .symlink("up", "../../../../../../..")
        .build()
        .unwrap();
    for (instruction, expected) in [
        ("COPY to-outside/secret /x", "to-outside/secret"),
        ("COPY up/etc/shadow /x", "up/etc/shadow"),
        ("COPY ../secret /x", "../secret"),
        ("COPY to-secret /x", "to-secret"),
    ] {
        let (result, took) = build(context.path(), format!("FROM scratch\n{instruction}\n")).await;
        let message = result.expect_err(instruction);
        assert!(message.contains("Dockerfile:2"), "{instruction}: {message}");
        assert!(message.contains(expected), "{instruction}: {message}");
        assert!(!message.contains("outside secret"));
        assert!(took < Duration::from_secs(10));
    }
    // An absolute source is relative to the context, as in Docker: the context's passwd.
    let state = tempfile::tempdir().unwrap();
    let (image, _) = run(Build::new(context.path())
        .dockerfile_text("FROM scratch\nCOPY /etc/passwd /p\n")
        .state_dir(state.path()))
    .await;
    let image = image.unwrap();
    let (work, layout) = common::layout(&image);
    let rootfs = common::umoci_rootfs(work.path(), &layout);
    assert_eq!(
        fs::read_to_string(rootfs.join("p")).unwrap(),
        "context passwd\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dockerignore_cannot_bring_back_the_parent() {
    let parent = tempfile::tempdir().unwrap();
    fs::write(parent.path().join("secret"), "parent secret\n").unwrap();
    let context = parent.path().join("context");
    fs::create_dir(&context).unwrap();
    fs::write(context.join("kept"), "kept\n").unwrap();
    fs::write(
        context.join(".dockerignore"),
        "*\n!../secret\n!../*\n!kept\n!..\n",
    )
    .unwrap();
    let (result, _) = build(&context, "FROM scratch\nCOPY . /all/\n").await;
    result.unwrap();
    let (result, _) = build(&context, "FROM scratch\nCOPY ../secret /s\n").await;
    let message = result.unwrap_err();
    assert!(
        message.contains("Dockerfile:2") && message.contains("../secret"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_context_tar_with_parent_entries_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sentinel_dir = dir.path().join("around");
    fs::create_dir(&sentinel_dir).unwrap();
    // A tar whose second entry climbs out: written by hand, since tar writers refuse it.
    let mut tar = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut tar);
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_path("ok").unwrap();
        header.set_cksum();
        builder.append(&header, &b"fine\n"[..]).unwrap();
        let mut evil = tar::Header::new_gnu();
        evil.set_size(5);
        evil.set_mode(0o644);
        let name = b"../../evil";
        evil.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        evil.set_cksum();
        builder.append(&evil, &b"evil\n"[..]).unwrap();
        builder.finish().unwrap();
    }
    let tar_path = sentinel_dir.join("context.tar");
    fs::write(&tar_path, &tar).unwrap();
    let state = tempfile::tempdir().unwrap();
    let (result, _) = run(Build::new(ContextSource::Tar(tar_path.clone()))
        .dockerfile_text("FROM scratch\nCOPY ok /ok\n")
        .state_dir(state.path()))
    .await;
    let message = result.unwrap_err().to_string();
    assert!(message.contains("../../evil"), "{message}");
    assert!(
        message.contains(&tar_path.display().to_string()),
        "{message}"
    );
    // Nothing was written beside the tar, nor above it.
    let around: Vec<_> = fs::read_dir(&sentinel_dir).unwrap().flatten().collect();
    assert_eq!(around.len(), 1);
    assert!(!dir.path().join("evil").exists());
    assert!(!state.path().join("evil").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_and_broken_dockerfiles_end_in_bounded_time() {
    let context = ContextBuilder::new().build().unwrap();
    // 10 MiB of comments, then one instruction: builds.
    let mut comments = String::from("FROM scratch\n");
    while comments.len() < 10 << 20 {
        comments.push_str("# a comment line that says nothing at all, again and again\n");
    }
    comments.push_str("ENV A=1\n");
    let (result, took) = build(context.path(), comments).await;
    result.unwrap();
    assert!(took < Duration::from_secs(30), "{took:?}");
    // A 10 MiB label value: builds, and the config carries it.
    let label = format!("FROM scratch\nLABEL big={}\n", "x".repeat(10 << 20));
    let (result, took) = build(context.path(), label).await;
    result.unwrap();
    assert!(took < Duration::from_secs(30), "{took:?}");
    // 100,000 instructions: builds (ENV steps cost O(1) each).
    let mut many = String::from("FROM scratch\n");
    for i in 0..100_000 {
        many.push_str(&format!("ENV V{i}=value{i}\n"));
    }
    let (result, took) = build(context.path(), many).await;
    result.unwrap();
    assert!(took < Duration::from_secs(60), "{took:?}");
    // A heredoc with no terminator: an error naming its line.
    let (result, _) = build(context.path(), "FROM scratch\nRUN <<EOF\necho hi\n").await;
    let message = result.unwrap_err();
    assert!(message.contains(":2"), "{message}");
    assert!(message.to_lowercase().contains("heredoc"), "{message}");
    // 10,000 nested expansions: refused at the nesting limit, with the line.
    let nested = format!(
        "FROM scratch\nENV A=1\nENV B={}x{}\n",
        "${A:-".repeat(10_000),
        "}".repeat(10_000)
    );
    let started = Instant::now();
    let (result, _) = build(context.path(), nested).await;
    let message = result.unwrap_err();
    assert!(message.contains(":3"), "{message}");
    assert!(message.contains("nest"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Binary garbage: an error, not a panic.
    let garbage = common::noise(1 << 20, 0x1234_5678_9abc_def0);
    let (result, took) = build(context.path(), String::from_utf8_lossy(&garbage)).await;
    assert!(result.is_err());
    assert!(took < Duration::from_secs(10), "{took:?}");
}
