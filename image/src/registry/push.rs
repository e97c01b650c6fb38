//! Pushing: each blob the registry lacks (asked with HEAD) is uploaded
//! whole (POST for an upload session, PUT with the digest), the config
//! and layers first, then the manifest under the tag, whose digest the
//! registry must echo back unchanged.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{net, Body, Client, Counting, Options, Progress};
use crate::name::Name;
use crate::{BlobSource, Digest, Error, Image, Result};

/// Where a blob's bytes come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    Bytes(&'a [u8]),
    File(&'a BlobSource),
}

/// Pushes `image` to where `name` says (its tag, or `latest`); returns the
/// manifest digest.
pub fn push(
    image: &Image,
    name: &Name,
    opts: &Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<Digest> {
    let mut c = Client::for_name(name, opts)?;
    let config_digest = Digest::of_bytes(&image.raw_config.data);
    let mut blobs = vec![(
        &config_digest,
        Source::Bytes(&image.raw_config.data),
        image.raw_config.data.len() as u64,
    )];
    for l in &image.layers {
        blobs.push((&l.digest, Source::File(&l.source), l.source.size));
    }
    let total = blobs.iter().map(|(_, _, size)| size).sum();
    let moved = AtomicU64::new(0);
    for (digest, source, size) in blobs {
        let short = &digest.hex()[..12];
        if exists(&mut c, digest)? {
            progress(Progress::Line(&format!("{short}: already exists")));
            moved.fetch_add(size, Ordering::Relaxed);
            continue;
        }
        progress(Progress::Line(&format!("{short}: pushing {size} bytes")));
        let before = moved.load(Ordering::Relaxed);
        let open = || {
            // Each attempt counts from where this blob started.
            moved.store(before, Ordering::Relaxed);
            let r: Box<dyn Read> = match source {
                Source::Bytes(b) => Box::new(b),
                Source::File(f) => Box::new(f.reader()?),
            };
            Ok(Box::new(Counting::new(r, &moved)) as Box<dyn Read>)
        };
        upload(&mut c, digest, &Body::Stream(&open, size))?;
        let done = moved.load(Ordering::Relaxed);
        progress(Progress::Bytes { done, total });
    }
    let reference = match (&name.tag, &name.digest) {
        (Some(t), _) => t.clone(),
        (None, Some(d)) => d.to_string(),
        (None, None) => "latest".into(),
    };
    let url = c.url(&format!("manifests/{reference}"));
    let resp = c.send(
        "PUT",
        &url,
        &[("Content-Type", &image.raw_manifest.media_type)],
        &Body::Bytes(&image.raw_manifest.data),
    )?;
    let ours = Digest::of_bytes(&image.raw_manifest.data);
    if let Some(theirs) = resp.header("Docker-Content-Digest") {
        if theirs != ours.to_string() {
            return Err(Error::Registry(format!(
                "{url}: the registry stored the manifest as {theirs}, not {ours}"
            )));
        }
    }
    Ok(ours)
}

fn exists(c: &mut Client, digest: &Digest) -> Result<bool> {
    let url = c.url(&format!("blobs/{digest}"));
    match c.send("HEAD", &url, &[], &Body::Empty) {
        Ok(_) => Ok(true),
        Err(Error::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A monolithic upload: POST opens a session, PUT sends the bytes with
/// the digest the registry checks them against.
fn upload(c: &mut Client, digest: &Digest, body: &Body) -> Result<()> {
    let start = c.url("blobs/uploads/");
    let resp = c.send("POST", &start, &[("Content-Length", "0")], &Body::Empty)?;
    let location = resp
        .header("Location")
        .ok_or_else(|| net(&start, "no Location for the upload"))?;
    let mut url = if location.starts_with('/') {
        format!("{}{location}", c.origin)
    } else {
        location.to_string()
    };
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(&format!("digest={digest}"));
    c.send(
        "PUT",
        &url,
        &[("Content-Type", "application/octet-stream")],
        body,
    )?;
    Ok(())
}
