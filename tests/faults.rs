//! Faults and concurrency: damage found and repaired by the state check, a disk that fills
//! up, builds killed at random points, and eight builds sharing one state directory. After
//! each, `strata::check_state` proves that nothing in the state directory is corrupt.

mod common;

use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{Fixture, noise, run};
use strata::{Build, check_state};
use strata_testkit::ContextBuilder;

/// Flips one byte in the middle of a file, in place (hard links see it too).
fn flip(path: &Path) {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let middle = file.metadata().unwrap().len() / 2;
    let mut byte = [0u8];
    file.seek(std::io::SeekFrom::Start(middle)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(std::io::SeekFrom::Start(middle)).unwrap();
    file.write_all(&[byte[0] ^ 0xff]).unwrap();
}

fn assert_clean(state: &Path) {
    let check = check_state(state, false).unwrap();
    assert!(check.is_clean(), "broken: {:#?}", check.faults);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_check_finds_damage_and_repair_lets_the_next_build_heal() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("a", "a\n")
        .file("b", noise(64 << 10, 7))
        .build()
        .unwrap();
    let dockerfile = "FROM {base}\nCOPY a /a\nCOPY b /b\n";
    let (first, _) = run(fx.build(context.path(), dockerfile).reproducible(0)).await;
    let first = first.unwrap();
    let check = check_state(fx.state.path(), false).unwrap();
    assert!(check.is_clean(), "{:#?}", check.faults);
    assert!(check.blobs >= 5 && check.cache_entries >= 2, "{check:?}");

    // The image's last layer loses a byte; a cache entry and a copy digest turn to garbage.
    let layer = &first.layers().last().unwrap().digest;
    let blob = fx.state.path().join("blobs/sha256").join(layer.digest());
    flip(&blob);
    let entry = fs::read_dir(fx.state.path().join("cache/entries"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            !fs::read_to_string(p)
                .unwrap()
                .contains(layer.as_ref() as &str)
        })
        .unwrap();
    fs::write(&entry, "{not json").unwrap();
    let check = check_state(fx.state.path(), false).unwrap();
    assert!(
        check
            .faults
            .iter()
            .any(|f| f.path == blob && f.message.contains("hashes to")),
        "{:#?}",
        check.faults
    );
    assert!(
        check.faults.iter().any(|f| f.path == entry),
        "{:#?}",
        check.faults
    );
    assert!(check.faults.iter().all(|f| !f.repaired));

    // Repair removes what is broken; the next build runs those steps again and makes the
    // same image.
    let repaired = check_state(fx.state.path(), true).unwrap();
    assert!(
        repaired.faults.iter().all(|f| f.repaired),
        "{:#?}",
        repaired.faults
    );
    assert_clean(fx.state.path());
    let (second, _) = run(fx.build(context.path(), dockerfile).reproducible(0)).await;
    let second = second.unwrap();
    assert_eq!(second.digest(), first.digest());
    assert_eq!(
        fs::read(&blob).map(|b| b.len() as u64).ok(),
        Some(second.layers()[2].size)
    );
    assert_clean(fx.state.path());
}

/// A tmpfs mounted for the length of a test.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test mounts a tmpfs: run the tests as root (scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs failed");
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_a_clear_error_and_leaves_nothing_partial() {
    let fx = Fixture::new();
    let disk = Tmpfs::mount("6m");
    let context = ContextBuilder::new()
        .file("big", noise(12 << 20, 11))
        .build()
        .unwrap();
    let build = Build::new(context.path())
        .dockerfile_text(format!("FROM {}\nCOPY big /big\n", fx.base))
        .state_dir(disk.path());
    let (result, _) = run(build).await;
    let message = result.unwrap_err().to_string();
    assert!(message.contains("No space left on device"), "{message}");
    assert!(
        message.contains(&disk.path().display().to_string()),
        "{message}"
    );
    let check = check_state(disk.path(), false).unwrap();
    assert!(check.is_clean(), "{:#?}", check.faults);
    assert!(check.leftovers.is_empty(), "{:#?}", check.leftovers);
    // The base image's blobs, pulled before the disk filled, are whole and stay usable.
    assert!(check.blobs >= 2, "{check:?}");
}

/// The build the kill test runs in a child process (this test binary, run again).
const CHILD: &str = "STRATA_KILLED_BUILD";

fn child_build() {
    let var = |name: &str| std::env::var(format!("{CHILD}_{name}")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let image = runtime
        .block_on(
            Build::new(PathBuf::from(var("CONTEXT")))
                .dockerfile_text(var("DOCKERFILE"))
                .state_dir(var("STATE"))
                .reproducible(1_700_000_000)
                .isolation(strata::Isolation::Namespaces)
                .run(),
        )
        .unwrap();
    println!("digest={}", image.digest());
    if let Ok(target) = std::env::var(format!("{CHILD}_PUSH")) {
        let pushed = runtime.block_on(image.push(&target)).unwrap();
        println!("pushed={pushed}");
    }
}

/// The cold build the kill tests interrupt: a pull, extraction for RUN, COPY and RUN layers
/// with cache entries, and a 3 MiB layer (so a push reports progress part-way).
fn kill_test_dockerfile(fx: &Fixture) -> String {
    format!(
        "FROM {}\nCOPY files /files\nRUN echo made > /made && ls /files | wc -l > /count\nCOPY big /big\nRUN cat /count\n",
        fx.base
    )
}

fn kill_test_context() -> tempfile::TempDir {
    let mut context = ContextBuilder::new().file("big", noise(3 << 20, 3));
    for i in 0..200 {
        context = context.file(format!("files/{i}"), format!("{i}\n"));
    }
    context.build().unwrap()
}

/// The line `name=VALUE` of a child build's standard output, after checking it succeeded.
fn child_output(output: std::process::Output, name: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let prefix = format!("{name}=");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .unwrap()
}

/// Every named failpoint, hit on every run: the build is killed exactly there, and the next
/// build in the same state directory (and push to the same repository) gives the same
/// digest with a clean state check.
#[test]
fn builds_killed_at_every_failpoint_leave_a_state_the_next_build_uses() {
    use std::os::unix::process::ExitStatusExt;
    if std::env::var(CHILD).is_ok() {
        return child_build();
    }
    let fx = Fixture::new();
    let context = kill_test_context();
    let dockerfile = kill_test_dockerfile(&fx);
    let exe = std::env::current_exe().unwrap();
    let child = |state: &Path, push: &str| {
        let mut command = Command::new(&exe);
        command
            .args([
                "builds_killed_at_every_failpoint_leave_a_state_the_next_build_uses",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env(format!("{CHILD}_CONTEXT"), context.path())
            .env(format!("{CHILD}_DOCKERFILE"), &dockerfile)
            .env(format!("{CHILD}_STATE"), state)
            .env(format!("{CHILD}_PUSH"), push)
            .env_remove("STRATA_FAILPOINT");
        command
    };
    let reference = tempfile::tempdir().unwrap();
    let target = format!("{}/killed/reference:1", fx.registry.host());
    let expected = child_output(child(reference.path(), &target).output().unwrap(), "digest");
    for point in strata::failpoint::POINTS {
        let state = tempfile::tempdir().unwrap();
        let target = format!("{}/killed/{point}:1", fx.registry.host());
        let killed = child(state.path(), &target)
            .env("STRATA_FAILPOINT", point)
            .output()
            .unwrap();
        assert_eq!(
            killed.status.signal(),
            Some(9), // SIGKILL
            "{point}: the build must be killed at the point ({:?})\n{}",
            killed.status,
            String::from_utf8_lossy(&killed.stderr)
        );
        let check = check_state(state.path(), false).unwrap();
        assert!(
            check.is_clean(),
            "{point}, after the kill: {:#?}",
            check.faults
        );
        let output = child(state.path(), &target).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(child_output(output, "digest"), expected, "{point}");
        assert!(
            stdout.contains(&format!("pushed={expected}")),
            "{point}: {stdout}"
        );
        let check = check_state(state.path(), false).unwrap();
        assert!(check.is_clean(), "{point}: {:#?}", check.faults);
    }
}

#[test]
fn builds_killed_at_random_points_leave_a_state_the_next_build_uses() {
    if std::env::var(CHILD).is_ok() {
        return child_build();
    }
    let fx = Fixture::new();
    let context = kill_test_context();
    let dockerfile = kill_test_dockerfile(&fx);
    let exe = std::env::current_exe().unwrap();
    let child = |state: &Path| {
        let mut command = Command::new(&exe);
        command
            .args([
                "builds_killed_at_random_points_leave_a_state_the_next_build_uses",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env(format!("{CHILD}_CONTEXT"), context.path())
            .env(format!("{CHILD}_DOCKERFILE"), &dockerfile)
            .env(format!("{CHILD}_STATE"), state)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };
    let digest_of = |output: std::process::Output| {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("digest=").map(str::to_owned))
            .unwrap()
    };

    // The uninterrupted build, and how long it takes.
    let reference_state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let expected = digest_of(child(reference_state.path()).output().unwrap());
    let cold = started.elapsed();
    eprintln!("cold build: {cold:?}");

    // 20 trials, each killed at another point of a cold build (spread over its whole length),
    // then built again in the same state directory.
    let mut killed_while_running = 0;
    for trial in 0..20u32 {
        let state = tempfile::tempdir().unwrap();
        // Spread over the first 70% of the cold build's time, which under a loaded machine
        // (the other tests) is often all of the build.
        let delay = cold.mul_f64(f64::from((trial * 37) % 70 + 1) / 100.0);
        let mut running = child(state.path()).spawn().unwrap();
        std::thread::sleep(delay);
        if running.try_wait().unwrap().is_none() {
            killed_while_running += 1;
        }
        running.kill().unwrap();
        running.wait().unwrap();
        let again = digest_of(child(state.path()).output().unwrap());
        assert_eq!(again, expected, "trial {trial}, killed after {delay:?}");
        let check = check_state(state.path(), false).unwrap();
        assert!(check.is_clean(), "trial {trial}: {:#?}", check.faults);
    }
    assert!(
        killed_while_running >= 10,
        "most kills must land during the build ({killed_while_running} of 20; cold build {cold:?})"
    );
    eprintln!(
        "{killed_while_running} of 20 kills landed while the build ran (cold build {cold:?})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_builds_share_one_state_directory_and_registry() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("a", "a\n")
        .file("b", noise(256 << 10, 5))
        .build()
        .unwrap();
    // Four different Dockerfiles, each built twice at the same time.
    let dockerfiles: Vec<String> = (0..4)
        .map(|i| {
            format!("FROM {{base}}\nCOPY a /a\nRUN echo {i} > /which\nCOPY b /b{i}\nLABEL n={i}\n")
        })
        .collect();
    let builds = (0..8).map(|i| {
        let build = fx
            .build(context.path(), &dockerfiles[i % 4])
            .reproducible(1_700_000_000);
        async move { (i % 4, run(build).await.0) }
    });
    let started = Instant::now();
    let results = futures_util::future::join_all(builds).await;
    eprintln!("eight builds in {:?}", started.elapsed());
    let mut digests: Vec<Option<String>> = vec![None; 4];
    for (which, result) in results {
        let image = result.unwrap_or_else(|e| panic!("build {which}: {e}"));
        match &digests[which] {
            Some(digest) => assert_eq!(digest, image.digest(), "Dockerfile {which}"),
            None => digests[which] = Some(image.digest().to_owned()),
        }
    }
    let distinct: std::collections::HashSet<_> = digests.iter().flatten().collect();
    assert_eq!(distinct.len(), 4);
    assert_clean(fx.state.path());
    // And pushing all of them at once to one repository of the registry works too.
    let pushes = (0..4).map(|i| {
        let build = fx
            .build(context.path(), &dockerfiles[i])
            .reproducible(1_700_000_000);
        let target = format!("{}/team/concurrent:{i}", fx.registry.host());
        async move {
            let image = run(build).await.0.unwrap();
            image.push(&target).await.unwrap()
        }
    });
    let pushed = futures_util::future::join_all(pushes).await;
    for (i, digest) in pushed.iter().enumerate() {
        assert_eq!(Some(digest), digests[i].as_ref());
    }
}

/// The eight-builds case, 30 rounds: cold rounds (a new state directory: pulls, extraction,
/// RUN) alternate with warm ones (every step cached), and no build may ever fail. Each build
/// starts with a sweep of the scratch directories, so this is where a build whose directory
/// is swept under it shows up.
#[tokio::test(flavor = "multi_thread")]
async fn thirty_rounds_of_eight_concurrent_builds_never_fail() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("a", "a\n")
        .file("b", noise(64 << 10, 9))
        .build()
        .unwrap();
    let dockerfiles: Vec<String> = (0..4)
        .map(|i| format!("FROM {{base}}\nCOPY a /a\nRUN echo {i} > /which\nCOPY b /b{i}\n"))
        .collect();
    let started = Instant::now();
    let mut state = tempfile::tempdir().unwrap();
    let mut digests: Vec<Option<String>> = vec![None; 4];
    for round in 0..30 {
        if round % 2 == 0 {
            state = tempfile::tempdir().unwrap();
        }
        let builds = (0..8).map(|i| {
            let build = fx
                .build(context.path(), &dockerfiles[i % 4])
                .state_dir(state.path())
                .reproducible(1_700_000_000);
            async move { (i, run(build).await.0) }
        });
        for (i, result) in futures_util::future::join_all(builds).await {
            let image = result.unwrap_or_else(|e| panic!("round {round}, build {i}: {e}"));
            let expected = digests[i % 4].get_or_insert_with(|| image.digest().to_owned());
            assert_eq!(expected, image.digest(), "round {round}, build {i}");
        }
        assert_clean(state.path());
        let left = fs::read_dir(state.path().join("tmp")).unwrap().count();
        assert_eq!(left, 0, "round {round}: scratch left behind");
    }
    eprintln!("30 rounds of 8 builds in {:?}", started.elapsed());
}

/// Pruning while builds run: four builds in a loop on one state directory while prunes run
/// beside them (skipping while builds hold the directory, or waiting for them). Every build
/// succeeds and the state check is clean after.
#[tokio::test(flavor = "multi_thread")]
async fn pruning_while_four_builds_run_never_breaks_them() {
    let fx = Fixture::new();
    let context = ContextBuilder::new()
        .file("a", "a\n")
        .file("b", noise(128 << 10, 11))
        .build()
        .unwrap();
    let state = fx.state.path().to_owned();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pruner = {
        let (state, stop) = (state.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let (mut done, mut skipped, mut attempts) = (0, 0, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if !state.join("oci-layout").exists() {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                // Every third prune waits for the builds (and new builds wait for it).
                attempts += 1;
                let options = strata::PruneOptions::new()
                    .max_size(0)
                    .wait(attempts % 3 == 0);
                let report = strata::prune_state(&state, &options).unwrap();
                if report.skipped {
                    skipped += 1;
                } else {
                    done += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            (done, skipped)
        })
    };
    let (fx, context) = (&fx, &context);
    let builds = (0..4).map(|i| {
        let build_of = move |round: usize| {
            fx.build(
                context.path(),
                &format!("FROM {{base}}\nCOPY a /a\nRUN echo {i} > /which\nCOPY b /b\nLABEL round={round}\n"),
            )
            .reproducible(1_700_000_000)
        };
        async move {
            for round in 0..8 {
                let image = run(build_of(round))
                    .await
                    .0
                    .unwrap_or_else(|e| panic!("build {i}, round {round}: {e}"));
                // The image's blobs stay while it is held: write it out after a pause.
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                let out = tempfile::tempdir().unwrap();
                image.write_oci_layout(&out.path().join("l"), "t").unwrap();
            }
        }
    });
    futures_util::future::join_all(builds).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (done, skipped) = pruner.join().unwrap();
    eprintln!("{done} prunes ran, {skipped} skipped while builds ran");
    assert!(done >= 1, "no prune ran ({skipped} skipped)");
    assert_clean(&state);
}

/// A registry that stalls holds no lock that other builds on the same state directory wait
/// for: the healthy build takes its normal time.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_registry_does_not_hold_up_other_builds() {
    let fx = Fixture::new();
    let stalled =
        strata_testkit::HostileServer::start("127.0.0.1", |_| strata_testkit::Reply::Hang).unwrap();
    let context = ContextBuilder::new().file("a", "a\n").build().unwrap();
    let healthy = || {
        fx.build(
            context.path(),
            "FROM {base}\nCOPY a /a\nRUN echo ok > /ok\n",
        )
        .cache(false)
    };
    let started = Instant::now();
    run(healthy()).await.0.unwrap();
    let alone = started.elapsed();
    // Stalls for 4 s (the client's read timeout), then fails.
    let impatient = strata::registry::RegistryClient::builder()
        .timeouts(
            std::time::Duration::from_secs(4),
            std::time::Duration::from_secs(4),
            std::time::Duration::from_secs(4),
        )
        .retries(0)
        .build();
    let stuck = fx
        .build(
            context.path(),
            &format!("FROM {}/team/app:1\nRUN true\n", stalled.host()),
        )
        .registry(impatient);
    let stuck = tokio::spawn(run(stuck));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!stuck.is_finished(), "the stalled build should still wait");
    let started = Instant::now();
    run(healthy()).await.0.unwrap();
    let beside = started.elapsed();
    eprintln!("healthy build alone {alone:?}, beside a stalled one {beside:?}");
    assert!(
        beside < alone * 3 + std::time::Duration::from_secs(2),
        "alone {alone:?}, beside a stalled build {beside:?}"
    );
    assert!(!stuck.is_finished());
    let (result, _) = stuck.await.unwrap();
    assert!(result.is_err(), "the stalled build must fail");
}

/// Two builds, `COPY old` then `COPY new` (1 MiB each, from `seeds`), into `state`; the
/// first build's cache entry is then made `age` old. Returns the context and the entries
/// (older, newer).
async fn two_entries_the_first_aged(
    state: &Path,
    seeds: (u64, u64),
    age: std::time::Duration,
) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let context = ContextBuilder::new()
        .file("old", noise(1 << 20, seeds.0))
        .file("new", noise(1 << 20, seeds.1))
        .build()
        .unwrap();
    for name in ["old", "new"] {
        let build = Build::new(context.path())
            .dockerfile_text(format!("FROM scratch\nCOPY {name} /{name}\n"))
            .state_dir(state);
        run(build).await.0.unwrap();
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(state.join("cache/entries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 2);
    entries.sort_by_key(|p| fs::metadata(p).unwrap().modified().unwrap());
    let (older, newer) = (entries[0].clone(), entries[1].clone());
    fs::File::options()
        .write(true)
        .open(&older)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - age)
        .unwrap();
    (context, older, newer)
}

/// A size limit removes only the least recently used entries, as many as needed: with two
/// entries of 1 MiB and a limit 512 KiB below the total, the older goes and the newer stays.
#[tokio::test(flavor = "multi_thread")]
async fn pruning_to_a_size_removes_only_the_oldest_entries_needed() {
    let state = tempfile::tempdir().unwrap();
    // The entry of the first build is the least recently used.
    let hour = std::time::Duration::from_secs(3600);
    let (_context, older, newer) = two_entries_the_first_aged(state.path(), (21, 22), hour).await;
    let before = strata::prune_state(state.path(), &strata::PruneOptions::new())
        .unwrap()
        .after;
    let report = strata::prune_state(
        state.path(),
        &strata::PruneOptions::new().max_size(before - (512 << 10)),
    )
    .unwrap();
    assert_eq!(report.cache_entries, 1, "{report:?}");
    assert!(!older.exists(), "the older entry goes");
    assert!(newer.exists(), "the newer entry stays");
    assert!(report.after <= before - (512 << 10), "{report:?}");
    assert_clean(state.path());
}

#[tokio::test]
async fn pruning_by_age_removes_only_what_was_not_used_within_it() {
    let state = tempfile::tempdir().unwrap();
    // Last used eight days ago.
    let eight_days = std::time::Duration::from_secs(8 * 86_400);
    let (context, older, newer) =
        two_entries_the_first_aged(state.path(), (23, 24), eight_days).await;
    let week = std::time::Duration::from_secs(7 * 86_400);
    let report =
        strata::prune_state(state.path(), &strata::PruneOptions::new().max_age(week)).unwrap();
    assert_eq!(report.cache_entries, 1, "{report:?}");
    assert!(!older.exists(), "the entry unused for eight days goes");
    assert!(newer.exists(), "the entry used today stays");
    assert!(report.after < report.before, "{report:?}");
    assert_clean(state.path());
    // A second prune by the same age finds nothing more to remove.
    let again =
        strata::prune_state(state.path(), &strata::PruneOptions::new().max_age(week)).unwrap();
    assert_eq!(again.cache_entries, 0, "{again:?}");
    // The pruned step builds again (a miss), the kept one still hits.
    let build = Build::new(context.path())
        .dockerfile_text("FROM scratch\nCOPY new /new\n")
        .state_dir(state.path());
    let (result, events) = run(build).await;
    result.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, strata::Event::CacheHit { .. }))
    );
}
