//! The media types we accept, and what each means for unpacking.

use crate::{Error, Result};

pub use agent_protocol::Compression;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Manifests and configs are small; anything bigger is refused unread.
pub const MAX_JSON: u64 = 4 << 20;

pub fn layer_compression(media_type: &str) -> Result<Compression> {
    let base = media_type
        .strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.")
        .or_else(|| media_type.strip_prefix("application/vnd.oci.image.layer.v1."));
    let c = match (base, media_type) {
        (Some("tar"), _) => Compression::None,
        (Some("tar+gzip"), _) => Compression::Gzip,
        (Some("tar+zstd"), _) => Compression::Zstd,
        (_, "application/vnd.docker.image.rootfs.diff.tar.gzip")
        | (_, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip") => Compression::Gzip,
        (_, "application/vnd.docker.image.rootfs.diff.tar") => Compression::None,
        _ => {
            return Err(Error::UnsupportedMediaType {
                what: "layer",
                media_type: media_type.to_string(),
            })
        }
    };
    Ok(c)
}

pub fn check_config(media_type: &str) -> Result<()> {
    if CONFIGS.contains(&media_type) {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType {
            what: "image config",
            media_type: media_type.to_string(),
        })
    }
}

/// Recognises a compressed blob by its first bytes (docker-archive layers
/// carry no media type). This reads a magic number, not the tar.
pub fn sniff(head: &[u8]) -> Compression {
    match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        _ => Compression::None,
    }
}
