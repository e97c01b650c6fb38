//! Pulling: the manifest (an index resolved to linux/amd64 first), then
//! each blob the store lacks, streamed in and checked against its digest
//! and size on the way; the name is set only when everything is stored.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use super::{net, Client, Counting, Options, Progress, ATTEMPTS};
use crate::digest::check_bytes;
use crate::media::{self, MAX_JSON};
use crate::name::Name;
use crate::store::Store;
use crate::{Digest, Error, Result};

/// Blobs downloaded at once.
const PARALLEL: usize = 3;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// A manifest or index, at most MAX_JSON bytes, with its media type.
fn manifest(c: &mut Client, reference: &str) -> Result<(String, Vec<u8>)> {
    let resp = c.get(&format!("manifests/{reference}"), Some(ACCEPT))?;
    let media_type = resp.content_type().to_string();
    let mut data = Vec::new();
    resp.into_reader()
        .take(MAX_JSON + 1)
        .read_to_end(&mut data)
        .map_err(|e| net(reference, e))?;
    if data.len() as u64 > MAX_JSON {
        return Err(Error::Invalid {
            what: format!("manifest {reference}"),
            detail: format!("larger than the {MAX_JSON}-byte limit"),
        });
    }
    // Some registries answer with a generic Content-Type; the document's
    // own mediaType then says what it is.
    let known = [
        media::OCI_INDEX,
        media::OCI_MANIFEST,
        media::DOCKER_LIST,
        media::DOCKER_MANIFEST,
    ];
    if !known.contains(&media_type.as_str()) {
        let inner = serde_json::from_slice::<serde_json::Value>(&data)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string));
        if let Some(mt) = inner.filter(|mt| known.contains(&mt.as_str())) {
            return Ok((mt, data));
        }
    }
    Ok((media_type, data))
}

/// Pulls `name` into the store and names it; returns the manifest digest.
pub fn pull(
    store: &Store,
    name: &Name,
    opts: &Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<Digest> {
    let mut c = Client::for_name(name, opts)?;
    let _writing = store.writing()?;
    let reference = match (&name.digest, &name.tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => "latest".into(),
    };
    let (mut media_type, mut data) = manifest(&mut c, &reference)?;
    if let Some(d) = &name.digest {
        check_bytes("manifest", d, &data)?;
    }
    for _ in 0..4 {
        if media_type != media::OCI_INDEX && media_type != media::DOCKER_LIST {
            break;
        }
        let index: serde_json::Value =
            serde_json::from_slice(&data).map_err(|e| Error::Invalid {
                what: "index".into(),
                detail: e.to_string(),
            })?;
        let pick = index["manifests"]
            .as_array()
            .and_then(|ms| {
                ms.iter().find(|m| {
                    m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64"
                })
            })
            .ok_or_else(|| Error::NotFound(format!("{name} has no linux/amd64 image")))?;
        let d = Digest::parse(pick["digest"].as_str().unwrap_or_default())?;
        let (mt, bytes) = manifest(&mut c, &d.to_string())?;
        check_bytes("manifest", &d, &bytes)?;
        (media_type, data) = (mt, bytes);
    }
    if media_type != media::OCI_MANIFEST && media_type != media::DOCKER_MANIFEST {
        return Err(Error::UnsupportedMediaType {
            what: "manifest",
            media_type,
        });
    }
    let m: serde_json::Value = serde_json::from_slice(&data).map_err(|e| Error::Invalid {
        what: "manifest".into(),
        detail: e.to_string(),
    })?;
    let mut blobs = vec![(&m["config"], "image config")];
    blobs.extend(
        m["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| (l, "layer")),
    );
    let mut todo = Vec::new();
    for (desc, what) in blobs {
        if what == "layer" {
            media::layer_compression(desc["mediaType"].as_str().unwrap_or_default())?;
        }
        let d = Digest::parse(desc["digest"].as_str().unwrap_or_default())?;
        let size = desc["size"].as_u64().ok_or_else(|| Error::Invalid {
            what: format!("{what} {d}"),
            detail: "no size".into(),
        })?;
        if what == "image config" && size > MAX_JSON {
            return Err(Error::Invalid {
                what: format!("image config {d}"),
                detail: format!("{size} bytes is more than the {MAX_JSON}-byte limit"),
            });
        }
        if !store.has_blob(&d) && !todo.iter().any(|(t, _, _)| t == &d) {
            todo.push((d, size, what));
        }
    }
    download(&c, store, todo, progress)?;
    let md = store.put_bytes(&data, "manifest")?;
    store.name_manifest(
        &media_type,
        &md,
        data.len() as u64,
        std::slice::from_ref(name),
    )?;
    Ok(md)
}

/// Downloads blobs into the store, a few at a time; stops at the first
/// failure (blobs already stored stay: they are checked and named by
/// digest, and the next pull skips them).
fn download(
    c: &Client,
    store: &Store,
    todo: Vec<(Digest, u64, &'static str)>,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let workers = todo.len().min(PARALLEL);
    let total = todo.iter().map(|(_, size, _)| size).sum();
    let moved = AtomicU64::new(0);
    let queue = Mutex::new(todo.into_iter());
    let next = || queue.lock().ok().and_then(|mut q| q.next());
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let mut c = c.clone();
                let tx = tx.clone();
                let (next, queue, moved) = (&next, &queue, &moved);
                s.spawn(move || -> Result<()> {
                    while let Some((d, size, what)) = next() {
                        let short = &d.hex()[..12];
                        let _ = tx.send(format!("{short}: downloading {what} ({size} bytes)"));
                        if let Err(e) = fetch(&mut c, store, &d, size, what, moved) {
                            // Leave the rest undone.
                            if let Ok(mut q) = queue.lock() {
                                q.by_ref().for_each(drop);
                            }
                            return Err(e);
                        }
                        let _ = tx.send(format!("{short}: done"));
                    }
                    Ok(())
                })
            })
            .collect();
        drop(tx);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => progress(Progress::Line(&line)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let done = moved.load(Ordering::Relaxed);
            progress(Progress::Bytes { done, total });
        }
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(Error::Registry("a download thread panicked".into())))
        })
    })
}

/// One blob into the store; a connection that breaks mid-blob is tried
/// again.
fn fetch(
    c: &mut Client,
    store: &Store,
    d: &Digest,
    size: u64,
    what: &'static str,
    moved: &AtomicU64,
) -> Result<()> {
    let mut tries = 0;
    loop {
        let resp = c.get(&format!("blobs/{d}"), None)?;
        let mut body = Counting::new(resp.into_reader(), moved);
        match store.put_blob(&mut (&mut body).take(size + 1), d, size, what) {
            Ok(()) => return Ok(()),
            Err(Error::Read { .. }) if tries + 1 < ATTEMPTS => {
                body.uncount();
                tries += 1;
            }
            Err(e) => {
                body.uncount();
                return Err(e);
            }
        }
    }
}
