//! A lookup that hits in the registry store, against the test kit's real registry on
//! loopback: `warm` when the entry's blobs are already in the local layout (one manifest
//! request), `cold` for a machine that has never seen it (manifest, config and a 1 MiB layer
//! downloaded). Run with `cargo bench -p strata --bench registry_cache`.

#![allow(missing_docs)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use strata::cache::{CacheEntry, CacheStore, CachedLayer, KeyBuilder};
use strata::oci::Layout;
use strata::registry::RegistryClient;
use strata::remote_cache::RegistryStore;

fn registry_lookup(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = strata_testkit::TestRegistry::start().unwrap();
    let repository = format!("{}/cache", registry.host());
    let client = RegistryClient::builder().build();
    let staging = tempfile::tempdir().unwrap();
    let layout = Layout::open(staging.path()).unwrap();
    let layer: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let blob = layout.write_blob_bytes(&layer).unwrap();
    let store = RegistryStore::new(
        client.clone(),
        &repository,
        layout.clone(),
        runtime.handle().clone(),
    )
    .unwrap();
    let key = KeyBuilder::new("image sha256:00 linux/amd64")
        .instruction("RUN make")
        .build();
    let entry = CacheEntry {
        key: key.clone(),
        layer: Some(CachedLayer {
            digest: blob.digest.clone(),
            diff_id: blob.digest.clone(),
            size: blob.size,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".to_owned(),
        }),
        config: serde_json::json!({}),
        created_unix: 0,
    };
    let handle = runtime.handle().clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            store
                .record(&entry, Some(&layout.blob_path(&blob.digest).unwrap()))
                .unwrap()
        })
        .join()
        .unwrap();
    });
    let mut group = c.benchmark_group("registry_store");
    group.bench_function("lookup_hit_warm", |b| {
        b.iter(|| {
            let found = std::thread::scope(|s| {
                s.spawn(|| store.lookup(&key.digest).unwrap())
                    .join()
                    .unwrap()
            });
            assert!(found.is_some());
        })
    });
    group.bench_function("lookup_hit_cold", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let fresh = Layout::open(dir.path()).unwrap();
                let store =
                    RegistryStore::new(client.clone(), &repository, fresh, handle.clone()).unwrap();
                (dir, store)
            },
            |(dir, store)| {
                let found = std::thread::scope(|s| {
                    s.spawn(|| store.lookup(&key.digest).unwrap())
                        .join()
                        .unwrap()
                });
                assert!(found.is_some());
                drop(dir);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, registry_lookup);
criterion_main!(benches);
