//! Arbitrary text as an image reference: no panic; whatever parses prints back to text that
//! parses to the same reference (normalisation is idempotent), with a valid digest if any.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_registry::{Reference, validate_digest};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(reference) = Reference::parse(text) else {
        return;
    };
    let printed = reference.to_string();
    let again = Reference::parse(&printed)
        .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again, reference, "{text:?} → {printed:?}");
    assert_eq!(again.to_string(), printed);
    assert!(!reference.registry().is_empty() && !reference.repository().is_empty());
    if let Some(digest) = reference.digest() {
        assert!(validate_digest(digest).is_ok(), "{digest}");
    }
    let _ = reference.with_tag("t");
    let _ = reference.is_loopback();
});
