//! SHA-256 digests: checked when they arrive, computed while bytes flow, and written the one
//! way OCI spells them, `sha256:<64 lowercase hex digits>`.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `bytes`.
///
/// ```
/// assert_eq!(
///     strata_oci::digest::sha256(b""),
///     "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
/// );
/// ```
pub fn sha256(bytes: impl AsRef<[u8]>) -> String {
    spell(&Sha256::digest(bytes.as_ref()).into())
}

/// `sha256:<hex>` and size of everything `reader` gives, read in 1 MiB pieces (a blob on
/// disk: what verifying a layout or a cache store hashes).
pub fn sha256_of_reader(mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
    }
    let size = hasher.count();
    Ok((hasher.finish(), size))
}

/// `sha256:<hex>` of a raw 32-byte SHA-256.
pub fn spell(raw: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(raw))
}

/// The hex part of a digest (`sha256:ab…` gives `ab…`; a digest without an algorithm is
/// returned whole).
pub fn hex_part(digest: &str) -> &str {
    digest.split_once(':').map_or(digest, |(_, hex)| hex)
}

/// A SHA-256 being computed, with the number of bytes it has seen.
#[derive(Debug, Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    count: u64,
}

impl Hasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Hasher {
        Hasher::default()
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.count += bytes.len() as u64;
    }

    /// How many bytes it has seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The raw 32 bytes of the digest.
    pub fn finish_raw(self) -> [u8; 32] {
        self.inner.finalize().into()
    }

    /// The digest, `sha256:<hex>`.
    pub fn finish(self) -> String {
        spell(&self.finish_raw())
    }

    /// The digest as oci-spec's typed [`oci_spec::image::Digest`], the form descriptors
    /// carry.
    pub fn finish_digest(self) -> crate::Result<oci_spec::image::Digest> {
        parse(&self.finish())
    }
}

impl Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that hashes and counts what passes through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    /// Where the bytes go.
    pub inner: W,
    /// What has passed.
    pub hasher: Hasher,
}

impl<W> HashingWriter<W> {
    /// Hashes what is written to `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(),
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what is read through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    /// Where the bytes come from.
    pub inner: R,
    /// What has been read.
    pub hasher: Hasher,
}

impl<R> HashingReader<R> {
    /// Hashes what is read from `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A digest from text, checked ([`validate_digest`]) and typed as oci-spec's
/// [`oci_spec::image::Digest`], the form descriptors carry.
///
/// ```
/// let digest = strata_oci::digest::parse(&strata_oci::digest::sha256(b"x"))?;
/// assert_eq!(digest.algorithm().to_string(), "sha256");
/// assert!(strata_oci::digest::parse("sha256:../../etc").is_err());
/// # Ok::<(), strata_oci::Error>(())
/// ```
pub fn parse(digest: &str) -> crate::Result<oci_spec::image::Digest> {
    let invalid = |message: String| crate::Error::InvalidDigest {
        digest: digest.to_owned(),
        message,
    };
    validate_digest(digest).map_err(invalid)?;
    digest.parse().map_err(|e| invalid(format!("{e}")))
}

/// Checks a digest (`algorithm:hex`): known algorithms must have their exact length.
pub fn validate_digest(digest: &str) -> std::result::Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!(
            "digest `{digest}` has no algorithm (expected sha256:<hex>)"
        ));
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '-', '_']).all(|c| {
            let mut chars = c.chars();
            matches!(chars.next(), Some(first) if first.is_ascii_alphabetic())
                && chars.all(|ch| ch.is_ascii_alphanumeric())
        });
    if !algorithm_ok {
        return Err(format!("digest algorithm `{algorithm}` is not valid"));
    }
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("digest `{digest}` is not hexadecimal"));
    }
    let expected = match algorithm {
        "sha256" => Some(64),
        "sha384" => Some(96),
        "sha512" => Some(128),
        _ => None,
    };
    match expected {
        Some(len) if hex.len() != len => Err(format!(
            "a {algorithm} digest has {len} hex digits, `{digest}` has {}",
            hex.len()
        )),
        Some(_) if hex.chars().any(|c| c.is_ascii_uppercase()) => {
            Err(format!("digest `{digest}` must be lower case"))
        }
        None if hex.len() < 32 => Err(format!("digest `{digest}` is shorter than 128 bits")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_and_whole_agree() {
        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(b"hello ").unwrap();
        writer.write_all(b"world").unwrap();
        let mut reader = HashingReader::new(&b"hello world"[..]);
        io::copy(&mut reader, &mut io::sink()).unwrap();
        assert_eq!(writer.hasher.count(), 11);
        assert_eq!(reader.hasher.count(), 11);
        let whole = sha256(b"hello world");
        assert_eq!(writer.hasher.finish(), whole);
        assert_eq!(reader.hasher.finish(), whole);
        assert_eq!(hex_part(&whole).len(), 64);
        assert!(validate_digest(&whole).is_ok());
    }

    #[test]
    fn bad_digests_are_refused() {
        for bad in [
            "sha256",
            "sha256:",
            ":abc",
            "sha256:../../etc/passwd",
            "sha256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
            "sha256:abc",
            "1sha:0123456789abcdef0123456789abcdef",
        ] {
            assert!(validate_digest(bad).is_err(), "{bad}");
        }
    }
}
