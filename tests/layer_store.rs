//! The layer store: each layer is extracted once into the state directory and stacked as
//! an overlay's lower directories, so a RUN that misses the cache costs the RUN, not the
//! base image. (Where overlays are unusable, the store is not used; these tests run as
//! root, as CI does, and say so when they cannot.)

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Fixture, run};
use strata::Event;
use strata_testkit::ContextBuilder;

fn extracted(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::LayerExtracted { diff_id, .. } => Some(diff_id.clone()),
            _ => None,
        })
        .collect()
}

/// The store's directory of the top layer of `stack` (`layers/<chain id hex>/root`).
fn stored(state: &Path, stack: &[strata::config::LayerRef]) -> std::path::PathBuf {
    use sha2::{Digest, Sha256};
    let mut chain = String::new();
    for layer in stack {
        chain = if chain.is_empty() {
            layer.diff_id.to_string()
        } else {
            let text = format!("{chain} {}", layer.diff_id);
            format!("sha256:{}", hex::encode(Sha256::digest(text)))
        };
    }
    state
        .join("layers")
        .join(chain.trim_start_matches("sha256:"))
        .join("root")
}

fn overlay_usable() -> bool {
    let usable = strata_snapshot::overlay::probe().usable;
    assert!(
        usable || !rustix::process::geteuid().is_root(),
        "overlay unusable while running as root"
    );
    usable
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_run_does_not_extract_the_base_again() {
    if !overlay_usable() {
        eprintln!("layer store not checked: not root");
        return;
    }
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let first = "FROM {base}\nRUN echo one > /one && rm /bin/vi\n";
    let (image, events) = run(fx.build(context.path(), first)).await;
    let image = image.unwrap();
    let base = &image.layers()[0];
    // The base's layer was extracted once, and the RUN's upper directory became its
    // layer's directory without a second extraction.
    assert_eq!(extracted(&events), vec![base.diff_id.to_string()]);
    let base_dir = stored(fx.state.path(), &image.layers()[..1]);
    let inode = fs::metadata(&base_dir).unwrap().ino();
    let run_dir = stored(fx.state.path(), image.layers());
    assert!(
        run_dir.join("one").is_file(),
        "the RUN's layer is in the store"
    );
    // The deletion is kept in overlay form: a 0/0 character device.
    let whiteout = fs::symlink_metadata(run_dir.join("bin/vi")).unwrap();
    assert_eq!(whiteout.rdev(), 0);
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &whiteout.file_type()
    ));

    // The same base, another RUN (on top of the first one's layer): nothing extracted.
    let second = "FROM {base}\nRUN echo one > /one && rm /bin/vi\nRUN test ! -e /bin/vi && cat /one > /two\n";
    let (image2, events) = run(fx.build(context.path(), second)).await;
    image2.unwrap();
    assert_eq!(extracted(&events), Vec::<String>::new());
    // The step's time, split: preparing it (store directories, overlay mount), the
    // command, and its layer; together within the step's own time.
    let split: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::RunTimings {
                line,
                prepare,
                command,
                layer,
                ..
            } => Some((*line, *prepare + *command + *layer)),
            _ => None,
        })
        .collect();
    let step = events
        .iter()
        .find_map(|e| match e {
            Event::StepFinished {
                line: 3, duration, ..
            } => Some(*duration),
            _ => None,
        })
        .unwrap();
    assert_eq!(split.len(), 1, "only the RUN that missed: {split:?}");
    assert_eq!(split[0].0, 3);
    assert!(split[0].1 <= step, "{split:?} within {step:?}");
    assert_eq!(
        fs::metadata(&base_dir).unwrap().ino(),
        inode,
        "the same directory"
    );
    let check = strata::check_state(fx.state.path(), false).unwrap();
    assert!(check.is_clean(), "{:?}", check.faults);
    assert_eq!(check.layers, 3, "base, first RUN, second RUN");

    // Reproducible builds give the same image on this state directory as on an empty one,
    // which extracts everything from blobs. With clamped times an upper directory is not
    // its layer (its times are the clock's), so it is never moved into the store: the
    // second RUN extracts the first one's layer.
    let epoch = 1_700_000_000;
    let (image4, events) = run(fx.build(context.path(), second).reproducible(epoch)).await;
    let image4 = image4.unwrap();
    assert_eq!(
        extracted(&events),
        vec![image4.layers()[1].diff_id.to_string()]
    );
    let fresh = tempfile::tempdir().unwrap();
    let (image5, events) = run(fx
        .build(context.path(), second)
        .reproducible(epoch)
        .state_dir(fresh.path()))
    .await;
    let image5 = image5.unwrap();
    assert_eq!(image4.digest(), image5.digest());
    assert_eq!(extracted(&events).len(), 2, "the base and the first RUN");
    let check = strata::check_state(fresh.path(), false).unwrap();
    assert!(check.is_clean(), "{:?}", check.faults);
    assert_eq!(check.layers, 2);
}

/// An image whose layers were pulled (not made here) is extracted into the store in overlay
/// form: its whiteouts and opaque directories hide what they hide, as when every layer is
/// applied to one directory (walk mode, here on a filesystem without reflinks).
#[tokio::test(flavor = "multi_thread")]
async fn pulled_whiteouts_and_opaque_directories_hide_the_layers_below() {
    if !overlay_usable() {
        eprintln!("layer store not checked: not root");
        return;
    }
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let dockerfile = "FROM {base}\nRUN mkdir -p /a/b && echo 1 > /a/b/f && echo k > /a/keep\nRUN rm -r /a/b && mkdir /a/b && echo 2 > /a/b/g && rm /bin/vi\n";
    let (image, _) = run(fx.build(context.path(), dockerfile)).await;
    let target = format!("{}/layers/whiteouts:1", fx.registry.host());
    image.unwrap().push(&target).await.unwrap();
    let check = "FROM TARGET\nRUN test ! -e /a/b/f && test -f /a/b/g && test -f /a/keep && test ! -e /bin/vi && test -x /bin/sh && ls -A /a/b > /listing\n"
        .replace("TARGET", &target);
    for mode in [strata::SnapshotMode::Auto, strata::SnapshotMode::Walk] {
        let state = tempfile::tempdir().unwrap();
        let (image, events) = run(fx
            .build(context.path(), &check)
            .state_dir(state.path())
            .snapshot_mode(mode))
        .await;
        let image = image.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        // Walk mode fills the store only where it can clone from it by reference.
        let store_used = !extracted(&events).is_empty();
        assert_eq!(
            store_used,
            mode == strata::SnapshotMode::Auto || reflinks_in(state.path()),
            "{mode:?}"
        );
        let (work, layout) = common::layout(&image);
        let root = common::umoci_rootfs(work.path(), &layout);
        assert_eq!(
            fs::read_to_string(root.join("listing")).unwrap(),
            "g\n",
            "{mode:?}"
        );
    }
}

/// Two builds on one state directory that need the same missing layers at the same time:
/// each layer is extracted once, and both builds succeed.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_builds_extract_a_shared_layer_once() {
    if !overlay_usable() {
        eprintln!("layer store not checked: not root");
        return;
    }
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let builds = (0..4).map(|i| {
        let dockerfile = format!("FROM {{base}}\nRUN echo {i} > /built\n");
        run(fx.build(context.path(), &dockerfile))
    });
    let results = futures_util::future::join_all(builds).await;
    let mut all = Vec::new();
    for (image, events) in results {
        image.unwrap();
        all.extend(extracted(&events));
    }
    let base_layers = 1;
    assert_eq!(all.len(), base_layers, "extracted once: {all:?}");
    let check = strata::check_state(fx.state.path(), false).unwrap();
    assert!(check.is_clean(), "{:?}", check.faults);
    assert_eq!(check.layers, base_layers + 4);
}

/// A stack deeper than one page of mount options (128 layers and the base): the RUN's
/// overlay is mounted with one `lowerdir+` per layer, and sees every layer.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_on_129_layers() {
    if !overlay_usable() {
        eprintln!("layer store not checked: not root");
        return;
    }
    let fx = Fixture::new();
    let mut context = ContextBuilder::new();
    let mut dockerfile = String::from("FROM {base}\n");
    for i in 0..128 {
        context = context.file(format!("f{i}"), format!("{i}"));
        dockerfile.push_str(&format!("COPY f{i} /layers/\n"));
    }
    dockerfile.push_str("RUN ls /layers | wc -l > /count && cat /layers/f0 /layers/f127 > /ends\n");
    let context = context.build().unwrap();
    let (image, events) = run(fx.build(context.path(), &dockerfile)).await;
    let image = image.unwrap();
    assert_eq!(image.layers().len(), 130);
    assert_eq!(
        extracted(&events).len(),
        129,
        "the base and each COPY, once"
    );
    let (work, layout) = common::layout(&image);
    let root = common::umoci_rootfs(work.path(), &layout);
    assert_eq!(
        fs::read_to_string(root.join("count")).unwrap().trim(),
        "128"
    );
    assert_eq!(fs::read_to_string(root.join("ends")).unwrap(), "0127");
}

/// A layer that writes into a directory without listing it (a RUN that appends to a file
/// changes the file, not its directory) gets that directory as the layers below have it,
/// also when the layer is extracted from its blob in a new state directory: a private home
/// stays private and its owner's.
#[tokio::test(flavor = "multi_thread")]
async fn directories_a_layer_does_not_list_keep_the_metadata_below() {
    if !overlay_usable() {
        eprintln!("layer store not checked: not root");
        return;
    }
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let first = format!("{}/layers/private:1", fx.registry.host());
    let second = format!("{}/layers/private:2", fx.registry.host());
    let (image, _) = run(fx.build(
        context.path(),
        "FROM {base}\nRUN mkdir -p /secret/inner && echo a > /secret/inner/f && chmod 700 /secret /secret/inner && chown -R app /secret && touch -d @1000000000 /secret /secret/inner\n",
    ))
    .await;
    image.unwrap().push(&first).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let (image, _) = run(fx
        .build(
            context.path(),
            &format!("FROM {first}\nRUN echo b >> /secret/inner/f\n"),
        )
        .state_dir(state.path()))
    .await;
    let image = image.unwrap();
    image.push(&second).await.unwrap();
    // The case at hand: the layer lists the file and not the directories holding it.
    let (_work, layout) = common::layout(&image);
    let top = image.layers().last().unwrap();
    let blob = layout.join("blobs/sha256").join(top.digest.digest());
    let mut archive =
        tar::Archive::new(flate2::read::GzDecoder::new(fs::File::open(blob).unwrap()));
    let listed: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, ["secret/inner/f"]);
    let fresh = tempfile::tempdir().unwrap();
    let (image, _) = run(fx
        .build(
            context.path(),
            &format!("FROM {second}\nRUN stat -c '%a %u %Y' /secret /secret/inner > /out && cat /secret/inner/f >> /out\n"),
        )
        .state_dir(fresh.path()))
    .await;
    let image = image.unwrap();
    let (work, layout) = common::layout(&image);
    let root = common::umoci_rootfs(work.path(), &layout);
    assert_eq!(
        fs::read_to_string(root.join("out")).unwrap(),
        "700 1000 1000000000\n700 1000 1000000000\na\nb\n"
    );
}

/// Whether `dir`'s filesystem clones files by reference.
fn reflinks_in(dir: &Path) -> bool {
    let source = dir.join(".reflink-probe");
    fs::write(&source, [0u8; 4096]).unwrap();
    let clone = dir.join(".reflink-probe-clone");
    let ok = rustix::fs::ioctl_ficlone(
        fs::File::create(&clone).unwrap(),
        fs::File::open(&source).unwrap(),
    )
    .is_ok();
    let _ = (fs::remove_file(source), fs::remove_file(clone));
    ok
}

/// Walk mode (`--snapshot-mode walk`) on a filesystem with reflinks (XFS on a loop device)
/// runs a step on a copy-on-write clone of the store's view: the base is extracted once per
/// state directory, not once per build, and what a step writes never reaches the store, even
/// to the files it cloned from there. The step's layer is what the same step makes on an
/// overlay, and in walk mode on a filesystem without reflinks (layers extracted per build).
#[tokio::test(flavor = "multi_thread")]
async fn walk_mode_clones_the_store_where_the_filesystem_has_reflinks() {
    if !overlay_usable() {
        eprintln!("layer store not checked: not root");
        return;
    }
    let xfs = strata_testkit::Xfs::mount().unwrap();
    assert!(reflinks_in(&xfs.path()), "XFS makes reflinks");
    let state = xfs.path().join("state");
    let fx = Fixture::new();
    let context = ContextBuilder::new().build().unwrap();
    let walk = strata::SnapshotMode::Walk;
    let first = "FROM {base}\nRUN echo one > /one\n";
    let (image, events) = run(fx
        .build(context.path(), first)
        .state_dir(&state)
        .snapshot_mode(walk))
    .await;
    let image = image.unwrap();
    assert_eq!(
        extracted(&events),
        vec![image.layers()[0].diff_id.to_string()]
    );
    let base_dir = stored(&state, &image.layers()[..1]);
    let inode = fs::metadata(&base_dir).unwrap().ino();
    let passwd = fs::read(base_dir.join("etc/passwd")).unwrap();
    let busybox = fs::metadata(base_dir.join("bin/busybox")).unwrap();

    let second = "FROM {base}\nRUN echo two > /two && echo intruder:x:9:9::/:/bin/sh >> /etc/passwd && chmod 4755 /bin/busybox && rm /bin/vi\n";
    let (walked, events) = run(fx
        .build(context.path(), second)
        .state_dir(&state)
        .snapshot_mode(walk))
    .await;
    let walked = walked.unwrap();
    assert_eq!(
        extracted(&events),
        Vec::<String>::new(),
        "nothing extracted again"
    );
    assert_eq!(fs::metadata(&base_dir).unwrap().ino(), inode);
    assert_eq!(fs::read(base_dir.join("etc/passwd")).unwrap(), passwd);
    let after = fs::metadata(base_dir.join("bin/busybox")).unwrap();
    assert_eq!(
        after.mode(),
        busybox.mode(),
        "the store's file keeps its mode"
    );
    assert!(
        base_dir.join("bin/vi").exists(),
        "the store's file is still there"
    );
    let check = strata::check_state(&state, false).unwrap();
    assert!(check.is_clean(), "{:?}", check.faults);

    let (overlaid, _) = run(fx
        .build(context.path(), second)
        .snapshot_mode(strata::SnapshotMode::Overlay))
    .await;
    let plain = tempfile::tempdir().unwrap();
    let (extracting, events) = run(fx
        .build(context.path(), second)
        .state_dir(plain.path())
        .snapshot_mode(walk))
    .await;
    assert_eq!(
        extracted(&events).is_empty(),
        !reflinks_in(plain.path()),
        "without reflinks walk mode extracts into its own directory"
    );
    let mut trees = Vec::new();
    for image in [walked, overlaid.unwrap(), extracting.unwrap()] {
        let (work, layout) = common::layout(&image);
        let mut tree = common::tree(&common::umoci_rootfs(work.path(), &layout));
        tree.retain(|path, _| {
            !path.starts_with("proc") && !path.starts_with("sys") && !path.starts_with("dev")
        });
        trees.push(tree);
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);
    assert!(trees[0]["etc/passwd"].contains("intruder"));
    assert!(
        trees[0]["bin/busybox"].starts_with("4755 "),
        "{}",
        trees[0]["bin/busybox"]
    );
    assert!(!trees[0].contains_key("bin/vi"));
}
