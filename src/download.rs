//! `ADD`'s http(s) sources: streamed to a file in the build's scratch directory, hashed on
//! the way, checked against `--checksum`, never extracted (as Docker).

use crate::engine::Engine;
use crate::error::{Error, Result};

/// A downloaded `ADD` source.
#[derive(Debug)]
pub(crate) struct Download {
    /// The bytes, on disk.
    pub file: tempfile::NamedTempFile,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// The file name the URL gives (its last path segment), for a directory destination.
    pub name: String,
    /// `Last-Modified`, in seconds since the epoch, when the server sent it.
    pub mtime: Option<i64>,
    /// Size in bytes.
    pub size: u64,
}

/// Whether an `ADD` source is a URL strata downloads.
pub(crate) fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// Downloads `url` into the build's scratch directory with the registry client's HTTP
/// settings (TLS, proxies, timeouts) and the build's size limit, checking `checksum`
/// (`sha256:<hex>`) when given.
pub(crate) fn download(engine: &Engine, url: &str, checksum: Option<&str>) -> Result<Download> {
    let fail = |message: String| Error::Invalid(format!("ADD {url}: {message}"));
    let fetched = engine.runtime.block_on(engine.registry.fetch_url(
        url,
        &engine.work,
        engine.opts.max_download,
    ))?;
    let mtime = fetched.last_modified.as_deref().and_then(http_date);
    let file = fetched.file;
    let size = fetched.size;
    let digest = fetched.digest;
    if let Some(expected) = checksum
        && expected != digest
    {
        return Err(fail(format!(
            "checksum mismatch: expected {expected}, got {digest}"
        )));
    }
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty() && !n.contains(':'))
        .unwrap_or("index.html")
        .to_owned();
    Ok(Download {
        file,
        digest,
        name,
        mtime,
        size,
    })
}

/// Seconds since the epoch of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, the IMF-fixdate
/// of RFC 9110, which is RFC 2822's form).
pub(crate) fn http_date(text: &str) -> Option<i64> {
    jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(text)
        .ok()
        .map(|t| t.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            http_date("Tue, 14 Nov 2023 22:13:20 GMT"),
            Some(1_700_000_000)
        );
        assert_eq!(http_date("yesterday"), None);
    }
}
