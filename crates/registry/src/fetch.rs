//! Plain HTTP(S) downloads (Dockerfile `ADD https://…`, archives named by URL) with the
//! client's TLS settings (extra CA certificates, skipped verification), its proxy rules
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`) and its timeouts, so that one configuration
//! governs all of strata's traffic.
//!
//! A download is streamed to a temporary file beside its destination and hashed on the way;
//! it never holds more than a buffer in memory, never takes more bytes than its limit, and
//! ends when the server stalls for longer than the read timeout. A failed download leaves
//! nothing behind (the temporary file is removed when dropped).

use std::path::Path;

use futures_util::StreamExt;
use reqwest::{StatusCode, Url};
use strata_oci::digest::Hasher;
use tokio::io::AsyncWriteExt;

use crate::client::RegistryClient;
use crate::error::{Error, Result};

/// The default most bytes one download may bring: 10 GiB.
pub const DEFAULT_DOWNLOAD_LIMIT: u64 = 10 << 30;

/// A finished download.
#[derive(Debug)]
pub struct Fetched {
    /// The bytes, in a temporary file (removed when dropped unless persisted).
    pub file: tempfile::NamedTempFile,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// How many bytes.
    pub size: u64,
    /// The `Last-Modified` header, as the server sent it.
    pub last_modified: Option<String>,
    /// The URL after redirects.
    pub final_url: String,
}

impl RegistryClient {
    /// Downloads `url` (http or https) into a temporary file in `dir`, at most `limit` bytes.
    ///
    /// Errors name the URL (without any user information it carries) and the HTTP status.
    pub async fn fetch_url(&self, url: &str, dir: &Path, limit: u64) -> Result<Fetched> {
        let parsed = Url::parse(url)
            .map_err(|e| Error::registry(redact(url), format!("not a valid URL: {e}")))?;
        let shown = redact(url);
        let fail = |message: String| Error::registry(shown.clone(), message);
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(fail(
                "only http and https URLs can be downloaded".to_owned(),
            ));
        }
        let host = match (parsed.host_str(), parsed.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(fail("the URL has no host".to_owned())),
        };
        let http = self.http_client(&host).map_err(fail)?;
        let response = http
            .get(parsed)
            .send()
            .await
            .map_err(|e| fail(describe(e)))?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(Error::Registry {
                reference: shown.clone(),
                message: format!("HTTP {status}"),
                status: Some(status.as_u16()),
                retryable: status.is_server_error()
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT,
            });
        }
        if let Some(announced) = response.content_length()
            && announced > limit
        {
            return Err(fail(format!(
                "the server announces {announced} bytes, more than the limit of {limit}"
            )));
        }
        let final_url = redact(response.url().as_str());
        let last_modified = response
            .headers()
            .get(reqwest::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let temp = tempfile::NamedTempFile::new_in(dir).map_err(Error::io(dir))?;
        let disk = |e: std::io::Error| Error::io(temp.path())(e);
        let file = temp.reopen().map_err(disk)?;
        let mut writer =
            tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
        let mut hasher = Hasher::new();
        let mut size = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| fail(format!("reading the body: {}", describe(e))))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(fail(format!(
                    "the download is larger than the limit of {limit} bytes"
                )));
            }
            hasher.update(&chunk);
            writer.write_all(&chunk).await.map_err(disk)?;
        }
        writer.flush().await.map_err(disk)?;
        Ok(Fetched {
            file: temp,
            digest: hasher.finish(),
            size,
            last_modified,
            final_url,
        })
    }
}

/// What a failed request was, in words: the registry client's message (its causes, and
/// whether it timed out), without the URL, which the caller names already redacted.
fn describe(e: reqwest::Error) -> String {
    crate::http::HttpError::from(e.without_url()).message
}

/// `url` without the user name and password it may carry.
fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => url.split('@').next_back().unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_in_messages() {
        assert_eq!(
            redact("https://user:pw@example.com/a.tar"),
            "https://example.com/a.tar"
        );
        assert_eq!(redact("https://example.com/a"), "https://example.com/a");
        assert!(!redact("not a url user:pw@host").contains("pw"));
    }
}
