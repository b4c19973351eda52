//! Arbitrary bytes as a layer (gzip, zstd or plain, by magic number) applied to a fresh
//! directory: no panic, and nothing outside the directory is created, changed or deleted.

#![no_main]

use std::fs;

use libfuzzer_sys::fuzz_target;
use strata_layer::Extractor;

fuzz_target!(|data: &[u8]| {
    let Ok(arena) = tempfile::tempdir() else {
        return;
    };
    let target = arena.path().join("target");
    let sentinel = arena.path().join("sentinel");
    if fs::create_dir(&target).is_err() || fs::write(&sentinel, b"untouched").is_err() {
        return;
    }
    let _ = Extractor::new().apply(data, &target);
    let siblings = fs::read_dir(arena.path()).map(|d| d.count()).unwrap_or(0);
    assert_eq!(siblings, 2, "something was created beside the target");
    assert_eq!(fs::read(&sentinel).ok().as_deref(), Some(&b"untouched"[..]));
});
