//! Image references in skopeo's transport syntax.

use std::path::PathBuf;

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `oci:DIR[:TAG]`: an OCI image layout directory.
    OciDir { dir: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:TAG]`: a tar of an OCI image layout.
    OciArchive { file: PathBuf, tag: Option<String> },
    /// `docker-archive:FILE`: what `docker save` writes.
    DockerArchive { file: PathBuf },
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self> {
        let (transport, rest) = s.split_once(':').ok_or_else(|| {
            Error::Reference(format!(
                "image {s:?} is not a reference this version understands; use oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE"
            ))
        })?;
        if rest.is_empty() {
            return Err(Error::Reference(format!("image {s:?} names no path")));
        }
        let path_tag = |rest: &str| -> (PathBuf, Option<String>) {
            match rest.split_once(':') {
                Some((p, t)) if !t.is_empty() => (PathBuf::from(p), Some(t.to_string())),
                Some((p, _)) => (PathBuf::from(p), None),
                None => (PathBuf::from(rest), None),
            }
        };
        match transport {
            "oci" => {
                let (dir, tag) = path_tag(rest);
                Ok(Reference::OciDir { dir, tag })
            }
            "oci-archive" => {
                let (file, tag) = path_tag(rest);
                Ok(Reference::OciArchive { file, tag })
            }
            "docker-archive" => {
                // docker-archive:FILE[:NAME] — the name only picks among
                // several images; we take the file's only image.
                let (file, _) = path_tag(rest);
                Ok(Reference::DockerArchive { file })
            }
            other => Err(Error::Reference(format!(
                "unknown image transport {other:?} in {s:?}; use oci:, oci-archive: or docker-archive: (registries come with `vm pull`)"
            ))),
        }
    }
}
