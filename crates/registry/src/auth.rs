//! Registry credentials from where users already keep them.
//!
//! In order: credentials the caller gives; Docker's config (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`: a `credHelpers` entry for the registry, then `credsStore`, then
//! `auths` with `auth`, `username`/`password` or `identitytoken`); then the containers auth
//! files (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.config/containers/auth.json`). Nothing found means anonymous. Secrets never appear in
//! `Debug` output or in errors.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;

use crate::error::{Error, Result};

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credential {
    /// No credentials.
    #[default]
    Anonymous,
    /// A user name and password (or token used as a password).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// An identity token (OAuth refresh token) from `docker login`.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(
                f,
                "Basic {{ username: {username:?}, password: <redacted> }}"
            ),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// Where credentials are looked up; [`Credentials::from_env`] gives the usual places.
#[derive(Clone, Default)]
pub struct Credentials {
    explicit: BTreeMap<String, Credential>,
    docker_config: Option<PathBuf>,
    auth_files: Vec<PathBuf>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "explicit_registries",
                &self.explicit.keys().collect::<Vec<_>>(),
            )
            .field("docker_config", &self.docker_config)
            .field("auth_files", &self.auth_files)
            .finish()
    }
}

/// The key Docker uses for Docker Hub in `auths` and with credential helpers.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// The registry a config key names: scheme and path dropped, Docker Hub's aliases unified.
fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

impl Credentials {
    /// No sources at all: everything anonymous unless added with [`Credentials::insert`].
    pub fn none() -> Credentials {
        Credentials::default()
    }

    /// The usual places, from the environment (`DOCKER_CONFIG`, `HOME`, `REGISTRY_AUTH_FILE`,
    /// `XDG_RUNTIME_DIR`).
    pub fn from_env() -> Credentials {
        let env = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let home = env("HOME");
        let docker_config = env("DOCKER_CONFIG")
            .map(|d| d.join("config.json"))
            .or_else(|| home.as_ref().map(|h| h.join(".docker/config.json")));
        let mut auth_files = Vec::new();
        auth_files.extend(env("REGISTRY_AUTH_FILE"));
        auth_files.extend(env("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
        auth_files.extend(home.map(|h| h.join(".config/containers/auth.json")));
        Credentials {
            explicit: BTreeMap::new(),
            docker_config,
            auth_files,
        }
    }

    /// Uses this Docker config file (instead of the environment's).
    pub fn docker_config(mut self, path: impl Into<PathBuf>) -> Credentials {
        self.docker_config = Some(path.into());
        self
    }

    /// Adds a containers-style auth file, looked at after the Docker config.
    pub fn auth_file(mut self, path: impl Into<PathBuf>) -> Credentials {
        self.auth_files.push(path.into());
        self
    }

    /// Credentials for `registry` that win over every file.
    pub fn insert(mut self, registry: &str, credential: Credential) -> Credentials {
        self.explicit.insert(normalize_key(registry), credential);
        self
    }

    /// The credential for `registry` (`host[:port]`, `docker.io` for Docker Hub).
    pub fn get(&self, registry: &str) -> Result<Credential> {
        let registry = normalize_key(registry);
        if let Some(credential) = self.explicit.get(&registry) {
            return Ok(credential.clone());
        }
        if let Some(path) = &self.docker_config
            && let Some(config) = DockerConfig::read(path)?
        {
            if let Some(helper) = config.helper(&registry)
                && let Some(credential) = run_helper(helper, &registry, HELPER_TIMEOUT)?
            {
                return Ok(credential);
            }
            if let Some(credential) = config.credential(&registry)? {
                return Ok(credential);
            }
        }
        for path in &self.auth_files {
            if let Some(config) = DockerConfig::read(path)?
                && let Some(credential) = config.credential(&registry)?
            {
                return Ok(credential);
            }
        }
        Ok(Credential::Anonymous)
    }
}

/// A Docker `config.json` or a containers `auth.json`, parsed: untrusted input, read once.
pub struct DockerConfig {
    path: PathBuf,
    value: serde_json::Value,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DockerConfig {
    /// Reads the file at `path`; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<DockerConfig>> {
        match std::fs::read(path) {
            Ok(bytes) => DockerConfig::parse(&bytes, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                path: path.to_owned(),
                error: e,
            }),
        }
    }

    /// Parses `bytes`, read from `path` (named in errors, which never quote the contents).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<DockerConfig> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
                path: path.to_owned(),
                // serde's message quotes no input, so no secret can leak through it.
                message: format!(
                    "not valid JSON ({} at line {}, column {})",
                    e.classify_name(),
                    e.line(),
                    e.column()
                ),
            })?;
        if !value.is_object() {
            return Err(Error::Malformed {
                path: path.to_owned(),
                message: "not a JSON object".to_owned(),
            });
        }
        Ok(DockerConfig {
            path: path.to_owned(),
            value,
        })
    }

    /// The credential helper for `registry` (`host[:port]`, `docker.io` for Docker Hub): its
    /// `credHelpers` entry, else `credsStore`.
    pub fn helper(&self, registry: &str) -> Option<&str> {
        let registry = normalize_key(registry);
        self.value["credHelpers"]
            .as_object()
            .and_then(|helpers| helpers.iter().find(|(k, _)| normalize_key(k) == registry))
            .and_then(|(_, v)| v.as_str())
            .or_else(|| self.value["credsStore"].as_str())
            .filter(|h| !h.is_empty())
    }

    /// The credential the `auths` section holds for `registry`, if any.
    pub fn credential(&self, registry: &str) -> Result<Option<Credential>> {
        from_auths(&self.value, &normalize_key(registry), &self.path)
    }
}

trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "unexpected end",
        }
    }
}

/// The `auths` entry for `registry`, if any.
fn from_auths(
    config: &serde_json::Value,
    registry: &str,
    path: &Path,
) -> Result<Option<Credential>> {
    let Some(auths) = config["auths"].as_object() else {
        return Ok(None);
    };
    let Some((_, entry)) = auths.iter().find(|(k, _)| normalize_key(k) == registry) else {
        return Ok(None);
    };
    if let Some(token) = entry["identitytoken"].as_str().filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::IdentityToken(token.to_owned())));
    }
    if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
        let malformed = || Error::Malformed {
            path: path.to_owned(),
            message: format!("the `auth` of {registry} is not base64 of `user:password`"),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| malformed())?;
        let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
        let (username, password) = decoded.split_once(':').ok_or_else(malformed)?;
        return Ok(Some(Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    match (entry["username"].as_str(), entry["password"].as_str()) {
        (Some(username), Some(password)) if !username.is_empty() => Ok(Some(Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        })),
        _ => Ok(None),
    }
}

/// How long a credential helper may take to answer before it is killed and the lookup fails:
/// helpers talk to keychains and cloud metadata services, which can hang.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The most a credential helper's answer may hold.
const HELPER_OUTPUT_LIMIT: u64 = 64 * 1024;

/// A credential helper's failure, naming the helper and the registry (never the answer).
fn helper_error(helper: &str, registry: &str, message: String) -> Error {
    Error::CredentialHelper {
        helper: helper.to_owned(),
        registry: registry.to_owned(),
        message,
    }
}

/// Asks `docker-credential-<helper> get` for `registry`'s credentials, killing the helper
/// when it has not answered within `timeout`.
fn run_helper(
    helper: &str,
    registry: &str,
    timeout: std::time::Duration,
) -> Result<Option<Credential>> {
    let fail = |message: String| helper_error(helper, registry, message);
    if !helper
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(fail(
            "the helper name is not a plain program name".to_owned(),
        ));
    }
    let server = if registry == "docker.io" {
        DOCKER_HUB_KEY
    } else {
        registry
    };
    run_helper_program(
        std::ffi::OsStr::new(&format!("docker-credential-{helper}")),
        helper,
        registry,
        server,
        timeout,
    )
}

/// Runs a credential helper program (`get`, the server on standard input) with a deadline.
fn run_helper_program(
    program: &std::ffi::OsStr,
    helper: &str,
    registry: &str,
    server: &str,
    timeout: std::time::Duration,
) -> Result<Option<Credential>> {
    use std::io::Read;
    let fail = |message: String| helper_error(helper, registry, message);
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("could not run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take()
        && let Err(e) = stdin.write_all(server.as_bytes())
    {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail(format!("writing its input: {e}")));
    }
    // Its answer is read on a thread of its own, so that a helper that never answers (or
    // never closes its output) is killed at the deadline instead of hanging the build.
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut answer = Vec::new();
        if let Some(stdout) = stdout {
            let _ = stdout.take(HELPER_OUTPUT_LIMIT).read_to_end(&mut answer);
        }
        answer
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "no answer within {} s; it was stopped",
                    timeout.as_secs_f64()
                )));
            }
            Err(e) => return Err(fail(format!("waiting for it: {e}"))),
        }
    };
    let answer = reader
        .join()
        .map_err(|_| fail("reading its answer failed".to_owned()))?;
    if !status.success() {
        let said = String::from_utf8_lossy(&answer);
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!("exited with {status}")));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&answer).map_err(|_| fail("its answer is not JSON".to_owned()))?;
    let username = value["Username"].as_str().unwrap_or_default();
    let secret = value["Secret"].as_str().unwrap_or_default();
    if secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if username == "<token>" {
        Credential::IdentityToken(secret.to_owned())
    } else {
        Credential::Basic {
            username: username.to_owned(),
            password: secret.to_owned(),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A helper that never answers is stopped at the deadline: the lookup fails with a clear
    /// error instead of hanging the build.
    #[test]
    fn a_helper_that_hangs_is_stopped_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("docker-credential-hang");
        std::fs::write(&program, "#!/bin/sh\nexec sleep 60\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = std::time::Instant::now();
        let error = run_helper_program(
            program.as_os_str(),
            "hang",
            "slow.example",
            "slow.example",
            std::time::Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "stopped at the deadline, not after the helper's 60 s"
        );
        assert!(
            matches!(&error, Error::CredentialHelper { message, .. } if message.contains("no answer")),
            "{error}"
        );
    }
}
