//! The local image store: an OCI image layout under the state root
//! (`<root>/images`), so that an image in it opens like any `oci:` one.
//! Blobs are written to a temporary file, checked against their digest,
//! flushed and renamed into place: a crash or a kill leaves no partial
//! blob under a digest's name. `index.json` changes under an exclusive
//! lock (flock), by writing a new file and renaming it over the old.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::digest::copy_hashing;
use crate::layout::{self, Layout};
use crate::name::Name;
use crate::{Digest, Error, Image, Result};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub struct Store {
    dir: PathBuf,
}

/// What a removal deleted.
#[derive(Debug, Default)]
pub struct Freed {
    /// Manifests of the images that are gone entirely.
    pub images: Vec<Digest>,
    pub blobs: usize,
    pub bytes: u64,
}

/// Whether the process that named a temporary blob `.tmp-HEX-PID` runs.
fn writer_alive(tmp_name: &str) -> bool {
    match tmp_name
        .rsplit('-')
        .next()
        .and_then(|p| p.parse::<u32>().ok())
    {
        Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        // Not ours to judge.
        None => true,
    }
}

/// One name (or none) for one image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Option<String>,
    pub manifest: Digest,
    pub size: u64,
    pub media_type: String,
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |source| Error::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// A lock on a file of the store, released when dropped.
struct Lock(File);

/// See [`Store::writing`].
pub struct WriteGuard {
    _lock: Lock,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Store {
    /// Opens the store in `state_root`, creating an empty one if needed.
    pub fn open(state_root: &Path) -> Result<Self> {
        let dir = state_root.join("images");
        let blobs = dir.join("blobs/sha256");
        // Private: only its owner may read or change what was verified
        // when it was written (runs trust stored blobs without hashing
        // them again).
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&blobs)
                .map_err(io_err(&blobs))?;
        }
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = dir.join("index.json");
        if !index.exists() {
            let s = Self { dir: dir.clone() };
            let _lock = s.lock()?;
            if !index.exists() {
                write_atomic(&index, br#"{"schemaVersion":2,"manifests":[]}"#)?;
            }
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The exclusive lock every change of `index.json` holds.
    fn lock(&self) -> Result<Lock> {
        self.flock("lock", libc::LOCK_EX)?
            .ok_or_else(|| self.bad_index())
    }

    /// Held (shared) by whoever writes blobs that no index entry names
    /// yet (a load, a pull), until it has named them; garbage collection
    /// sweeps blobs only when it can take it exclusively.
    pub fn writing(&self) -> Result<WriteGuard> {
        let lock = self.flock("writers.lock", libc::LOCK_SH)?;
        self.remove_dead_temps();
        Ok(WriteGuard {
            _lock: lock.ok_or_else(|| self.bad_index())?,
        })
    }

    /// Removes the temporary blobs of writers that were killed.
    fn remove_dead_temps(&self) {
        let _ = self.sweep(|name| name.strip_prefix(".tmp-").is_some_and(|t| !writer_alive(t)));
    }

    /// Deletes the files in the blob directory whose names `doomed`
    /// picks; returns how many went and their bytes.
    fn sweep(&self, doomed: impl Fn(&str) -> bool) -> Result<Freed> {
        let dir = self.dir.join("blobs/sha256");
        let mut freed = Freed::default();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            if !doomed(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            if std::fs::remove_file(entry.path()).is_ok() {
                freed.blobs += 1;
                freed.bytes += size;
            }
        }
        Ok(freed)
    }

    /// flock(2) on a file in the store; `None` when `op` has LOCK_NB and
    /// someone else holds it.
    fn flock(&self, file: &str, op: libc::c_int) -> Result<Option<Lock>> {
        let path = self.dir.join(file);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(io_err(&path)(e));
        }
        Ok(Some(Lock(f)))
    }

    /// Where the blob `d` is (or would be) kept.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Streams a blob in, checking size and digest on the way; nothing is
    /// visible under its name unless both match.
    pub fn put_blob(
        &self,
        src: &mut dyn Read,
        expected: &Digest,
        size: u64,
        what: &'static str,
    ) -> Result<()> {
        let path = self.blob_path(expected);
        if path.is_file() {
            return Ok(());
        }
        let tmp = self.dir.join("blobs/sha256").join(format!(
            ".tmp-{}-{}",
            expected.hex(),
            std::process::id()
        ));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            let (got, n_total) = copy_hashing(src, &mut f, size).map_err(io_err(&tmp))?;
            if n_total != size || &got != expected {
                let detail = if n_total > size {
                    format!("it is longer than the {size} bytes its descriptor gives")
                } else {
                    format!("got {n_total} bytes with sha256 {got}, expected {size} bytes")
                };
                return Err(Error::DigestMismatch {
                    what,
                    expected: expected.to_string(),
                    detail,
                });
            }
            f.sync_all().map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err(&path))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    pub fn put_bytes(&self, data: &[u8], what: &'static str) -> Result<Digest> {
        let d = Digest::of_bytes(data);
        self.put_blob(&mut &data[..], &d, data.len() as u64, what)?;
        Ok(d)
    }

    /// Copies a verified image in (layers are checked as they are copied)
    /// and gives it `names` (normalised); an image without names is kept
    /// untagged.
    pub fn add(&self, image: &Image, names: &[Name]) -> Result<Digest> {
        let _writing = self.writing()?;
        for l in &image.layers {
            if !self.has_blob(&l.digest) {
                self.put_blob(&mut l.source.reader()?, &l.digest, l.source.size, "layer")?;
            }
        }
        self.put_bytes(&image.raw_config.data, "image config")?;
        let md = self.put_bytes(&image.raw_manifest.data, "manifest")?;
        let size = image.raw_manifest.data.len() as u64;
        self.name_manifest(&image.raw_manifest.media_type, &md, size, names)?;
        Ok(md)
    }

    /// Points `names` at a stored manifest (or keeps it untagged when
    /// there are none); a name moves from whatever it named before.
    pub fn name_manifest(
        &self,
        media_type: &str,
        md: &Digest,
        size: u64,
        names: &[Name],
    ) -> Result<()> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let manifests = index["manifests"]
            .as_array_mut()
            .ok_or_else(|| self.bad_index())?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let digest = md.to_string();
        let (mut kept, dropped): (Vec<Value>, Vec<Value>) =
            manifests
                .drain(..)
                .partition(|m| match m["annotations"][REF_NAME].as_str() {
                    Some(n) => !names.iter().any(|x| x == n),
                    None => m["digest"].as_str() != Some(&digest),
                });
        // An image whose last name moved to another stays, untagged
        // (`<none>`, "dangling"), until `vm image prune` or `vm rmi`.
        for mut m in dropped {
            let d = m["digest"].clone();
            if d.as_str() != Some(&digest) && !kept.iter().any(|k| k["digest"] == d) {
                if let Some(o) = m.as_object_mut() {
                    o.remove("annotations");
                }
                kept.push(m);
            }
        }
        *manifests = kept;
        let desc = |name: Option<&str>| {
            let mut d = json!({"mediaType": media_type, "digest": digest, "size": size});
            if let Some(n) = name {
                d["annotations"] = json!({ REF_NAME: n });
            }
            d
        };
        if names.is_empty() {
            if !manifests
                .iter()
                .any(|m| m["digest"].as_str() == Some(&digest))
            {
                manifests.push(desc(None));
            }
        } else {
            for n in &names {
                manifests.push(desc(Some(n)));
            }
        }
        self.write_index(&index)
    }

    /// Every name (and untagged image) in the store.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let index = self.read_index()?;
        let mut out = Vec::new();
        for m in index["manifests"]
            .as_array()
            .ok_or_else(|| self.bad_index())?
        {
            let Some(d) = m["digest"].as_str().and_then(|d| Digest::parse(d).ok()) else {
                continue;
            };
            out.push(Entry {
                name: m["annotations"][REF_NAME].as_str().map(str::to_string),
                manifest: d,
                size: m["size"].as_u64().unwrap_or(0),
                media_type: m["mediaType"]
                    .as_str()
                    .unwrap_or(crate::media::OCI_MANIFEST)
                    .to_string(),
            });
        }
        Ok(out)
    }

    /// The names that point at the manifest `manifest`.
    pub fn names_of(&self, manifest: &Digest) -> Result<Vec<String>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|e| &e.manifest == manifest)
            .filter_map(|e| e.name)
            .collect())
    }

    /// Opens a stored image by name (or by manifest digest).
    pub fn image(&self, name: &Name) -> Result<Image> {
        let mut img = layout::open(&Layout::dir(&self.dir), Some(&name.to_string())).map_err(
            |e| match e {
                Error::NotFound(_) => {
                    Error::NotFound(format!("no image {name} in the local store"))
                }
                e => e,
            },
        )?;
        img.reference = name.to_string();
        Ok(img)
    }

    /// Removes `name` from the store; blobs that no remaining image uses
    /// are deleted.
    pub fn remove(&self, name: &Name) -> Result<Freed> {
        let n = name.to_string();
        self.remove_where(|m| m["annotations"][REF_NAME].as_str() == Some(n.as_str()))?
            .ok_or_else(|| Error::NotFound(format!("no image {name} in the local store")))
    }

    /// Removes every entry (all names) of the image whose manifest digest
    /// is `manifest`.
    pub fn remove_image(&self, manifest: &Digest) -> Result<Freed> {
        let d = manifest.to_string();
        self.remove_where(|m| m["digest"].as_str() == Some(d.as_str()))?
            .ok_or_else(|| Error::NotFound(format!("no image {manifest} in the local store")))
    }

    /// Removes the untagged ("dangling") images, except those `keep`
    /// says (by manifest digest).
    pub fn prune(&self, keep: impl Fn(&Digest) -> bool) -> Result<Freed> {
        let kept = |m: &Value| {
            m["digest"]
                .as_str()
                .and_then(|d| Digest::parse(d).ok())
                .is_some_and(|d| keep(&d))
        };
        Ok(self
            .remove_where(|m| m["annotations"][REF_NAME].is_null() && !kept(m))?
            .unwrap_or_default())
    }

    /// Drops the index entries `pick` chooses, then the blobs nothing
    /// uses any more; `None` when nothing was picked.
    fn remove_where(&self, pick: impl Fn(&Value) -> bool) -> Result<Option<Freed>> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let manifests = index["manifests"]
            .as_array_mut()
            .ok_or_else(|| self.bad_index())?;
        let (gone, kept): (Vec<Value>, Vec<Value>) = manifests.drain(..).partition(&pick);
        *manifests = kept;
        if gone.is_empty() {
            return Ok(None);
        }
        self.write_index(&index)?;
        let mut freed = self.collect_garbage()?;
        for m in gone {
            if let Some(d) = m["digest"].as_str().and_then(|d| Digest::parse(d).ok()) {
                if !self.has_blob(&d) && !freed.images.contains(&d) {
                    freed.images.push(d);
                }
            }
        }
        Ok(Some(freed))
    }

    /// Deletes every blob that no image in the index references (their
    /// manifests, configs and layers, through one level of index), and
    /// temporary files left by writers that were killed. Call with the
    /// lock held.
    fn collect_garbage(&self) -> Result<Freed> {
        let mut keep = std::collections::HashSet::new();
        let mut todo: Vec<(Digest, usize)> =
            self.list()?.into_iter().map(|e| (e.manifest, 0)).collect();
        while let Some((d, depth)) = todo.pop() {
            if !keep.insert(d.hex().to_string()) || depth > 2 {
                continue;
            }
            let data = std::fs::read(self.blob_path(&d)).unwrap_or_default();
            let v: Value = serde_json::from_slice(&data).unwrap_or(Value::Null);
            // Configs and layers are leaves; nested manifests are followed.
            for leaf in
                std::iter::once(&v["config"]).chain(v["layers"].as_array().into_iter().flatten())
            {
                if let Some(h) = leaf["digest"]
                    .as_str()
                    .and_then(|d| d.strip_prefix("sha256:"))
                {
                    keep.insert(h.to_string());
                }
            }
            for m in v["manifests"].as_array().into_iter().flatten() {
                if let Some(nd) = m["digest"].as_str().and_then(|d| Digest::parse(d).ok()) {
                    todo.push((nd, depth + 1));
                }
            }
        }
        // A load or pull in progress may have blobs not yet named: leave
        // every blob for a later sweep.
        let Some(_sweeping) = self.flock("writers.lock", libc::LOCK_EX | libc::LOCK_NB)? else {
            return Ok(Freed::default());
        };
        self.sweep(|name| match name.strip_prefix(".tmp-") {
            Some(tmp) => !writer_alive(tmp),
            None => !keep.contains(name),
        })
    }

    /// The unpacked size of the image a manifest names (see
    /// [`crate::size`]), worked out once and kept beside the index. None
    /// when it is too large to work out.
    pub fn unpacked_size(&self, manifest: &Digest, image: &Image) -> Result<Option<u64>> {
        let path = self.dir.join("sizes").join(manifest.hex());
        if let Ok(text) = std::fs::read_to_string(&path) {
            match text.trim() {
                "unknown" => return Ok(None),
                t => {
                    if let Ok(n) = t.parse::<u64>() {
                        return Ok(Some(n));
                    }
                }
            }
        }
        // Too large or not a tar: unknown, once and for all (the blobs
        // are checked content; they do not change).
        let size = match crate::size::unpacked(image) {
            Ok(size) => size,
            Err(Error::Invalid { .. }) => None,
            Err(e) => return Err(e),
        };
        let text = size.map_or_else(|| "unknown".to_string(), |n| n.to_string());
        // Only a cache: a store this user cannot write still lists.
        let _ = std::fs::create_dir_all(path.parent().unwrap_or(&self.dir))
            .map_err(io_err(&path))
            .and_then(|()| write_atomic(&path, text.as_bytes()));
        Ok(size)
    }

    /// Opens the image an entry of `list` names.
    pub fn entry_image(&self, e: &Entry) -> Result<Image> {
        layout::open_descriptor(&Layout::dir(&self.dir), &e.media_type, &e.manifest, e.size)
    }

    fn read_index(&self) -> Result<Value> {
        let path = self.dir.join("index.json");
        let data = std::fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&data).map_err(|_| self.bad_index())
    }

    fn write_index(&self, v: &Value) -> Result<()> {
        let data = serde_json::to_vec_pretty(v).map_err(|_| self.bad_index())?;
        write_atomic(&self.dir.join("index.json"), &data)
    }

    fn bad_index(&self) -> Error {
        Error::Invalid {
            what: format!(
                "the image store's index {}",
                self.dir.join("index.json").display()
            ),
            detail: "not an OCI index".into(),
        }
    }
}

/// Writes `path` through a temporary file, flushed and renamed.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let r = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(io_err(path))
}
