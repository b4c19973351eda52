//! The same Dockerfiles built by strata and by `buildah bud` (Debian's package, vfs storage,
//! chroot isolation), from the same busybox base in the same registry: the file trees must
//! match (paths, kinds, contents, modes, owners, symlink targets) and so must the config
//! fields a container runtime reads. Where the two differ on purpose, the case says why.
//!
//! Heredocs are not compared: Debian 12's buildah (1.28) predates them (tests/build.rs checks
//! strata's heredoc results directly).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fixture, run, umoci_rootfs};
use serde_json::Value;
use strata_testkit::{ContextBuilder, find_program};

/// One path of an unpacked image, as compared.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let what = if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if meta.is_file() {
                let bytes = fs::read(&path).unwrap();
                if bytes.len() <= 64 && bytes.iter().all(|b| b.is_ascii()) {
                    format!("file {:?}", String::from_utf8_lossy(&bytes))
                } else {
                    format!("file {} bytes", bytes.len())
                }
            } else {
                "special".to_owned()
            };
            let mode = if meta.file_type().is_symlink() {
                0
            } else {
                meta.mode() & 0o7777
            };
            out.insert(
                rel,
                format!("{what} {mode:o} {}:{}", meta.uid(), meta.gid()),
            );
        }
    }
    out
}

/// The config fields compared, from a Docker-format config object (`Env`, `Cmd`, ...).
fn fields(config: &Value) -> BTreeMap<&'static str, Value> {
    let mut out = BTreeMap::new();
    for name in [
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Volumes",
        "Labels",
        "StopSignal",
        "Healthcheck",
    ] {
        let mut value = config[name].clone();
        // Empty and absent mean the same to a runtime.
        if value == Value::String(String::new())
            || value == serde_json::json!({})
            || value == serde_json::json!([])
        {
            value = Value::Null;
        }
        if name == "Labels"
            && let Some(labels) = value.as_object_mut()
        {
            // buildah stamps its own version on every image.
            labels.remove("io.buildah.version");
            if labels.is_empty() {
                value = Value::Null;
            }
        }
        out.insert(name, value);
    }
    out
}

struct Buildah {
    program: PathBuf,
    dir: tempfile::TempDir,
}

impl Buildah {
    fn new() -> Buildah {
        Buildah {
            program: find_program("buildah", "buildah").unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .arg("--storage-driver=vfs")
            .arg(format!("--root={}", self.dir.path().join("root").display()))
            .arg(format!(
                "--runroot={}",
                self.dir.path().join("runroot").display()
            ));
        command
    }

    /// Builds, and returns (unpacked root filesystem, Docker-format config).
    fn build(&self, context: &Path, dockerfile: &str) -> (PathBuf, Value) {
        let file = self.dir.path().join("Dockerfile");
        fs::write(&file, dockerfile).unwrap();
        let bud = || {
            self.command()
                .args([
                    "bud",
                    "--isolation=chroot",
                    "--tls-verify=false",
                    "--format=docker",
                ])
                .args(["--layers=false", "-t", "compared", "-f"])
                .arg(&file)
                .arg(context)
                .output()
                .unwrap()
        };
        let mut output = bud();
        // buildah's chroot isolation copies itself into a sealed memfd before each RUN, and
        // the sealing fails now and then with EBUSY when other processes fork at the same
        // moment (seen once in about ten full runs of the suite): buildah's own flake, not
        // an answer about the Dockerfile, so that one failure is tried once more.
        if !output.status.success()
            && String::from_utf8_lossy(&output.stderr).contains("sealing memfd copy")
        {
            output = bud();
        }
        assert!(
            output.status.success(),
            "buildah bud: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let layout = self.dir.path().join("layout");
        let output = self
            .command()
            .args(["push", "compared"])
            .arg(format!("oci:{}:test", layout.display()))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "buildah push: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let output = self
            .command()
            .args(["inspect", "--type=image", "compared"])
            .output()
            .unwrap();
        assert!(output.status.success());
        let inspected: Value = serde_json::from_slice(&output.stdout).unwrap();
        let config = inspected["Docker"]["config"].clone();
        let unpacked = self.dir.path().join("unpacked");
        fs::create_dir_all(&unpacked).unwrap();
        (umoci_rootfs(&unpacked, &layout), config)
    }
}

/// Builds `dockerfile` (with `{base}` the busybox image) both ways and compares. `ignore`
/// lists paths whose difference is on purpose (each case says why).
async fn compare(context: ContextBuilder, dockerfile: &str, ignore: &[&str]) {
    compare_fields(context, dockerfile, ignore, &[]).await;
}

/// [`compare`], leaving out config fields that differ on purpose.
async fn compare_fields(
    context: ContextBuilder,
    dockerfile: &str,
    ignore: &[&str],
    skip_fields: &[&str],
) {
    let fx = Fixture::new();
    let context = context.build().unwrap();
    let (image, _) = run(fx.build(context.path(), dockerfile)).await;
    let image = image.unwrap();
    let (work, layout) = common::layout(&image);
    let ours = tree(&umoci_rootfs(work.path(), &layout));
    let our_config = fields(&serde_json::to_value(&image.config().config).unwrap());

    let buildah = Buildah::new();
    let (theirs_root, their_config) =
        buildah.build(context.path(), &dockerfile.replace("{base}", &fx.base));
    let theirs = tree(&theirs_root);
    let their_config = fields(&their_config);

    let keep = |t: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        t.iter()
            .filter(|(path, _)| {
                !ignore
                    .iter()
                    .any(|i| *path == i || path.starts_with(&format!("{i}/")))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let (ours, theirs) = (keep(&ours), keep(&theirs));
    let (mut our_config, mut their_config) = (our_config, their_config);
    for field in skip_fields {
        our_config.remove(field);
        their_config.remove(field);
    }
    let only_ours: Vec<_> = ours
        .iter()
        .filter(|(k, v)| theirs.get(*k) != Some(v))
        .collect();
    let only_theirs: Vec<_> = theirs
        .iter()
        .filter(|(k, v)| ours.get(*k) != Some(v))
        .collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "trees differ\nstrata: {only_ours:#?}\nbuildah: {only_theirs:#?}"
    );
    assert_eq!(our_config, their_config, "config fields differ");
}

/// What every RUN leaves behind in buildah's chroot isolation and not in ours: buildah
/// creates the mount points of /dev, /proc, /sys and the files it bind-mounts in the image's
/// layer when the base lacks them; strata removes its mount points after the step, as
/// BuildKit does. The busybox base has /dev, /proc and /sys already.
const RUN_MOUNT_POINTS: &[&str] = &["etc/hosts", "etc/resolv.conf", "etc/hostname", "run"];

#[tokio::test(flavor = "multi_thread")]
async fn config_instructions() {
    let dockerfile = r#"FROM {base}
ENV A=1 B="two words"
LABEL team=tools version="1.0"
EXPOSE 80 53/udp
VOLUME ["/data"]
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5s --timeout=2s --retries=4 CMD wget -q -O- localhost || exit 1
USER app
WORKDIR /home/app
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo hello"]
"#;
    compare(ContextBuilder::new(), dockerfile, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_form_commands_use_the_shell() {
    let dockerfile = "FROM {base}\nCMD echo $HOME\nENTRYPOINT exec sh\n";
    compare(ContextBuilder::new(), dockerfile, &[]).await;
    // With SHELL, BuildKit (and strata) run CMD and ENTRYPOINT's shell form through the new
    // shell; buildah keeps `/bin/sh -c` for them. strata's result is checked in build.rs.
    let dockerfile =
        "FROM {base}\nSHELL [\"/bin/sh\", \"-xc\"]\nCMD echo $HOME\nRUN echo $0 > /shell\n";
    compare_fields(
        ContextBuilder::new(),
        dockerfile,
        RUN_MOUNT_POINTS,
        &["Cmd"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_a_file_into_a_directory() {
    let context =
        ContextBuilder::new()
            .file("a.txt", "a\n")
            .file_with_mode("tool", "#!/bin/sh\n", 0o755);
    compare(
        context,
        "FROM {base}\nCOPY a.txt tool /dest/\nCOPY a.txt /renamed.txt\n",
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_a_directory_copies_its_contents() {
    let context = ContextBuilder::new()
        .file("src/main.c", "int main;\n")
        .file("src/lib/util.c", "util\n")
        .dir("src/empty", 0o700)
        .symlink("src/link", "main.c");
    compare(
        context,
        "FROM {base}\nCOPY src /opt/src\nCOPY src/lib /opt/lib/\n",
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_with_wildcards() {
    let context = ContextBuilder::new()
        .file("a.txt", "a\n")
        .file("b.txt", "b\n")
        .file("c.md", "c\n")
        .file("docs/d.txt", "d\n");
    compare(
        context,
        "FROM {base}\nCOPY *.txt /texts/\nCOPY [a-b].txt docs/*.txt /more/\n",
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_with_chown_and_chmod() {
    let context = ContextBuilder::new().file("f", "f\n").file("dir/g", "g\n");
    let dockerfile = "FROM {base}\nCOPY --chown=app:staff f /owned\nCOPY --chown=1234 dir /numeric/\nCOPY --chmod=600 f /private\n";
    compare(context, dockerfile, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_relative_to_the_workdir() {
    let context = ContextBuilder::new().file("f", "f\n");
    compare(
        context,
        "FROM {base}\nWORKDIR /app\nCOPY f .\nCOPY f sub/\nWORKDIR sub\nCOPY f again\n",
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dockerignore_leaves_files_out() {
    let context = ContextBuilder::new()
        .file(".dockerignore", "*.log\nsecret/\n!secret/public.txt\n")
        .file("keep.txt", "keep\n")
        .file("debug.log", "log\n")
        .file("secret/key", "key\n")
        .file("secret/public.txt", "public\n");
    compare(context, "FROM {base}\nCOPY . /ctx/\n", &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_into_scratch() {
    let context = ContextBuilder::new()
        .file("bin/tool", "tool\n")
        .file("etc/conf", "conf\n");
    // BuildKit gives an image from scratch `/` as its working directory; buildah leaves it
    // unset (tests/conformance.rs checks strata's `/`).
    compare_fields(
        context,
        "FROM scratch\nCOPY . /\nCMD [\"/bin/tool\"]\n",
        &[],
        &["WorkingDir"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_creates_and_deletes_files() {
    let dockerfile = "FROM {base}\nRUN mkdir -p /var/lib/app && echo data > /var/lib/app/data && ln -s data /var/lib/app/link\nRUN rm /bin/vi && rm -r /home/app\n";
    compare(ContextBuilder::new(), dockerfile, RUN_MOUNT_POINTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_as_another_user() {
    let dockerfile = "FROM {base}\nUSER app\nRUN id > /tmp/id && touch /tmp/mine\nUSER root\nRUN chown app:staff /tmp/id && chmod 640 /tmp/id\n";
    compare(ContextBuilder::new(), dockerfile, RUN_MOUNT_POINTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_sees_args_and_env() {
    let dockerfile = "FROM {base}\nARG VERSION=1.2\nENV HOME_DIR=/srv\nRUN echo \"$VERSION $HOME_DIR\" > /versions\n";
    compare(ContextBuilder::new(), dockerfile, RUN_MOUNT_POINTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_changes_modes_of_base_files() {
    let dockerfile =
        "FROM {base}\nRUN chmod 700 /home/app && chmod u+s /bin/busybox && chown 1000 /etc/group\n";
    compare(ContextBuilder::new(), dockerfile, RUN_MOUNT_POINTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_stage_copy_from() {
    let context = ContextBuilder::new().file("in.txt", "input\n");
    let dockerfile = r#"FROM {base} AS build
COPY in.txt /src/in.txt
RUN tr a-z A-Z < /src/in.txt > /src/out.txt

FROM {base}
COPY --from=build /src/out.txt /app/
COPY --from=build /src /all-src
CMD ["cat", "/app/out.txt"]
"#;
    compare(context, dockerfile, RUN_MOUNT_POINTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stages_based_on_stages_inherit_their_config() {
    let dockerfile = "FROM {base} AS base\nENV LEVEL=base\nWORKDIR /w\n\nFROM base\nENV LEVEL=child\nRUN echo $LEVEL > level\n";
    compare(ContextBuilder::new(), dockerfile, RUN_MOUNT_POINTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workdir_as_another_user() {
    let dockerfile = "FROM {base}\nUSER app\nWORKDIR /srv/app/data\nRUN touch here\n";
    compare(ContextBuilder::new(), dockerfile, RUN_MOUNT_POINTS).await;
}
