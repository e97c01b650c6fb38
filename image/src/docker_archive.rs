//! `docker save` archives: manifest.json names the config and the layer
//! files; layers are checked against the config's diff_ids (the sha256 of
//! each layer as stored, since `docker save` writes them uncompressed).

use oci_spec::image::ImageConfiguration;
use serde::Deserialize;

use crate::archive::Archive;
use crate::digest::{read_verified, Digest};
use crate::layout::run_config;
use crate::media::{self, MAX_JSON};
use crate::{Error, Image, LayerBlob, RawBlob, Result};

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

pub fn open(ar: &Archive) -> Result<Image> {
    let name = format!("docker archive {}", ar.path().display());
    let invalid = |detail: String| Error::Invalid {
        what: name.clone(),
        detail,
    };
    let src = ar.get("manifest.json").ok_or_else(|| {
        Error::NotFound(format!(
            "{name} has no manifest.json (not a docker save archive?)"
        ))
    })?;
    let data = src.read_small()?;
    let entries: Vec<Entry> =
        serde_json::from_slice(&data).map_err(|e| invalid(format!("manifest.json: {e}")))?;
    let entry = match entries.as_slice() {
        [one] => one,
        [] => return Err(Error::NotFound(format!("{name} holds no image"))),
        _ => {
            return Err(invalid(format!(
                "it holds {} images; only single-image archives are supported",
                entries.len()
            )))
        }
    };
    // The config is named by its digest: <hex>.json or blobs/sha256/<hex>.
    let cfg_hex = entry
        .config
        .rsplit('/')
        .next()
        .map(|n| n.trim_end_matches(".json"))
        .unwrap_or_default();
    let cfg_digest = Digest::parse(&format!("sha256:{cfg_hex}")).map_err(|_| {
        invalid(format!(
            "config {:?} is not named by its digest",
            entry.config
        ))
    })?;
    let cfg_src = ar.get(&entry.config).ok_or_else(|| Error::MissingBlob {
        what: "image config",
        digest: cfg_digest.to_string(),
        path: ar.path().join(&entry.config),
    })?;
    let cfg_data = read_verified(
        &cfg_src,
        "image config",
        &cfg_digest,
        cfg_src.size,
        MAX_JSON,
    )?;
    let config: ImageConfiguration =
        serde_json::from_slice(&cfg_data).map_err(|e| invalid(format!("image config: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(invalid(format!(
            "manifest.json lists {} layers, the config {}",
            entry.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(entry.layers.len());
    for (file, diff_id) in entry.layers.iter().zip(diff_ids) {
        let digest = Digest::parse(diff_id)?;
        let source = ar.get(file).ok_or_else(|| Error::MissingBlob {
            what: "layer",
            digest: digest.to_string(),
            path: ar.path().join(file),
        })?;
        let mut head = [0u8; 4];
        let n = source.head(&mut head)?;
        let compression = media::sniff(&head[..n]);
        if compression != media::Compression::None {
            // diff_ids name uncompressed layers; a compressed file cannot
            // have matched one unless the archive is inconsistent.
            return Err(invalid(format!(
                "layer {file} is compressed but named by a diff_id"
            )));
        }
        layers.push(LayerBlob {
            source,
            compression,
            digest,
        });
    }
    // An OCI manifest for what the archive holds: its config, and its
    // layers as uncompressed tars named by their diff_ids.
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": cfg_digest.to_string(),
            "size": cfg_data.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": l.digest.to_string(),
            "size": l.source.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| invalid(e.to_string()))?;
    Ok(Image {
        reference: String::new(),
        manifest_digest: Digest::of_bytes(&manifest),
        raw_manifest: RawBlob {
            media_type: media::OCI_MANIFEST.into(),
            data: manifest,
        },
        raw_config: RawBlob {
            media_type: "application/vnd.oci.image.config.v1+json".into(),
            data: cfg_data,
        },
        created: config.created().clone().unwrap_or_default(),
        names: entry.repo_tags.clone().unwrap_or_default(),
        layers,
        config: run_config(&config),
    })
}
