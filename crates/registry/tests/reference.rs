//! References normalised as Docker normalises them.

use strata_registry::{Reference, is_loopback_host};

fn norm(input: &str) -> String {
    Reference::parse(input).unwrap().to_string()
}

fn err(input: &str) -> String {
    Reference::parse(input).unwrap_err().to_string()
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn docker_hub_names_are_normalised() {
    assert_eq!(norm("alpine"), "docker.io/library/alpine:latest");
    assert_eq!(norm("alpine:3.20"), "docker.io/library/alpine:3.20");
    assert_eq!(norm("bitnami/redis"), "docker.io/bitnami/redis:latest");
    assert_eq!(norm("docker.io/alpine"), "docker.io/library/alpine:latest");
    assert_eq!(
        norm("index.docker.io/library/alpine:1"),
        "docker.io/library/alpine:1"
    );
}

#[test]
fn registries_ports_tags_and_digests() {
    let r = Reference::parse(&format!("localhost:5000/team/app:1.0@{DIGEST}")).unwrap();
    assert_eq!(
        (r.registry(), r.repository(), r.tag(), r.digest()),
        ("localhost:5000", "team/app", Some("1.0"), Some(DIGEST))
    );
    assert_eq!(r.target(), DIGEST);
    let pinned = Reference::parse(&format!("ghcr.io/acme/tool@{DIGEST}")).unwrap();
    assert_eq!(pinned.tag(), None, "a digest alone means no default tag");
    assert_eq!(norm("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
    assert_eq!(norm("[::1]:5000/app:x"), "[::1]:5000/app:x");
    assert_eq!(
        norm("registry.example.com/a/b/c:v1-2_3.4"),
        "registry.example.com/a/b/c:v1-2_3.4"
    );
    assert_eq!(norm("localhost/app"), "localhost/app:latest");
    assert_eq!(norm("a__b/c-d.e_f"), "docker.io/a__b/c-d.e_f:latest");
}

#[test]
fn malformed_references_say_why() {
    assert!(err("").contains("empty"));
    assert!(err("Alpine").contains("lowercase"));
    assert!(err("alpine:").contains("tag"));
    assert!(err("alpine:bad tag").contains("whitespace"));
    assert!(err("alpine@sha256:abc").contains("64 hex digits"));
    assert!(err("alpine@sha256:XYZ").contains("not hexadecimal"));
    assert!(err("alpine@md5").contains("no algorithm"));
    assert!(err("registry:99999/app").contains("host"));
    assert!(err("a..b/c").contains("registry `a..b` is not a valid host"));
    assert!(err("library/a..b").contains("not valid"));
    assert!(err("app/-lead").contains("not valid"));
    assert!(err(&format!("x/{}", "a".repeat(300))).contains("255"));
    assert!(err(&format!("alpine:{}", "t".repeat(129))).contains("tag"));
}

#[test]
fn loopback_registries_are_recognised() {
    for host in [
        "localhost",
        "localhost:5000",
        "127.0.0.1:5000",
        "127.1.2.3",
        "[::1]:5000",
    ] {
        assert!(is_loopback_host(host), "{host}");
    }
    for host in ["docker.io", "10.0.0.1:5000", "localhost.example.com"] {
        assert!(!is_loopback_host(host), "{host}");
    }
}

#[test]
fn retagging_and_pinning() {
    let r = Reference::parse("ghcr.io/acme/tool:1").unwrap();
    assert_eq!(r.with_tag("2").unwrap().to_string(), "ghcr.io/acme/tool:2");
    assert_eq!(
        r.with_digest(DIGEST).unwrap().to_string(),
        format!("ghcr.io/acme/tool:1@{DIGEST}")
    );
    assert!(r.with_digest("sha256:short").is_err());
}
