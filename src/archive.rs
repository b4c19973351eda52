//! `ADD`'s local archives: a tar, plain or compressed with gzip, bzip2, xz or zstd, is
//! extracted into the destination instead of being copied.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::{Error, Result};

/// How an archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Plain,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

/// The codec of `path` when it holds a tar archive; `None` for any other file (which `ADD`
/// copies as it is, as Docker does).
pub(crate) fn detect(path: &Path) -> Result<Option<Codec>> {
    let mut head = [0u8; 6];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(Error::io(path))?;
    let head = &head[..n];
    let codec = if head.starts_with(&[0x1f, 0x8b]) {
        Codec::Gzip
    } else if head.starts_with(b"BZh") {
        Codec::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Codec::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Codec::Zstd
    } else {
        Codec::Plain
    };
    // A tar has `ustar` at offset 257 of its first header, once decompressed.
    let mut block = vec![0u8; 512];
    let mut reader = open(path, codec)?;
    let mut filled = 0;
    while filled < block.len() {
        match reader.read(&mut block[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            // Not decompressible: not an archive of ours to extract.
            Err(_) => return Ok(None),
        }
    }
    Ok((filled == 512 && &block[257..262] == b"ustar").then_some(codec))
}

/// The decompressed stream of `path`.
pub(crate) fn open(path: &Path, codec: Codec) -> Result<Box<dyn Read>> {
    let file = BufReader::with_capacity(1 << 20, File::open(path).map_err(Error::io(path))?);
    Ok(match codec {
        Codec::Plain => Box::new(file),
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Codec::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(file)),
        Codec::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(file)),
        Codec::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(Error::io(path))?)
        }
    })
}

/// Extracts the archive at `path` into `dir` with the layer crate's safe extractor (no entry
/// lands outside `dir`; `.wh.` names are ordinary files here, not whiteouts).
pub(crate) fn unpack(path: &Path, codec: Codec, dir: &Path) -> Result<()> {
    let reader = open(path, codec)?;
    strata_layer::Extractor::new()
        .whiteouts(strata_layer::WhiteoutMode::Keep)
        .media_type(Some("application/vnd.oci.image.layer.v1.tar".to_owned()))
        .apply(reader, dir)
        .map_err(|e| Error::Invalid(format!("archive {}: {e}", path.display())))?;
    Ok(())
}
