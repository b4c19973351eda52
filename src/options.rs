//! Typed values for [`Build`](crate::Build)'s options that users write as text: each parses
//! (`FromStr`) with an [`ErrorKind::Invalid`](crate::ErrorKind::Invalid) error that names what
//! was given, so a bad value is refused where it is set, not when a build meets it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use strata_registry::Reference;

use crate::error::Error;

/// A step kind that makes a layer, for [`Build::cache_layers_of`](crate::Build::cache_layers_of).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerStep {
    /// `RUN`.
    Run,
    /// `COPY`.
    Copy,
    /// `ADD`.
    Add,
}

impl LayerStep {
    /// The instruction's keyword, upper case.
    pub fn keyword(self) -> &'static str {
        match self {
            LayerStep::Run => "RUN",
            LayerStep::Copy => "COPY",
            LayerStep::Add => "ADD",
        }
    }
}

impl FromStr for LayerStep {
    type Err = Error;

    /// `RUN`, `COPY` or `ADD`, in any case.
    fn from_str(text: &str) -> Result<LayerStep, Error> {
        match text.to_ascii_uppercase().as_str() {
            "RUN" => Ok(LayerStep::Run),
            "COPY" => Ok(LayerStep::Copy),
            "ADD" => Ok(LayerStep::Add),
            _ => Err(Error::Invalid(format!(
                "`{text}`: only RUN, COPY and ADD steps make layers"
            ))),
        }
    }
}

impl fmt::Display for LayerStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// What a named build context stands for ([`Build::build_context`](crate::Build::build_context),
/// BuildKit's `--build-context NAME=SOURCE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `oci-layout://PATH[:TAG]`: an image in an OCI layout directory (the only one there
    /// when no tag is given).
    OciLayout {
        /// The layout's directory.
        path: PathBuf,
        /// The image's name in the layout's `index.json`.
        tag: Option<String>,
    },
    /// `docker-image://REFERENCE`: an image in a registry.
    Image(Reference),
}

impl ImageSource {
    /// The source a Dockerfile's `FROM` or `--from` names: `oci-layout://PATH[:TAG]`, or an
    /// image reference (with or without `docker-image://`).
    pub(crate) fn of_name(name: &str) -> Result<ImageSource, Error> {
        if name.starts_with("oci-layout://") || name.starts_with("docker-image://") {
            return name.parse();
        }
        Ok(ImageSource::Image(Reference::parse(name)?))
    }

    /// How events and messages name the source: the layout as `oci-layout://PATH[:TAG]`, an
    /// image by its reference alone.
    pub(crate) fn display_name(&self) -> String {
        match self {
            ImageSource::Image(reference) => reference.to_string(),
            layout => layout.to_string(),
        }
    }
}

impl FromStr for ImageSource {
    type Err = Error;

    /// `oci-layout://PATH[:TAG]` or `docker-image://REFERENCE`.
    fn from_str(text: &str) -> Result<ImageSource, Error> {
        if let Some(spec) = text.strip_prefix("oci-layout://") {
            let (path, tag) = match spec.rsplit_once(':') {
                Some((path, tag)) if !tag.contains('/') => (path, Some(tag.to_owned())),
                _ => (spec, None),
            };
            if path.is_empty() || tag.as_deref() == Some("") {
                return Err(Error::Invalid(format!(
                    "`{text}`: expected oci-layout://PATH[:TAG]"
                )));
            }
            return Ok(ImageSource::OciLayout {
                path: PathBuf::from(path),
                tag,
            });
        }
        if let Some(reference) = text.strip_prefix("docker-image://") {
            return Ok(ImageSource::Image(Reference::parse(reference)?));
        }
        Err(Error::Invalid(format!(
            "`{text}`: strata supports oci-layout://PATH[:TAG] and docker-image://REFERENCE \
             build contexts (directories are not supported yet)"
        )))
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::OciLayout { path, tag } => {
                write!(f, "oci-layout://{}", path.display())?;
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                Ok(())
            }
            ImageSource::Image(reference) => write!(f, "docker-image://{reference}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_steps_parse_in_any_case_and_refuse_the_rest() {
        assert_eq!("run".parse::<LayerStep>().unwrap(), LayerStep::Run);
        assert_eq!("Copy".parse::<LayerStep>().unwrap(), LayerStep::Copy);
        assert_eq!("ADD".parse::<LayerStep>().unwrap(), LayerStep::Add);
        for bad in ["FROM", "WORKDIR", ""] {
            let error = bad.parse::<LayerStep>().unwrap_err();
            assert_eq!(error.kind(), crate::ErrorKind::Invalid, "{bad}");
        }
    }

    #[test]
    fn image_sources_parse_and_print_back() {
        for text in [
            "oci-layout:///tmp/layout",
            "oci-layout:///tmp/layout:v1",
            "oci-layout://rel/dir:tag",
            "docker-image://docker.io/library/alpine:3",
        ] {
            assert_eq!(text.parse::<ImageSource>().unwrap().to_string(), text);
        }
        assert_eq!(
            "oci-layout:///a/b:t".parse::<ImageSource>().unwrap(),
            ImageSource::OciLayout {
                path: "/a/b".into(),
                tag: Some("t".into())
            }
        );
        assert_eq!(
            "docker-image://alpine:3"
                .parse::<ImageSource>()
                .unwrap()
                .display_name(),
            "docker.io/library/alpine:3"
        );
        // What FROM and --from name: a layout, or a reference with or without its scheme.
        for (name, expected) in [
            ("alpine:3", "docker.io/library/alpine:3"),
            ("docker-image://alpine:3", "docker.io/library/alpine:3"),
            ("oci-layout:///l:v1", "oci-layout:///l:v1"),
        ] {
            assert_eq!(ImageSource::of_name(name).unwrap().display_name(), expected);
        }
        assert!(ImageSource::of_name("Not A Reference").is_err());
        for bad in [
            "/some/dir",
            "ftp://example.com/base",
            "oci-layout://",
            "oci-layout:///x:",
            "docker-image://Not A Reference",
        ] {
            let error = bad.parse::<ImageSource>().unwrap_err();
            assert_eq!(error.kind(), crate::ErrorKind::Invalid, "{bad}: {error}");
        }
    }
}
