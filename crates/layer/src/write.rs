//! Writing a layer: entries → sorted PAX tar → compression → any `Write`, with the `diff_id`
//! and the compressed digest computed in the same pass.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use oci_spec::image::Descriptor;

use crate::compression::Compression;
use crate::entry::{Entry, EntryKind, Mtime, compare, validate_path};
use crate::error::{Error, Result};
use crate::gzip::ParallelGzip;
use crate::tar_format::{BLOCK, HeaderFields, encode_header, kind};
use strata_oci::{Hasher, HashingWriter};

/// What a written layer is: its descriptor (media type, compressed digest and size) and its
/// `diff_id` (digest of the uncompressed tar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// The descriptor for the image manifest.
    pub descriptor: Descriptor,
    /// `sha256:<hex>` of the uncompressed tar, for the image config's `rootfs.diff_ids`.
    pub diff_id: strata_oci::Digest,
    /// Size of the uncompressed tar in bytes.
    pub uncompressed_size: u64,
    /// Number of entries written.
    pub entries: usize,
}

/// Writes OCI layers. Configure once, write many layers.
///
/// ```
/// use strata_layer::{Entry, EntryKind, LayerWriter, Metadata};
///
/// let entries = vec![
///     Entry { path: "etc".into(), kind: EntryKind::Dir, metadata: Metadata { mode: 0o755, ..Default::default() } },
///     Entry { path: "etc/motd".into(), kind: EntryKind::Bytes(b"hello\n".to_vec()), metadata: Metadata { mode: 0o644, ..Default::default() } },
///     Entry { path: "tmp/old".into(), kind: EntryKind::Whiteout, metadata: Metadata::default() },
/// ];
/// let mut out = Vec::new();
/// let layer = LayerWriter::new().write(entries, &mut out)?;
/// assert_eq!(layer.descriptor.size(), out.len() as u64);
/// assert_eq!(layer.diff_id.algorithm().to_string(), "sha256");
/// # Ok::<(), strata_layer::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LayerWriter {
    compression: Compression,
    threads: usize,
    clamp_mtime: Option<i64>,
    nanos: bool,
    owner: Option<(u32, u32)>,
}

impl Default for LayerWriter {
    fn default() -> Self {
        LayerWriter::new()
    }
}

impl LayerWriter {
    /// gzip level 6 on every core, times as given (seconds only), ownership as given.
    pub fn new() -> Self {
        LayerWriter {
            compression: Compression::default(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            clamp_mtime: None,
            nanos: false,
            owner: None,
        }
    }

    /// The compression.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// How many threads compress (default: every core).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Clamps every mtime to at most `epoch` seconds (`SOURCE_DATE_EPOCH`), for reproducible
    /// layers.
    pub fn clamp_mtime(mut self, epoch: Option<i64>) -> Self {
        self.clamp_mtime = epoch;
        self
    }

    /// Writes nanosecond mtimes as PAX records (off by default: whole seconds are what Docker
    /// writes and what keeps layers reproducible across filesystems).
    pub fn nanosecond_times(mut self, nanos: bool) -> Self {
        self.nanos = nanos;
        self
    }

    /// Overrides the owner of every entry (as `COPY --chown` does); user and group names are
    /// dropped.
    pub fn owner(mut self, owner: Option<(u32, u32)>) -> Self {
        self.owner = owner;
        self
    }

    /// Writes `entries` as one layer into `out`, in a deterministic order, and returns what
    /// it wrote. Entries may come in any order; paths must be unique.
    ///
    /// No entries with gzip make the well-known empty layer (`sha256:4f4fb700…`, the same 32
    /// bytes BuildKit and Docker write), so a registry holds it once for every image.
    pub fn write<W: Write>(&self, mut entries: Vec<Entry>, out: W) -> Result<LayerInfo> {
        if entries.is_empty() && matches!(self.compression, Compression::Gzip { .. }) {
            return write_empty_gzip(out, self.compression.media_type());
        }
        for entry in &entries {
            validate_path(&entry.path)?;
        }
        entries.sort_by(compare);
        let mut names = std::collections::HashSet::with_capacity(entries.len());
        for entry in &entries {
            if !names.insert(entry.tar_name()) {
                return Err(Error::InvalidEntry {
                    path: entry.path.display().to_string(),
                    message: "appears twice".to_owned(),
                });
            }
        }
        resolve_hardlinks(&mut entries)?;
        let count = entries.len();
        self.encode(entries.iter().map(Ok), count, out)
    }

    /// Writes entries that come already in the layer's order (the order [`LayerWriter::write`]
    /// sorts into: component by component, parents before children, names in byte order
    /// within a directory), one at a time: memory stays the same for a million entries as
    /// for ten. `entries` is read once; an entry that does not come after the one before it
    /// (out of order, or a path given twice) is an error, as are whiteouts and opaque
    /// markers, which need the whole layer to check (use [`LayerWriter::write`]). A hard
    /// link must come after its target, which the caller wrote as a regular file (only the
    /// order is checked here: checking the rest would mean remembering every path).
    ///
    /// ```
    /// use strata_layer::{Entry, EntryKind, LayerWriter, Metadata};
    ///
    /// let meta = Metadata { mode: 0o755, ..Default::default() };
    /// let entries = vec![
    ///     Entry { path: "etc".into(), kind: EntryKind::Dir, metadata: meta.clone() },
    ///     Entry { path: "etc/motd".into(), kind: EntryKind::Bytes(b"hi\n".to_vec()), metadata: meta.clone() },
    /// ];
    /// let (mut sorted, mut ordered) = (Vec::new(), Vec::new());
    /// let a = LayerWriter::new().write(entries.clone(), &mut sorted)?;
    /// let b = LayerWriter::new().write_ordered(entries.into_iter(), &mut ordered)?;
    /// assert_eq!((a, sorted), (b, ordered));
    /// # Ok::<(), strata_layer::Error>(())
    /// ```
    pub fn write_ordered<W: Write>(
        &self,
        entries: impl Iterator<Item = Entry>,
        out: W,
    ) -> Result<LayerInfo> {
        let mut entries = entries.peekable();
        if entries.peek().is_none() && matches!(self.compression, Compression::Gzip { .. }) {
            return write_empty_gzip(out, self.compression.media_type());
        }
        let mut previous: Option<Entry> = None;
        let mut count = 0;
        let checked = entries.map(|entry| {
            validate_path(&entry.path)?;
            let refuse = |message: &str| Error::InvalidEntry {
                path: entry.path.display().to_string(),
                message: message.to_owned(),
            };
            if matches!(entry.kind, EntryKind::Whiteout | EntryKind::OpaqueDir) {
                return Err(refuse(
                    "whiteouts and opaque markers need the whole layer (LayerWriter::write)",
                ));
            }
            if let EntryKind::Hardlink { target } = &entry.kind {
                let target = Entry {
                    path: target.clone(),
                    kind: EntryKind::Dir,
                    metadata: crate::entry::Metadata::default(),
                };
                if validate_path(&target.path).is_err()
                    || compare(&target, &entry) != std::cmp::Ordering::Less
                {
                    return Err(refuse("a hard link must come after its target"));
                }
            }
            if let Some(previous) = &previous
                && compare(previous, &entry) != std::cmp::Ordering::Less
            {
                return Err(refuse(&format!(
                    "comes after `{}` in the layer, or appears twice",
                    previous.path.display()
                )));
            }
            // Only the path decides the order of what is accepted here.
            previous = Some(Entry {
                path: entry.path.clone(),
                kind: EntryKind::Dir,
                metadata: crate::entry::Metadata::default(),
            });
            count += 1;
            Ok(std::borrow::Cow::Owned(entry))
        });
        let mut info = self.encode(checked, 0, out)?;
        info.entries = count;
        Ok(info)
    }

    /// The tar of `entries` through the configured compression into `out`.
    fn encode<'e, W: Write>(
        &self,
        entries: impl Iterator<Item = Result<impl std::ops::Deref<Target = Entry> + 'e>>,
        count: usize,
        out: W,
    ) -> Result<LayerInfo> {
        let compressed = HashingWriter::new(out);
        let (compressed, tar) =
            match self.compression {
                Compression::Gzip { level } => {
                    let gzip = ParallelGzip::new(compressed, level.min(9), self.threads)
                        .map_err(Error::io("<gzip>"))?;
                    let tar = self.write_tar(entries, gzip)?;
                    let gzip = tar.inner;
                    (gzip.finish().map_err(Error::io("<output>"))?, tar.hasher)
                }
                Compression::Zstd { level } => {
                    let mut encoder = zstd::stream::write::Encoder::new(compressed, level)
                        .map_err(|e| Error::Codec {
                            codec: "zstd",
                            message: e.to_string(),
                        })?;
                    if self.threads > 1 {
                        encoder
                            .multithread(self.threads as u32)
                            .map_err(|e| Error::Codec {
                                codec: "zstd",
                                message: e.to_string(),
                            })?;
                    }
                    let tar = self.write_tar(entries, encoder)?;
                    let encoder = tar.inner;
                    (encoder.finish().map_err(Error::io("<output>"))?, tar.hasher)
                }
                Compression::None => {
                    let tar = self.write_tar(entries, compressed)?;
                    (tar.inner, tar.hasher)
                }
            };
        let uncompressed_size = tar.count();
        let diff_id = typed(tar)?;
        let mut compressed = compressed;
        compressed.flush().map_err(Error::io("<output>"))?;
        let size = compressed.hasher.count();
        let descriptor = Descriptor::new(
            self.compression.media_type(),
            size,
            typed(compressed.hasher)?,
        );
        Ok(LayerInfo {
            descriptor,
            diff_id,
            uncompressed_size,
            entries: count,
        })
    }

    fn write_tar<'e, W: Write>(
        &self,
        entries: impl Iterator<Item = Result<impl std::ops::Deref<Target = Entry> + 'e>>,
        sink: W,
    ) -> Result<HashingWriter<W>> {
        let mut tar = HashingWriter::new(sink);
        let mut header = Vec::with_capacity(2 * BLOCK);
        let mut buffer = vec![0u8; 256 * 1024];
        for entry in entries {
            let entry = entry?;
            let entry: &Entry = &entry;
            header.clear();
            let name = entry.tar_name();
            let m = &entry.metadata;
            let mtime = match self.clamp_mtime {
                Some(epoch)
                    if m.mtime.secs > epoch || (m.mtime.secs == epoch && m.mtime.nanos > 0) =>
                {
                    Mtime::from_secs(epoch)
                }
                _ => m.mtime,
            };
            let (uid, gid, uname, gname) = match self.owner {
                Some((uid, gid)) => (uid, gid, "", ""),
                None => (
                    m.uid,
                    m.gid,
                    m.uname.as_deref().unwrap_or(""),
                    m.gname.as_deref().unwrap_or(""),
                ),
            };
            let mut fields = HeaderFields {
                name: &name,
                mode: m.mode,
                uid: u64::from(uid),
                gid: u64::from(gid),
                mtime_secs: mtime.secs,
                mtime_nanos: mtime.nanos,
                uname,
                gname,
                xattrs: &m.xattrs,
                nanos: self.nanos,
                ..HeaderFields::default()
            };
            let source = kind_fields(&entry.kind, &mut fields);
            let dir_name;
            if matches!(entry.kind, EntryKind::Dir) {
                dir_name = [name.as_slice(), b"/"].concat();
                fields.name = &dir_name;
            }
            encode_header(&fields, &mut header);
            tar.write_all(&header).map_err(Error::io("<output>"))?;
            let written = write_data(&mut tar, entry, source, fields.size, &mut buffer)?;
            let padding = (BLOCK - (written as usize % BLOCK)) % BLOCK;
            tar.write_all(&[0u8; BLOCK][..padding])
                .map_err(Error::io("<output>"))?;
        }
        tar.write_all(&[0u8; 2 * BLOCK])
            .map_err(Error::io("<output>"))?;
        Ok(tar)
    }
}

/// The tar type and type-specific fields of an entry of `kind` (a directory's trailing `/`
/// is the caller's); the file to copy the data from, when the data is a file's.
fn kind_fields<'a>(kind: &'a EntryKind, fields: &mut HeaderFields<'a>) -> Option<&'a PathBuf> {
    match kind {
        EntryKind::File { source, size } => {
            fields.kind = kind::FILE;
            fields.size = *size;
            return Some(source);
        }
        EntryKind::Bytes(bytes) => {
            fields.kind = kind::FILE;
            fields.size = bytes.len() as u64;
        }
        EntryKind::Dir => fields.kind = kind::DIR,
        EntryKind::Symlink { target } => {
            fields.kind = kind::SYMLINK;
            fields.linkname = target.as_os_str().as_bytes();
        }
        EntryKind::Hardlink { target } => {
            fields.kind = kind::HARDLINK;
            fields.linkname = target.as_os_str().as_bytes();
        }
        EntryKind::CharDevice { major, minor } => {
            fields.kind = kind::CHAR;
            (fields.devmajor, fields.devminor) = (*major, *minor);
        }
        EntryKind::BlockDevice { major, minor } => {
            fields.kind = kind::BLOCK;
            (fields.devmajor, fields.devminor) = (*major, *minor);
        }
        EntryKind::Fifo => fields.kind = kind::FIFO,
        EntryKind::Whiteout | EntryKind::OpaqueDir => {
            fields.kind = kind::FILE;
            fields.mode = 0o644;
            fields.xattrs = &[];
            (fields.uid, fields.gid, fields.uname, fields.gname) = (0, 0, "", "");
        }
    }
    None
}

/// An entry's data after its header: its bytes, or exactly `size` bytes of the file
/// `source` (a file that changed size while read is an error). Returns the bytes written.
fn write_data<W: Write>(
    tar: &mut HashingWriter<W>,
    entry: &Entry,
    source: Option<&PathBuf>,
    size: u64,
    buffer: &mut [u8],
) -> Result<u64> {
    Ok(match (&entry.kind, source) {
        (EntryKind::Bytes(bytes), _) => {
            tar.write_all(bytes).map_err(Error::io("<output>"))?;
            bytes.len() as u64
        }
        (_, Some(path)) => {
            let file = File::open(path).map_err(Error::io(path))?;
            copy_exact(file, tar, size, buffer).map_err(|e| match e {
                CopyError::Read(source) => Error::Io {
                    path: path.clone(),
                    error: source,
                },
                CopyError::Write(source) => Error::Io {
                    path: "<output>".into(),
                    error: source,
                },
                CopyError::Size(found) => Error::InvalidEntry {
                    path: entry.path.display().to_string(),
                    message: format!(
                        "{} changed while being read: {} bytes announced, {found}",
                        path.display(),
                        size
                    ),
                },
            })?;
            size
        }
        _ => 0,
    })
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
    Size(String),
}

/// Copies exactly `size` bytes; a source that is shorter or longer is an error.
fn copy_exact(
    mut from: File,
    to: &mut impl Write,
    size: u64,
    buffer: &mut [u8],
) -> std::result::Result<(), CopyError> {
    let mut left = size;
    while left > 0 {
        let want = buffer
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = from.read(&mut buffer[..want]).map_err(CopyError::Read)?;
        if n == 0 {
            return Err(CopyError::Size(format!(
                "only {} could be read",
                size - left
            )));
        }
        to.write_all(&buffer[..n]).map_err(CopyError::Write)?;
        left -= n as u64;
    }
    let mut probe = [0u8; 1];
    if from.read(&mut probe).map_err(CopyError::Read)? != 0 {
        return Err(CopyError::Size("more could be read".to_owned()));
    }
    Ok(())
}

/// What `hasher` saw, as the typed digest descriptors carry.
fn typed(hasher: Hasher) -> Result<strata_oci::Digest> {
    hasher
        .finish_digest()
        .map_err(|e| Error::Descriptor(e.to_string()))
}

/// gzip of an empty tar (two zero blocks) with no name and no time, as Go's `compress/gzip`
/// writes it: the layer BuildKit records for a step that changes nothing.
const EMPTY_GZIP_LAYER: [u8; 32] = [
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x62, 0x18, 0x05, 0xa3, 0x60, 0x14,
    0x8c, 0x58, 0x00, 0x08, 0x00, 0x00, 0xff, 0xff, 0x2e, 0xaf, 0xb5, 0xef, 0x00, 0x04, 0x00, 0x00,
];

fn write_empty_gzip<W: Write>(out: W, media_type: oci_spec::image::MediaType) -> Result<LayerInfo> {
    let mut compressed = HashingWriter::new(out);
    compressed
        .write_all(&EMPTY_GZIP_LAYER)
        .and_then(|()| compressed.flush())
        .map_err(Error::io("<output>"))?;
    let mut tar = HashingWriter::new(io::sink());
    tar.write_all(&[0u8; 2 * BLOCK])
        .map_err(Error::io("<output>"))?;
    let size = compressed.hasher.count();
    let descriptor = Descriptor::new(media_type, size, typed(compressed.hasher)?);
    Ok(LayerInfo {
        descriptor,
        uncompressed_size: tar.hasher.count(),
        diff_id: typed(tar.hasher)?,
        entries: 0,
    })
}

/// Makes every hardlink group write its contents once, at the first of its members in layer
/// order, and link the others to it.
fn resolve_hardlinks(entries: &mut [Entry]) -> Result<()> {
    if !entries
        .iter()
        .any(|e| matches!(e.kind, EntryKind::Hardlink { .. }))
    {
        return Ok(());
    }
    let index: HashMap<PathBuf, usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| !matches!(e.kind, EntryKind::Whiteout | EntryKind::OpaqueDir))
        .map(|(i, e)| (e.path.clone(), i))
        .collect();
    // The primary (non-link) entry of each link, following chains of links.
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let EntryKind::Hardlink { .. } = entry.kind else {
            continue;
        };
        let mut at = i;
        let mut hops = 0;
        while let EntryKind::Hardlink { target } = &entries[at].kind {
            at = *index.get(target).ok_or_else(|| Error::InvalidEntry {
                path: entry.path.display().to_string(),
                message: format!(
                    "hard link to `{}`, which is not in the layer",
                    target.display()
                ),
            })?;
            hops += 1;
            if hops > entries.len() {
                return Err(Error::InvalidEntry {
                    path: entry.path.display().to_string(),
                    message: "hard links form a cycle".to_owned(),
                });
            }
        }
        if !matches!(
            entries[at].kind,
            EntryKind::File { .. } | EntryKind::Bytes(_)
        ) {
            return Err(Error::InvalidEntry {
                path: entry.path.display().to_string(),
                message: format!(
                    "hard link to `{}`, which is not a regular file",
                    entries[at].path.display()
                ),
            });
        }
        groups.entry(at).or_default().push(i);
    }
    for (primary, links) in groups {
        let first = links
            .iter()
            .copied()
            .chain([primary])
            .min()
            .unwrap_or(primary);
        if first != primary {
            // The earliest member carries the contents; the primary becomes a link to it.
            let contents = entries[primary].kind.clone();
            entries[first].kind = contents;
            entries[first].metadata = entries[primary].metadata.clone();
            entries[primary].kind = EntryKind::Hardlink {
                target: entries[first].path.clone(),
            };
        }
        let first_path = entries[first].path.clone();
        for link in links {
            if link != first {
                entries[link].kind = EntryKind::Hardlink {
                    target: first_path.clone(),
                };
            }
        }
    }
    Ok(())
}
