//! The distribution protocol's HTTP side: one session per registry, with its auth challenge,
//! cached bearer tokens and timeouts. Every response is untrusted: bodies are read up to a
//! limit, credentials go only to the registry's own site, and every request has a deadline
//! for connecting and for each read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode, Url};

use crate::auth::Credential;

/// The most of an error or token response strata reads.
pub(crate) const SMALL_BODY: usize = 64 << 10;

/// How long strata waits, unless the caller says otherwise.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// To open a connection.
    pub connect: Duration,
    /// Between two reads of a response (a stalled transfer).
    pub read: Duration,
    /// For a whole token or manifest request.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(30),
            read: Duration::from_secs(60),
            request: Duration::from_secs(120),
        }
    }
}

/// Why a request failed, and whether trying again may help.
#[derive(Debug)]
pub(crate) struct HttpError {
    pub message: String,
    pub transient: bool,
    /// The HTTP status of the response at fault, when there was one.
    pub status: Option<u16>,
    /// The registry's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

impl HttpError {
    pub(crate) fn permanent(message: impl Into<String>) -> HttpError {
        HttpError {
            message: message.into(),
            transient: false,
            status: None,
            retry_after: None,
        }
    }

    pub(crate) fn transient(message: impl Into<String>) -> HttpError {
        HttpError {
            transient: true,
            ..HttpError::permanent(message)
        }
    }
}

impl From<reqwest::Error> for HttpError {
    fn from(e: reqwest::Error) -> HttpError {
        let transient = e.is_connect() || e.is_timeout() || e.is_request() || e.is_body();
        // reqwest's message names the URL but never a header, so no credential is in it.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        if e.is_timeout() {
            message.push_str(" (timed out)");
        }
        HttpError {
            message,
            transient,
            status: e.status().map(|s| s.as_u16()),
            retry_after: None,
        }
    }
}

/// What the registry asked for in its `WWW-Authenticate` header.
#[derive(Debug, Clone)]
enum Challenge {
    Basic,
    Bearer { realm: Url, service: Option<String> },
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    /// Bearer tokens by scope, with when they stop being used.
    tokens: HashMap<String, (String, Instant)>,
}

/// Requests to one registry.
pub(crate) struct Session {
    http: reqwest::Client,
    base: Url,
    registry: String,
    plain: bool,
    credential: Credential,
    timeouts: Timeouts,
    auth: tokio::sync::Mutex<AuthState>,
}

/// TLS and transport options of a session.
pub(crate) struct SessionOptions<'a> {
    pub plain: bool,
    pub accept_invalid_certs: bool,
    pub ca_pems: &'a [Vec<u8>],
    pub timeouts: Timeouts,
}

/// The HTTP client for `options`: strata's user agent, timeouts, the extra CA certificates,
/// verification skipped when asked, the environment's proxies.
pub(crate) fn http_client(options: &SessionOptions<'_>) -> Result<reqwest::Client, HttpError> {
    let mut certificates = Vec::new();
    for pem in options.ca_pems {
        certificates.push(reqwest::Certificate::from_pem(pem).map_err(|e| {
            HttpError::permanent(format!("a CA certificate is not valid PEM: {e}"))
        })?);
    }
    reqwest::Client::builder()
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(options.timeouts.connect)
        .read_timeout(options.timeouts.read)
        .tls_certs_merge(certificates)
        .tls_danger_accept_invalid_certs(options.accept_invalid_certs)
        .build()
        .map_err(|e| HttpError::permanent(format!("HTTP client: {e}")))
}

impl Session {
    pub(crate) fn new(
        registry: &str,
        credential: Credential,
        options: SessionOptions<'_>,
    ) -> Result<Session, HttpError> {
        // Docker Hub's API lives on another host than its name.
        let host = if registry == crate::reference::DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        let scheme = if options.plain { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{host}/")).map_err(|e| {
            HttpError::permanent(format!("registry `{registry}` is not a valid host: {e}"))
        })?;
        let http = http_client(&options)?;
        Ok(Session {
            http,
            base,
            registry: registry.to_owned(),
            plain: options.plain,
            credential,
            timeouts: options.timeouts,
            auth: tokio::sync::Mutex::new(AuthState::default()),
        })
    }

    /// The HTTP client, for requests whose streamed body cannot be sent twice: give them
    /// their authorization with [`Session::authorize`] after an earlier request of the same
    /// scopes went through [`Session::send`].
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `request` with the authorization `scopes` need, as far as it is known now.
    pub(crate) async fn authorize(
        &self,
        scopes: &[String],
        request: RequestBuilder,
    ) -> Result<RequestBuilder, HttpError> {
        Ok(with_auth(request, self.authorization(scopes, false).await?))
    }

    /// `path` (relative, no leading `/`) on the registry.
    pub(crate) fn url(&self, path: &str) -> Result<Url, HttpError> {
        self.base
            .join(path)
            .map_err(|e| HttpError::permanent(format!("bad URL path {path}: {e}")))
    }

    /// A `Location` header, which may be relative, as a URL.
    pub(crate) fn location(&self, response: &Response) -> Result<Url, HttpError> {
        let value = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                HttpError::permanent(format!(
                    "{} answered {} without a Location",
                    response.url(),
                    response.status()
                ))
            })?;
        let url = response
            .url()
            .join(value)
            .map_err(|e| HttpError::permanent(format!("bad Location `{value}`: {e}")))?;
        if url.host_str() != self.base.host_str() || url.port() != self.base.port() {
            // An upload session elsewhere would get our token: refuse it.
            return Err(HttpError::permanent(format!(
                "the registry sent an upload to another host ({})",
                url.host_str().unwrap_or("?")
            )));
        }
        Ok(url)
    }

    /// Sends the request `make` builds, with the authorization `scopes` need; on a 401 the
    /// challenge is read, a token fetched, and the request made once more (so `make` may be
    /// called twice: it must give the same request each time).
    pub(crate) async fn send(
        &self,
        scopes: &[String],
        make: impl Fn(&reqwest::Client) -> Result<RequestBuilder, HttpError>,
    ) -> Result<Response, HttpError> {
        let authorization = self.authorization(scopes, false).await?;
        let response = with_auth(make(&self.http)?, authorization).send().await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = parse_challenge(response.headers()).ok_or_else(|| {
            HttpError::permanent(format!(
                "HTTP 401 from {} with no challenge strata understands",
                response.url()
            ))
        })?;
        self.auth.lock().await.challenge = Some(challenge);
        let authorization = self.authorization(scopes, true).await?;
        if authorization.is_none() {
            return Err(HttpError {
                status: Some(401),
                ..HttpError::permanent(format!(
                    "HTTP 401 from {}: {} needs credentials and none were found for it",
                    response.url(),
                    self.registry
                ))
            });
        }
        let response = with_auth(make(&self.http)?, authorization).send().await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(HttpError {
                status: Some(401),
                ..HttpError::permanent(format!(
                    "HTTP 401 (authentication failed) from {} for {}",
                    response.url(),
                    self.registry
                ))
            });
        }
        Ok(response)
    }

    /// The Authorization header for `scopes` under the known challenge, fetching a token
    /// when needed (`fresh`: never reuse a cached one).
    async fn authorization(
        &self,
        scopes: &[String],
        fresh: bool,
    ) -> Result<Option<HeaderValue>, HttpError> {
        let mut state = self.auth.lock().await;
        let Some(challenge) = state.challenge.clone() else {
            return Ok(None);
        };
        match challenge {
            Challenge::Basic => Ok(match &self.credential {
                Credential::Basic { username, password } => Some(basic(username, password)?),
                Credential::IdentityToken(token) => Some(basic("<token>", token)?),
                Credential::Anonymous => None,
            }),
            Challenge::Bearer { realm, service } => {
                let key = scopes.join(" ");
                if !fresh
                    && let Some((token, until)) = state.tokens.get(&key)
                    && Instant::now() < *until
                {
                    return Ok(Some(bearer(token)?));
                }
                let (token, until) = self.fetch_token(&realm, service.as_deref(), scopes).await?;
                let value = bearer(&token)?;
                state.tokens.insert(key, (token, until));
                Ok(Some(value))
            }
        }
    }

    /// Asks the token service at `realm` for a token for `scopes`, sending the registry's
    /// credentials only when `realm` belongs to the registry's own site.
    async fn fetch_token(
        &self,
        realm: &Url,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<(String, Instant), HttpError> {
        let mut url = realm.clone();
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            for scope in scopes {
                query.append_pair("scope", scope);
            }
        }
        let mut request = self.http.get(url).timeout(self.timeouts.request);
        let credential = match &self.credential {
            Credential::Basic { username, password } => Some((username.as_str(), password)),
            Credential::IdentityToken(token) => Some(("<token>", token)),
            Credential::Anonymous => None,
        };
        if let Some((username, password)) = credential {
            self.check_realm(realm)?;
            request = request.header(header::AUTHORIZATION, basic(username, password)?);
        }
        let response = request.send().await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(HttpError::permanent(format!(
                "HTTP {} (authentication failed) from the token service of {} at {}",
                status.as_u16(),
                self.registry,
                realm.host_str().unwrap_or("?")
            )));
        }
        if !status.is_success() {
            return Err(status_error(response).await);
        }
        let body = read_limited(response, SMALL_BODY).await?;
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            HttpError::permanent(format!(
                "the token service of {} answered with something that is not JSON",
                self.registry
            ))
        })?;
        let token = value["token"]
            .as_str()
            .or_else(|| value["access_token"].as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                HttpError::permanent(format!(
                    "the token service of {} gave no token",
                    self.registry
                ))
            })?;
        // Used until 10 s before it expires (default lifetime 60 s, as the spec says).
        let lifetime = value["expires_in"].as_u64().unwrap_or(60).clamp(10, 3600);
        Ok((
            token.to_owned(),
            Instant::now() + Duration::from_secs(lifetime - 5),
        ))
    }

    /// Refuses to send credentials to a token service off the registry's site, or over
    /// plain HTTP when the registry itself speaks HTTPS.
    fn check_realm(&self, realm: &Url) -> Result<(), HttpError> {
        let realm_host = realm.host_str().unwrap_or_default().to_ascii_lowercase();
        let registry_host = self
            .base
            .host_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if realm.scheme() != "https" && !self.plain {
            return Err(HttpError::permanent(format!(
                "{} asks for its credentials over plain HTTP ({}); strata refuses to send them",
                self.registry,
                realm.scheme()
            )));
        }
        if own_site(&registry_host, &realm_host) {
            Ok(())
        } else {
            Err(HttpError::permanent(format!(
                "{} asks for its credentials to be sent to {realm_host}, which is not its own \
                 site; strata refuses to send them",
                self.registry
            )))
        }
    }
}

/// Whether a token service at `realm` belongs to the registry at `registry`: the same host
/// (any port), the registry's parent domain, or a host under it (`auth.docker.io` for
/// `registry-1.docker.io`, `gitlab.com` for `registry.gitlab.com`). The parent must itself
/// have two labels, so `ghcr.io` trusts only `ghcr.io`; addresses, loopback ones included,
/// only match themselves.
fn own_site(registry: &str, realm: &str) -> bool {
    if registry == realm {
        return true;
    }
    if registry.parse::<std::net::IpAddr>().is_ok() || registry.starts_with('[') {
        return false;
    }
    match registry.split_once('.') {
        Some((_, parent)) if parent.contains('.') => {
            realm == parent
                || realm
                    .strip_suffix(parent)
                    .is_some_and(|rest| rest.ends_with('.'))
        }
        _ => false,
    }
}

fn with_auth(request: RequestBuilder, authorization: Option<HeaderValue>) -> RequestBuilder {
    match authorization {
        Some(value) => request.header(header::AUTHORIZATION, value),
        None => request,
    }
}

fn basic(username: &str, password: &str) -> Result<HeaderValue, HttpError> {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|_| HttpError::permanent("credentials that cannot go in a header"))?;
    value.set_sensitive(true);
    Ok(value)
}

fn bearer(token: &str) -> Result<HeaderValue, HttpError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        HttpError::permanent("the token service gave a token that cannot go in a header")
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Parses `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
fn parse_challenge(headers: &HeaderMap) -> Option<Challenge> {
    for value in headers.get_all(header::WWW_AUTHENTICATE) {
        let text = value.to_str().ok()?.trim();
        let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            continue;
        }
        let params = parse_params(rest);
        let realm = params.get("realm").and_then(|r| Url::parse(r).ok())?;
        if !matches!(realm.scheme(), "http" | "https") {
            return None;
        }
        return Some(Challenge::Bearer {
            realm,
            service: params.get("service").cloned(),
        });
    }
    None
}

/// `k="v", k2=v2` pairs (quoted values may hold commas and escaped quotes).
fn parse_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    params
}

/// The body, refused when it is (or announces itself as) longer than `limit` bytes.
pub(crate) async fn read_limited(response: Response, limit: usize) -> Result<Vec<u8>, HttpError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(HttpError::permanent(format!(
            "{} announced {} bytes, more than the {limit} strata reads",
            response.url(),
            response.content_length().unwrap_or_default()
        )));
    }
    let url = response.url().clone();
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > limit {
            return Err(HttpError::permanent(format!(
                "{url} sent more than the {limit} bytes strata reads"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error for a response with an unexpected status: the status, the URL, and the start
/// of the body (never more than [`SMALL_BODY`] is read). 5xx, 408 and 429 may pass.
pub(crate) async fn status_error(response: Response) -> HttpError {
    let status = response.status();
    let url = response.url().clone();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(60)));
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= SMALL_BODY {
            break;
        }
    }
    let text = String::from_utf8_lossy(&body);
    let message = match excerpt(&text) {
        e if e.is_empty() => format!("HTTP {} from {url}", status.as_u16()),
        e => format!("HTTP {} from {url}: {e}", status.as_u16()),
    };
    HttpError {
        message,
        transient: status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT,
        status: Some(status.as_u16()),
        retry_after,
    }
}

/// The first 300 characters of `text`, trimmed, on one line.
pub(crate) fn excerpt(text: &str) -> String {
    let text: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match text.char_indices().nth(300) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/a:pull""#,
            ),
        );
        let Some(Challenge::Bearer { realm, service }) = parse_challenge(&headers) else {
            panic!("not bearer");
        };
        assert_eq!(realm.as_str(), "https://auth.docker.io/token");
        assert_eq!(service.as_deref(), Some("registry.docker.io"));
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="Registry Realm""#),
        );
        assert!(matches!(parse_challenge(&headers), Some(Challenge::Basic)));
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="file:///etc/passwd""#),
        );
        assert!(parse_challenge(&headers).is_none());
    }

    #[test]
    fn sites() {
        assert!(own_site("registry-1.docker.io", "auth.docker.io"));
        assert!(own_site("registry.gitlab.com", "gitlab.com"));
        assert!(own_site("ghcr.io", "ghcr.io"));
        assert!(!own_site("ghcr.io", "evil.io"));
        assert!(!own_site("registry.example.com", "example.com.evil.net"));
        assert!(!own_site("registry.example.com", "notexample.com"));
        assert!(!own_site("127.0.0.1", "127.0.0.2"));
        assert!(!own_site("localhost", "127.0.0.1"));
    }

    #[test]
    fn excerpts_are_short_and_on_one_line() {
        assert_eq!(excerpt("  a\nb  "), "a b");
        assert_eq!(excerpt(&"é".repeat(400)).chars().count(), 301);
    }
}
