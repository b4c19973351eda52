//! Property tests: any generated tree survives write → extract unchanged, and the layer's
//! digests do not depend on the order entries are given in.

mod common;

use std::fs;
use std::path::Path;

use common::{describe, tree_entries};
use proptest::prelude::*;
use strata_layer::{Compression, Extractor, LayerWriter};

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>, u32),
    Dir(u32),
    Symlink(String),
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        (
            prop::collection::vec(any::<u8>(), 0..3000),
            prop_oneof![Just(0o644u32), Just(0o755), Just(0o600), Just(0o4755)]
        )
            .prop_map(|(data, mode)| Node::File(data, mode)),
        prop_oneof![Just(0o755u32), Just(0o700), Just(0o1777)].prop_map(Node::Dir),
        "[a-z./]{1,12}".prop_map(Node::Symlink),
    ]
}

fn tree() -> impl Strategy<Value = Vec<(Vec<String>, Node)>> {
    prop::collection::vec(
        (prop::collection::vec("[a-c]{1,2}|x y|é", 1..4), node()),
        1..25,
    )
}

fn build(root: &Path, spec: &[(Vec<String>, Node)]) {
    use std::os::unix::fs::PermissionsExt;
    for (components, node) in spec {
        let path = components.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        // Skip what collides with something already there (a file where a directory is needed).
        let Some(parent) = path.parent() else {
            continue;
        };
        if fs::create_dir_all(parent).is_err() || fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        match node {
            Node::File(data, mode) => {
                fs::write(&path, data).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
            }
            Node::Dir(mode) => {
                fs::create_dir(&path).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
            }
            Node::Symlink(target) => std::os::unix::fs::symlink(target, &path).unwrap(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_tree_round_trips(spec in tree(), zstd in any::<bool>()) {
        let source = tempfile::tempdir().unwrap();
        build(source.path(), &spec);
        let compression = if zstd { Compression::Zstd { level: 1 } } else { Compression::Gzip { level: 1 } };
        let mut blob = Vec::new();
        let layer = LayerWriter::new().compression(compression).write(tree_entries(source.path()), &mut blob).unwrap();
        let target = tempfile::tempdir().unwrap();
        let report = Extractor::new().apply(blob.as_slice(), target.path()).unwrap();
        prop_assert_eq!(report.diff_id, layer.diff_id.to_string());
        prop_assert_eq!(describe(source.path()), describe(target.path()));
    }

    #[test]
    fn digests_do_not_depend_on_entry_order(spec in tree(), seed in any::<u64>()) {
        let source = tempfile::tempdir().unwrap();
        build(source.path(), &spec);
        let entries = tree_entries(source.path());
        let mut shuffled = entries.clone();
        // A cheap deterministic shuffle.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let a = LayerWriter::new().write(entries, std::io::sink()).unwrap();
        let b = LayerWriter::new().write(shuffled, std::io::sink()).unwrap();
        prop_assert_eq!(a, b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Entries sorted as paths sort (component by component) are the layer's order:
    /// written one at a time they make the same bytes as the whole set sorted by the writer.
    #[test]
    fn ordered_entries_write_the_same_layer(
        spec in prop::collection::vec(
            (prop::collection::vec("a|b|a\\.b|a-b|a b|é|b0", 1..4), node()),
            1..25,
        ),
        zstd in any::<bool>(),
    ) {
        let source = tempfile::tempdir().unwrap();
        build(source.path(), &spec);
        let mut entries = tree_entries(source.path());
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let compression = if zstd { Compression::Zstd { level: 1 } } else { Compression::Gzip { level: 1 } };
        let writer = LayerWriter::new().compression(compression);
        let (mut sorted, mut ordered) = (Vec::new(), Vec::new());
        let a = writer.write(entries.clone(), &mut sorted).unwrap();
        let b = writer.write_ordered(entries.into_iter(), &mut ordered).unwrap();
        prop_assert_eq!(a, b);
        prop_assert!(sorted == ordered);
    }
}

#[test]
fn ordered_writing_refuses_what_it_cannot_check() {
    use strata_layer::{Entry, EntryKind, Error, Metadata};
    let entry = |path: &str, kind: EntryKind| Entry {
        path: path.into(),
        kind,
        metadata: Metadata::default(),
    };
    let file = || EntryKind::Bytes(b"x".to_vec());
    let cases = [
        // Out of order: a directory's contents before it, and a name after a greater one.
        vec![entry("a/b", file()), entry("a", EntryKind::Dir)],
        vec![entry("b", file()), entry("a.b", file())],
        // `a/x` sorts before `a.b` (the layer's order is by component).
        vec![entry("a.b", file()), entry("a/x", file())],
        // Twice.
        vec![entry("a", file()), entry("a", file())],
        // A hard link before its target.
        vec![
            entry("a", EntryKind::Hardlink { target: "b".into() }),
            entry("b", file()),
        ],
        // What needs the whole layer.
        vec![entry("a", EntryKind::Whiteout)],
        vec![entry("a", EntryKind::OpaqueDir)],
    ];
    for case in cases {
        let err = LayerWriter::new()
            .write_ordered(case.clone().into_iter(), std::io::sink())
            .unwrap_err();
        assert!(matches!(err, Error::InvalidEntry { .. }), "{case:?}: {err}");
    }
    // In order, with `a/x` before `a.b` and a hard link after its target, it writes the
    // layer the writer's own sort writes.
    let in_order = vec![
        entry("a", EntryKind::Dir),
        entry("a/x", file()),
        entry(
            "a.b",
            EntryKind::Hardlink {
                target: "a/x".into(),
            },
        ),
    ];
    let (mut sorted, mut ordered) = (Vec::new(), Vec::new());
    let a = LayerWriter::new()
        .write(in_order.clone(), &mut sorted)
        .unwrap();
    let b = LayerWriter::new()
        .write_ordered(in_order.into_iter(), &mut ordered)
        .unwrap();
    assert_eq!((a, sorted), (b, ordered));
}
