//! Shared fixtures of the engine's end-to-end tests: a real registry with a busybox base
//! image, builds into a private state directory, and the independent judges (skopeo, umoci).

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use strata::{Build, Event, Image};
use strata_testkit::{TestRegistry, find_program, push_busybox_image};

/// A registry holding `base/busybox:1`, and a state directory for builds.
pub struct Fixture {
    pub registry: TestRegistry,
    pub base: String,
    /// The base image's manifest digest.
    pub base_digest: String,
    pub state: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let registry = TestRegistry::start().unwrap();
        let base = push_busybox_image(&registry, "base/busybox", "1").unwrap();
        Fixture {
            registry,
            base: base.reference,
            base_digest: base.manifest_digest,
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// A build of `context` with `dockerfile` (where `{base}` is the busybox reference). RUN
    /// steps use namespaces, never the in-container mode: tests run on the host, and a
    /// host that looks like a container (this project's machines have /.dockerenv) must
    /// never have its root filesystem replaced.
    pub fn build(&self, context: &Path, dockerfile: &str) -> Build {
        Build::new(context)
            .dockerfile_text(dockerfile.replace("{base}", &self.base))
            .state_dir(self.state.path())
            .isolation(strata::Isolation::Namespaces)
    }
}

/// Runs a build, collecting its events.
pub async fn run(build: Build) -> (strata::Result<Image>, Vec<Event>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let result = build
        .on_event(move |e| sink.lock().unwrap().push(e.clone()))
        .run()
        .await;
    let events = events.lock().unwrap().clone();
    (result, events)
}

/// Writes `image` as an OCI layout and returns (work dir, layout path).
pub fn layout(image: &Image) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    image.write_oci_layout(&layout, "test").unwrap();
    (dir, layout)
}

/// `skopeo inspect --config --raw` of the image in a layout: the config as stored (skopeo's
/// parsed view drops fields the OCI spec lacks, such as `Healthcheck`).
pub fn skopeo_config(layout: &Path) -> serde_json::Value {
    let skopeo = find_program("skopeo", "skopeo").unwrap();
    let output = Command::new(skopeo)
        .args(["inspect", "--config", "--raw"])
        .arg(format!("oci:{}:test", layout.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `umoci unpack` of the image in a layout; returns the root filesystem.
pub fn umoci_rootfs(work: &Path, layout: &Path) -> PathBuf {
    umoci_rootfs_tagged(work, layout, "test")
}

/// `umoci unpack` of `layout:tag`.
pub fn umoci_rootfs_tagged(work: &Path, layout: &Path, tag: &str) -> PathBuf {
    let bundle = work.join("bundle");
    umoci(&["unpack"], layout, tag, &bundle);
    bundle.join("rootfs")
}

/// `umoci raw unpack` of `layout:test`: the root filesystem alone, without the runtime config
/// (whose user lookup fails for `USER nobody` on an image without /etc/passwd).
pub fn umoci_raw_rootfs(work: &Path, layout: &Path) -> PathBuf {
    let rootfs = work.join("rootfs");
    umoci(&["raw", "unpack"], layout, "test", &rootfs);
    rootfs
}

fn umoci(command: &[&str], layout: &Path, tag: &str, into: &Path) {
    let umoci = find_program("umoci", "umoci").unwrap();
    let output = Command::new(umoci)
        .args(command)
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(into)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `mode uid:gid` of a path (not following symlinks), with its contents for files and its
/// target for symlinks.
pub fn describe(path: &Path) -> String {
    let meta = fs::symlink_metadata(path).unwrap();
    let what = if meta.file_type().is_symlink() {
        format!("-> {}", fs::read_link(path).unwrap().display())
    } else if meta.is_file() {
        format!("= {:?}", String::from_utf8_lossy(&fs::read(path).unwrap()))
    } else {
        "dir".to_owned()
    };
    format!(
        "{:o} {}:{} {what}",
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid()
    )
}

/// Every path below `root` with its kind, mode, owner, and contents or link target.
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.symlink_metadata().unwrap().is_dir() {
                stack.push(path.clone());
            }
            out.insert(rel, describe(&path));
        }
    }
    out
}

/// `cargo run --example NAME --` in `cwd`, ready for arguments and environment: the way a
/// user runs the examples.
pub fn example_command(cwd: &Path, name: &str) -> Command {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(cwd)
        .args(["run", "--quiet", "--manifest-path"])
        .arg(manifest)
        .args(["--example", name, "--"]);
    command
}

/// Pseudo-random bytes (xorshift), incompressible and the same for the same seed.
pub fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The image digest a successful `strata build` printed (its `digest sha256:…` line); fails
/// with the command's output otherwise.
pub fn printed_digest(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("digest "))
        .unwrap_or_else(|| panic!("no digest line: {stdout}"))
        .to_owned()
}
