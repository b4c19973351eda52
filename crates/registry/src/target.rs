//! [`Target`]: where an image goes — a registry, an OCI layout directory or a docker-archive
//! file — named the way skopeo names them, and put there by one call,
//! [`RegistryClient::put`].

use std::fmt;
use std::path::PathBuf;

use crate::client::RegistryClient;
use crate::error::{Error, Result};
use crate::reference::Reference;
use strata_oci::Layout;

/// A place for an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A registry repository and tag (`docker://REF`, or a plain reference).
    Registry(Reference),
    /// An OCI image layout directory, and the name the image gets in its `index.json`
    /// (`oci:DIR[:NAME]`, name `latest` when none is given).
    OciLayout {
        /// The directory (created when missing).
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name`.
        name: String,
    },
    /// A docker-archive tarball (`docker load` reads it) and the name it carries
    /// (`docker-archive:PATH[:REF]`).
    DockerArchive {
        /// The file (written through a temporary file).
        path: PathBuf,
        /// The names in its `manifest.json` and `repositories`.
        tags: Vec<Reference>,
    },
}

impl Target {
    /// Parses skopeo's spellings: `docker://REF`, `oci:DIR[:NAME]`,
    /// `docker-archive:PATH[:REF]`; anything else is a registry reference.
    pub fn parse(text: &str) -> Result<Target> {
        if let Some(reference) = text.strip_prefix("docker://") {
            return Ok(Target::Registry(Reference::parse(reference)?));
        }
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, name) = match rest.rsplit_once(':') {
                Some((dir, name)) if !name.contains('/') && !dir.is_empty() => (dir, name),
                _ => (rest, "latest"),
            };
            if dir.is_empty() {
                return Err(Error::InvalidReference {
                    reference: text.to_owned(),
                    message: "an oci: target needs a directory".to_owned(),
                });
            }
            return Ok(Target::OciLayout {
                dir: dir.into(),
                name: name.to_owned(),
            });
        }
        if let Some(rest) = text.strip_prefix("docker-archive:") {
            // The path ends at the first `:` that starts a reference.
            let (path, tags) = match rest.split_once(':') {
                Some((path, reference)) if !path.is_empty() => {
                    (path, vec![Reference::parse(reference)?])
                }
                _ => (rest, Vec::new()),
            };
            if path.is_empty() {
                return Err(Error::InvalidReference {
                    reference: text.to_owned(),
                    message: "a docker-archive: target needs a file".to_owned(),
                });
            }
            return Ok(Target::DockerArchive {
                path: path.into(),
                tags,
            });
        }
        Ok(Target::Registry(Reference::parse(text)?))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Registry(reference) => write!(f, "docker://{reference}"),
            Target::OciLayout { dir, name } => write!(f, "oci:{}:{name}", dir.display()),
            Target::DockerArchive { path, tags } => {
                write!(f, "docker-archive:{}", path.display())?;
                if let Some(tag) = tags.first() {
                    write!(f, ":{tag}")?;
                }
                Ok(())
            }
        }
    }
}

impl RegistryClient {
    /// Puts the image whose manifest is `manifest_digest` in `layout` at `target` and returns
    /// its manifest digest: a push (mounting blobs from `mount_from` where the registry
    /// can), a copy into an OCI layout (blobs hard-linked where possible), or a
    /// docker-archive file. Local outputs are written on a blocking thread, never on the
    /// async runtime's workers.
    pub async fn put(
        &self,
        layout: &Layout,
        manifest_digest: &str,
        target: &Target,
        mount_from: &[&Reference],
    ) -> Result<String> {
        if let Target::Registry(reference) = target {
            return Ok(self
                .push_mounting(layout, manifest_digest, reference, mount_from)
                .await?
                .manifest_digest
                .to_string());
        }
        let (layout, digest, target) = (layout.clone(), manifest_digest.to_owned(), target.clone());
        tokio::task::spawn_blocking(move || write_local(&layout, &digest, &target))
            .await
            .map_err(|e| Error::registry(manifest_digest, format!("writing the image: {e}")))?
    }
}

/// Writes an OCI layout or docker-archive output (blocking file work).
fn write_local(layout: &Layout, manifest_digest: &str, target: &Target) -> Result<String> {
    match target {
        Target::Registry(reference) => Err(Error::registry(
            reference.to_string(),
            "a registry is not a local output",
        )),
        Target::OciLayout { dir, name } => {
            layout.copy_image(manifest_digest, &Layout::open(dir)?, name)?;
            Ok(manifest_digest.to_owned())
        }
        Target::DockerArchive { path, tags } => {
            crate::archive::write_docker_archive(layout, manifest_digest, tags, path)?;
            Ok(manifest_digest.to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_named_as_skopeo_names_them() {
        assert_eq!(
            Target::parse("oci:out/app").unwrap(),
            Target::OciLayout {
                dir: "out/app".into(),
                name: "latest".into()
            }
        );
        assert_eq!(
            Target::parse("oci:/tmp/x:v1").unwrap(),
            Target::OciLayout {
                dir: "/tmp/x".into(),
                name: "v1".into()
            }
        );
        let archive = Target::parse("docker-archive:/tmp/a.tar:example.com/app:1").unwrap();
        assert_eq!(
            archive.to_string(),
            "docker-archive:/tmp/a.tar:example.com/app:1"
        );
        assert!(matches!(
            Target::parse("docker://localhost:5000/a:1").unwrap(),
            Target::Registry(r) if r.registry() == "localhost:5000"
        ));
        assert!(matches!(
            Target::parse("alpine").unwrap(),
            Target::Registry(_)
        ));
        assert!(Target::parse("oci:").is_err());
        assert!(Target::parse("docker-archive:").is_err());
    }
}
