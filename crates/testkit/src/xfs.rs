//! An XFS filesystem (reflinks on, as `mkfs.xfs` makes it) in a sparse file on a loop device:
//! for what only a filesystem with reflinks shows. Needs root and `xfsprogs`.

use std::path::PathBuf;
use std::process::Command;

use crate::Result;
use crate::error::Error;

/// The mounted filesystem; unmounted (lazily) and its file removed when dropped.
pub struct Xfs {
    dir: tempfile::TempDir,
}

impl Xfs {
    /// Makes and mounts a 2 GiB (sparse) XFS filesystem under `/var/tmp`.
    pub fn mount() -> Result<Xfs> {
        let io = |what: &str| {
            let what = PathBuf::from(what);
            move |error| Error::Io { path: what, error }
        };
        let dir = tempfile::Builder::new()
            .prefix("strata-xfs-")
            .tempdir_in("/var/tmp")
            .map_err(io("/var/tmp"))?;
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(2 << 30))
            .map_err(io("fs.img"))?;
        // mkfs.xfs lives in /usr/sbin, which is not always on PATH.
        let mkfs = ["/usr/sbin/mkfs.xfs", "/sbin/mkfs.xfs"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .map_or_else(|| crate::find_program("mkfs.xfs", "xfsprogs"), Ok)?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(io("mnt"))?;
        for (program, args) in [
            (mkfs, vec!["-q".into(), image.clone().into_os_string()]),
            (
                PathBuf::from("mount"),
                vec![
                    "-o".into(),
                    "loop".into(),
                    image.into_os_string(),
                    mnt.clone().into_os_string(),
                ],
            ),
        ] {
            let out = Command::new(&program)
                .args(&args)
                .output()
                .map_err(io(&program.display().to_string()))?;
            if !out.status.success() {
                return Err(Error::Io {
                    path: program,
                    error: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
                });
            }
        }
        Ok(Xfs { dir })
    }

    /// Where it is mounted.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}
