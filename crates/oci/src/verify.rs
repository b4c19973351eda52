//! Checking an OCI layout: every blob hashes to its name, every manifest `index.json` names
//! is there with all the blobs it needs. Used after crashes, disk-full errors and by the
//! fault tests to prove nothing is corrupt; can remove what is broken.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::manifest::Manifest;

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
    /// Whether it was removed (or its entry dropped) because repair was asked for.
    pub repaired: bool,
}

/// What [`Layout::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayoutReport {
    /// Blobs hashed.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Blobs, index entries and manifests that are broken.
    pub faults: Vec<Fault>,
    /// Temporary files a writer left behind (a killed process): not corrupt, only space.
    pub leftovers: Vec<PathBuf>,
}

impl Layout {
    /// Hashes every blob and follows every manifest `index.json` names. With `repair`, blobs
    /// that do not match their name are removed, and index entries whose manifest or blobs
    /// are missing are dropped (temporary files are only listed: a live writer may own them).
    pub fn verify(&self, repair: bool) -> Result<LayoutReport> {
        let mut report = LayoutReport::default();
        let blobs = self.root().join("blobs");
        for algorithm in read_dir(&blobs)? {
            for path in read_dir(&algorithm)? {
                let name = format!("{}:{}", file_name(&algorithm), file_name(&path));
                if !path.is_file() || crate::digest::validate_digest(&name).is_err() {
                    report.faults.push(Fault {
                        path,
                        message: "not a blob (its name is not a digest)".to_owned(),
                        repaired: false,
                    });
                    continue;
                }
                let (actual, size) = match name.split_once(':') {
                    Some(("sha256", _)) => hash(&path)?,
                    // Other algorithms are left unchecked rather than called broken.
                    _ => continue,
                };
                report.blobs += 1;
                report.bytes += size;
                if actual != name {
                    let repaired = repair && fs::remove_file(&path).is_ok();
                    report.faults.push(Fault {
                        path,
                        message: format!("holds content that hashes to {actual}"),
                        repaired,
                    });
                }
            }
        }
        report.leftovers = read_dir(&self.root().join("tmp"))?;
        let index_path = self.root().join("index.json");
        let index = match self.index_value() {
            Ok(index) => index,
            Err(e) => {
                report.faults.push(Fault {
                    path: index_path,
                    message: e.to_string(),
                    repaired: false,
                });
                return Ok(report);
            }
        };
        let mut broken = Vec::new();
        for (i, entry) in index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let digest = entry["digest"].as_str();
            let fault = match digest {
                Some(digest) => self.missing(digest, 0),
                None => Some("has no digest".to_owned()),
            };
            if let Some(message) = fault {
                broken.extend(digest.map(str::to_owned));
                report.faults.push(Fault {
                    path: index_path.clone(),
                    message: format!("entry {i}: {message}"),
                    // An entry without a digest cannot be named to be dropped.
                    repaired: repair && digest.is_some(),
                });
            }
        }
        if repair && !broken.is_empty() {
            self.drop_entries(&broken)?;
        }
        Ok(report)
    }

    /// What the manifest `digest` names lacks (itself, a blob, a child manifest).
    fn missing(&self, digest: &str, depth: usize) -> Option<String> {
        if !self.has_blob(digest) {
            return Some(format!("manifest {digest} is missing"));
        }
        if depth > 2 {
            return Some(format!("manifest {digest} nests indexes too deep"));
        }
        let bytes = self.read_blob(digest).ok()?;
        match Manifest::parse(&bytes, digest) {
            Ok(Manifest::Image(image)) => std::iter::once(image.config())
                .chain(image.layers())
                .find(|d| !self.has_blob(d.digest().as_ref()))
                .map(|d| {
                    format!(
                        "manifest {digest} needs blob {}, which is missing",
                        d.digest()
                    )
                }),
            Ok(Manifest::Index(index)) => index
                .manifests()
                .iter()
                .find_map(|child| self.missing(child.digest().as_ref(), depth + 1)),
            Err(e) => Some(e.to_string()),
        }
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            Ok(paths)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::Io {
            path: dir.to_owned(),
            error: e,
        }),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `sha256:<hex>` and size of a file.
fn hash(path: &Path) -> Result<(String, u64)> {
    let file = fs::File::open(path).map_err(Error::io(path))?;
    crate::digest::sha256_of_reader(file).map_err(Error::io(path))
}
