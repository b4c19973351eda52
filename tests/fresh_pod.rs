//! Fresh-pod builds: an empty state directory, the cache in a registry repository. A cached
//! step's layer stays in the registry until something needs its bytes, and a push to the
//! registry that holds it mounts it: a fully cached build moves no layer at all.

mod common;

use std::fs;
use std::process::Command;

use common::{Fixture, run};
use strata_testkit::{ContextBuilder, TestRegistry, find_program};

/// Requests in the registry's log after `from` lines that GET one of `digests` as a blob.
fn blob_gets(registry: &TestRegistry, from: usize, digests: &[String]) -> usize {
    registry
        .log()
        .lines()
        .skip(from)
        .filter(|l| l.contains("\"GET /v2/") && l.contains("strata/"))
        .filter(|l| digests.iter().any(|d| l.contains(&format!("/blobs/{d}"))))
        .count()
}

fn uploads(registry: &TestRegistry, from: usize, repository: &str) -> usize {
    registry
        .log()
        .lines()
        .skip(from)
        .filter(|l| l.contains(&format!("\"PUT /v2/{repository}/blobs/uploads/")))
        .count()
}

/// A fresh pod's build extracted nothing, fetched none of `layers` after `mark`, and holds
/// manifests and configs only (JSON): no layer of any stage.
fn no_layer_moved(
    events: &[strata::Event],
    registry: &TestRegistry,
    mark: usize,
    layers: &[String],
    pod: &std::path::Path,
) {
    let extracted = events
        .iter()
        .filter(|e| matches!(e, strata::Event::LayerExtracted { .. }))
        .count();
    assert_eq!(extracted, 0, "nothing extracted");
    assert_eq!(blob_gets(registry, mark, layers), 0, "{}", registry.log());
    for blob in fs::read_dir(pod.join("blobs/sha256")).unwrap() {
        let path = blob.unwrap().path();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.first(), Some(&b'{'), "{} is a layer", path.display());
    }
}

fn log_len(registry: &TestRegistry) -> usize {
    registry.log().lines().count()
}

fn local_blob(state: &std::path::Path, digest: &str) -> bool {
    state
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
        .is_file()
}

/// skopeo copies the pushed image into a layout and umoci unpacks it: the registry holds
/// every blob the manifest names.
fn pull_and_unpack(reference: &str) -> std::path::PathBuf {
    let skopeo = find_program("skopeo", "skopeo").unwrap();
    let work = tempfile::tempdir().unwrap().keep();
    let layout = work.join("layout");
    let status = Command::new(skopeo)
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:img", layout.display()))
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    common::umoci_rootfs_tagged(&work, &layout, "img")
}

/// A build in a new pod: an empty state directory (kept with the image), `cache` as the
/// cache repository.
async fn in_a_fresh_pod(
    fx: &Fixture,
    context: &std::path::Path,
    dockerfile: &str,
    cache: &str,
) -> (strata::Image, tempfile::TempDir) {
    let (image, _, pod) = fresh_pod_events(fx, context, dockerfile, cache).await;
    (image, pod)
}

/// [`in_a_fresh_pod`], with the build's events.
async fn fresh_pod_events(
    fx: &Fixture,
    context: &std::path::Path,
    dockerfile: &str,
    cache: &str,
) -> (strata::Image, Vec<strata::Event>, tempfile::TempDir) {
    let pod = tempfile::tempdir().unwrap();
    let (image, events) = run(fx
        .build(context, dockerfile)
        .state_dir(pod.path())
        .cache_repo(cache))
    .await;
    (image.unwrap(), events, pod)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fully_cached_build_in_a_fresh_pod_downloads_and_uploads_no_layer() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("big", common::noise(2 << 20, 7))
        .build()
        .unwrap();
    let cache = format!("{}/team/cache", fx.registry.host());
    let dockerfile = "FROM {base}\nCOPY big /big\nRUN head -c 1000000 /dev/urandom > /made\nRUN echo done > /done\n";
    let (first, _) = run(fx.build(context.path(), dockerfile).cache_repo(&cache)).await;
    let first = first.unwrap();
    first
        .push(&format!("{}/app/one:1", fx.registry.host()))
        .await
        .unwrap();
    let layers: Vec<String> = first
        .layers()
        .iter()
        .map(|l| l.digest.to_string())
        .collect();
    assert_eq!(layers.len(), 4);

    // A new pod: empty state directory, the same cache repository and registry.
    let mark = log_len(&fx.registry);
    let (second, pod) = in_a_fresh_pod(&fx, context.path(), dockerfile, &cache).await;
    assert_eq!(second.cache_hits(), (3, 3));
    assert_eq!(second.digest(), first.digest());
    // One request to the cache repository per step: the manifest carries the entry.
    let lookups = fx
        .registry
        .log()
        .lines()
        .skip(mark)
        .filter(|l| l.contains("\"GET /v2/team/cache/"))
        .count();
    assert_eq!(lookups, 3, "{}", fx.registry.log());
    let target = format!("{}/app/two:1", fx.registry.host());
    second.push(&target).await.unwrap();
    assert_eq!(
        blob_gets(&fx.registry, mark, &layers),
        0,
        "no layer downloaded:\n{}",
        fx.registry.log()
    );
    assert!(
        uploads(&fx.registry, mark, "app/two") <= 1,
        "at most the config uploaded:\n{}",
        fx.registry.log()
    );
    for layer in &layers {
        assert!(
            !local_blob(pod.path(), layer),
            "{layer} stayed in the registry"
        );
    }
    let root = pull_and_unpack(&target);
    assert_eq!(fs::read_to_string(root.join("done")).unwrap(), "done\n");
    assert_eq!(fs::metadata(root.join("made")).unwrap().len(), 1_000_000);

    // An output that holds the bytes downloads them (and is a valid layout).
    let mark = log_len(&fx.registry);
    let (work, layout) = common::layout(&second);
    assert_eq!(
        blob_gets(&fx.registry, mark, &layers),
        4,
        "{}",
        fx.registry.log()
    );
    let root = common::umoci_rootfs(work.path(), &layout);
    assert_eq!(
        fs::read(root.join("big")).unwrap(),
        common::noise(2 << 20, 7)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_step_fetches_the_layers_below_it_and_pushes_mount_the_rest() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("a", "a\n").build().unwrap();
    let cache = format!("{}/team/cache", fx.registry.host());
    let before = "FROM {base}\nCOPY a /a\nRUN cat /a > /b\nRUN echo 1 > /c\n";
    let (first, _) = run(fx.build(context.path(), before).cache_repo(&cache)).await;
    let first = first.unwrap();
    let below: Vec<String> = first.layers()[..3]
        .iter()
        .map(|l| l.digest.to_string())
        .collect();

    let mark = log_len(&fx.registry);
    let after = before.replace("echo 1", "echo 2");
    let (second, pod) = in_a_fresh_pod(&fx, context.path(), &after, &cache).await;
    assert_eq!(second.cache_hits(), (2, 3));
    // The missing RUN needs the filesystem of the layers below it, each fetched once.
    assert_eq!(blob_gets(&fx.registry, mark, &below), 3);
    for layer in &below {
        assert!(local_blob(pod.path(), layer));
    }
    // Another registry cannot mount: the push there uploads everything, from the bytes
    // this build has or fetches.
    let other = TestRegistry::start().unwrap();
    let target = format!("{}/elsewhere/app:1", other.host());
    second.push(&target).await.unwrap();
    let root = pull_and_unpack(&target);
    assert_eq!(fs::read_to_string(root.join("c")).unwrap(), "2\n");
    assert_eq!(fs::read_to_string(root.join("b")).unwrap(), "a\n");
}

/// A fully cached build pushed to another registry: nothing could be mounted, so the layers
/// come from the cache repository and the base's repository, then go up.
#[tokio::test(flavor = "multi_thread")]
async fn a_lazy_image_pushed_to_another_registry_fetches_then_uploads() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("a", "a\n").build().unwrap();
    let cache = format!("{}/team/cache", fx.registry.host());
    let dockerfile = "FROM {base}\nCOPY a /a\nRUN cat /a > /b\n";
    let (first, _) = run(fx.build(context.path(), dockerfile).cache_repo(&cache)).await;
    first.unwrap();
    let (second, _pod) = in_a_fresh_pod(&fx, context.path(), dockerfile, &cache).await;
    assert_eq!(second.cache_hits(), (2, 2));
    let other = TestRegistry::start().unwrap();
    let target = format!("{}/copy/app:1", other.host());
    second.push(&target).await.unwrap();
    let root = pull_and_unpack(&target);
    assert_eq!(fs::read_to_string(root.join("b")).unwrap(), "a\n");
    assert!(root.join("bin/sh").exists(), "the base's layer went up too");
}

/// A push remembers where it put each blob (`blob-sources/` in the state directory): the
/// same image pushed to another repository of the registry mounts every blob, the config
/// included, and uploads nothing; a later build's push mounts the layers it shares.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_repository_of_the_registry_gets_every_blob_mounted() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("big", common::noise(1 << 20, 3))
        .build()
        .unwrap();
    let dockerfile = "FROM {base}\nCOPY big /big\nRUN echo made > /made\n";
    let (image, _) = run(fx.build(context.path(), dockerfile)).await;
    let image = image.unwrap();
    image
        .push(&format!("{}/app/one:1", fx.registry.host()))
        .await
        .unwrap();
    let mark = log_len(&fx.registry);
    let target = format!("{}/app/three:1", fx.registry.host());
    image.push(&target).await.unwrap();
    assert_eq!(
        uploads(&fx.registry, mark, "app/three"),
        0,
        "{}",
        fx.registry.log()
    );
    let mounts = fx
        .registry
        .log()
        .lines()
        .skip(mark)
        .filter(|l| l.contains("\"POST /v2/app/three/blobs/uploads/?") && l.contains("\" 201 "))
        .count();
    assert_eq!(mounts, 4, "three layers and the config mounted");
    let root = pull_and_unpack(&target);
    assert_eq!(fs::read_to_string(root.join("made")).unwrap(), "made\n");
    // Another build in the same state directory, pushed to a third repository: the layers
    // it shares with the first image are mounted from where that one went.
    let (other, _) = run(fx.build(
        context.path(),
        &format!("{dockerfile}RUN echo more > /more\n"),
    ))
    .await;
    let mark = log_len(&fx.registry);
    other
        .unwrap()
        .push(&format!("{}/app/four:1", fx.registry.host()))
        .await
        .unwrap();
    assert_eq!(
        uploads(&fx.registry, mark, "app/four"),
        2,
        "the new layer and the new config only:\n{}",
        fx.registry.log()
    );
}

/// With credentials (htpasswd): a fresh pod's fully cached build mounts every layer from
/// the cache repository and the base's repository, which the credentials can read.
#[tokio::test(flavor = "multi_thread")]
async fn an_authenticated_registry_mounts_across_repositories() {
    let guarded = TestRegistry::builder()
        .basic_auth("ci", "pod-pass-4Xz")
        .start()
        .unwrap();
    let base = strata_testkit::push_busybox_image(&guarded, "base/busybox", "1").unwrap();
    let context = ContextBuilder::new().file("a", "a\n").build().unwrap();
    let cache = format!("{}/team/cache", guarded.host());
    let dockerfile = format!("FROM {}\nCOPY a /a\nRUN cat /a > /b\n", base.reference);
    let build = |state: &std::path::Path| {
        strata::Build::new(context.path())
            .dockerfile_text(dockerfile.clone())
            .state_dir(state)
            .isolation(strata::Isolation::Namespaces)
            .registry(
                strata::registry::RegistryClient::builder()
                    .credentials(strata::registry::Credentials::none().insert(
                        &guarded.host(),
                        strata::registry::Credential::Basic {
                            username: "ci".to_owned(),
                            password: "pod-pass-4Xz".to_owned(),
                        },
                    ))
                    .build(),
            )
            .cache_repo(&cache)
    };
    let first = tempfile::tempdir().unwrap();
    let (image, _) = run(build(first.path())).await;
    let layers: Vec<String> = image
        .unwrap()
        .layers()
        .iter()
        .map(|l| l.digest.to_string())
        .collect();
    let pod = tempfile::tempdir().unwrap();
    let mark = log_len(&guarded);
    let (image, _) = run(build(pod.path())).await;
    let image = image.unwrap();
    assert_eq!(image.cache_hits(), (2, 2));
    image
        .push(&format!("{}/team/app:1", guarded.host()))
        .await
        .unwrap();
    assert_eq!(blob_gets(&guarded, mark, &layers), 0, "{}", guarded.log());
    assert!(
        uploads(&guarded, mark, "team/app") <= 1,
        "{}",
        guarded.log()
    );
}

/// `--cache-from` an image strata pushed earlier: its steps hit without a cache repository,
/// and its layers stay in its repository (the push to the same registry mounts them). An
/// image strata did not build is ignored with a warning, and the build misses cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn cache_from_an_image_built_earlier_hits_without_a_cache_repository() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("a", "a\n").build().unwrap();
    let dockerfile = "FROM {base}\nCOPY a /a\nRUN cat /a > /b && echo ran\nWORKDIR /w\n";
    let (first, _) = run(fx.build(context.path(), dockerfile)).await;
    let first = first.unwrap();
    let pushed = format!("{}/app/main:1", fx.registry.host());
    first.push(&pushed).await.unwrap();
    let layers: Vec<String> = first
        .layers()
        .iter()
        .map(|l| l.digest.to_string())
        .collect();

    let pod = tempfile::tempdir().unwrap();
    let mark = log_len(&fx.registry);
    let (second, events) = run(fx
        .build(context.path(), dockerfile)
        .state_dir(pod.path())
        .cache_from(&pushed))
    .await;
    let second = second.unwrap();
    assert_eq!(second.cache_hits(), (3, 3));
    assert_eq!(second.digest(), first.digest());
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, strata::Event::Output { .. }))
    );
    assert_eq!(blob_gets(&fx.registry, mark, &layers), 0);
    second
        .push(&format!("{}/app/next:1", fx.registry.host()))
        .await
        .unwrap();
    assert!(
        uploads(&fx.registry, mark, "app/next") == 0,
        "{}",
        fx.registry.log()
    );

    // The base image was not built by strata: no keys, a warning, every step runs.
    let pod = tempfile::tempdir().unwrap();
    let (third, events) = run(fx
        .build(context.path(), dockerfile)
        .state_dir(pod.path())
        .cache_from(&fx.base))
    .await;
    let third = third.unwrap();
    assert_eq!(third.cache_hits(), (0, 3));
    assert!(
        events.iter().any(|e| matches!(
            e,
            strata::Event::Warning { message, .. } if message.contains("no cache keys")
        )),
        "{events:?}"
    );
}

/// The layer steps of [`LOOKAHEAD`]: every one has a key known before the stage runs.
const LOOKAHEAD_STEPS: usize = 6;
const LOOKAHEAD: &str = "FROM {base}\nCOPY a /a\nENV X=1\nRUN echo one > /one\nWORKDIR /w\nRUN echo two > two\nUSER 0\nCOPY b /b\nRUN echo $X > three\n";

fn lookups(events: &[strata::Event]) -> Vec<(usize, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            strata::Event::CacheLookups { keys, found, .. } => Some((*keys, *found)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_pod_asks_the_cache_repository_for_a_stages_steps_at_once() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("a", "a")
        .file("b", "b")
        .build()
        .unwrap();
    let cache = format!("{}/team/ahead", fx.registry.host());
    let (first, events) = run(fx.build(context.path(), LOOKAHEAD).cache_repo(&cache)).await;
    let first = first.unwrap();
    // The first build asked for every step together, and found none.
    assert_eq!(lookups(&events), vec![(LOOKAHEAD_STEPS, 0)]);

    let mark = log_len(&fx.registry);
    let (second, events, pod) = fresh_pod_events(&fx, context.path(), LOOKAHEAD, &cache).await;
    assert_eq!(second.digest(), first.digest());
    assert_eq!(second.cache_hits(), (LOOKAHEAD_STEPS, LOOKAHEAD_STEPS));
    assert_eq!(lookups(&events), vec![(LOOKAHEAD_STEPS, LOOKAHEAD_STEPS)]);
    // Each key asked once: the steps take the answers of the lookups made ahead.
    let asked = fx
        .registry
        .log()
        .lines()
        .skip(mark)
        .filter(|l| l.contains("\"GET /v2/team/ahead/manifests/"))
        .count();
    assert_eq!(asked, LOOKAHEAD_STEPS, "{}", fx.registry.log());

    // A changed ENV changes the keys of the steps after it: all are asked for together
    // again (the lazy hit before it has no local entry, since its layer stayed in the
    // registry), and only that one is found.
    let changed = LOOKAHEAD.replace("ENV X=1", "ENV X=2");
    let (third, events) = run(fx
        .build(context.path(), &changed)
        .state_dir(pod.path())
        .cache_repo(&cache))
    .await;
    assert_eq!(third.unwrap().cache_hits(), (1, LOOKAHEAD_STEPS));
    assert_eq!(lookups(&events), vec![(LOOKAHEAD_STEPS, 1)]);
}

/// A cache repository that takes 300 ms to answer each lookup (with "not found"): the
/// lookups of one stage must overlap.
#[tokio::test(flavor = "multi_thread")]
async fn lookups_in_a_slow_cache_repository_overlap() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use strata_testkit::{HostileServer, Reply, Request};

    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("a", "a")
        .file("b", "b")
        .build()
        .unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let asked = Arc::new(AtomicUsize::new(0));
    let slow = {
        let (in_flight, most, asked) = (in_flight.clone(), most.clone(), asked.clone());
        HostileServer::start("127.0.0.1", move |request: &Request| {
            if !request.path.contains("/manifests/") {
                return Reply::json("application/json", "{}");
            }
            asked.fetch_add(1, Ordering::SeqCst);
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(300));
            in_flight.fetch_sub(1, Ordering::SeqCst);
            Reply::new(
                404,
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            )
            .header("Content-Type", "application/json")
        })
        .unwrap()
    };
    let (image, events) = run(fx
        .build(context.path(), LOOKAHEAD)
        .cache_repo(format!("{}/cache", slow.host()))
        .cache_repo_writes(false))
    .await;
    assert_eq!(image.unwrap().cache_hits(), (0, LOOKAHEAD_STEPS));
    assert_eq!(lookups(&events), vec![(LOOKAHEAD_STEPS, 0)]);
    assert_eq!(
        asked.load(Ordering::SeqCst),
        LOOKAHEAD_STEPS,
        "each key asked once"
    );
    assert!(
        most.load(Ordering::SeqCst) >= 4,
        "at most {} lookups were in flight together",
        most.load(Ordering::SeqCst)
    );
}

/// A cached RUN whose bind mount reads another stage prepares no mount: a fresh pod's fully
/// cached build extracts nothing and downloads no layer, even for the mounted stage.
#[tokio::test(flavor = "multi_thread")]
async fn a_cached_run_with_a_stage_mount_needs_no_filesystem() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("a", "a").build().unwrap();
    let cache = format!("{}/team/mounts", fx.registry.host());
    let dockerfile = "FROM {base} AS tools\nCOPY a /tools/a\n\nFROM {base}\nRUN --mount=type=bind,from=tools,source=/tools,target=/mnt cat /mnt/a > /copied\n";
    let (first, _) = run(fx.build(context.path(), dockerfile).cache_repo(&cache)).await;
    let first = first.unwrap();
    let layers: Vec<String> = first
        .layers()
        .iter()
        .map(|l| l.digest.to_string())
        .collect();

    let mark = log_len(&fx.registry);
    let (second, events, pod) = fresh_pod_events(&fx, context.path(), dockerfile, &cache).await;
    assert_eq!(second.digest(), first.digest());
    no_layer_moved(&events, &fx.registry, mark, &layers, pod.path());
}

/// `COPY --from` is keyed on the content it copies, which a fresh pod cannot read without
/// the source stage's layers: the cache repository keeps that digest too, so a fully cached
/// multi-stage build downloads and extracts no layer.
#[tokio::test(flavor = "multi_thread")]
async fn a_cached_copy_from_another_stage_needs_no_layer_in_a_fresh_pod() {
    let fx = Fixture::new();
    let context = ContextBuilder::new().file("a", "a").build().unwrap();
    let cache = format!("{}/team/stages", fx.registry.host());
    let dockerfile = "FROM {base} AS left\nCOPY a /a\nRUN cat /a /a > /left.sum\n\nFROM {base}\nCOPY --from=left /left.sum /out/\n";
    let (first, _) = run(fx.build(context.path(), dockerfile).cache_repo(&cache)).await;
    let first = first.unwrap();

    let mark = log_len(&fx.registry);
    let (second, events, pod) = fresh_pod_events(&fx, context.path(), dockerfile, &cache).await;
    assert_eq!(second.digest(), first.digest());
    assert_eq!(second.cache_hits(), (3, 3));
    let layers: Vec<String> = first
        .layers()
        .iter()
        .map(|l| l.digest.to_string())
        .collect();
    no_layer_moved(&events, &fx.registry, mark, &layers, pod.path());
}
