//! Arbitrary bytes as a `.dockerignore` followed by paths to test: no panics, time linear in
//! pattern × path, and a directory said to be skippable never hides a re-included file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_dockerfile::Dockerignore;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Patterns, then a line `---`, then paths.
    let (patterns, paths) = text.split_once("\n---\n").unwrap_or((&text, "a/b/c\nx\n"));
    let Ok(ignore) = Dockerignore::parse(patterns) else {
        return;
    };
    for path in paths.lines() {
        let _ = ignore.is_excluded(path);
        if ignore.can_skip_dir(path) {
            for child in ["x", "keep", "a/b", "x.important", ".hidden"] {
                let below = format!("{}/{child}", path.trim_end_matches('/'));
                assert!(
                    ignore.is_excluded(&below),
                    "{path} was skippable but {below} is included"
                );
            }
        }
    }
});
