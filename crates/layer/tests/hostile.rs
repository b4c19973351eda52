//! Hostile layers: each is refused (or kept inside the target), and nothing outside the target
//! is created, changed or deleted.

mod common;

use common::{RawTar, describe};
use std::fs;
use strata_layer::{Error, Extractor, LayerWriter};

/// A workspace with a target directory and, beside it, a sentinel that must never change.
struct Arena {
    dir: tempfile::TempDir,
}

impl Arena {
    fn new() -> Arena {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("target")).unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/sentinel"), "untouched").unwrap();
        fs::write(dir.path().join("target/keep"), "lower layer").unwrap();
        Arena { dir }
    }

    fn target(&self) -> std::path::PathBuf {
        self.dir.path().join("target")
    }

    fn outside(&self) -> std::collections::BTreeMap<String, String> {
        describe(&self.dir.path().join("outside"))
    }

    /// Applies `layer` and checks that the outside did not change; returns the result.
    fn apply(&self, layer: &[u8], extractor: Extractor) -> Result<(), Error> {
        let before = self.outside();
        let result = extractor.apply(layer, &self.target()).map(|_| ());
        assert_eq!(
            self.outside(),
            before,
            "something outside the target changed"
        );
        assert_eq!(
            fs::read_to_string(self.dir.path().join("outside/sentinel")).unwrap(),
            "untouched"
        );
        let siblings: Vec<_> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            siblings.len(),
            2,
            "nothing new beside the target: {siblings:?}"
        );
        result
    }
}

fn refused(result: Result<(), Error>, needle: &str) {
    match result {
        Err(Error::Refused { message, .. }) => assert!(message.contains(needle), "{message}"),
        other => panic!("expected a refusal containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn dot_dot_names_are_refused() {
    let arena = Arena::new();
    let layer = RawTar::new().file("../outside/sentinel", b"owned").finish();
    refused(arena.apply(&layer, Extractor::new()), "`..`");
    let layer = RawTar::new().file("a/../../outside/x", b"owned").finish();
    refused(arena.apply(&layer, Extractor::new()), "`..`");
}

#[test]
fn absolute_names_are_refused() {
    let arena = Arena::new();
    let sentinel = arena.dir.path().join("outside/sentinel");
    let layer = RawTar::new()
        .file(sentinel.to_str().unwrap(), b"owned")
        .finish();
    refused(arena.apply(&layer, Extractor::new()), "absolute");
}

#[test]
fn symlinks_in_parents_resolve_inside_the_target() {
    let arena = Arena::new();
    let outside = arena.dir.path().join("outside");
    let layer = RawTar::new()
        .symlink("abs", outside.to_str().unwrap())
        .file("abs/sentinel", b"owned")
        .symlink("up", "../../../../..")
        .file("up/escaped", b"owned")
        .symlink("a", "b")
        .symlink("b", "../outside")
        .file("a/chained", b"owned")
        .finish();
    arena.apply(&layer, Extractor::new()).unwrap();
    // Each write landed inside the target, at the path the link means there.
    let inside = arena.target().join(outside.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside.join("sentinel")).unwrap(), b"owned");
    assert_eq!(fs::read(arena.target().join("escaped")).unwrap(), b"owned");
    assert_eq!(
        fs::read(arena.target().join("outside/chained")).unwrap(),
        b"owned"
    );
}

#[test]
fn hardlinks_cannot_reach_outside() {
    let arena = Arena::new();
    let sentinel = arena.dir.path().join("outside/sentinel");
    let layer = RawTar::new()
        .hardlink("stolen", sentinel.to_str().unwrap())
        .finish();
    refused(arena.apply(&layer, Extractor::new()), "absolute");
    let layer = RawTar::new()
        .hardlink("stolen", "../outside/sentinel")
        .finish();
    refused(arena.apply(&layer, Extractor::new()), "`..`");
    // Through a symlink: resolved inside the target, where there is nothing to link to.
    let layer = RawTar::new()
        .symlink("out", arena.dir.path().join("outside").to_str().unwrap())
        .hardlink("stolen", "out/sentinel")
        .finish();
    refused(arena.apply(&layer, Extractor::new()), "does not exist");
}

#[test]
fn whiteouts_cannot_delete_outside() {
    let arena = Arena::new();
    let layer = RawTar::new().file("../outside/.wh.sentinel", b"").finish();
    refused(arena.apply(&layer, Extractor::new()), "`..`");
    let layer = RawTar::new()
        .symlink("out", arena.dir.path().join("outside").to_str().unwrap())
        .file("out/.wh.sentinel", b"")
        .symlink("up", "..")
        .file("up/.wh..wh..opq", b"")
        .finish();
    arena.apply(&layer, Extractor::new()).unwrap();
    // The opaque marker in `up` (the target's root, clamped) cleared the lower layer's file.
    assert!(!arena.target().join("keep").exists());
}

#[test]
fn devices_are_refused_unless_allowed() {
    let arena = Arena::new();
    let layer = RawTar::new().entry(b"dev/sda", b'4', b"", b"").finish();
    refused(
        arena.apply(&layer, Extractor::new()),
        "device nodes are not allowed",
    );
    let layer = RawTar::new().entry(b"dev/kmem", b'3', b"", b"").finish();
    refused(
        arena.apply(&layer, Extractor::new()),
        "device nodes are not allowed",
    );
}

#[test]
fn nul_bytes_and_absurd_lengths_are_refused() {
    let arena = Arena::new();
    let layer = RawTar::new()
        .pax(&[("path", b"a\0b")])
        .file("placeholder", b"")
        .finish();
    refused(arena.apply(&layer, Extractor::new()), "NUL");
    let long = "a/".repeat(3000) + "x";
    let layer = RawTar::new()
        .pax(&[("path", long.as_bytes())])
        .file("placeholder", b"")
        .finish();
    refused(arena.apply(&layer, Extractor::new()), "longer than 4096");
    let layer = RawTar::new()
        .pax(&[("path", "c".repeat(300).as_bytes())])
        .file("placeholder", b"")
        .finish();
    refused(arena.apply(&layer, Extractor::new()), "255");
}

#[test]
fn symlink_loops_and_file_parents_are_refused() {
    let arena = Arena::new();
    let layer = RawTar::new()
        .symlink("loop", "loop")
        .file("loop/x", b"")
        .finish();
    refused(arena.apply(&layer, Extractor::new()), "too many levels");
    let layer = RawTar::new()
        .file("plain", b"")
        .file("plain/child", b"")
        .finish();
    refused(arena.apply(&layer, Extractor::new()), "not a directory");
}

#[test]
fn malformed_streams_are_errors_not_panics() {
    let arena = Arena::new();
    let huge_pax = RawTar::new()
        .entry(b"pax", b'x', b"", &vec![b'9'; 2 << 20])
        .finish();
    assert!(matches!(
        arena.apply(&huge_pax, Extractor::new()),
        Err(Error::Malformed { .. })
    ));
    let mut truncated = RawTar::new().file("data", &[7u8; 5000]).finish();
    truncated.truncate(512 + 1000);
    assert!(matches!(
        arena.apply(&truncated, Extractor::new()),
        Err(Error::Malformed { .. })
    ));
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
    assert!(matches!(
        arena.apply(&garbage, Extractor::new()),
        Err(Error::Malformed { .. })
    ));
    let bad_gzip = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 1, 2, 3, 4];
    assert!(arena.apply(&bad_gzip, Extractor::new()).is_err());
}

#[test]
fn a_digest_mismatch_leaves_no_unpacked_tree() {
    let parent = tempfile::tempdir().unwrap();
    let mut blob = Vec::new();
    let entries = vec![strata_layer::Entry {
        path: "file".into(),
        kind: strata_layer::EntryKind::Bytes(b"content".to_vec()),
        metadata: strata_layer::Metadata {
            mode: 0o644,
            ..Default::default()
        },
    }];
    let layer = LayerWriter::new().write(entries, &mut blob).unwrap();
    let dest = parent.path().join("layer");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = Extractor::new()
        .expect_digest(Some(wrong))
        .unpack(blob.as_slice(), &dest)
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    assert!(!dest.exists());
    assert_eq!(
        fs::read_dir(parent.path()).unwrap().count(),
        0,
        "no staging directory left behind"
    );

    // With the right digest it appears whole.
    let right = layer.descriptor.digest().to_string();
    Extractor::new()
        .expect_digest(Some(right))
        .unpack(blob.as_slice(), &dest)
        .unwrap();
    assert_eq!(fs::read(dest.join("file")).unwrap(), b"content");
    assert_eq!(fs::read_dir(parent.path()).unwrap().count(), 1);
}

#[test]
fn a_bad_entry_in_unpack_leaves_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let layer = RawTar::new()
        .file("good", b"x")
        .file("../bad", b"y")
        .finish();
    let dest = parent.path().join("layer");
    assert!(Extractor::new().unpack(layer.as_slice(), &dest).is_err());
    assert_eq!(fs::read_dir(parent.path()).unwrap().count(), 0);
}

/// A live root filesystem's protected paths (mount points, volumes, the builder's own
/// directory): no entry, link or whiteout of a layer writes, replaces or deletes them, and
/// `clear` removes everything else.
#[test]
fn protected_paths_are_never_written_replaced_or_deleted() {
    let arena = Arena::new();
    let root = arena.target();
    for dir in ["proc", "work/space", "var/run", "etc", "a/b"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("work/space/user-file"), "mine").unwrap();
    fs::write(root.join("var/run/sock"), "live").unwrap();
    fs::write(root.join("etc/hosts"), "127.0.0.1 localhost").unwrap();
    fs::write(root.join("a/b/kept"), "kept").unwrap();
    fs::write(root.join("a/gone"), "gone").unwrap();
    let protect = ["proc", "work/space", "var/run", "/etc/hosts", "a/b"];
    let before: Vec<_> = [
        "work/space/user-file",
        "var/run/sock",
        "etc/hosts",
        "a/b/kept",
    ]
    .iter()
    .map(|p| (p.to_string(), fs::read(root.join(p)).unwrap()))
    .collect();
    let layer = RawTar::new()
        .file("proc/evil", b"x")
        .file("work/space/user-file", b"overwritten")
        .file("etc/hosts", b"evil hosts")
        .symlink("link", "/work/space")
        .file("link/through", b"x")
        .symlink("var/run", "/tmp")
        .file("var", b"a file where var was")
        .file(".wh.proc", b"")
        .file("etc/.wh.hosts", b"")
        .file("a/.wh..wh..opq", b"")
        .file("fresh", b"new")
        .finish();
    let report = Extractor::new()
        .protect(protect)
        .apply(&layer[..], &root)
        .unwrap();
    for (path, bytes) in &before {
        assert_eq!(&fs::read(root.join(path)).unwrap(), bytes, "{path} changed");
    }
    assert!(!root.join("proc/evil").exists());
    assert!(!root.join("work/space/through").exists());
    assert!(
        root.join("var").is_dir(),
        "a directory holding a protected path stays"
    );
    assert!(
        !root.join("a/gone").exists(),
        "the opaque whiteout removes around a/b"
    );
    assert_eq!(fs::read(root.join("fresh")).unwrap(), b"new");
    assert!(report.skipped.len() >= 6, "{:?}", report.skipped);

    // Clearing the root for a new stage keeps the protected paths and what leads to them.
    Extractor::new().protect(protect).clear(&root).unwrap();
    let mut left: Vec<String> = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            left.push(path.strip_prefix(&root).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() && !path.ends_with("space") {
                stack.push(path);
            }
        }
    }
    left.sort();
    assert_eq!(
        left,
        [
            "a",
            "a/b",
            "a/b/kept",
            "etc",
            "etc/hosts",
            "proc",
            "var",
            "var/run",
            "var/run/sock",
            "work",
            "work/space"
        ]
    );
}
