//! Push and pull of a 512 MiB image of 8 gzip layers to the local reference registry, next to
//! `skopeo copy` doing the same (`STRATA_BENCH_IMAGE_MIB` scales it). Each push goes to a fresh
//! registry and each pull to a fresh layout, so nothing is skipped or mounted.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use strata_registry::{Credentials, Layout, Platform, Reference, RegistryClient};
use strata_testkit::TestRegistry;

fn image_mib() -> u64 {
    std::env::var("STRATA_BENCH_IMAGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

/// A layout with one image of 8 gzip layers of incompressible data, made once.
fn image() -> (PathBuf, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../target/strata-bench-image-{}", image_mib()));
    let layout = Layout::open(&root).unwrap();
    if let Ok(descriptor) = layout.resolve("bench") {
        return (root, descriptor.digest().to_string());
    }
    let per_layer = (image_mib() << 20) / 8;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut layers = Vec::new();
    for _ in 0..8 {
        let data: Vec<u8> = (0..per_layer)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        layers.push(layout.write_blob_bytes(&gz.finish().unwrap()).unwrap());
    }
    let config = layout
        .write_blob_bytes(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.size},
        "layers": layers.iter().map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let manifest = layout.write_blob_bytes(&manifest).unwrap();
    layout
        .tag("bench", &manifest.descriptor(strata_registry::OCI_MANIFEST))
        .unwrap();
    (root, manifest.digest.to_string())
}

fn skopeo(args: &[String]) {
    let output = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn bench(c: &mut Criterion) {
    let (root, manifest) = image();
    let layout = Layout::open(&root).unwrap();
    let client = RegistryClient::builder()
        .credentials(Credentials::none())
        .build();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("registry");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(40))
        .throughput(Throughput::Bytes(image_mib() << 20));
    // A fresh registry for every push (started outside the measurement): skopeo remembers
    // where it saw blobs and would mount them from an earlier repository instead of uploading.
    let fresh = || TestRegistry::start().unwrap();

    group.bench_function("push/strata", |b| {
        b.iter_batched(
            fresh,
            |registry| {
                let to: Reference = format!("{}/bench/app:1", registry.host()).parse().unwrap();
                runtime
                    .block_on(client.push(&layout, &manifest, &to, None))
                    .unwrap();
                registry
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("push/skopeo copy", |b| {
        b.iter_batched(
            fresh,
            |registry| {
                skopeo(&[
                    "copy".into(),
                    "--dest-tls-verify=false".into(),
                    format!("oci:{}:bench", root.display()),
                    format!("docker://{}/bench/app:1", registry.host()),
                ]);
                registry
            },
            BatchSize::PerIteration,
        )
    });

    let registry = fresh();
    let source: Reference = format!("{}/bench/app:1", registry.host()).parse().unwrap();
    runtime
        .block_on(client.push(&layout, &manifest, &source, None))
        .unwrap();
    // Each pull into a fresh directory, removed after it is measured (the outputs of
    // `iter_batched` are dropped outside the timing), so the disk does not fill up.
    let fresh_dir = || tempfile::tempdir_in(scratch.path()).unwrap();
    group.bench_function("pull/strata", |b| {
        b.iter_batched(
            fresh_dir,
            |dir| {
                let target = Layout::open(dir.path()).unwrap();
                runtime
                    .block_on(client.pull(&source, &Platform::host(), &target))
                    .unwrap();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("pull/skopeo copy", |b| {
        b.iter_batched(
            fresh_dir,
            |dir| {
                skopeo(&[
                    "copy".into(),
                    "--src-tls-verify=false".into(),
                    format!("docker://{source}"),
                    format!("oci:{}:pulled", dir.path().join("layout").display()),
                ]);
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
