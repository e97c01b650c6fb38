//! Writing an image out as an archive (`vm save`): an OCI archive (the
//! blobs as stored) or a docker archive (what `docker save` writes:
//! uncompressed layer tars named by their diff_ids, which are checked on
//! the way out). Written to a temporary file and renamed.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::json;

use crate::digest::copy_hashing;
use crate::name::Name;
use crate::{Digest, Error, Image, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    DockerArchive,
    OciArchive,
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |source| Error::Read {
        path: path.to_path_buf(),
        source,
    }
}

pub fn save(image: &Image, names: &[Name], format: Format, out: &Path) -> Result<()> {
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    let r = (|| {
        let f = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut b = tar::Builder::new(f);
        match format {
            Format::OciArchive => oci(&mut b, image, names, &tmp)?,
            Format::DockerArchive => docker(&mut b, image, names, &tmp)?,
        }
        let f = b.into_inner().map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, out).map_err(io_err(out))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn add(
    b: &mut tar::Builder<File>,
    name: &str,
    size: u64,
    data: &mut dyn Read,
    path: &Path,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data).map_err(io_err(path))
}

fn add_bytes(b: &mut tar::Builder<File>, name: &str, data: &[u8], path: &Path) -> Result<()> {
    add(b, name, data.len() as u64, &mut &data[..], path)
}

fn oci(b: &mut tar::Builder<File>, image: &Image, names: &[Name], path: &Path) -> Result<()> {
    add_bytes(b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, path)?;
    let md = &image.manifest_digest;
    let mut manifests = Vec::new();
    let desc = |ann: Option<String>| {
        let mut d = json!({
            "mediaType": image.raw_manifest.media_type,
            "digest": md.to_string(),
            "size": image.raw_manifest.data.len(),
        });
        if let Some(a) = ann {
            d["annotations"] = json!({ "org.opencontainers.image.ref.name": a });
        }
        d
    };
    if names.is_empty() {
        manifests.push(desc(None));
    }
    for n in names {
        manifests.push(desc(Some(n.to_string())));
    }
    let index =
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).map_err(|e| {
            Error::Invalid {
                what: "index".into(),
                detail: e.to_string(),
            }
        })?;
    add_bytes(b, "index.json", &index, path)?;
    add_bytes(
        b,
        &format!("blobs/sha256/{}", md.hex()),
        &image.raw_manifest.data,
        path,
    )?;
    let cd = Digest::of_bytes(&image.raw_config.data);
    add_bytes(
        b,
        &format!("blobs/sha256/{}", cd.hex()),
        &image.raw_config.data,
        path,
    )?;
    for l in &image.layers {
        add(
            b,
            &format!("blobs/sha256/{}", l.digest.hex()),
            l.source.size,
            &mut l.source.reader()?,
            path,
        )?;
    }
    Ok(())
}

fn docker(b: &mut tar::Builder<File>, image: &Image, names: &[Name], path: &Path) -> Result<()> {
    let config: serde_json::Value =
        serde_json::from_slice(&image.raw_config.data).map_err(|e| Error::Invalid {
            what: "image config".into(),
            detail: e.to_string(),
        })?;
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_str()).collect())
        .unwrap_or_default();
    if diff_ids.len() != image.layers.len() {
        return Err(Error::Invalid {
            what: "image config".into(),
            detail: format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                image.layers.len()
            ),
        });
    }
    let cd = Digest::of_bytes(&image.raw_config.data);
    let cfg_name = format!("{}.json", cd.hex());
    add_bytes(b, &cfg_name, &image.raw_config.data, path)?;
    let mut layer_names = Vec::new();
    for (l, diff_id) in image.layers.iter().zip(diff_ids) {
        let want = Digest::parse(diff_id)?;
        // The uncompressed layer, into a scratch file while hashing it.
        let mut scratch = tempfile(path)?;
        let mut reader = l.uncompressed()?;
        let (got, size) =
            copy_hashing(&mut reader, &mut scratch, u64::MAX).map_err(io_err(path))?;
        if got != want {
            return Err(Error::DigestMismatch {
                what: "layer",
                expected: want.to_string(),
                detail: format!("uncompressed, layer {} has {got}", l.digest),
            });
        }
        scratch.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        let name = format!("{}/layer.tar", want.hex());
        add(b, &name, size, &mut scratch, path)?;
        layer_names.push(name);
    }
    let tags: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                "{}:{}",
                n.familiar_repository(),
                n.tag.as_deref().unwrap_or("latest")
            )
        })
        .collect();
    let manifest = serde_json::to_vec(
        &json!([{ "Config": cfg_name, "RepoTags": tags, "Layers": layer_names }]),
    )
    .map_err(|e| Error::Invalid {
        what: "manifest.json".into(),
        detail: e.to_string(),
    })?;
    add_bytes(b, "manifest.json", &manifest, path)
}

/// An unnamed temporary file beside `near` (gone when dropped).
fn tempfile(near: &Path) -> Result<File> {
    let dir = near
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let p = dir.join(format!(".vm-save-layer-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .map_err(io_err(&p))?;
    let _ = std::fs::remove_file(&p);
    Ok(f)
}
