//! Container images on the host side: where an image comes from
//! (`oci:`, `oci-archive:`, `docker-archive:`), its manifest and config,
//! and the layer blobs, each checked against its digest and size before
//! use. Layer contents are never parsed here: the guest unpacks them.

mod archive;
pub mod auth;
mod blob;
mod digest;
mod docker_archive;
mod layout;
mod media;
pub mod name;
mod reference;
pub mod registry;
pub mod save;
pub mod size;
pub mod store;

use std::path::PathBuf;

pub use digest::Digest;
pub use media::Compression;
pub use reference::Reference;

/// A byte range of a file that holds one blob: a file of its own in an
/// OCI layout, or an entry inside an archive (read in place, not copied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobSource {
    pub path: PathBuf,
    pub offset: u64,
    pub size: u64,
}

/// One layer. Its size is checked when the image is opened; its digest
/// only by [`LayerBlob::verify`], which must pass before its content is
/// used (a run that finds the image already unpacked skips the cost).
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub source: BlobSource,
    pub compression: Compression,
    pub digest: Digest,
}

impl LayerBlob {
    /// Streams the blob through sha256 and compares it with its digest.
    pub fn verify(&self) -> Result<()> {
        digest::verify(&self.source, "layer", &self.digest, self.source.size)
    }
}

/// What the image says about running it (the OCI config's `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// `EXPOSE`: `80/tcp`, `53/udp`.
    pub exposed_ports: Vec<String>,
    /// `VOLUME`: paths that get an anonymous volume unless mounted.
    pub volumes: Vec<String>,
}

/// An image: manifest and config verified, layers bottom first.
#[derive(Debug, Clone)]
pub struct Image {
    pub reference: String,
    /// The digest of the manifest (the image's identity).
    pub manifest_digest: Digest,
    /// The manifest and config as stored (verified), for copying the
    /// image elsewhere. A docker archive gets an OCI manifest made for it.
    pub raw_manifest: RawBlob,
    pub raw_config: RawBlob,
    /// When the image was made (RFC 3339), if it says.
    pub created: String,
    /// Names the source gives the image (docker-archive RepoTags, an OCI
    /// layout's ref.name annotation).
    pub names: Vec<String>,
    pub layers: Vec<LayerBlob>,
    pub config: RunConfig,
}

/// A small blob held in memory, with its media type.
#[derive(Debug, Clone)]
pub struct RawBlob {
    pub media_type: String,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Reference(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {digest} is missing from the image (expected at {path})")]
    MissingBlob {
        what: &'static str,
        digest: String,
        path: PathBuf,
    },
    #[error("{what} {expected} does not match its content: {detail}; the image is corrupt or was tampered with")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        detail: String,
    },
    #[error("unsupported {what} media type {media_type:?}")]
    UnsupportedMediaType {
        what: &'static str,
        media_type: String,
    },
    #[error("{what} is not valid: {detail}")]
    Invalid { what: String, detail: String },
    #[error("{0}")]
    NotFound(String),
    /// A registry refused or failed a request (or could not be reached).
    #[error("{0}")]
    Registry(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Opens the image a reference names, verifying its index, manifest and
/// config (layers: see [`LayerBlob::verify`]).
pub fn open(reference: &str) -> Result<Image> {
    let r = Reference::parse(reference)?;
    let mut image = match &r {
        Reference::OciDir { dir, tag } => layout::open(&layout::Layout::dir(dir), tag.as_deref()),
        Reference::OciArchive { file, tag } => {
            let l = layout::Layout::archive(archive::Archive::index(file)?);
            layout::open(&l, tag.as_deref())
        }
        Reference::DockerArchive { file } => docker_archive::open(&archive::Archive::index(file)?),
    }?;
    image.reference = reference.to_string();
    Ok(image)
}

/// Whether `s` names an image by transport (`oci:`, `oci-archive:`,
/// `docker-archive:`) rather than by name.
pub fn is_transport(s: &str) -> bool {
    ["oci:", "oci-archive:", "docker-archive:"]
        .iter()
        .any(|t| s.starts_with(t))
}

/// Opens what `vm load -i PATH` is given: an OCI layout directory, or a
/// docker-archive or oci-archive file (told apart by their contents).
pub fn open_path(path: &std::path::Path) -> Result<Image> {
    if path.is_dir() {
        let mut img = layout::open(&layout::Layout::dir(path), None)?;
        img.reference = format!("oci:{}", path.display());
        return Ok(img);
    }
    let ar = archive::Archive::index(path)?;
    let mut img = if ar.get("manifest.json").is_some() {
        docker_archive::open(&ar)?
    } else {
        layout::open(&layout::Layout::archive(ar), None)?
    };
    img.reference = path.display().to_string();
    Ok(img)
}

/// Every image a file or directory holds (`vm load`): all the images of
/// an OCI layout or archive, or a docker archive's image.
pub fn open_path_all(path: &std::path::Path) -> Result<Vec<Image>> {
    let (layout, reference) = if path.is_dir() {
        (layout::Layout::dir(path), format!("oci:{}", path.display()))
    } else {
        let ar = archive::Archive::index(path)?;
        if ar.get("manifest.json").is_some() {
            return open_path(path).map(|i| vec![i]);
        }
        (layout::Layout::archive(ar), path.display().to_string())
    };
    let mut images = layout::open_all(&layout)?;
    for i in &mut images {
        i.reference.clone_from(&reference);
    }
    Ok(images)
}

#[cfg(test)]
mod tests;
