//! The OCI image layout (a directory or an archive of one): index.json,
//! then the manifest for a tag (or the only one), resolved to linux/amd64
//! through nested indexes, then the config and the layers.

use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use crate::archive::Archive;
use crate::digest::{check_size, read_verified, Digest};
use crate::media::{self, MAX_JSON};
use crate::{BlobSource, Error, Image, LayerBlob, RawBlob, Result, RunConfig};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Nested indexes followed before giving up (a loop in a hostile layout).
const MAX_DEPTH: usize = 4;

pub enum Layout {
    Dir(PathBuf),
    Archive(Archive),
}

impl Layout {
    pub fn dir(p: &Path) -> Self {
        Layout::Dir(p.to_path_buf())
    }

    pub fn archive(a: Archive) -> Self {
        Layout::Archive(a)
    }

    fn describe(&self) -> String {
        match self {
            Layout::Dir(d) => format!("OCI layout {}", d.display()),
            Layout::Archive(a) => format!("OCI archive {}", a.path().display()),
        }
    }

    /// A file of the layout by name (`index.json`, `oci-layout`, blobs).
    fn file(&self, name: &str) -> Option<BlobSource> {
        match self {
            Layout::Dir(d) => {
                let path = d.join(name);
                let meta = std::fs::metadata(&path).ok()?;
                meta.is_file().then_some(BlobSource {
                    path,
                    offset: 0,
                    size: meta.len(),
                })
            }
            Layout::Archive(a) => a.get(name),
        }
    }

    fn blob(&self, what: &'static str, digest: &Digest) -> Result<BlobSource> {
        let name = format!("blobs/sha256/{}", digest.hex());
        self.file(&name).ok_or_else(|| Error::MissingBlob {
            what,
            digest: digest.to_string(),
            path: match self {
                Layout::Dir(d) => d.join(&name),
                Layout::Archive(a) => a.path().join(&name),
            },
        })
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, data: &[u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| Error::Invalid {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

/// The layout's `index.json`, once its `oci-layout` marker is checked.
fn read_index(layout: &Layout) -> Result<ImageIndex> {
    let name = layout.describe();
    let marker = layout.file("oci-layout").ok_or_else(|| {
        Error::NotFound(format!(
            "{name} is not an OCI image layout (no oci-layout file)"
        ))
    })?;
    let _: serde_json::Value = parse(&format!("{name}: oci-layout"), &marker.read_small()?)?;
    let index_src = layout
        .file("index.json")
        .ok_or_else(|| Error::NotFound(format!("{name} has no index.json")))?;
    parse(&format!("{name}: index.json"), &index_src.read_small()?)
}

pub fn open(layout: &Layout, tag: Option<&str>) -> Result<Image> {
    let name = layout.describe();
    let index = read_index(layout)?;
    let manifests = index.manifests();
    let chosen = match tag {
        Some(t) => manifests
            .iter()
            .find(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .is_some_and(|n| n == t)
            })
            .ok_or_else(|| Error::NotFound(format!("{name} has no image tagged {t:?}")))?,
        None => match manifests.as_slice() {
            [one] => one,
            [] => return Err(Error::NotFound(format!("{name} holds no image"))),
            _ => {
                return Err(Error::NotFound(format!(
                    "{name} holds {} images; name one with :TAG",
                    manifests.len()
                )))
            }
        },
    };
    let digest = Digest::parse(chosen.digest().as_ref())?;
    let mut image = open_descriptor(layout, chosen.media_type().as_ref(), &digest, chosen.size())?;
    image.names = chosen
        .annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .into_iter()
        .cloned()
        .collect();
    Ok(image)
}

/// Every image in the layout, each once with all its names.
pub fn open_all(layout: &Layout) -> Result<Vec<Image>> {
    let index = read_index(layout)?;
    let mut images: Vec<Image> = Vec::new();
    for d in index.manifests() {
        let digest = Digest::parse(d.digest().as_ref())?;
        let tag = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned();
        if let Some(img) = images.iter_mut().find(|i| i.manifest_digest == digest) {
            img.names.extend(tag);
            continue;
        }
        let mut img = open_descriptor(layout, d.media_type().as_ref(), &digest, d.size())?;
        img.names = tag.into_iter().collect();
        images.push(img);
    }
    if images.is_empty() {
        return Err(Error::NotFound(format!(
            "{} holds no image",
            layout.describe()
        )));
    }
    Ok(images)
}

/// The image a descriptor names (a manifest, or an index to resolve).
pub fn open_descriptor(
    layout: &Layout,
    media_type: &str,
    digest: &Digest,
    size: u64,
) -> Result<Image> {
    let (digest, raw, manifest) = resolve(layout, media_type, digest.clone(), size, 0)?;
    image_from_manifest(layout, digest, raw, &manifest)
}

/// Follows an index (or manifest list) down to the linux/amd64 manifest.
fn resolve(
    layout: &Layout,
    media_type: &str,
    d: Digest,
    size: u64,
    depth: usize,
) -> Result<(Digest, RawBlob, ImageManifest)> {
    let src = layout.blob("manifest", &d)?;
    let data = read_verified(&src, "manifest", &d, size, MAX_JSON)?;
    match media_type {
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => {
            let m = parse(&format!("manifest {d}"), &data)?;
            let media_type = media_type.to_string();
            Ok((d, RawBlob { media_type, data }, m))
        }
        media::OCI_INDEX | media::DOCKER_LIST => {
            if depth >= MAX_DEPTH {
                return Err(Error::Invalid {
                    what: format!("index {d}"),
                    detail: "indexes nest too deep".into(),
                });
            }
            let index: ImageIndex = parse(&format!("index {d}"), &data)?;
            let pick = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
                    })
                })
                .ok_or_else(|| Error::NotFound(format!("index {d} has no linux/amd64 image")))?;
            resolve(
                layout,
                pick.media_type().as_ref(),
                Digest::parse(pick.digest().as_ref())?,
                pick.size(),
                depth + 1,
            )
        }
        other => Err(Error::UnsupportedMediaType {
            what: "manifest",
            media_type: other.to_string(),
        }),
    }
}

fn image_from_manifest(
    layout: &Layout,
    manifest_digest: Digest,
    raw_manifest: RawBlob,
    m: &ImageManifest,
) -> Result<Image> {
    let cfg_desc = m.config();
    media::check_config(cfg_desc.media_type().as_ref())?;
    let cfg_digest = Digest::parse(cfg_desc.digest().as_ref())?;
    let cfg_src = layout.blob("image config", &cfg_digest)?;
    let cfg_data = read_verified(
        &cfg_src,
        "image config",
        &cfg_digest,
        cfg_desc.size(),
        MAX_JSON,
    )?;
    let config: ImageConfiguration = parse(&format!("image config {cfg_digest}"), &cfg_data)?;
    let mut layers = Vec::with_capacity(m.layers().len());
    for l in m.layers() {
        let compression = media::layer_compression(l.media_type().as_ref())?;
        let digest = Digest::parse(l.digest().as_ref())?;
        let source = layout.blob("layer", &digest)?;
        check_size(&source, "layer", &digest, l.size())?;
        layers.push(LayerBlob {
            source,
            compression,
            digest,
        });
    }
    Ok(Image {
        reference: String::new(),
        manifest_digest,
        raw_manifest,
        raw_config: RawBlob {
            media_type: cfg_desc.media_type().to_string(),
            data: cfg_data,
        },
        created: config.created().clone().unwrap_or_default(),
        names: Vec::new(),
        layers,
        config: run_config(&config),
    })
}

pub fn run_config(c: &ImageConfiguration) -> RunConfig {
    let Some(cfg) = c.config() else {
        return RunConfig::default();
    };
    RunConfig {
        entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
        cmd: cfg.cmd().clone().unwrap_or_default(),
        env: cfg.env().clone().unwrap_or_default(),
        working_dir: cfg.working_dir().clone().unwrap_or_default(),
        user: cfg.user().clone().unwrap_or_default(),
        exposed_ports: cfg.exposed_ports().clone().unwrap_or_default(),
        volumes: cfg.volumes().clone().unwrap_or_default(),
    }
}
