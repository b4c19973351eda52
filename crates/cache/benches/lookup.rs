//! The cost of a cache lookup that hits in the local store (1,000 entries in the store).

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use strata_cache::{CacheEntry, CacheStore, CachedLayer, KeyBuilder, LocalStore};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let blob = dir.path().join("blob");
    std::fs::write(&blob, b"layer").unwrap();
    let mut keys = Vec::new();
    for n in 0..1_000 {
        let key = KeyBuilder::new("sha256:base")
            .instruction(&format!("RUN step {n}"))
            .env("PATH", "/bin")
            .build();
        let entry = CacheEntry {
            key: key.clone(),
            layer: Some(CachedLayer {
                digest: format!("sha256:{:064x}", n).parse().unwrap(),
                diff_id: format!("sha256:{:064x}", n).parse().unwrap(),
                size: 5,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            }),
            config: serde_json::json!({"Env": ["PATH=/bin"]}),
            created_unix: 0,
        };
        store.record(&entry, Some(&blob)).unwrap();
        keys.push(key.digest);
    }
    let mut i = 0;
    c.bench_function("local store lookup (hit)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            store.lookup(&keys[i]).unwrap().unwrap()
        })
    });
    c.bench_function("key computation (10 env, 20 files)", |b| {
        b.iter(|| {
            let mut builder = KeyBuilder::new("sha256:parent").instruction("COPY . /app");
            for n in 0..10 {
                builder = builder.env(&format!("VAR{n}"), "value");
            }
            for n in 0..20 {
                builder = builder.file(&format!("src/file{n}.rs"), "sha256:0123456789abcdef");
            }
            builder.build()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
