//! Snapshot costs on a generated tree of 100,000 files in 1,000 directories:
//!
//! - `scan`: a full parallel scan (metadata and xattrs of every path);
//! - `diff after touching 10`: a scan plus the diff after 10 files changed (walk mode);
//! - `overlay change set for 10`: reading the upper directory of an overlay in which the same
//!   10 files changed (root only; skipped with a message otherwise).
//!
//! The tree is generated once into `target/strata-bench-snapshot-tree`.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::fs;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use strata_snapshot::overlay::{OverlayMount, probe, upper_changes};
use strata_snapshot::{Scanner, diff};

const FILES: usize = 100_000;

fn tree() -> PathBuf {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/strata-bench-snapshot-tree");
    if !root.join(".complete").exists() {
        let _ = fs::remove_dir_all(&root);
        for i in 0..FILES {
            let dir = root.join(format!("d{:02}/e{:02}", i % 40, (i / 40) % 25));
            if i < 1000 {
                fs::create_dir_all(&dir).unwrap();
            }
            fs::write(dir.join(format!("f{i}")), i.to_string()).unwrap();
        }
        fs::write(root.join(".complete"), "").unwrap();
    }
    root
}

fn touch_ten(root: &Path, round: usize) {
    for i in 0..10 {
        let n = i * 9_973 % FILES;
        let path = root.join(format!("d{:02}/e{:02}/f{n}", n % 40, (n / 40) % 25));
        fs::write(path, format!("changed {round}")).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let root = tree();
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    group.bench_function("scan 100k files", |b| {
        b.iter(|| Scanner::new(&root).scan().unwrap())
    });

    let before = Scanner::new(&root).scan().unwrap();
    let mut round = 0;
    group.bench_function("diff after touching 10 (scan + diff)", |b| {
        b.iter(|| {
            round += 1;
            touch_ten(&root, round);
            let after = Scanner::new(&root).scan().unwrap();
            let changes = diff(&before, &after);
            assert!(changes.changes.len() >= 10);
            changes
        })
    });

    let support = probe();
    if support.usable {
        let work = tempfile::tempdir().unwrap();
        let mut round = 0;
        group.bench_function("overlay change set for 10", |b| {
            b.iter_batched(
                || {
                    round += 1;
                    let dir = work.path().join(format!("r{round}"));
                    let [u, w, m] = ["upper", "work", "merged"].map(|d| dir.join(d));
                    for d in [&u, &w, &m] {
                        fs::create_dir_all(d).unwrap();
                    }
                    let mount =
                        OverlayMount::mount(std::slice::from_ref(&root), &u, &w, &m).unwrap();
                    touch_ten(mount.merged(), round);
                    mount.unmount().unwrap();
                    u
                },
                |upper| upper_changes(&upper, std::slice::from_ref(&root)).unwrap(),
                criterion::BatchSize::PerIteration,
            )
        });
    } else {
        eprintln!("overlay change set not measured: {:?}", support.reason);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
