//! Arbitrary bytes as a Docker `config.json` (or containers `auth.json`): no panic, and no
//! error message quotes the file's contents (it may hold secrets).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata_registry::DockerConfig;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/fuzz/config.json");
    let config = match DockerConfig::parse(data, path) {
        Ok(config) => config,
        Err(e) => return assert_quotes_nothing(&e.to_string(), data),
    };
    for registry in ["docker.io", "registry.example:5000", "index.docker.io", ""] {
        let _ = config.helper(registry);
        match config.credential(registry) {
            Ok(_) => {}
            Err(e) => assert_quotes_nothing(&e.to_string(), data),
        }
    }
});

/// The message may name the path and the registry, never more than a few bytes of input.
fn assert_quotes_nothing(message: &str, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for window in text.as_bytes().windows(12) {
        if let Ok(piece) = std::str::from_utf8(window)
            && piece.chars().all(|c| c.is_ascii_alphanumeric())
        {
            assert!(!message.contains(piece), "{message:?} quotes {piece:?}");
        }
    }
}
