//! Registries that misbehave on purpose (a scripted HTTP server, for what the real registry
//! cannot be made to do): each pull or push ends in a clear error within a bounded time,
//! reads a bounded amount, sends no credential where it does not belong, and leaves nothing
//! half-written in the layout.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use strata_registry::{
    Credential, Credentials, Layout, OCI_INDEX, OCI_MANIFEST, Platform, Reference, RegistryClient,
};
use strata_testkit::{HostileServer, Reply, Request};

fn digest(bytes: &[u8]) -> String {
    strata_oci::digest::sha256(bytes)
}

/// A one-layer image: (manifest, config, layer).
fn image() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let layer = b"not really a tar, but the registry does not care".to_vec();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len() }],
    }))
    .unwrap();
    (manifest, config, layer)
}

/// A client with short timeouts and no retries, so that every case ends fast.
fn client() -> RegistryClient {
    RegistryClient::builder()
        .credentials(Credentials::none())
        .retries(0)
        .timeouts(
            Duration::from_secs(2),
            Duration::from_secs(2),
            Duration::from_secs(3),
        )
        .build()
}

/// Pulls `name` from `server`; the error, how long it took, and the layout directory.
async fn pull_error(
    client: &RegistryClient,
    server: &HostileServer,
    name: &str,
) -> (String, Duration, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let reference: Reference = format!("{}/{name}", server.host()).parse().unwrap();
    let started = Instant::now();
    let err = client
        .pull(&reference, &Platform::host(), &layout)
        .await
        .expect_err("the pull must fail");
    (err.to_string(), started.elapsed(), dir)
}

/// Nothing but the empty layout: no blob, no staging file.
fn assert_untouched(dir: &Path) {
    let blobs = walk(&dir.join("blobs"));
    assert!(blobs.is_empty(), "blobs left behind: {blobs:?}");
    let staged = walk(&dir.join("tmp"));
    assert!(staged.is_empty(), "staging files left behind: {staged:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Serves `image()` with `blob` deciding each blob's reply.
fn registry(blob: impl Fn(&str, &[u8]) -> Reply + Send + Sync + 'static) -> HostileServer {
    let (manifest, config, layer) = image();
    HostileServer::start("127.0.0.1", move |request: &Request| {
        if request.path == "/v2/" {
            return Reply::new(200, "{}");
        }
        if request.path.contains("/manifests/") {
            return Reply::json(OCI_MANIFEST, manifest.clone());
        }
        let wanted = request.path.rsplit('/').next().unwrap_or_default();
        for bytes in [&config, &layer] {
            if digest(bytes) == wanted {
                return blob(wanted, bytes);
            }
        }
        Reply::new(404, "{}")
    })
    .unwrap()
}

#[tokio::test]
async fn a_blob_whose_bytes_do_not_match_its_digest() {
    let server = registry(|_, bytes| {
        let mut wrong = bytes.to_vec();
        wrong[0] ^= 1;
        Reply::new(200, wrong)
    });
    let (err, took, dir) = pull_error(&client(), &server, "evil/app:1").await;
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_untouched(dir.path());
}

#[tokio::test]
async fn an_endless_blob_is_cut_at_its_descriptor_size() {
    let server = registry(|_, _| Reply::Endless {
        status: 200,
        headers: Vec::new(),
    });
    let (err, took, dir) = pull_error(&client(), &server, "evil/app:1").await;
    assert!(err.contains("sent more than the"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_untouched(dir.path());
}

#[tokio::test]
async fn a_gigabyte_manifest_is_refused_without_being_read() {
    // Announced: refused on its Content-Length.
    let announced = HostileServer::start("127.0.0.1", |request: &Request| {
        if request.path == "/v2/" {
            Reply::new(200, "{}")
        } else {
            Reply::Huge {
                status: 200,
                length: 1 << 30,
            }
        }
    })
    .unwrap();
    let (err, took, dir) = pull_error(&client(), &announced, "evil/app:1").await;
    assert!(err.contains("announced 1073741824 bytes"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_untouched(dir.path());
    // Not announced (chunked, endless): cut after 4 MiB.
    let endless = HostileServer::start("127.0.0.1", |request: &Request| {
        if request.path == "/v2/" {
            Reply::new(200, "{}")
        } else {
            Reply::Endless {
                status: 200,
                headers: Vec::new(),
            }
        }
    })
    .unwrap();
    let (err, took, dir) = pull_error(&client(), &endless, "evil/app:1").await;
    assert!(err.contains("sent more than the 4194304 bytes"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_untouched(dir.path());
}

#[tokio::test]
async fn a_manifest_that_names_itself_ends_in_an_error_not_a_loop() {
    // An index whose only entry, asked for by digest, answers with the index again: the
    // bytes cannot hash to the digest they are served under.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": format!("sha256:{}", "ab".repeat(32)),
            "size": 100,
            "platform": { "os": "linux", "architecture": Platform::host().architecture },
        }],
    }))
    .unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&asked);
    let server = HostileServer::start("127.0.0.1", move |request: &Request| {
        if request.path == "/v2/" {
            return Reply::new(200, "{}");
        }
        count.fetch_add(1, Ordering::SeqCst);
        Reply::json(OCI_INDEX, index.clone())
    })
    .unwrap();
    let (err, _, dir) = pull_error(&client(), &server, "evil/app:1").await;
    assert!(err.contains("digest mismatch"), "{err}");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "the index, then its entry, once"
    );
    assert_untouched(dir.path());

    // An image manifest listing its own digest as a layer (served for any blob request):
    // the bytes do not match the layer's descriptor size and digest.
    let (manifest, config, _) = image();
    let mut value: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    value["layers"][0]["digest"] = serde_json::json!(format!("sha256:{}", "cd".repeat(32)));
    let looping = serde_json::to_vec(&value).unwrap();
    let server = HostileServer::start("127.0.0.1", move |request: &Request| {
        if request.path == "/v2/" {
            Reply::new(200, "{}")
        } else if request.path.ends_with(&digest(&config)) {
            Reply::new(200, config.clone())
        } else {
            Reply::json(OCI_MANIFEST, looping.clone())
        }
    })
    .unwrap();
    let (err, _, dir) = pull_error(&client(), &server, "evil/app:1").await;
    assert!(
        err.contains("announces") || err.contains("digest mismatch"),
        "{err}"
    );
    assert!(!walk(&dir.path().join("tmp")).iter().any(|_| true));
}

#[tokio::test]
async fn a_redirect_loop_ends() {
    let server = registry(|wanted, _| {
        Reply::new(302, "").header("Location", &format!("/v2/evil/app/blobs/{wanted}"))
    });
    let (err, took, dir) = pull_error(&client(), &server, "evil/app:1").await;
    assert!(err.contains("redirect"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_untouched(dir.path());
}

#[tokio::test]
async fn a_token_service_that_never_answers_times_out() {
    let token = HostileServer::start("127.0.0.1", |_: &Request| Reply::Hang).unwrap();
    let realm = format!("http://{}/token", token.host());
    let server = HostileServer::start("127.0.0.1", move |_: &Request| {
        Reply::new(401, "{}").header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm}",service="evil""#),
        )
    })
    .unwrap();
    let (err, took, dir) = pull_error(&client(), &server, "evil/app:1").await;
    assert!(err.contains("timed out"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!token.requests().is_empty(), "the token service was asked");
    assert_untouched(dir.path());
}

/// A registry whose token challenge sends clients to `realm`, and which accepts the token
/// `good-token` only.
fn challenging(realm: String) -> HostileServer {
    let (manifest, _, _) = image();
    HostileServer::start("127.0.0.1", move |request: &Request| {
        if request.header("authorization") != Some("Bearer good-token") {
            return Reply::new(401, "{}").header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="{realm}",service="test""#),
            );
        }
        if request.path.contains("/manifests/") {
            Reply::json(OCI_MANIFEST, manifest.clone())
        } else {
            Reply::new(404, "{}")
        }
    })
    .unwrap()
}

fn token_service() -> HostileServer {
    HostileServer::start("127.0.0.2", |_: &Request| {
        Reply::json(
            "application/json",
            r#"{"token":"good-token","expires_in":300}"#,
        )
    })
    .unwrap()
}

/// A client holding alice's password for `host`.
fn alice_for(host: &str) -> RegistryClient {
    RegistryClient::builder()
        .credentials(Credentials::none().insert(
            host,
            Credential::Basic {
                username: "alice".into(),
                password: "s3cret-pw".into(),
            },
        ))
        .retries(0)
        .build()
}

#[tokio::test]
async fn credentials_go_to_the_registrys_own_token_service_only() {
    // The token service on another address: a challenge that points there gets no
    // credentials, and the pull fails saying why.
    let elsewhere = token_service();
    let server = challenging(format!("http://{}/token", elsewhere.host()));
    let host = server.host();
    let with_password = alice_for(&host);
    let (err, _, dir) = pull_error(&with_password, &server, "team/app:1").await;
    assert!(err.contains("not its own site"), "{err}");
    assert!(!err.contains("s3cret-pw"));
    assert!(
        elsewhere.requests().is_empty(),
        "the other host was not even asked: {:?}",
        elsewhere.requests()
    );
    assert_untouched(dir.path());

    // The same token service on the registry's own host: it gets the credentials as HTTP
    // basic auth, and its token opens the registry.
    let own = HostileServer::start("127.0.0.1", |request: &Request| {
        if request.header("authorization").is_some() {
            Reply::json("application/json", r#"{"access_token":"good-token"}"#)
        } else {
            Reply::new(401, "{}")
        }
    })
    .unwrap();
    let server = challenging(format!("http://{}/token?x=1", own.host()));
    let host = server.host();
    let client = alice_for(&host);
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let reference: Reference = format!("{host}/team/app:1").parse().unwrap();
    let err = client
        .pull(&reference, &Platform::host(), &layout)
        .await
        .unwrap_err()
        .to_string();
    // The manifest came through with the token; the blobs are missing on this server.
    assert!(err.contains("404"), "{err}");
    let asked = own.requests();
    let basic = asked[0].header("authorization").unwrap();
    assert!(basic.starts_with("Basic "), "{basic}");
    assert!(
        asked[0]
            .path
            .contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{}",
        asked[0].path
    );
    assert!(asked[0].path.contains("service=test") && asked[0].path.contains("x=1"));
    // One token for the whole pull: the service was asked once.
    assert_eq!(asked.len(), 1, "{asked:?}");
}

/// A registry that takes chunked uploads and breaks the connection's answer to one PATCH:
/// records the Content-Range of every chunk it kept.
#[tokio::test]
async fn a_broken_chunked_upload_resumes_at_the_registrys_offset() {
    use std::sync::Mutex;
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let data: Vec<u8> = (0..5 * 1024 * 1024 + 123)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let layer = layout.write_blob_bytes(&data).unwrap();
    let config = layout
        .write_blob_bytes(br#"{"architecture":"amd64","os":"linux"}"#)
        .unwrap();
    let manifest = layout
        .write_blob_bytes(&serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.size },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.digest, "size": layer.size }],
        })).unwrap())
        .unwrap();
    // What the registry holds of the upload, the ranges it accepted, and whether it has
    // failed its one PATCH yet.
    struct Upload {
        received: u64,
        ranges: Vec<String>,
        failed: bool,
        finished: Vec<String>,
    }
    let state = Arc::new(Mutex::new(Upload {
        received: 0,
        ranges: Vec::new(),
        failed: false,
        finished: Vec::new(),
    }));
    let seen = Arc::clone(&state);
    let server = HostileServer::start("127.0.0.1", move |request: &Request| {
        let mut upload = seen.lock().unwrap();
        let location = "/v2/team/app/blobs/uploads/u1?_state=x";
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/v2/") => Reply::new(200, "{}"),
            ("HEAD", _) => Reply::new(404, ""),
            ("POST", p) if p.contains("mount=") => Reply::new(404, "{}"),
            ("POST", _) => Reply::new(202, "").header("Location", location),
            ("PATCH", _) => {
                let range = request
                    .header("content-range")
                    .unwrap_or_default()
                    .to_owned();
                let start: u64 = range.split('-').next().unwrap().parse().unwrap();
                let end: u64 = range.rsplit('-').next().unwrap().parse().unwrap();
                if start == 2 << 20 && !upload.failed {
                    // The third chunk "arrives" but the answer is an error.
                    upload.failed = true;
                    upload.received = end + 1;
                    return Reply::new(500, "storage hiccup");
                }
                assert_eq!(
                    start, upload.received,
                    "chunks continue where the registry is"
                );
                upload.received = end + 1;
                upload.ranges.push(range);
                Reply::new(202, "").header("Location", location)
            }
            ("GET", p) if p.contains("/uploads/") => Reply::new(204, "")
                .header("Location", location)
                .header("Range", &format!("0-{}", upload.received - 1)),
            ("PUT", p) if p.contains("/uploads/") => {
                upload.finished.push(p.to_owned());
                Reply::new(201, "")
            }
            ("PUT", _) => Reply::new(201, ""),
            _ => Reply::new(404, "{}"),
        }
    })
    .unwrap();
    let client = RegistryClient::builder()
        .credentials(Credentials::none())
        .chunk_size(1 << 20)
        .retries(2)
        .build();
    let to: Reference = format!("{}/team/app:1", server.host()).parse().unwrap();
    let report = client
        .push(&layout, manifest.digest.as_ref(), &to, None)
        .await
        .unwrap();
    assert_eq!(report.uploaded, 2);
    let upload = state.lock().unwrap();
    assert!(upload.failed);
    // Chunks 0 and 1, then (chunk 2 was kept despite the error) 3, 4 and the short last one.
    assert_eq!(
        upload.ranges,
        [
            "0-1048575",
            "1048576-2097151",
            "3145728-4194303",
            "4194304-5242879",
            "5242880-5243002"
        ]
    );
    assert!(
        upload
            .finished
            .iter()
            .any(|p| p.contains(&layer.digest.to_string().replace(':', "%3A")))
    );
    let asked_offset = server
        .requests()
        .iter()
        .any(|r| r.method == "GET" && r.path.contains("/uploads/"));
    assert!(
        asked_offset,
        "the client asked the registry how much it had"
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let calls = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&calls);
    let (manifest, _, _) = image();
    let server = HostileServer::start("127.0.0.1", move |request: &Request| {
        if request.path == "/v2/" {
            return Reply::new(200, "{}");
        }
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::new(429, "slow down").header("Retry-After", "1")
        } else if request.path.contains("/manifests/") {
            Reply::json(OCI_MANIFEST, manifest.clone())
        } else {
            Reply::new(404, "{}")
        }
    })
    .unwrap();
    let client = RegistryClient::builder()
        .credentials(Credentials::none())
        .retries(1)
        .build();
    let started = Instant::now();
    let (err, _, _) = pull_error(&client, &server, "team/app:1").await;
    // The manifest came on the second try, after the pause the registry asked for; the
    // blobs are not there.
    assert!(err.contains("404"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// A registry that refuses to mount blobs from another repository (no permission there, or
/// no such blob: some answer 403 or 404 instead of starting an upload): the push uploads
/// the blobs instead, and succeeds.
#[tokio::test]
async fn a_refused_mount_falls_back_to_an_upload() {
    for refusal in [403u16, 404, 401] {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let (manifest, config, layer) = image();
        layout.write_blob_bytes(&config).unwrap();
        layout.write_blob_bytes(&layer).unwrap();
        let manifest = layout.write_blob_bytes(&manifest).unwrap();
        let server = HostileServer::start("127.0.0.1", move |request: &Request| {
            match (request.method.as_str(), request.path.as_str()) {
                ("GET", "/v2/") => Reply::new(200, "{}"),
                ("HEAD", _) => Reply::new(404, ""),
                ("POST", p) if p.contains("mount=") => Reply::new(
                    refusal,
                    r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
                )
                .header("Content-Type", "application/json"),
                ("POST", _) => Reply::new(202, "").header("Location", "/v2/app/two/blobs/uploads/u1"),
                ("PUT", _) => Reply::new(201, ""),
                _ => Reply::new(404, "{}"),
            }
        })
        .unwrap();
        let from: Reference = format!("{}/app/one", server.host()).parse().unwrap();
        let to: Reference = format!("{}/app/two:1", server.host()).parse().unwrap();
        let report = client()
            .push_mounting(&layout, manifest.digest.as_ref(), &to, &[&from])
            .await
            .unwrap_or_else(|e| panic!("refused with {refusal}: {e}"));
        assert_eq!(
            (report.uploaded, report.mounted),
            (2, 0),
            "refused with {refusal}"
        );
        let requests = server.requests();
        let count = |f: &dyn Fn(&Request) -> bool| requests.iter().filter(|r| f(r)).count();
        assert_eq!(
            count(&|r| r.method == "POST" && r.path.contains("mount=")),
            2,
            "each blob's mount was tried (refused with {refusal})"
        );
        assert_eq!(
            count(&|r| r.method == "PUT" && r.path.contains("/blobs/uploads/u1")),
            2,
            "each blob was uploaded (refused with {refusal})"
        );
        assert_eq!(
            count(&|r| r.method == "PUT" && r.path.contains("/manifests/1")),
            1
        );
    }
}
