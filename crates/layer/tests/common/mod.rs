//! Helpers shared by the layer tests: turning a directory into entries, describing a tree
//! for comparison, and writing raw (possibly hostile) tar streams by hand.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};
use strata_layer::{Entry, EntryKind, Metadata, Mtime};

/// Reads a path's xattrs, sorted.
pub fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(len) = rustix::fs::llistxattr(path, &mut names) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut value = vec![0u8; 4096];
        if let Ok(n) = rustix::fs::lgetxattr(path, name.as_str(), &mut value) {
            out.push((name, value[..n].to_vec()));
        }
    }
    out.sort();
    out
}

/// Entries for everything below `root` (not `root` itself), hardlinks detected by inode.
pub fn tree_entries(root: &Path) -> Vec<Entry> {
    let mut paths = Vec::new();
    walk(root, Path::new(""), &mut paths);
    paths.sort();
    let mut first_by_inode: HashMap<(u64, u64), String> = HashMap::new();
    let mut entries = Vec::new();
    for relative in paths {
        let full = root.join(&relative);
        let meta = fs::symlink_metadata(&full).unwrap();
        let path = relative.to_str().unwrap().to_owned();
        let metadata = Metadata {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            uname: None,
            gname: None,
            mtime: Mtime {
                secs: meta.mtime(),
                nanos: meta.mtime_nsec() as u32,
            },
            xattrs: xattrs(&full),
        };
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink {
                target: fs::read_link(&full)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned()
                    .into(),
            }
        } else if ft.is_char_device() {
            EntryKind::CharDevice {
                major: rustix::fs::major(meta.rdev()),
                minor: rustix::fs::minor(meta.rdev()),
            }
        } else if ft.is_block_device() {
            EntryKind::BlockDevice {
                major: rustix::fs::major(meta.rdev()),
                minor: rustix::fs::minor(meta.rdev()),
            }
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if meta.nlink() > 1 && first_by_inode.contains_key(&(meta.dev(), meta.ino())) {
            EntryKind::Hardlink {
                target: first_by_inode[&(meta.dev(), meta.ino())].clone().into(),
            }
        } else {
            if meta.nlink() > 1 {
                first_by_inode.insert((meta.dev(), meta.ino()), path.clone());
            }
            EntryKind::File {
                source: full.clone(),
                size: meta.len(),
            }
        };
        entries.push(Entry {
            path: path.into(),
            kind,
            metadata,
        });
    }
    entries
}

fn walk(root: &Path, relative: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(root.join(relative)).unwrap() {
        let entry = entry.unwrap();
        let path = relative.join(entry.file_name());
        out.push(path.clone());
        if entry.file_type().unwrap().is_dir() {
            walk(root, &path, out);
        }
    }
}

/// Everything that must survive a round trip, per path.
pub fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut paths = Vec::new();
    walk(root, Path::new(""), &mut paths);
    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    paths.sort();
    let mut out = BTreeMap::new();
    for relative in paths {
        let full = root.join(&relative);
        let meta = fs::symlink_metadata(&full).unwrap();
        let ft = meta.file_type();
        let what = if ft.is_dir() {
            "dir".to_owned()
        } else if ft.is_symlink() {
            format!("symlink->{}", fs::read_link(&full).unwrap().display())
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            let link = if meta.nlink() > 1 {
                match inodes.get(&key) {
                    Some(first) => format!(" hardlink-of {first}"),
                    None => {
                        inodes.insert(key, relative.display().to_string());
                        String::new()
                    }
                }
            } else {
                String::new()
            };
            format!(
                "file {} {}{link}",
                meta.len(),
                hex::encode(Sha256::digest(fs::read(&full).unwrap()))
            )
        } else if ft.is_fifo() {
            "fifo".to_owned()
        } else if ft.is_char_device() {
            format!(
                "char {}:{}",
                rustix::fs::major(meta.rdev()),
                rustix::fs::minor(meta.rdev())
            )
        } else {
            "other".to_owned()
        };
        // Symlink modes are always 0777 on Linux; symlink times are compared too.
        out.insert(
            relative.display().to_string(),
            format!(
                "{what} mode={:o} owner={}:{} mtime={} xattrs={:?}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid(),
                meta.mtime(),
                xattrs(&full)
            ),
        );
    }
    out
}

/// A hand-written tar stream, for layers no honest writer would make.
#[derive(Default)]
pub struct RawTar {
    pub bytes: Vec<u8>,
}

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }

    /// A ustar header with `name` (at most 100 bytes), `typeflag`, `link` and `size`, followed by
    /// `data` padded to a block.
    pub fn entry(mut self, name: &[u8], typeflag: u8, link: &[u8], data: &[u8]) -> Self {
        let mut block = [0u8; 512];
        block[..name.len()].copy_from_slice(name);
        block[100..108].copy_from_slice(b"0000644\0");
        block[108..116].copy_from_slice(b"0000000\0");
        block[116..124].copy_from_slice(b"0000000\0");
        block[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        block[136..148].copy_from_slice(b"00000000000\0");
        block[156] = typeflag;
        block[157..157 + link.len()].copy_from_slice(link);
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        block[329..337].copy_from_slice(b"0000001\0");
        block[337..345].copy_from_slice(b"0000003\0");
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.bytes.extend_from_slice(&block);
        self.bytes.extend_from_slice(data);
        self.bytes.resize(self.bytes.len().div_ceil(512) * 512, 0);
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name.as_bytes(), b'0', b"", data)
    }

    pub fn dir(self, name: &str) -> Self {
        self.entry(name.as_bytes(), b'5', b"", b"")
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name.as_bytes(), b'2', target.as_bytes(), b"")
    }

    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name.as_bytes(), b'1', target.as_bytes(), b"")
    }

    /// A PAX extended header with the given records, for the next entry.
    pub fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while len.to_string().len() + rest > len {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.entry(b"pax", b'x', b"", &data)
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0u8; 1024]);
        self.bytes
    }
}
