//! Build contexts in object stores: `s3://BUCKET/KEY`, `gs://BUCKET/KEY` and Azure Blob
//! Storage URLs (`https://ACCOUNT.blob.core.windows.net/CONTAINER/KEY`), as Kaniko takes
//! them. The `object_store` crate does the signing and the credential chains; the object is
//! streamed to a file in the build's scratch directory (never held in memory) under the
//! build's download limit, then unpacked by the safe extractor like any tar context.
//!
//! Configuration comes from the environment, as each provider's tools read it:
//! - S3: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`
//!   (or `AWS_DEFAULT_REGION`), web identity (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`:
//!   IRSA), container and instance credentials, `AWS_PROFILE` with static keys in
//!   `~/.aws/credentials` (or `AWS_SHARED_CREDENTIALS_FILE`) and its region in `~/.aws/config`
//!   (or `AWS_CONFIG_FILE`); Kaniko's `S3_ENDPOINT` and `S3_FORCE_PATH_STYLE` for other S3
//!   servers.
//! - GCS: `GOOGLE_APPLICATION_CREDENTIALS` (a service-account or user JSON), workload
//!   identity through the metadata server, `STORAGE_EMULATOR_HOST` for emulators.
//! - Azure: `AZURE_STORAGE_ACCESS_KEY` (Kaniko's), the account from the URL, the other
//!   `AZURE_*` settings of the `object_store` crate, and `AZURE_STORAGE_USE_EMULATOR=true` with
//!   `AZURITE_BLOB_STORAGE_URL` for Azurite.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{Error, ErrorKind, Result};

/// Whether `text` names an object-store context strata reads.
pub(crate) fn is_object_url(text: &str) -> bool {
    text.starts_with("s3://") || text.starts_with("gs://") || azure_parts(text).is_some()
}

/// `(account, container, key)` of an Azure Blob Storage URL.
fn azure_parts(text: &str) -> Option<(&str, &str, &str)> {
    let rest = text.strip_prefix("https://")?;
    let (host, path) = rest.split_once('/')?;
    let account = host.strip_suffix(".blob.core.windows.net")?;
    let (container, key) = path.split_once('/')?;
    Some((account, container, key))
}

/// A fetched object: the file and its size.
pub(crate) struct Fetched {
    pub file: tempfile::NamedTempFile,
    pub size: u64,
}

/// Streams the object `url` into a file under `scratch`, at most `limit` bytes.
pub(crate) async fn fetch(url: &str, scratch: &Path, limit: u64) -> Result<Fetched> {
    let fail = |kind: ErrorKind, message: String| Error::Fetch {
        location: url.to_owned(),
        kind,
        message,
    };
    let (store, key) = open(url).map_err(|e| fail(ErrorKind::Invalid, e))?;
    let path = object_store::path::Path::parse(key)
        .map_err(|e| fail(ErrorKind::Invalid, format!("object key: {e}")))?;
    let result = store
        .get(&path)
        .await
        .map_err(|e| fail(kind_of(&e), message_of(&e)))?;
    if result.meta.size > limit {
        return Err(fail(
            ErrorKind::Invalid,
            format!(
                "the object is {} bytes, more than the download limit of {limit}",
                result.meta.size
            ),
        ));
    }
    let mut file = tempfile::Builder::new()
        .prefix("object-")
        .tempfile_in(scratch)
        .map_err(Error::io(scratch))?;
    let mut size = 0u64;
    let mut stream = result.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| fail(kind_of(&e), message_of(&e)))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(fail(
                ErrorKind::Invalid,
                format!("the object is larger than the download limit of {limit} bytes"),
            ));
        }
        file.write_all(&chunk).map_err(Error::io(file.path()))?;
    }
    file.flush().map_err(Error::io(file.path()))?;
    Ok(Fetched { file, size })
}

/// The store for `url` and the object's key.
fn open(url: &str) -> std::result::Result<(Arc<dyn ObjectStore>, &str), String> {
    let bucket_and_key = |rest: &'static str| -> std::result::Result<(&str, &str), String> {
        let rest = &url[rest.len()..];
        match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok((bucket, key)),
            // Kaniko: a bucket alone holds `context.tar.gz`.
            _ if !rest.trim_end_matches('/').is_empty()
                && !rest.trim_end_matches('/').contains('/') =>
            {
                Ok((rest.trim_end_matches('/'), "context.tar.gz"))
            }
            _ => Err("expected BUCKET/KEY".to_owned()),
        }
    };
    if url.starts_with("s3://") {
        let (bucket, key) = bucket_and_key("s3://")?;
        return Ok((Arc::new(s3(bucket)?), key));
    }
    if url.starts_with("gs://") {
        let (bucket, key) = bucket_and_key("gs://")?;
        let mut builder =
            object_store::gcp::GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
        if let Ok(path) = std::env::var("GOOGLE_APPLICATION_CREDENTIALS") {
            builder = builder.with_application_credentials(path);
        }
        if let Ok(host) = std::env::var("STORAGE_EMULATOR_HOST") {
            let base = if host.contains("://") {
                host
            } else {
                format!("http://{host}")
            };
            builder = builder
                .with_base_url(base.trim_end_matches('/'))
                .with_skip_signature(true)
                .with_client_options(object_store::ClientOptions::new().with_allow_http(true));
        }
        let store = builder.build().map_err(|e| message_of(&e))?;
        return Ok((Arc::new(store), key));
    }
    if let Some((account, container, key)) = azure_parts(url) {
        let mut builder = object_store::azure::MicrosoftAzureBuilder::from_env()
            .with_account(account)
            .with_container_name(container);
        if let Ok(key) = std::env::var("AZURE_STORAGE_ACCESS_KEY") {
            builder = builder.with_access_key(key);
        }
        let store = builder.build().map_err(|e| message_of(&e))?;
        return Ok((Arc::new(store), key));
    }
    Err("not an s3://, gs:// or Azure Blob Storage URL".to_owned())
}

fn s3(bucket: &str) -> std::result::Result<object_store::aws::AmazonS3, String> {
    use object_store::aws::AmazonS3Builder;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    // AWS_PROFILE: static keys from the shared credentials file, the region from the config
    // file, when the environment does not give them.
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
    let home = env("HOME").unwrap_or_default();
    if env("AWS_ACCESS_KEY_ID").is_none() {
        let credentials = env("AWS_SHARED_CREDENTIALS_FILE")
            .unwrap_or_else(|| format!("{home}/.aws/credentials"));
        if let Ok(text) = std::fs::read_to_string(&credentials) {
            let section = ini_section(&text, &profile);
            if let Some(id) = section.get("aws_access_key_id") {
                builder = builder.with_access_key_id(id);
            }
            if let Some(secret) = section.get("aws_secret_access_key") {
                builder = builder.with_secret_access_key(secret);
            }
            if let Some(token) = section.get("aws_session_token") {
                builder = builder.with_token(token);
            }
        }
    }
    if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
        let config = env("AWS_CONFIG_FILE").unwrap_or_else(|| format!("{home}/.aws/config"));
        if let Ok(text) = std::fs::read_to_string(&config) {
            let name = if profile == "default" {
                profile.clone()
            } else {
                format!("profile {profile}")
            };
            if let Some(region) = ini_section(&text, &name).get("region") {
                builder = builder.with_region(region);
            }
        }
    }
    if let Some(endpoint) = env("S3_ENDPOINT") {
        let allow_http = endpoint.starts_with("http://");
        builder = builder.with_endpoint(endpoint).with_allow_http(allow_http);
        // Kaniko's S3_FORCE_PATH_STYLE; other servers mostly want path-style requests.
        let path_style = env("S3_FORCE_PATH_STYLE").is_none_or(|v| v != "false");
        builder = builder.with_virtual_hosted_style_request(!path_style);
    }
    builder.build().map_err(|e| message_of(&e))
}

/// The `key = value` pairs of `[name]` in an INI text (the AWS shared files' form).
fn ini_section(text: &str, name: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.trim() == name;
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_lowercase(), v.trim().to_owned());
        }
    }
    out
}

fn kind_of(error: &object_store::Error) -> ErrorKind {
    match error {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ErrorKind::Auth,
        _ => ErrorKind::Registry,
    }
}

/// The error's message, with the query strings of any URL in it removed (an Azure SAS token
/// travels in the query).
fn message_of(error: &object_store::Error) -> String {
    strip_queries(&chain(error))
}

fn strip_queries(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    let mut in_url = false;
    for word_char in text.chars() {
        if word_char.is_whitespace() || word_char == '"' || word_char == '\'' {
            skipping = false;
            in_url = false;
        } else if out.ends_with("://") {
            in_url = true;
        }
        if in_url && word_char == '?' {
            skipping = true;
            out.push_str("?…");
        }
        if !skipping {
            out.push(word_char);
        }
    }
    out
}

fn chain(error: &object_store::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_recognised() {
        assert!(is_object_url("s3://b/k.tar.gz"));
        assert!(is_object_url("gs://b/k.tar.gz"));
        assert_eq!(
            azure_parts("https://acct.blob.core.windows.net/ctr/dir/ctx.tar.gz"),
            Some(("acct", "ctr", "dir/ctx.tar.gz"))
        );
        assert!(!is_object_url("https://example.com/ctx.tar.gz"));
    }

    #[test]
    fn query_strings_leave_messages() {
        assert_eq!(
            strip_queries("GET https://a.blob.core.windows.net/c/k?sig=SECRET&se=1 failed"),
            "GET https://a.blob.core.windows.net/c/k?… failed"
        );
        assert_eq!(strip_queries("what? no url"), "what? no url");
    }

    #[test]
    fn profiles_are_read_from_ini_sections() {
        let text = "[default]\naws_access_key_id = A\n\n[profile ci]\nregion = eu-west-1\n";
        assert_eq!(ini_section(text, "default")["aws_access_key_id"], "A");
        assert_eq!(ini_section(text, "profile ci")["region"], "eu-west-1");
        assert!(ini_section(text, "other").is_empty());
    }
}
