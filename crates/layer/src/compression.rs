//! Layer compression: which codec, its media type, and recognising it from bytes.

use oci_spec::image::MediaType;

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip, what every registry and runtime accepts. Level 1 (fastest) to 9 (smallest).
    Gzip {
        /// The deflate level.
        level: u32,
    },
    /// zstd. Level 1 to 19 (22 with more memory).
    Zstd {
        /// The zstd level.
        level: i32,
    },
    /// A plain tar.
    None,
}

impl Default for Compression {
    /// gzip at level 6, the level `gzip`, `pigz` and Docker use.
    fn default() -> Self {
        Compression::Gzip { level: 6 }
    }
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(&self) -> MediaType {
        match self {
            Compression::Gzip { .. } => MediaType::ImageLayerGzip,
            Compression::Zstd { .. } => MediaType::ImageLayerZstd,
            Compression::None => MediaType::ImageLayer,
        }
    }
}

/// The compression a layer's bytes are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// No compression.
    None,
}

impl Codec {
    /// From a layer media type (OCI or Docker); `None` when the type says nothing about it.
    pub fn from_media_type(media_type: &str) -> Option<Codec> {
        if media_type.ends_with("+gzip")
            || media_type.ends_with(".tar.gzip")
            || media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
        {
            Some(Codec::Gzip)
        } else if media_type.ends_with("+zstd")
            || media_type == "application/vnd.docker.image.rootfs.diff.tar.zstd"
        {
            Some(Codec::Zstd)
        } else if media_type.ends_with(".tar")
            || media_type == "application/vnd.docker.image.rootfs.diff.tar"
        {
            Some(Codec::None)
        } else {
            None
        }
    }

    /// From the first bytes of a layer (its magic number).
    pub fn sniff(head: &[u8]) -> Codec {
        if head.starts_with(&[0x1f, 0x8b]) {
            Codec::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Codec::Zstd
        } else {
            Codec::None
        }
    }
}
