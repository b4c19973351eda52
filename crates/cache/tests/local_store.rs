//! The local-directory store: entries, layers, TTL, least-recently-used eviction, and many
//! writers at once.

use std::fs;
use std::time::Duration;

use strata_cache::{CacheEntry, CacheStore, CachedLayer, KeyBuilder, LocalStore};

fn entry(n: usize, layer_size: Option<u64>) -> CacheEntry {
    let key = KeyBuilder::new("sha256:base")
        .instruction(&format!("RUN step {n}"))
        .build();
    CacheEntry {
        key,
        layer: layer_size.map(|size| CachedLayer {
            digest: format!("sha256:{:064x}", n).parse().unwrap(),
            diff_id: format!("sha256:{:064x}", n + 1000).parse().unwrap(),
            size,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        }),
        config: serde_json::json!({"step": n}),
        created_unix: 0,
    }
}

fn blob(dir: &std::path::Path, n: usize, size: usize) -> std::path::PathBuf {
    let path = dir.join(format!("blob{n}"));
    fs::write(&path, vec![n as u8; size]).unwrap();
    path
}

#[test]
fn a_recorded_step_hits_with_its_layer() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("cache")).unwrap();
    let e = entry(1, Some(100));
    assert!(store.lookup(&e.key.digest).unwrap().is_none());
    store.record(&e, Some(&blob(dir.path(), 1, 100))).unwrap();
    let hit = store.lookup(&e.key.digest).unwrap().unwrap();
    assert_eq!(hit.layer, e.layer);
    assert_eq!(hit.config, e.config);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut store.open_layer(&e.layer.unwrap()).unwrap(),
        &mut bytes,
    )
    .unwrap();
    assert_eq!(bytes, vec![1u8; 100]);
}

#[test]
fn old_entries_expire() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path())
        .unwrap()
        .ttl(Some(Duration::from_secs(60)));
    let mut old = entry(1, None);
    old.created_unix = 1_000;
    store.record(&old, None).unwrap();
    assert!(store.lookup(&old.key.digest).unwrap().is_none());
    let fresh = entry(2, None);
    store.record(&fresh, None).unwrap();
    assert!(store.lookup(&fresh.key.digest).unwrap().is_some());
}

#[test]
fn the_least_recently_used_entries_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("cache"))
        .unwrap()
        .max_bytes(Some(2_500));
    let entries: Vec<_> = (1..=3).map(|n| entry(n, Some(1_000))).collect();
    store
        .record(&entries[0], Some(&blob(dir.path(), 1, 1_000)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    store
        .record(&entries[1], Some(&blob(dir.path(), 2, 1_000)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // Using the first makes the second the least recently used; the third pushes it out.
    assert!(store.lookup(&entries[0].key.digest).unwrap().is_some());
    std::thread::sleep(Duration::from_millis(20));
    store
        .record(&entries[2], Some(&blob(dir.path(), 3, 1_000)))
        .unwrap();
    assert!(store.lookup(&entries[0].key.digest).unwrap().is_some());
    assert!(store.lookup(&entries[1].key.digest).unwrap().is_none());
    assert!(store.lookup(&entries[2].key.digest).unwrap().is_some());
    assert!(
        store
            .open_layer(entries[1].layer.as_ref().unwrap())
            .is_err(),
        "its blob is gone too"
    );
}

#[test]
fn many_writers_at_once_leave_every_entry_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let blobs = tempfile::tempdir().unwrap();
    let paths: Vec<_> = (0..16).map(|n| blob(blobs.path(), n, 4_096)).collect();
    std::thread::scope(|s| {
        for writer in 0..8 {
            let (root, paths) = (root.clone(), &paths);
            s.spawn(move || {
                let store = LocalStore::open(&root).unwrap();
                for round in 0..20 {
                    let n = (writer * 7 + round) % 16;
                    store
                        .record(&entry(n, Some(4_096)), Some(&paths[n]))
                        .unwrap();
                    let _ = store
                        .lookup(&entry((n + 3) % 16, Some(4_096)).key.digest)
                        .unwrap();
                }
            });
        }
    });
    let store = LocalStore::open(&root).unwrap();
    for n in 0..16 {
        let e = entry(n, Some(4_096));
        let hit = store.lookup(&e.key.digest).unwrap().unwrap();
        assert_eq!(hit.key.digest, e.key.digest);
        assert_eq!(hit.layer, e.layer);
        assert_eq!(
            fs::read(root.join("blobs/sha256").join(format!("{:064x}", n))).unwrap(),
            vec![n as u8; 4_096]
        );
    }
    assert_eq!(
        fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "no temporary file left"
    );
}

#[test]
fn steps_remember_their_inputs_for_explanations() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    assert!(store.recall("app/3").unwrap().is_none());
    let before = entry(1, None).key;
    store.remember("app/3", &before).unwrap();
    let now = entry(2, None).key;
    assert_eq!(
        strata_cache::explain(&store.recall("app/3").unwrap().unwrap(), &now.inputs)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["instruction changed (was `RUN step 1`)"]
    );
    // Remembering the same key again writes nothing; another key replaces the inputs.
    let json = dir
        .path()
        .join("steps")
        .read_dir()
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let written = fs::metadata(&json).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    store.remember("app/3", &before).unwrap();
    assert_eq!(fs::metadata(&json).unwrap().modified().unwrap(), written);
    store.remember("app/3", &now).unwrap();
    assert_eq!(store.recall("app/3").unwrap().unwrap(), now.inputs);
}

#[test]
fn a_damaged_entry_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let e = entry(1, None);
    store.record(&e, None).unwrap();
    let file = fs::read_dir(dir.path().join("entries"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::write(&file, "{ not json").unwrap();
    let err = store.lookup(&e.key.digest).unwrap_err().to_string();
    assert!(
        err.contains("damaged cache entry") && err.contains(file.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn an_entry_keeps_the_key_digest_not_its_inputs() {
    // A COPY of 10,000 files: its entry stays small, so that a lookup reads little; the
    // inputs that explain a later miss are remembered once per step instead.
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("cache")).unwrap();
    let key = KeyBuilder::new("sha256:base")
        .instruction("COPY . /app")
        .files((0..10_000).map(|n| (format!("src/f{n}"), format!("sha256:{n:064x}"))))
        .build();
    let e = CacheEntry {
        key: key.clone(),
        layer: None,
        config: serde_json::json!({}),
        created_unix: 0,
    };
    store.record(&e, None).unwrap();
    store.remember("app/0", &key).unwrap();
    let hit = store.lookup(&key.digest).unwrap().unwrap();
    assert_eq!(hit.key.digest, key.digest);
    assert!(hit.key.inputs.files.is_empty());
    let stored: u64 = fs::read_dir(dir.path().join("cache/entries"))
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum();
    assert!(stored < 4_096, "{stored} bytes");
    assert_eq!(store.recall("app/0").unwrap().unwrap(), key.inputs);
}
