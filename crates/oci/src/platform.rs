//! The platform an image is for: `os/architecture[/variant]`, spelled the way OCI indexes and
//! BuildKit spell them (GOOS and GOARCH names), whatever alias the user wrote.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::Descriptor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An OS/architecture/variant triple, normalised: `linux/aarch64` and `linux/arm64/v8` are
/// both `linux/arm64`, `linux/x86_64` is `linux/amd64`, `linux/arm` is `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`, `windows`, … (GOOS).
    pub os: String,
    /// `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`, … (GOARCH).
    pub architecture: String,
    /// `v6`, `v7` for `arm`; `v2`, `v3` for `amd64` when asked for; otherwise none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the machine this runs on (always `linux`: strata builds Linux images).
    pub fn host() -> Platform {
        Platform::new("linux", std::env::consts::ARCH, None)
    }

    /// The platform `os/architecture/variant`, normalised.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let os = match os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_owned(),
            other => other.to_owned(),
        };
        let variant = variant
            .filter(|v| !v.is_empty())
            .map(str::to_ascii_lowercase);
        let (architecture, variant) = match architecture.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" | "amd64" => ("amd64", variant.filter(|v| v != "v1")),
            "aarch64" | "arm64" => ("arm64", variant.filter(|v| v != "v8" && v != "8")),
            "armhf" => ("arm", Some("v7".to_owned())),
            "armel" => ("arm", Some("v6".to_owned())),
            "arm" => (
                "arm",
                Some(match variant.as_deref() {
                    None => "v7".to_owned(),
                    Some(v @ ("5" | "6" | "7" | "8")) => format!("v{v}"),
                    Some(v) => v.to_owned(),
                }),
            ),
            "i386" | "x86" | "386" => ("386", variant),
            "powerpc64le" | "ppc64le" => ("ppc64le", variant),
            other => {
                return Platform {
                    os,
                    architecture: other.to_owned(),
                    variant,
                };
            }
        };
        Platform {
            os,
            architecture: architecture.to_owned(),
            variant,
        }
    }

    /// The platform of an index entry, normalised, when it names one.
    pub fn of_entry(entry: &Descriptor) -> Option<Platform> {
        entry.platform().as_ref().map(Platform::from)
    }

    /// Whether an image for `other` runs here: same OS and architecture, and the same
    /// variant when this platform names one.
    /// Both are compared normalised, so a platform built by hand (`arm64` with variant `v8`)
    /// means what its parsed form means.
    pub fn accepts(&self, other: &Platform) -> bool {
        let (wanted, offered) = (self.normalised(), other.normalised());
        wanted.os == offered.os
            && wanted.architecture == offered.architecture
            && wanted
                .variant
                .as_ref()
                .is_none_or(|v| offered.variant.as_ref() == Some(v))
    }

    /// The same platform with its aliases resolved (`aarch64` is `arm64`, and so on).
    pub fn normalised(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }

    /// The entry of an index's `manifests` for this platform, or an error naming
    /// `reference` and listing the platforms the index has.
    pub fn select<'a>(&self, entries: &'a [Descriptor], reference: &str) -> Result<&'a Descriptor> {
        entries
            .iter()
            .find(|entry| Platform::of_entry(entry).is_some_and(|p| self.accepts(&p)))
            .ok_or_else(|| Error::NoPlatform {
                reference: reference.to_owned(),
                platform: self.to_string(),
                available: entries
                    .iter()
                    .map(|entry| {
                        Platform::of_entry(entry).map_or_else(|| "?".to_owned(), |p| p.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// oci-spec's platform (an index entry's, an image config's), normalised.
impl From<&oci_spec::image::Platform> for Platform {
    fn from(platform: &oci_spec::image::Platform) -> Platform {
        Platform::new(
            &platform.os().to_string(),
            &platform.architecture().to_string(),
            platform.variant().as_deref(),
        )
    }
}

/// The oci-spec form, for an index entry or an image config.
impl From<&Platform> for oci_spec::image::Platform {
    fn from(platform: &Platform) -> oci_spec::image::Platform {
        let mut spec = oci_spec::image::Platform::default();
        spec.set_os(platform.os.as_str().into());
        spec.set_architecture(platform.architecture.as_str().into());
        spec.set_variant(platform.variant.clone());
        spec
    }
}

impl FromStr for Platform {
    type Err = Error;

    /// Parses `os/architecture[/variant]`, normalising aliases.
    fn from_str(text: &str) -> Result<Platform> {
        let fail = |message: &str| Error::InvalidPlatform {
            text: text.to_owned(),
            message: message.to_owned(),
        };
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        match parts.as_slice() {
            [os, architecture] | [os, architecture, _]
                if valid(os) && valid(architecture) && parts.get(2).is_none_or(|v| valid(v)) =>
            {
                Ok(Platform::new(os, architecture, parts.get(2).copied()))
            }
            [_] | [_, _] | [_, _, _] => Err(fail(
                "each part must be letters, digits, `_`, `-` or `.` (as in linux/arm64/v8)",
            )),
            _ => Err(fail(
                "expected os/architecture[/variant], as in linux/arm64",
            )),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entries(values: Vec<serde_json::Value>) -> Vec<Descriptor> {
        values
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect()
    }

    fn p(text: &str) -> Platform {
        text.parse().unwrap()
    }

    #[test]
    fn aliases_are_normalised() {
        for (given, normal) in [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("Linux/AMD64", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/i386", "linux/386"),
            ("linux/riscv64", "linux/riscv64"),
        ] {
            assert_eq!(p(given).to_string(), normal, "{given}");
        }
    }

    #[test]
    fn malformed_platforms_are_refused() {
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/am d64",
        ] {
            assert!(
                matches!(bad.parse::<Platform>(), Err(Error::InvalidPlatform { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn index_entries_are_chosen_by_normalised_platform() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let entry = |c: char, platform: serde_json::Value| json!({"mediaType": "m", "size": 1, "digest": d(c), "platform": platform});
        let entries = entries(vec![
            entry(
                'a',
                json!({"os": "linux", "architecture": "arm", "variant": "v6"}),
            ),
            entry(
                'b',
                json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
            ),
            entry('c', json!({"os": "linux", "architecture": "amd64"})),
            entry('d', json!({"os": "linux", "architecture": "arm"})),
        ]);
        let pick = |text: &str| p(text).select(&entries, "r").unwrap().digest().to_string();
        let by_hand = Platform {
            os: "linux".into(),
            architecture: "aarch64".into(),
            variant: Some("v8".into()),
        };
        assert_eq!(
            by_hand.select(&entries, "r").unwrap().digest().to_string(),
            d('b')
        );
        assert_eq!(pick("linux/aarch64"), d('b'));
        assert_eq!(pick("linux/amd64"), d('c'));
        assert_eq!(pick("linux/arm/v6"), d('a'));
        // An entry without a variant is arm/v7, as BuildKit and containerd read it.
        assert_eq!(pick("linux/arm"), d('d'));
        let spec = oci_spec::image::Platform::from(&p("linux/arm/v6"));
        assert_eq!(Platform::from(&spec), p("linux/arm/v6"));
        let error = p("linux/s390x").select(&entries, "img").unwrap_err();
        assert!(
            matches!(&error, Error::NoPlatform { available, .. } if available == "linux/arm/v6, linux/arm64, linux/amd64, linux/arm/v7"),
            "{error}"
        );
    }

    #[test]
    fn the_host_is_normalised() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert_eq!(Platform::new(&host.os, &host.architecture, None), host);
        assert_ne!(host.architecture, "x86_64");
        assert_ne!(host.architecture, "aarch64");
    }
}
