//! Volumes: named directories in the state root
//! (`<state>/volumes/<name>/_data`, as Docker keeps them, with the
//! volume's metadata in `volume.json` beside it), and the mounts of a
//! container that use them. Every volume and bind mount reaches the guest
//! over virtio-fs, served by a virtiofsd of its own (see `share`).
//!
//! A volume in use by any container, running or not, cannot be removed.

pub mod mounts;
mod path;
pub mod share;

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use mounts::{Kind, Mount};

use crate::container::{self, Container};
use crate::error::{Error, Result};

/// A volume as `vm volume inspect` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    /// RFC 3339.
    pub created: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Made for one container (`-v /path`, an image's `VOLUME`).
    #[serde(default)]
    pub anonymous: bool,
    /// Where its files are on the host (`_data`); not stored.
    #[serde(skip)]
    pub mountpoint: PathBuf,
}

/// The directory that holds every volume.
pub fn root(state: &Path) -> PathBuf {
    state.join("volumes")
}

fn lock(state: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = root(state);
    container::private_dir(&dir)?;
    container::lock(&dir.join(".lock"))
}

/// Where volume `name`'s files are, relative to the state root.
fn data_rel(name: &str) -> PathBuf {
    Path::new("volumes").join(name).join("_data")
}

/// Where volume `name`'s files are on the host (`_data`).
pub fn data_dir(state: &Path, name: &str) -> PathBuf {
    state.join(data_rel(name))
}

fn meta_path(state: &Path, name: &str) -> PathBuf {
    root(state).join(name).join("volume.json")
}

/// The volume `name`.
pub fn get(state: &Path, name: &str) -> Result<Volume> {
    mounts::check_volume_name(name).map_err(|_| no_such(name))?;
    let data = std::fs::read(meta_path(state, name)).map_err(|_| no_such(name))?;
    let mut v: Volume = serde_json::from_slice(&data)
        .map_err(|e| Error::host(format!("volume {name}: its volume.json is damaged: {e}")))?;
    v.name = name.to_string();
    v.mountpoint = data_dir(state, name);
    Ok(v)
}

fn no_such(name: &str) -> Error {
    Error::not_found(format!("no such volume: {name}"))
}

/// Every volume, by name.
pub fn list(state: &Path) -> Vec<Volume> {
    let mut out: Vec<Volume> = match std::fs::read_dir(root(state)) {
        Ok(d) => d
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| get(state, &n).ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Makes a volume (a random name when `name` is None). A volume that
/// exists already is returned as it is, as `docker volume create` does.
pub fn create(
    state: &Path,
    name: Option<&str>,
    labels: &BTreeMap<String, String>,
    anonymous: bool,
) -> Result<Volume> {
    let _lock = lock(state)?;
    create_locked(state, name, labels, anonymous)
}

fn create_locked(
    state: &Path,
    name: Option<&str>,
    labels: &BTreeMap<String, String>,
    anonymous: bool,
) -> Result<Volume> {
    let name = match name {
        Some(n) => {
            mounts::check_volume_name(n).map_err(Error::invalid)?;
            if let Ok(v) = get(state, n) {
                return Ok(v);
            }
            n.to_string()
        }
        None => crate::create::random_id(),
    };
    // A leftover of a create that did not finish is taken over.
    let data = data_dir(state, &name);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&data)
        .map_err(|e| Error::host(format!("creating {}: {e}", data.display())))?;
    let v = Volume {
        name: name.clone(),
        created: container::now_rfc3339(),
        labels: labels.clone(),
        anonymous,
        mountpoint: data,
    };
    let json = serde_json::to_vec_pretty(&v)
        .map_err(|e| Error::host(format!("encoding volume {name}: {e}")))?;
    container::write_atomic(&meta_path(state, &name), &json)?;
    Ok(v)
}

/// How many containers use each volume that any container uses (one
/// read of the containers for all volumes).
pub fn usage(state: &Path) -> std::collections::HashMap<String, usize> {
    let mut n = std::collections::HashMap::new();
    for c in container::list(state) {
        let mut names: Vec<&str> = c
            .config
            .mounts
            .iter()
            .filter(|m| m.kind == Kind::Volume)
            .map(|m| m.source.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            *n.entry(name.to_string()).or_default() += 1;
        }
    }
    n
}

/// The containers whose mounts use volume `name`.
pub fn users(state: &Path, name: &str) -> Vec<Container> {
    container::list(state)
        .into_iter()
        .filter(|c| {
            c.config
                .mounts
                .iter()
                .any(|m| m.kind == Kind::Volume && m.source == name)
        })
        .collect()
}

/// Removes volume `name`, refused while a container uses it.
pub fn remove(state: &Path, name: &str) -> Result<()> {
    let _lock = lock(state)?;
    remove_locked(state, name)
}

fn remove_locked(state: &Path, name: &str) -> Result<()> {
    get(state, name)?;
    let users = users(state, name);
    if !users.is_empty() {
        let ids: Vec<&str> = users.iter().map(|c| c.config.id.as_str()).collect();
        return Err(Error::in_use(format!(
            "remove {name}: volume is in use - [{}]; remove those containers first (vm rm)",
            ids.join(", ")
        )));
    }
    let dir = root(state).join(name);
    // The metadata goes first: a removal cut short leaves no volume that
    // looks whole.
    let _ = std::fs::remove_file(meta_path(state, name));
    std::fs::remove_dir_all(&dir)
        .map_err(|e| Error::host(format!("removing {}: {e}", dir.display())))
}

/// Removes the unused volumes that `keep` does not keep (only anonymous
/// ones unless `all`, as `docker volume prune` since Docker 23); returns
/// their names and the bytes freed.
pub fn prune(
    state: &Path,
    all: bool,
    keep: &dyn Fn(&Volume) -> bool,
) -> Result<(Vec<String>, u64)> {
    let _lock = lock(state)?;
    let used = usage(state);
    let mut gone = Vec::new();
    let mut bytes = 0;
    for v in list(state) {
        if (!all && !v.anonymous) || keep(&v) || used.contains_key(&v.name) {
            continue;
        }
        let size = disk_usage(&v.mountpoint);
        if remove_locked(state, &v.name).is_ok() {
            bytes += size;
            gone.push(v.name);
        }
    }
    Ok((gone, bytes))
}

/// Bytes used by the files under `dir` (not following symlinks).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// At create: makes the volumes the mounts name (named ones that do not
/// exist yet, and anonymous ones, which get their names here) and the
/// missing sources of `-v` binds; refuses a missing `--mount` bind.
pub fn prepare(state: &Path, mounts: &mut [Mount]) -> Result<()> {
    for m in mounts.iter_mut() {
        match m.kind {
            Kind::Volume => {
                let labels: BTreeMap<String, String> = m.volume_labels.iter().cloned().collect();
                let name = (!m.source.is_empty()).then_some(m.source.as_str());
                let v = create(state, name, &labels, m.anonymous)?;
                m.source = v.name;
            }
            Kind::Bind => match path::open_dir(Path::new(&m.source)) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && m.create_source => {
                    path::make_dirs(Path::new(&m.source)).map_err(|e| {
                        Error::invalid(format!("creating bind source: {e}"))
                    })?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::invalid(format!(
                        "invalid mount config for type \"bind\": bind source path does not exist: {}",
                        m.source
                    )))
                }
                Err(e) => return Err(Error::invalid(format!("bind source {e}"))),
            },
            Kind::Tmpfs => {}
        }
    }
    Ok(())
}

/// `rm -v`, `--rm`: removes the container's anonymous volumes that no
/// other container uses.
pub fn remove_anonymous(state: &Path, c: &Container) {
    for m in &c.config.mounts {
        if m.kind != Kind::Volume || !m.anonymous || mounts::check_volume_name(&m.source).is_err() {
            continue;
        }
        let Ok(_lock) = lock(state) else { return };
        let others = users(state, &m.source)
            .iter()
            .any(|o| o.config.id != c.config.id);
        if !others {
            let _ = std::fs::remove_file(meta_path(state, &m.source));
            let _ = std::fs::remove_dir_all(root(state).join(&m.source));
        }
    }
}
