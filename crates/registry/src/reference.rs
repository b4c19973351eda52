//! Image references, parsed and normalised as Docker does.
//!
//! `alpine` is `docker.io/library/alpine:latest`; `host:5000/team/app:1.2@sha256:…` keeps
//! everything it says. A first path component is a registry host when it contains `.` or `:`
//! or is `localhost`; otherwise the image is on Docker Hub, and a one-component name there
//! lives under `library/`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use strata_oci::validate_digest;

/// The registry Docker Hub images live on.
pub const DOCKER_HUB: &str = "docker.io";

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

fn fail<T>(input: &str, message: impl Into<String>) -> Result<T> {
    Err(Error::InvalidReference {
        reference: input.to_owned(),
        message: message.into(),
    })
}

fn valid_domain_component(c: &str) -> bool {
    !c.is_empty()
        && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        && !c.starts_with('-')
        && !c.ends_with('-')
}

fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if let Some(port) = port
        && (port.is_empty()
            || !port.chars().all(|c| c.is_ascii_digit())
            || port.parse::<u16>().is_err())
    {
        return false;
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !name.is_empty() && name.split('.').all(valid_domain_component)
}

/// `path-component := [a-z0-9]+ (separator [a-z0-9]+)*`, separator `.`, `_`, `__` or `-`+.
fn valid_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    if bytes.is_empty()
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator run.
        let start = i;
        while i < bytes.len() && !(bytes[i].is_ascii_lowercase() || bytes[i].is_ascii_digit()) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.chars().all(|ch| ch == '-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl Reference {
    /// Parses and normalises a reference.
    ///
    /// ```
    /// use strata_registry::Reference;
    ///
    /// let alpine: Reference = "alpine".parse()?;
    /// assert_eq!(alpine.to_string(), "docker.io/library/alpine:latest");
    /// let local: Reference = "localhost:5000/team/app:1.0".parse()?;
    /// assert_eq!((local.registry(), local.repository(), local.tag()), ("localhost:5000", "team/app", Some("1.0")));
    /// assert!("Alpine".parse::<Reference>().is_err());
    /// # Ok::<(), strata_registry::Error>(())
    /// ```
    pub fn parse(input: &str) -> Result<Reference> {
        if input.is_empty() {
            return fail(input, "empty reference");
        }
        if input.len() > 4096 || input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return fail(
                input,
                "contains whitespace or control characters, or is absurdly long",
            );
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest).map_err(|m| Error::InvalidReference {
                    reference: input.to_owned(),
                    message: m,
                })?;
                (rest, Some(digest.to_owned()))
            }
            None => (input, None),
        };
        // A tag is after the last `:` that comes after the last `/`.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return fail(
                input,
                format!("tag `{tag}` is not valid (letters, digits, `_`, `.`, `-`; at most 128)"),
            );
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains(['.', ':']) || first == "localhost" || first.starts_with('[') =>
            {
                if !valid_host(first) {
                    return fail(
                        input,
                        format!("registry `{first}` is not a valid host[:port]"),
                    );
                }
                (first.to_owned(), remainder.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return fail(input, "repository name must be lowercase");
        }
        if repository.is_empty() || !repository.split('/').all(valid_path_component) {
            return fail(
                input,
                format!(
                    "repository `{repository}` is not valid (lowercase letters, digits, and `.`, `_`, `__`, `-` between them)"
                ),
            );
        }
        if registry.len() + 1 + repository.len() > 255 {
            return fail(input, "repository name is longer than 255 characters");
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (`docker.io`, `ghcr.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository (`library/alpine`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, when there is one (`latest` when neither tag nor digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, when pinned.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn target(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Reference> {
        Reference::parse(&format!("{}/{}:{tag}", self.registry, self.repository))
    }

    /// The same repository pinned to `digest` (the tag is kept for display).
    pub fn with_digest(&self, digest: &str) -> Result<Reference> {
        validate_digest(digest).map_err(|m| Error::InvalidReference {
            reference: digest.to_owned(),
            message: m,
        })?;
        Ok(Reference {
            digest: Some(digest.to_owned()),
            ..self.clone()
        })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Whether the registry is on this machine (`localhost`, `127.0.0.0/8`, `[::1]`): spoken to
    /// over plain HTTP by default, as Docker does.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

/// Whether `host[:port]` names this machine.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(inner) = host.strip_prefix('[') {
        inner.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Reference> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}
