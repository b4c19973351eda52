//! Arbitrary bytes as a registry's manifest or index, and as an image config: no panic; a
//! parsed manifest has only valid digests; an index entry chosen for a platform is one of the
//! index's entries; a config that parses serialises and parses back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata::config::ImageConfig;
use strata_registry::{Manifest, Platform, validate_digest};

fuzz_target!(|data: &[u8]| {
    match Manifest::parse(data, "fuzz/image:1") {
        Ok(Manifest::Image { config, layers, .. }) => {
            for descriptor in std::iter::once(&config).chain(&layers) {
                assert!(validate_digest(&descriptor.digest).is_ok());
            }
        }
        Ok(Manifest::Index { manifests, .. }) => {
            let arm = Platform {
                os: "linux".into(),
                architecture: "arm".into(),
                variant: Some("v7".into()),
            };
            for platform in [Platform::host(), arm] {
                if let Ok(chosen) = platform.select(&manifests, "fuzz/image:1") {
                    assert!(manifests.iter().any(|m| std::ptr::eq(m, chosen)));
                }
            }
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz/image:1: ")),
    }
    if let Ok(config) = serde_json::from_slice::<ImageConfig>(data) {
        let _ = config.config.env_pairs();
        let text = serde_json::to_vec(&config).expect("a config serialises");
        let back: ImageConfig = serde_json::from_slice(&text).expect("and parses back");
        assert_eq!(
            serde_json::to_value(&back).ok(),
            serde_json::to_value(&config).ok()
        );
    }
});
