//! Writing a layer from a tree with every entry kind, extracting it, and comparing the trees.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use common::{describe, tree_entries};
use strata_layer::{Compression, Extractor, LayerWriter};

/// A tree with every kind of entry and the metadata that must survive.
fn rich_tree(root: &Path) {
    let set_mode =
        |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    fs::create_dir_all(root.join("etc/deep/er")).unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::write(root.join("empty"), "").unwrap();
    // Bigger than one compression chunk, not a multiple of anything.
    let big: Vec<u8> = (0..3_000_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(root.join("big.bin"), &big).unwrap();
    fs::write(root.join("suid"), "#!/bin/sh\n").unwrap();
    set_mode(&root.join("suid"), 0o4755);
    fs::create_dir(root.join("sticky")).unwrap();
    set_mode(&root.join("sticky"), 0o1777);
    fs::create_dir(root.join("readonly-dir")).unwrap();
    fs::write(root.join("readonly-dir/inside"), "x").unwrap();
    set_mode(&root.join("readonly-dir"), 0o555);
    symlink("etc/passwd", root.join("relative-link")).unwrap();
    symlink("/nowhere/at/all", root.join("dangling-link")).unwrap();
    symlink("x".repeat(150), root.join("long-link-target")).unwrap();
    fs::hard_link(root.join("etc/passwd"), root.join("passwd-hardlink")).unwrap();
    fs::hard_link(
        root.join("etc/passwd"),
        root.join("etc/deep/er/passwd-again"),
    )
    .unwrap();
    let long_dir = root.join("d".repeat(120)).join("e".repeat(120));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join("f".repeat(200)), "long name").unwrap();
    fs::write(root.join("ünïcödé-ñame"), "utf-8").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    fs::write(root.join("capable"), "bin").unwrap();
    rustix::fs::lsetxattr(
        root.join("capable"),
        "user.note",
        b"kept",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    if rustix::process::geteuid().is_root() {
        rustix::fs::lsetxattr(
            root.join("capable"),
            "security.capability",
            &[
                1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let dev = rustix::fs::makedev(1, 3);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            dev,
        )
        .unwrap();
        std::os::unix::fs::lchown(root.join("etc/passwd"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::lchown(root.join("relative-link"), Some(33), Some(44)).unwrap();
    }
    // Fixed, distinct times, on everything (directories last: writing into them changes them).
    for (i, entry) in tree_entries(root).iter().enumerate().rev() {
        strata_testkit::set_mtime(&root.join(&entry.path), 1_600_000_000 + i as i64 * 7).unwrap();
    }
}

fn roundtrip(compression: Compression) {
    let source = tempfile::tempdir().unwrap();
    rich_tree(source.path());
    let mut blob = Vec::new();
    let layer = LayerWriter::new()
        .compression(compression)
        .write(tree_entries(source.path()), &mut blob)
        .unwrap();
    assert_eq!(layer.descriptor.size(), blob.len() as u64);

    let target = tempfile::tempdir().unwrap();
    let report = Extractor::new()
        .allow_devices(true)
        .expect_digest(Some(layer.descriptor.digest().to_string()))
        .expect_diff_id(Some(layer.diff_id.to_string()))
        .apply(blob.as_slice(), target.path())
        .unwrap();
    assert_eq!(report.diff_id, layer.diff_id.to_string());
    assert_eq!(report.uncompressed_size, layer.uncompressed_size);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let (expected, actual) = (describe(source.path()), describe(target.path()));
    for (path, description) in &expected {
        assert_eq!(actual.get(path), Some(description), "{path}");
    }
    assert_eq!(expected.len(), actual.len());
}

#[test]
fn gzip_round_trip_keeps_every_kind_and_its_metadata() {
    roundtrip(Compression::Gzip { level: 6 });
}

#[test]
fn zstd_round_trip_keeps_every_kind_and_its_metadata() {
    roundtrip(Compression::Zstd { level: 3 });
}

#[test]
fn uncompressed_round_trip_keeps_every_kind_and_its_metadata() {
    roundtrip(Compression::None);
}

#[test]
fn layers_are_deterministic_whatever_the_order_and_thread_count() {
    let source = tempfile::tempdir().unwrap();
    rich_tree(source.path());
    let entries = tree_entries(source.path());
    let mut reversed = entries.clone();
    reversed.reverse();
    let write = |entries, threads| {
        let mut blob = Vec::new();
        let layer = LayerWriter::new()
            .threads(threads)
            .write(entries, &mut blob)
            .unwrap();
        (layer, blob)
    };
    let (a, blob_a) = write(entries, 1);
    let (b, blob_b) = write(reversed, 4);
    assert_eq!(a, b);
    assert_eq!(blob_a, blob_b);
}

#[test]
fn gzip_output_is_standard_gzip_and_tar_reads_it() {
    let source = tempfile::tempdir().unwrap();
    rich_tree(source.path());
    let out = tempfile::tempdir().unwrap();
    let blob_path = out.path().join("layer.tar.gz");
    let layer = LayerWriter::new()
        .write(
            tree_entries(source.path()),
            fs::File::create(&blob_path).unwrap(),
        )
        .unwrap();
    // gzip -t checks the CRC and length of our parallel stream.
    let test = Command::new("gzip")
        .arg("-t")
        .arg(&blob_path)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}",
        String::from_utf8_lossy(&test.stderr)
    );
    // The uncompressed stream hashes to the diff_id.
    let plain = Command::new("gzip")
        .arg("-dc")
        .arg(&blob_path)
        .output()
        .unwrap();
    assert_eq!(
        format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&plain.stdout))
        ),
        layer.diff_id.to_string()
    );
    // GNU tar lists every entry, long names and unicode included.
    let list = Command::new("tar")
        .arg("-tvzf")
        .arg(&blob_path)
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let listing = String::from_utf8_lossy(&list.stdout);
    assert!(listing.contains(&"f".repeat(200)), "{listing}");
    assert!(listing.contains("ünïcödé-ñame"));
    // The first member of a hardlink group in layer order carries the contents.
    assert!(
        listing.contains("etc/passwd link to etc/deep/er/passwd-again"),
        "{listing}"
    );
    assert!(
        listing.contains("passwd-hardlink link to etc/deep/er/passwd-again"),
        "{listing}"
    );
    assert_eq!(listing.lines().count(), layer.entries);
}

#[test]
fn reproducible_layers_clamp_times() {
    let source = tempfile::tempdir().unwrap();
    rich_tree(source.path());
    let epoch = 1_600_000_010;
    let mut blob = Vec::new();
    LayerWriter::new()
        .clamp_mtime(Some(epoch))
        .write(tree_entries(source.path()), &mut blob)
        .unwrap();
    let (entries, _) = Extractor::new().list(blob.as_slice()).unwrap();
    assert!(entries.iter().all(|e| e.mtime_secs <= epoch));
    assert!(
        entries.iter().any(|e| e.mtime_secs < epoch),
        "earlier times are kept"
    );
}

#[test]
fn an_empty_layer_is_the_well_known_one() {
    // BuildKit's empty layer: a registry that has it from any image has it for ours.
    let mut blob = Vec::new();
    let layer = LayerWriter::new().write(Vec::new(), &mut blob).unwrap();
    assert_eq!(
        layer.descriptor.digest().to_string(),
        "sha256:4f4fb700ef54461cfa02571ae0db9a0dc1e0cdb5577484a6d75e68dc38e8acc1"
    );
    assert_eq!(layer.descriptor.size(), blob.len() as u64);
    // The diff_id is the one of two zero blocks, which is what the blob holds.
    assert_eq!(
        layer.diff_id.as_ref(),
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
    );
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(blob.as_slice()), &mut tar)
        .unwrap();
    assert_eq!(tar, vec![0u8; 1024]);
    assert_eq!(layer.uncompressed_size, 1024);
    // Other compressions write an empty tar of their own, with the same diff_id.
    for compression in [Compression::Zstd { level: 3 }, Compression::None] {
        let mut blob = Vec::new();
        let other = LayerWriter::new()
            .compression(compression)
            .write(Vec::new(), &mut blob)
            .unwrap();
        assert_eq!(other.diff_id, layer.diff_id, "{compression:?}");
        let (entries, _) = Extractor::new()
            .media_type(Some(other.descriptor.media_type().to_string()))
            .list(blob.as_slice())
            .unwrap();
        assert!(entries.is_empty());
    }
}
