//! Layer throughput on a generated tree (default 1 GiB: four large files and 20,000 small
//! ones, about half compressible, like real binaries and sources):
//!
//! - `write/gzip`: tar + parallel gzip + both digests, every core, into /dev/null;
//! - `write/zstd`: the same with zstd level 3;
//! - `reference/tar|pigz|sha256sum`: GNU tar, pigz and sha256sum on the same tree;
//! - `extract/gzip`: applying the gzip layer to a fresh directory;
//! - `reference/tar -xzf`: GNU tar extracting the same layer.
//!
//! `STRATA_BENCH_TREE_MIB` scales the tree (for a quick run). The tree is generated once into
//! `target/strata-bench-tree-<MiB>`.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_layer::{Compression, Entry, EntryKind, Extractor, LayerWriter, Metadata};

const SMALL_FILES: usize = 20_000;

fn mib() -> u64 {
    std::env::var("STRATA_BENCH_TREE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Deterministic bytes that compress to about half: runs of text between random stretches.
fn fill(buf: &mut [u8], seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let text = b"the quick brown fox jumps over the lazy dog; fn main() { println!(\"hello\"); }\n";
    let mut i = 0;
    while i < buf.len() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let run = 64 + (state % 192) as usize;
        let end = (i + run).min(buf.len());
        if state & 1 == 0 {
            for (k, b) in buf[i..end].iter_mut().enumerate() {
                *b = text[(k + (state >> 8) as usize) % text.len()];
            }
        } else {
            for b in &mut buf[i..end] {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
        }
        i = end;
    }
}

fn tree() -> (PathBuf, u64) {
    let total = mib() << 20;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../target/strata-bench-tree-{}", mib()));
    let small_total = (SMALL_FILES as u64 * 3 * 1024).min(total / 8);
    let large = (total - small_total) / 4;
    if !root.join(".complete").exists() {
        let _ = fs::remove_dir_all(&root);
        for i in 0..4 {
            let dir = root.join("large");
            fs::create_dir_all(&dir).unwrap();
            let mut data = vec![0u8; large as usize];
            fill(&mut data, i);
            fs::write(dir.join(format!("blob-{i}.bin")), &data).unwrap();
        }
        let per_file = (small_total / SMALL_FILES as u64) as usize;
        for i in 0..SMALL_FILES {
            let dir = root.join(format!("src/{:02}/{:03}", i % 50, i % 400));
            fs::create_dir_all(&dir).unwrap();
            let mut data = vec![0u8; per_file.max(1) + i % 1024];
            fill(&mut data, 1000 + i as u64);
            fs::write(dir.join(format!("file-{i}.rs")), &data).unwrap();
        }
        fs::write(root.join(".complete"), "").unwrap();
    }
    let size = entries(&root)
        .iter()
        .map(|e| match &e.kind {
            EntryKind::File { size, .. } => *size,
            _ => 0,
        })
        .sum();
    (root, size)
}

fn entries(root: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        for entry in fs::read_dir(root.join(&relative)).unwrap() {
            let entry = entry.unwrap();
            let path = relative.join(entry.file_name());
            let meta = entry.metadata().unwrap();
            let name = path.to_str().unwrap().to_owned();
            if name == ".complete" {
                continue;
            }
            let metadata = Metadata {
                mode: if meta.is_dir() { 0o755 } else { 0o644 },
                ..Default::default()
            };
            if meta.is_dir() {
                out.push(Entry {
                    path: name.into(),
                    kind: EntryKind::Dir,
                    metadata,
                });
                stack.push(path);
            } else {
                out.push(Entry {
                    path: name.into(),
                    kind: EntryKind::File {
                        source: entry.path(),
                        size: meta.len(),
                    },
                    metadata,
                });
            }
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let (root, bytes) = tree();
    let entries = entries(&root);
    let mut group = c.benchmark_group("layer");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .throughput(Throughput::Bytes(bytes));

    group.bench_function("write/gzip", |b| {
        b.iter(|| {
            LayerWriter::new()
                .write(entries.clone(), std::io::sink())
                .unwrap()
        })
    });
    group.bench_function("write/zstd", |b| {
        b.iter(|| {
            LayerWriter::new()
                .compression(Compression::Zstd { level: 3 })
                .write(entries.clone(), std::io::sink())
                .unwrap()
        })
    });
    if Command::new("pigz").arg("--version").output().is_ok() {
        group.bench_function("reference/tar|pigz|sha256sum", |b| {
            b.iter(|| {
                let status = Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "tar -C '{}' -cf - . | pigz -6 | sha256sum > /dev/null",
                        root.display()
                    ))
                    .status()
                    .unwrap();
                assert!(status.success());
            })
        });
    } else {
        eprintln!(
            "pigz is not installed (apt-get install -y pigz): the reference pipeline is not measured"
        );
    }

    let blob = root.with_extension("layer.tar.gz");
    LayerWriter::new()
        .write(entries.clone(), fs::File::create(&blob).unwrap())
        .unwrap();
    // Each extraction goes to a fresh directory, all removed after the group: removing 20,000
    // files just before creating 20,000 more makes ext4 search for inodes that were not
    // recently deleted, which would measure the filesystem's recovery, not the extractor.
    let scratch = root.with_extension("extract");
    let _ = fs::remove_dir_all(&scratch);
    let mut round = 0;
    group.bench_function("extract/gzip", |b| {
        b.iter_batched(
            || {
                round += 1;
                let dir = scratch.join(round.to_string());
                fs::create_dir_all(&dir).unwrap();
                dir
            },
            |dir| {
                Extractor::new()
                    .apply(fs::File::open(&blob).unwrap(), &dir)
                    .unwrap()
            },
            criterion::BatchSize::PerIteration,
        )
    });
    let mut round = 0;
    group.bench_function("reference/tar -xzf", |b| {
        b.iter_batched(
            || {
                round += 1;
                let dir = scratch.join(format!("tar-{round}"));
                fs::create_dir_all(&dir).unwrap();
                dir
            },
            |dir| {
                let status = Command::new("tar")
                    .arg("-xzf")
                    .arg(&blob)
                    .arg("-C")
                    .arg(&dir)
                    .status()
                    .unwrap();
                assert!(status.success());
            },
            criterion::BatchSize::PerIteration,
        )
    });
    let _ = fs::remove_dir_all(&scratch);
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
