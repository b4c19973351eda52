//! Reading a tar stream entry by entry, with every piece of metadata bounded in size.

use std::io::{self, Read};

use crate::error::{Error, Result};
use crate::tar_format::{BLOCK, checksum_ok, field_bytes, kind, parse_number, parse_pax};

/// The most an extended header (PAX records, GNU long name or link) may hold.
const MAX_EXTENSION: u64 = 1 << 20;

/// The kind of an entry read from a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier entry.
    Hardlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
}

/// One entry's header as read from a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    /// The name as written (bytes; Linux paths need not be UTF-8).
    pub name: Vec<u8>,
    /// What it is.
    pub kind: ReadKind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Size of the data in bytes (0 except for files).
    pub size: u64,
    /// Modification time, seconds.
    pub mtime_secs: i64,
    /// Modification time, nanoseconds.
    pub mtime_nanos: u32,
    /// Link target (symlinks and hard links).
    pub link: Vec<u8>,
    /// User name.
    pub uname: String,
    /// Group name.
    pub gname: String,
    /// Device numbers.
    pub device: (u32, u32),
    /// Extended attributes.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl EntryHeader {
    /// The name for messages (lossily decoded).
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Reads tar entries from a stream.
pub(crate) struct TarReader<R> {
    inner: R,
    offset: u64,
    /// Data (plus padding) of the current entry not yet read.
    data_left: u64,
    padding_left: u64,
    global: Vec<(String, Vec<u8>)>,
    finished: bool,
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarReader {
            inner,
            offset: 0,
            data_left: 0,
            padding_left: 0,
            global: Vec::new(),
            finished: false,
        }
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    fn malformed(&self, message: impl Into<String>) -> Error {
        Error::Malformed {
            offset: self.offset,
            message: message.into(),
        }
    }

    /// Reads exactly one block; `Ok(false)` on a clean end of input.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool> {
        let mut filled = 0;
        while filled < BLOCK {
            let n = match self.inner.read(&mut block[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e)),
            };
            if n == 0 {
                if filled == 0 {
                    return Ok(false);
                }
                return Err(self.malformed("truncated header block"));
            }
            filled += n;
        }
        self.offset += BLOCK as u64;
        Ok(true)
    }

    fn read_error(&self, e: io::Error) -> Error {
        Error::Io {
            path: format!("<layer at byte {}>", self.offset).into(),
            error: e,
        }
    }

    /// Skips whatever of the current entry's data was not read.
    fn skip_rest(&mut self) -> Result<()> {
        let mut left = self.data_left + self.padding_left;
        let mut sink = [0u8; 8192];
        while left > 0 {
            let want = sink.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self
                .inner
                .read(&mut sink[..want])
                .map_err(|e| self.read_error(e))?;
            if n == 0 {
                return Err(self.malformed("truncated entry data"));
            }
            left -= n as u64;
            self.offset += n as u64;
        }
        self.data_left = 0;
        self.padding_left = 0;
        Ok(())
    }

    /// Reads the data of an extension entry (bounded).
    fn read_extension(&mut self, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > MAX_EXTENSION {
            return Err(self.malformed(format!(
                "{what} of {size} bytes is larger than the {MAX_EXTENSION}-byte limit"
            )));
        }
        let mut data = vec![0u8; size as usize];
        self.inner
            .read_exact(&mut data)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => self.malformed(format!("truncated {what}")),
                _ => self.read_error(e),
            })?;
        self.offset += size;
        let padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.data_left = 0;
        self.padding_left = padding;
        self.skip_rest()?;
        Ok(data)
    }

    /// The next entry, or `None` at the end of the archive.
    pub(crate) fn next_entry(&mut self) -> Result<Option<EntryHeader>> {
        if self.finished {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut block = [0u8; BLOCK];
        loop {
            if !self.read_block(&mut block)? {
                // End of input without the two zero blocks: accepted, as Go's reader does.
                self.finished = true;
                return Ok(None);
            }
            if block.iter().all(|b| *b == 0) {
                // One zero block ends the archive (a second one, when present, is drained with
                // the rest of the stream by the caller).
                self.finished = true;
                return Ok(None);
            }
            if !checksum_ok(&block) {
                return Err(
                    self.malformed("header checksum mismatch (not a tar stream, or corrupted)")
                );
            }
            let size =
                parse_number(&block[124..136]).ok_or_else(|| self.malformed("bad size field"))?;
            let typeflag = block[156];
            match typeflag {
                kind::PAX => {
                    let data = self.read_extension(size, "PAX header")?;
                    pax.extend(parse_pax(&data).map_err(|e| self.malformed(e))?);
                }
                kind::PAX_GLOBAL => {
                    let data = self.read_extension(size, "global PAX header")?;
                    self.global = parse_pax(&data).map_err(|e| self.malformed(e))?;
                }
                kind::GNU_LONGNAME => {
                    let data = self.read_extension(size, "GNU long name")?;
                    long_name = Some(field_bytes(&data).to_vec());
                }
                kind::GNU_LONGLINK => {
                    let data = self.read_extension(size, "GNU long link")?;
                    long_link = Some(field_bytes(&data).to_vec());
                }
                _ => {
                    return self
                        .entry(&block, size, typeflag, pax, long_name, long_link)
                        .map(Some);
                }
            }
        }
    }

    fn entry(
        &mut self,
        block: &[u8; BLOCK],
        size: u64,
        typeflag: u8,
        pax: Vec<(String, Vec<u8>)>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<EntryHeader> {
        let ustar = &block[257..263] == b"ustar\0" || &block[257..263] == b"ustar ";
        let mut name = field_bytes(&block[0..100]).to_vec();
        if ustar && &block[257..263] == b"ustar\0" {
            let prefix = field_bytes(&block[345..500]);
            if !prefix.is_empty() {
                let mut full = prefix.to_vec();
                full.push(b'/');
                full.extend_from_slice(&name);
                name = full;
            }
        }
        let number = |range: std::ops::Range<usize>, what: &str| {
            parse_number(&block[range]).ok_or_else(|| self.malformed(format!("bad {what} field")))
        };
        let mut header = EntryHeader {
            name: long_name.unwrap_or(name),
            kind: ReadKind::File,
            mode: (number(100..108, "mode")? & 0o7777) as u32,
            uid: number(108..116, "uid")?,
            gid: number(116..124, "gid")?,
            size,
            mtime_secs: i64::try_from(number(136..148, "mtime")?).unwrap_or(i64::MAX),
            mtime_nanos: 0,
            link: long_link.unwrap_or_else(|| field_bytes(&block[157..257]).to_vec()),
            uname: String::from_utf8_lossy(field_bytes(&block[265..297])).into_owned(),
            gname: String::from_utf8_lossy(field_bytes(&block[297..329])).into_owned(),
            device: (0, 0),
            xattrs: Vec::new(),
        };
        if ustar {
            header.device = (
                u32::try_from(number(329..337, "devmajor")?).unwrap_or(u32::MAX),
                u32::try_from(number(337..345, "devminor")?).unwrap_or(u32::MAX),
            );
        }
        self.apply_pax(&mut header, pax)?;
        header.kind = self.read_kind(typeflag, &header)?;
        // Only regular files carry data that belongs to them; other kinds' sizes are skipped.
        let data_size = header.size;
        if header.kind != ReadKind::File {
            header.size = 0;
        }
        self.data_left = data_size;
        self.padding_left = (BLOCK as u64 - data_size % BLOCK as u64) % BLOCK as u64;
        Ok(header)
    }

    /// The global PAX records, then the entry's own, over what the header block said.
    fn apply_pax(&self, header: &mut EntryHeader, pax: Vec<(String, Vec<u8>)>) -> Result<()> {
        let records = self.global.iter().cloned().chain(pax);
        for (key, value) in records {
            let text = || String::from_utf8_lossy(&value).into_owned();
            match key.as_str() {
                "path" => header.name = value.clone(),
                "linkpath" => header.link = value.clone(),
                "size" => {
                    header.size = text().parse().map_err(|_| self.malformed("bad PAX size"))?
                }
                "uid" => header.uid = text().parse().map_err(|_| self.malformed("bad PAX uid"))?,
                "gid" => header.gid = text().parse().map_err(|_| self.malformed("bad PAX gid"))?,
                "uname" => header.uname = text(),
                "gname" => header.gname = text(),
                "mtime" => {
                    let t = text();
                    let (secs, frac) = t.split_once('.').unwrap_or((&t, ""));
                    header.mtime_secs =
                        secs.parse().map_err(|_| self.malformed("bad PAX mtime"))?;
                    let digits: String = frac.chars().take(9).collect();
                    header.mtime_nanos = if digits.is_empty() {
                        0
                    } else {
                        format!("{digits:0<9}")
                            .parse()
                            .map_err(|_| self.malformed("bad PAX mtime"))?
                    };
                }
                k if k.starts_with("SCHILY.xattr.") => header
                    .xattrs
                    .push((k["SCHILY.xattr.".len()..].to_owned(), value.clone())),
                k if k.starts_with("GNU.sparse") => {
                    return Err(self.malformed("sparse files are not supported in layers"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The kind of entry `typeflag` is; sparse files and unknown types are refused.
    fn read_kind(&self, typeflag: u8, header: &EntryHeader) -> Result<ReadKind> {
        Ok(match typeflag {
            kind::FILE | kind::FILE_OLD | kind::CONTIGUOUS => {
                if header.name.ends_with(b"/") && typeflag == kind::FILE_OLD {
                    ReadKind::Dir
                } else {
                    ReadKind::File
                }
            }
            kind::DIR => ReadKind::Dir,
            kind::SYMLINK => ReadKind::Symlink,
            kind::HARDLINK => ReadKind::Hardlink,
            kind::CHAR => ReadKind::CharDevice,
            kind::BLOCK => ReadKind::BlockDevice,
            kind::FIFO => ReadKind::Fifo,
            b'S' => return Err(self.malformed("GNU sparse files are not supported in layers")),
            other => {
                return Err(Error::Refused {
                    path: header.display_name(),
                    message: format!("unsupported tar entry type {:?}", other as char),
                });
            }
        })
    }

    /// Reads from the current entry's data.
    pub(crate) fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.data_left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
        let n = self
            .inner
            .read(&mut buf[..want])
            .map_err(|e| self.read_error(e))?;
        if n == 0 {
            return Err(self.malformed("truncated entry data"));
        }
        self.data_left -= n as u64;
        self.offset += n as u64;
        Ok(n)
    }
}
