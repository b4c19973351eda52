//! Every kind of change, found by the walk-based diff and by reading an overlay's upper
//! directory: both must give the same change set for the same operations.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use strata_snapshot::overlay::{OverlayMount, probe, upper_changes};
use strata_snapshot::{ChangeKind, ChangeSet, Scanner, diff};

use ChangeKind::{Added, Deleted, Modified, Opaque};

/// The lower layer every scenario starts from.
fn lower(root: &Path) {
    fs::create_dir_all(root.join("d/sub")).unwrap();
    fs::write(root.join("d/f"), "content").unwrap();
    fs::write(root.join("d/sub/deep"), "deep").unwrap();
    fs::write(root.join("top"), "top").unwrap();
    symlink("top", root.join("l")).unwrap();
    // Times in the past, so that any change moves them.
    for path in ["d/sub/deep", "d/sub", "d/f", "d", "top", "l"] {
        strata_testkit::set_mtime(&root.join(path), 1_600_000_000).unwrap();
    }
}

fn walk_mode(ops: fn(&Path)) -> ChangeSet {
    let dir = tempfile::tempdir().unwrap();
    lower(dir.path());
    let before = Scanner::new(dir.path()).scan().unwrap();
    ops(dir.path());
    let after = Scanner::new(dir.path()).scan().unwrap();
    diff(&before, &after)
}

fn overlay_mode(ops: fn(&Path)) -> Option<ChangeSet> {
    let support = probe();
    if !support.usable {
        assert!(
            !rustix::process::geteuid().is_root(),
            "overlay unusable while running as root: {:?}",
            support.reason
        );
        eprintln!("overlay mode not checked: {:?}", support.reason);
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let [l, u, w, m]: [PathBuf; 4] =
        ["lower", "upper", "work", "merged"].map(|d| dir.path().join(d));
    for d in [&l, &u, &w, &m] {
        fs::create_dir(d).unwrap();
    }
    lower(&l);
    let mount = OverlayMount::mount(std::slice::from_ref(&l), &u, &w, &m).unwrap();
    ops(mount.merged());
    mount.unmount().unwrap();
    Some(upper_changes(&u, &[l]).unwrap())
}

fn check(ops: fn(&Path), expected: &[(&str, ChangeKind)]) {
    let expected: Vec<(String, ChangeKind)> =
        expected.iter().map(|(p, k)| (p.to_string(), *k)).collect();
    assert_eq!(walk_mode(ops).summary(), expected, "walk mode");
    if let Some(overlay) = overlay_mode(ops) {
        assert_eq!(overlay.summary(), expected, "overlay mode");
    }
}

#[test]
fn add_a_file() {
    check(
        |r| fs::write(r.join("d/new"), "new").unwrap(),
        &[("d", Modified), ("d/new", Added)],
    );
}

#[test]
fn modify_contents() {
    check(
        |r| fs::write(r.join("d/f"), "changed").unwrap(),
        &[("d/f", Modified)],
    );
}

#[test]
fn modify_metadata_only() {
    check(
        |r| fs::set_permissions(r.join("d/f"), fs::Permissions::from_mode(0o600)).unwrap(),
        &[("d/f", Modified)],
    );
}

#[test]
fn delete_a_file() {
    check(
        |r| fs::remove_file(r.join("d/f")).unwrap(),
        &[("d", Modified), ("d/f", Deleted)],
    );
}

#[test]
fn delete_a_directory_is_one_whiteout() {
    check(
        |r| fs::remove_dir_all(r.join("d")).unwrap(),
        &[("d", Deleted)],
    );
}

#[test]
fn replace_a_file_by_a_directory() {
    check(
        |r| {
            fs::remove_file(r.join("d/f")).unwrap();
            fs::create_dir(r.join("d/f")).unwrap();
            fs::write(r.join("d/f/x"), "x").unwrap();
        },
        &[("d", Modified), ("d/f", Modified), ("d/f/x", Added)],
    );
}

#[test]
fn replace_a_directory_by_a_file() {
    check(
        |r| {
            fs::remove_dir_all(r.join("d")).unwrap();
            fs::write(r.join("d"), "file now").unwrap();
        },
        &[("d", Modified)],
    );
}

#[test]
fn replace_a_directory_by_a_new_directory_is_opaque() {
    check(
        |r| {
            fs::remove_dir_all(r.join("d")).unwrap();
            fs::create_dir(r.join("d")).unwrap();
            fs::write(r.join("d/fresh"), "fresh").unwrap();
        },
        &[("d", Modified), ("d", Opaque), ("d/fresh", Added)],
    );
}

#[test]
fn retarget_a_symlink() {
    check(
        |r| {
            fs::remove_file(r.join("l")).unwrap();
            symlink("d/f", r.join("l")).unwrap();
        },
        &[("l", Modified)],
    );
}

#[test]
fn add_a_hardlink() {
    check(
        |r| fs::hard_link(r.join("d/f"), r.join("d/g")).unwrap(),
        &[("d", Modified), ("d/g", Added)],
    );
}

#[test]
fn set_an_xattr() {
    check(
        |r| {
            rustix::fs::lsetxattr(
                r.join("d/f"),
                "user.k",
                b"v",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap()
        },
        &[("d/f", Modified)],
    );
}

#[test]
fn a_temporary_file_leaves_only_its_directory_changed() {
    check(
        |r| {
            fs::write(r.join("d/sub/tmp"), "tmp").unwrap();
            fs::remove_file(r.join("d/sub/tmp")).unwrap();
        },
        &[("d/sub", Modified)],
    );
}

#[test]
fn new_hardlinked_files_link_to_the_first() {
    let changes = walk_mode(|r| {
        fs::write(r.join("a1"), "same").unwrap();
        fs::hard_link(r.join("a1"), r.join("a2")).unwrap();
    });
    let links: Vec<_> = changes
        .changes
        .iter()
        .map(|c| (c.path.to_str().unwrap(), c.hardlink_to.as_deref()))
        .collect();
    assert_eq!(links, [("a1", None), ("a2", Some(Path::new("a1")))]);
    assert_eq!(
        changes.changes[0]
            .source
            .as_deref()
            .map(|p| p.ends_with("a1")),
        Some(true)
    );
}

#[test]
fn ignore_lists_cover_paths_and_below_but_not_similar_names() {
    let dir = tempfile::tempdir().unwrap();
    for p in ["proc/1", "procfoo", "sys/x", "run/secrets/token"] {
        fs::create_dir_all(dir.path().join(p)).unwrap();
    }
    let snapshot = Scanner::new(dir.path())
        .ignore(["/proc", "sys/", "run/secrets"])
        .scan()
        .unwrap();
    let paths: Vec<_> = snapshot.entries.keys().cloned().collect();
    assert_eq!(paths, [Path::new("procfoo"), Path::new("run")]);
}

#[test]
fn content_hashes_catch_same_size_same_time_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), "aaaa").unwrap();
    let before = Scanner::new(dir.path()).hash_contents(true).scan().unwrap();
    let meta = fs::metadata(dir.path().join("f")).unwrap();
    let file = fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("f"))
        .unwrap();
    std::os::unix::fs::FileExt::write_at(&file, b"bbbb", 0).unwrap();
    file.set_modified(meta.modified().unwrap()).unwrap();
    let after = Scanner::new(dir.path()).hash_contents(true).scan().unwrap();
    assert_eq!(
        diff(&before, &after).summary(),
        [("f".to_owned(), Modified)]
    );
}

#[test]
fn the_overlay_probe_explains_itself() {
    let support = probe();
    assert_eq!(support.usable, support.reason.is_none());
    if rustix::process::geteuid().is_root() {
        assert!(support.usable, "{:?}", support.reason);
    }
}

/// Writing to one name of a hardlinked file: in a plain directory both names see the new
/// contents (one inode), while overlayfs copies up only the name written to and breaks the
/// link, so the other name keeps the old contents in the merged view. Each mode reports what
/// its own tree shows; this is the one place the two differ, by the nature of overlayfs.
#[test]
fn writing_to_a_hardlinked_file() {
    fn ops(r: &Path) {
        fs::hard_link(r.join("d/f"), r.join("d/g")).unwrap();
    }
    fn write(r: &Path) {
        // Rewrites the inode in place: every name of it sees the new contents.
        fs::write(r.join("d/f"), "rewritten").unwrap();
    }
    // The link exists in the lower layer before the step that writes.
    let walk = {
        let dir = tempfile::tempdir().unwrap();
        lower(dir.path());
        ops(dir.path());
        let before = Scanner::new(dir.path()).scan().unwrap();
        write(dir.path());
        diff(&before, &Scanner::new(dir.path()).scan().unwrap())
    };
    assert_eq!(
        walk.summary(),
        [("d/f".to_owned(), Modified), ("d/g".to_owned(), Modified)]
    );
    assert_eq!(
        walk.changes[1].hardlink_to.as_deref(),
        Some(Path::new("d/f")),
        "written once, linked after"
    );

    if probe().usable {
        let dir = tempfile::tempdir().unwrap();
        let [l, u, w, m]: [PathBuf; 4] =
            ["lower", "upper", "work", "merged"].map(|d| dir.path().join(d));
        for d in [&l, &u, &w, &m] {
            fs::create_dir(d).unwrap();
        }
        lower(&l);
        ops(&l);
        let mount = OverlayMount::mount(std::slice::from_ref(&l), &u, &w, &m).unwrap();
        write(mount.merged());
        assert_eq!(
            fs::read(m.join("d/g")).unwrap(),
            b"content",
            "overlayfs broke the link"
        );
        mount.unmount().unwrap();
        assert_eq!(
            upper_changes(&u, &[l]).unwrap().summary(),
            [("d/f".to_owned(), Modified)]
        );
    }
}

#[test]
fn a_write_that_puts_the_size_and_time_back_is_still_seen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("f"), "aaaa").unwrap();
    let before = strata_snapshot::Scanner::new(root).scan().unwrap();
    let mtime = fs::metadata(root.join("f")).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(root.join("f"), "bbbb").unwrap();
    fs::File::options()
        .write(true)
        .open(root.join("f"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let after = strata_snapshot::Scanner::new(root).scan().unwrap();
    let changes = strata_snapshot::diff(&before, &after);
    assert!(
        changes.changes.iter().any(|c| c.path == Path::new("f")),
        "{:?}",
        changes.changes
    );
}

/// A stack of 130 lower directories (deeper than one page of mount options under a long
/// path) mounts through `lowerdir+`, in the same order as `lowerdir=`: the top-most first,
/// a whiteout hiding what lies below it, an opaque directory hiding the layers under it;
/// the read-only view of the same stack shows the same tree and refuses writes.
#[test]
fn a_stack_of_130_layers_mounts_in_order_with_whiteouts() {
    if !probe().usable {
        assert!(
            !rustix::process::geteuid().is_root(),
            "overlay unusable as root"
        );
        eprintln!("overlay not checked: not root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A long base path, so that the options could never fit in one page.
    let base = dir
        .path()
        .join("a-long-directory-name-for-the-layer-store-of-this-test");
    let mut lowers = Vec::new();
    for i in 0..130 {
        let layer = base.join(format!("{i:03}-{}", "x".repeat(40)));
        fs::create_dir_all(layer.join("d")).unwrap();
        fs::write(layer.join(format!("d/file-{i}")), i.to_string()).unwrap();
        fs::write(layer.join("shared"), i.to_string()).unwrap();
        lowers.push(layer);
    }
    // Layer 100 deletes file-3 and makes `o` opaque over layer 5's content.
    fs::create_dir_all(lowers[5].join("o")).unwrap();
    fs::write(lowers[5].join("o/hidden"), "").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        lowers[100].join("d/file-3"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    fs::create_dir(lowers[100].join("o")).unwrap();
    rustix::fs::lsetxattr(
        lowers[100].join("o"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::write(lowers[100].join("o/shown"), "").unwrap();
    // Top-most first.
    lowers.reverse();
    let check = |merged: &Path| {
        assert_eq!(fs::read_to_string(merged.join("shared")).unwrap(), "129");
        assert!(!merged.join("d/file-3").exists());
        assert!(merged.join("d/file-0").is_file() && merged.join("d/file-129").is_file());
        assert_eq!(fs::read_dir(merged.join("d")).unwrap().count(), 129);
        assert!(merged.join("o/shown").exists() && !merged.join("o/hidden").exists());
    };
    let [u, w, m, v]: [PathBuf; 4] =
        ["upper", "work", "merged", "view"].map(|d| dir.path().join(d));
    for d in [&u, &w, &m, &v] {
        fs::create_dir(d).unwrap();
    }
    let mount = OverlayMount::mount(&lowers, &u, &w, &m).unwrap();
    check(mount.merged());
    fs::write(m.join("new"), "").unwrap();
    mount.unmount().unwrap();
    assert!(u.join("new").is_file());

    let view = OverlayMount::mount_readonly(&lowers, &v).unwrap();
    check(view.merged());
    let refused = fs::write(v.join("new"), "").unwrap_err();
    assert_eq!(
        refused.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    view.unmount().unwrap();
    // And a short stack, through the classic options string.
    let short = OverlayMount::mount_readonly(&lowers[128..], &v).unwrap();
    assert_eq!(fs::read_to_string(v.join("shared")).unwrap(), "1");
    short.unmount().unwrap();
}

/// A private copy of a merged view on a filesystem with reflinks (XFS on a loop device):
/// each file's data is cloned from the layer file the view shows (a reflink cannot cross
/// from the overlay to the filesystem below), what the view hides stays hidden, and the
/// copy is the view's, never the layers'.
#[test]
fn a_view_is_cloned_by_reference_from_its_layers() {
    if !probe().usable {
        assert!(
            !rustix::process::geteuid().is_root(),
            "overlay unusable while running as root"
        );
        eprintln!("not checked: overlays need root");
        return;
    }
    let xfs = strata_testkit::Xfs::mount().unwrap();
    let root = xfs.path();
    let (bottom, top) = (root.join("bottom"), root.join("top"));
    fs::create_dir_all(bottom.join("d")).unwrap();
    fs::write(bottom.join("d/kept"), vec![b'k'; 1 << 20]).unwrap();
    fs::write(bottom.join("d/replaced"), "old").unwrap();
    fs::write(bottom.join("d/deleted"), "gone").unwrap();
    fs::create_dir_all(top.join("d")).unwrap();
    fs::write(top.join("d/replaced"), vec![b'n'; 1 << 20]).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        top.join("d/deleted"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    let empty = root.join("empty");
    fs::create_dir(&empty).unwrap();
    let view_dir = root.join("view");
    fs::create_dir(&view_dir).unwrap();
    let lowers = vec![top.clone(), bottom.clone(), empty];
    let view = OverlayMount::mount_readonly(&lowers, &view_dir).unwrap();
    let copy = root.join("copy");
    fs::create_dir(&copy).unwrap();
    let report = strata_snapshot::clone_tree_from_layers(view.merged(), &copy, &lowers).unwrap();
    assert_eq!((report.reflinked, report.copied), (2, 0), "{report:?}");
    assert_eq!(fs::read(copy.join("d/kept")).unwrap(), vec![b'k'; 1 << 20]);
    assert_eq!(
        fs::read(copy.join("d/replaced")).unwrap(),
        vec![b'n'; 1 << 20]
    );
    assert!(!copy.join("d/deleted").exists(), "the whiteout hides it");
    // Writing the copy leaves the layers alone.
    fs::write(copy.join("d/kept"), "changed").unwrap();
    assert_eq!(fs::read(bottom.join("d/kept")).unwrap().len(), 1 << 20);
    // Without the layers, the data goes through the view: copied, never reflinked.
    let copied = root.join("copied");
    fs::create_dir(&copied).unwrap();
    let report = strata_snapshot::clone_tree(view.merged(), &copied).unwrap();
    assert_eq!((report.reflinked, report.copied), (0, 2), "{report:?}");
    view.unmount().unwrap();
}
