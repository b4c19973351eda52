//! Whiteouts and opaque directories applied onto lower layers, as a container runtime does.

use std::fs;

use strata_layer::{Entry, EntryKind, Extractor, LayerWriter, Metadata, WhiteoutMode};

fn meta(mode: u32) -> Metadata {
    Metadata {
        mode,
        ..Default::default()
    }
}

fn entry(path: &str, kind: EntryKind) -> Entry {
    let mode = if kind == EntryKind::Dir { 0o755 } else { 0o644 };
    Entry {
        path: path.into(),
        kind,
        metadata: meta(mode),
    }
}

fn layer(entries: Vec<Entry>) -> Vec<u8> {
    let mut blob = Vec::new();
    LayerWriter::new().write(entries, &mut blob).unwrap();
    blob
}

fn lower() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("app/cache/deep")).unwrap();
    fs::write(root.path().join("app/cache/deep/old"), "old").unwrap();
    fs::write(root.path().join("app/cache/stale"), "stale").unwrap();
    fs::write(root.path().join("app/config"), "v1").unwrap();
    fs::write(root.path().join("gone"), "bye").unwrap();
    fs::create_dir(root.path().join("gone-dir")).unwrap();
    fs::write(root.path().join("gone-dir/x"), "x").unwrap();
    root
}

#[test]
fn whiteouts_delete_files_and_directories_of_lower_layers() {
    let root = lower();
    let blob = layer(vec![
        entry("gone", EntryKind::Whiteout),
        entry("gone-dir", EntryKind::Whiteout),
        entry("missing/nothing", EntryKind::Whiteout),
    ]);
    Extractor::new()
        .apply(blob.as_slice(), root.path())
        .unwrap();
    assert!(!root.path().join("gone").exists());
    assert!(!root.path().join("gone-dir").exists());
    assert!(
        !root.path().join("missing").exists(),
        "a whiteout creates nothing"
    );
    assert!(root.path().join("app/config").exists());
}

#[test]
fn opaque_directories_hide_lower_contents_but_keep_their_own() {
    let root = lower();
    let blob = layer(vec![
        entry("app/cache", EntryKind::Dir),
        entry("app/cache", EntryKind::OpaqueDir),
        entry("app/cache/fresh", EntryKind::Bytes(b"new".to_vec())),
    ]);
    Extractor::new()
        .apply(blob.as_slice(), root.path())
        .unwrap();
    let names: Vec<_> = fs::read_dir(root.path().join("app/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["fresh"]);
    assert_eq!(fs::read(root.path().join("app/config")).unwrap(), b"v1");
}

#[test]
fn same_layer_entries_survive_whiteouts_in_any_order() {
    // The writer puts whiteouts first; splice two plain tars so that the whiteout of `gone`
    // comes after the same layer's new `gone`.
    let root = lower();
    let file = layer_plain(vec![entry("gone", EntryKind::Bytes(b"replaced".to_vec()))]);
    let whiteout = layer_plain(vec![entry("gone", EntryKind::Whiteout)]);
    let mut blob = file[..file.len() - 1024].to_vec();
    blob.extend_from_slice(&whiteout);
    Extractor::new()
        .apply(blob.as_slice(), root.path())
        .unwrap();
    assert_eq!(fs::read(root.path().join("gone")).unwrap(), b"replaced");
}

fn layer_plain(entries: Vec<Entry>) -> Vec<u8> {
    let mut blob = Vec::new();
    LayerWriter::new()
        .compression(strata_layer::Compression::None)
        .write(entries, &mut blob)
        .unwrap();
    blob
}

#[test]
fn a_file_replaces_a_directory_and_back() {
    let root = lower();
    let blob = layer(vec![entry(
        "app/cache",
        EntryKind::Bytes(b"now a file".to_vec()),
    )]);
    Extractor::new()
        .apply(blob.as_slice(), root.path())
        .unwrap();
    assert_eq!(
        fs::read(root.path().join("app/cache")).unwrap(),
        b"now a file"
    );
    let blob = layer(vec![
        entry("app/cache", EntryKind::Dir),
        entry("app/cache/inner", EntryKind::Bytes(b"i".to_vec())),
    ]);
    Extractor::new()
        .apply(blob.as_slice(), root.path())
        .unwrap();
    assert_eq!(fs::read(root.path().join("app/cache/inner")).unwrap(), b"i");
}

#[test]
fn keep_mode_stores_whiteouts_as_marker_files() {
    let dir = tempfile::tempdir().unwrap();
    let blob = layer(vec![
        entry("a", EntryKind::Whiteout),
        entry("d", EntryKind::Dir),
        entry("d", EntryKind::OpaqueDir),
    ]);
    let dest = dir.path().join("layer");
    Extractor::new()
        .whiteouts(WhiteoutMode::Keep)
        .unpack(blob.as_slice(), &dest)
        .unwrap();
    assert!(dest.join(".wh.a").is_file());
    assert!(dest.join("d/.wh..wh..opq").is_file());
}

#[test]
fn overlay_mode_makes_overlay_whiteouts() {
    if !rustix::process::geteuid().is_root() {
        // Overlay whiteouts need CAP_MKNOD and trusted xattrs; CI runs as root.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let blob = layer(vec![
        entry("a", EntryKind::Whiteout),
        entry("d", EntryKind::Dir),
        entry("d", EntryKind::OpaqueDir),
    ]);
    let dest = dir.path().join("layer");
    Extractor::new()
        .whiteouts(WhiteoutMode::Overlay)
        .unpack(blob.as_slice(), &dest)
        .unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let whiteout = fs::symlink_metadata(dest.join("a")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    let mut value = [0u8; 8];
    let n = rustix::fs::lgetxattr(dest.join("d"), "trusted.overlay.opaque", &mut value).unwrap();
    assert_eq!(&value[..n], b"y");
}
