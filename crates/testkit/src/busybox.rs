//! A real base image made from Debian's `busybox-static`: `/bin/busybox` with its applets as
//! symlinks, `/etc/passwd`, `/etc/group`, `/tmp`, and a home for an unprivileged user.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;

use crate::client::sha256_digest;
use crate::{Error, Result, TestRegistry, find_program};

/// The timestamp of every entry in the base image layer, so that its digest is stable.
const EPOCH: u64 = 1_700_000_000;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      app:x:1000:1000:app:/home/app:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n";

/// Writes a busybox root filesystem into `root` (which must exist and may be empty).
///
/// The user `app` (uid 1000, gid 1000, also in group `staff`, 50) and `nobody` exist besides
/// `root`. Fails, naming the Debian package, when `busybox` is missing or is not the static
/// build (a dynamic binary cannot run inside a root filesystem without its libraries).
pub fn busybox_rootfs(root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let busybox = find_program("busybox", "busybox-static")?;
    let binary = fs::read(&busybox).map_err(Error::io(&busybox))?;
    if has_interpreter(&binary) {
        return Err(Error::MissingProgram {
            program: format!(
                "a static busybox ({} is dynamically linked)",
                busybox.display()
            ),
            package: "busybox-static".to_owned(),
        });
    }
    for dir in [
        "bin", "etc", "root", "home/app", "tmp", "proc", "sys", "dev",
    ] {
        let path = root.join(dir);
        fs::create_dir_all(&path).map_err(Error::io(&path))?;
    }
    let set_mode = |path: PathBuf, mode: u32| {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(Error::io(&path))
    };
    set_mode(root.join("tmp"), 0o1777)?;
    set_mode(root.join("root"), 0o700)?;

    let target = root.join("bin/busybox");
    fs::write(&target, &binary).map_err(Error::io(&target))?;
    set_mode(target, 0o755)?;
    for applet in applets(&busybox)? {
        let link = root.join("bin").join(&applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(Error::io(&link))?;
        }
    }
    let passwd = root.join("etc/passwd");
    fs::write(&passwd, PASSWD).map_err(Error::io(&passwd))?;
    let group = root.join("etc/group");
    fs::write(&group, GROUP).map_err(Error::io(&group))?;
    Ok(())
}

/// What [`push_busybox_image`] pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// `127.0.0.1:PORT/REPOSITORY:TAG`.
    pub reference: String,
    /// The digest of the OCI manifest.
    pub manifest_digest: String,
    /// The digest of the image config.
    pub config_digest: String,
    /// The digest of the one gzip layer.
    pub layer_digest: String,
    /// The digest of the uncompressed layer tar.
    pub diff_id: String,
    /// The size of the compressed layer in bytes.
    pub layer_size: u64,
}

/// Pushes a one-layer busybox image for the host's architecture to `registry` as
/// `REPOSITORY:TAG`, with `Cmd ["/bin/sh"]` and a standard `PATH`.
///
/// The layer is made here with the `tar` crate (entries sorted, fixed timestamps, uid/gid from
/// the passwd file: `/home/app` belongs to 1000:1000), so the digests are the same on every
/// run and do not depend on strata's own layer or registry crates.
pub fn push_busybox_image(
    registry: &TestRegistry,
    repository: &str,
    tag: &str,
) -> Result<BaseImage> {
    let rootfs = tempfile::Builder::new()
        .prefix("strata-busybox-")
        .tempdir()
        .map_err(Error::io(std::env::temp_dir()))?;
    busybox_rootfs(rootfs.path())?;
    let tar = layer_tar(rootfs.path())?;
    let diff_id = sha256_digest(&tar);
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).map_err(Error::io("<gzip>"))?;
    let layer = gz.finish().map_err(Error::io("<gzip>"))?;

    let config = json!({
        "architecture": go_arch(),
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "strata-testkit busybox rootfs"}],
    });
    let config = serde_json::to_vec(&config).map_err(|e| Error::Credentials(e.to_string()))?;

    let client = registry.client();
    let pushed = push_one_layer_image(&client, repository, Some(tag), &layer, &config)?;
    let (manifest_digest, config_digest, layer_digest) = (
        pushed.manifest_digest,
        pushed.config_digest,
        pushed.layer_digest,
    );
    Ok(BaseImage {
        reference: format!("{}/{repository}:{tag}", registry.host()),
        manifest_digest,
        config_digest,
        layer_digest,
        diff_id,
        layer_size: layer.len() as u64,
    })
}

/// The digests of an image [`push_one_layer_image`] pushed, and its manifest's size.
pub(crate) struct Pushed {
    pub manifest_digest: String,
    pub manifest_size: usize,
    pub config_digest: String,
    pub layer_digest: String,
}

/// Pushes a gzip `layer` and a `config` to `repository` and an OCI manifest naming them under
/// `reference` (a tag, or the manifest's own digest when `None`).
pub(crate) fn push_one_layer_image(
    client: &crate::RegistryClient,
    repository: &str,
    reference: Option<&str>,
    layer: &[u8],
    config: &[u8],
) -> Result<Pushed> {
    let layer_digest = client.push_blob(repository, layer)?;
    let config_digest = client.push_blob(repository, config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| Error::Credentials(e.to_string()))?;
    let own = crate::client::sha256_digest(&manifest);
    let manifest_digest = client.put_manifest(
        repository,
        reference.unwrap_or(&own),
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    )?;
    Ok(Pushed {
        manifest_digest,
        manifest_size: manifest.len(),
        config_digest,
        layer_digest,
    })
}

/// The GOARCH name of the host's architecture, as image configs spell it.
pub(crate) fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn applets(busybox: &Path) -> Result<Vec<String>> {
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(Error::io(busybox))?;
    if !output.status.success() {
        return Err(Error::Io {
            path: busybox.to_owned(),
            error: std::io::Error::other(format!("`busybox --list` failed: {}", output.status)),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .map(str::to_owned)
        .collect())
}

/// Whether an ELF binary names a program interpreter (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |at: usize, len: usize| -> Option<u64> {
        let bytes = elf.get(at..at + len)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        )
    };
    // Only 64-bit little-endian ELF is inspected; anything else is assumed static.
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (read(0x20, 8), read(0x36, 2), read(0x38, 2))
    else {
        return false;
    };
    (0..phnum).any(|i| {
        let at = phoff as usize + (i * phentsize) as usize;
        read(at, 4) == Some(u64::from(PT_INTERP))
    })
}

/// A tar of `root`, entries sorted, parents first, fixed timestamps.
fn layer_tar(root: &Path) -> Result<Vec<u8>> {
    let mut paths = Vec::new();
    collect(root, Path::new(""), &mut paths)?;
    paths.sort();
    let mut builder = tar::Builder::new(Vec::new());
    for relative in paths {
        let full = root.join(&relative);
        let meta = fs::symlink_metadata(&full).map_err(Error::io(&full))?;
        let mut header = tar::Header::new_ustar();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        header.set_mtime(EPOCH);
        let owner = if relative.starts_with("home/app") {
            1000
        } else {
            0
        };
        header.set_uid(owner);
        header.set_gid(owner);
        {
            use std::os::unix::fs::PermissionsExt;
            header.set_mode(meta.permissions().mode() & 0o7777);
        }
        let io = Error::io(&full);
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&full).map_err(Error::io(&full))?;
            header.set_size(0);
            builder
                .append_link(&mut header, &relative, &target)
                .map_err(io)?;
        } else if meta.is_dir() {
            header.set_size(0);
            let name = format!("{}/", relative.display());
            builder
                .append_data(&mut header, name, std::io::empty())
                .map_err(io)?;
        } else {
            let mut file = fs::File::open(&full).map_err(Error::io(&full))?;
            let mut contents = Vec::new();
            file.read_to_end(&mut contents).map_err(Error::io(&full))?;
            header.set_size(contents.len() as u64);
            builder
                .append_data(&mut header, &relative, contents.as_slice())
                .map_err(io)?;
        }
    }
    builder.into_inner().map_err(Error::io(root))
}

fn collect(root: &Path, relative: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(relative);
    for entry in fs::read_dir(&dir).map_err(Error::io(&dir))? {
        let entry = entry.map_err(Error::io(&dir))?;
        let path = relative.join(entry.file_name());
        let is_dir = entry.file_type().map_err(Error::io(entry.path()))?.is_dir();
        out.push(path.clone());
        if is_dir {
            collect(root, &path, out)?;
        }
    }
    Ok(())
}
