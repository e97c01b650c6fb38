//! Reading files out of a tar archive in place: the archive is indexed
//! once (names, offsets, sizes) and blobs are then read straight from
//! the archive file, never copied out. Only the archive's own table of
//! contents is parsed here, not the layers inside it.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use crate::{BlobSource, Error, Result};

/// More entries than any image archive has; a cap for a hostile file.
const MAX_ENTRIES: usize = 100_000;
/// Symlinks followed to reach one file.
const MAX_LINKS: usize = 8;

pub struct Archive {
    path: PathBuf,
    files: HashMap<String, (u64, u64)>,
    links: HashMap<String, String>,
}

impl Archive {
    pub fn index(path: &Path) -> Result<Self> {
        let read_err = |source| Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |detail: String| Error::Invalid {
            what: format!("archive {}", path.display()),
            detail,
        };
        // Not a FIFO or a device, which could hold the open or the reads
        // for ever: a regular file, checked on the descriptor.
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(read_err)?
        };
        if !file.metadata().map_err(read_err)?.is_file() {
            return Err(invalid("not a regular file".into()));
        }
        let mut ar = tar::Archive::new(file);
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        for (n, entry) in ar.entries().map_err(read_err)?.enumerate() {
            if n >= MAX_ENTRIES {
                return Err(invalid(format!("more than {MAX_ENTRIES} entries")));
            }
            // tar's message can quote the bad header's bytes: say only
            // what is wrong, and where.
            let entry = entry.map_err(|e| {
                let what = e.to_string();
                let what = what.split([':', '\n']).next().unwrap_or_default();
                invalid(format!(
                    "not a tar archive, or a damaged one (entry {n}: {what}); expected a docker-archive or oci-archive file"
                ))
            })?;
            let name = {
                let p = entry.path().map_err(|e| invalid(e.to_string()))?;
                match normalize(&p) {
                    Some(n) => n,
                    None => continue,
                }
            };
            let kind = entry.header().entry_type();
            if kind.is_file() {
                files.insert(name, (entry.raw_file_position(), entry.size()));
            } else if kind.is_symlink() {
                if let Ok(Some(target)) = entry.link_name() {
                    let base = Path::new(&name).parent().unwrap_or(Path::new(""));
                    if let Some(t) = normalize(&base.join(target)) {
                        links.insert(name, t);
                    }
                }
            } else if kind.is_hard_link() {
                if let Ok(Some(target)) = entry.link_name() {
                    if let Some(t) = normalize(&target) {
                        links.insert(name, t);
                    }
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            files,
            links,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file named `name` (relative, `/`-separated), following links.
    pub fn get(&self, name: &str) -> Option<BlobSource> {
        let mut name = normalize(Path::new(name))?;
        for _ in 0..=MAX_LINKS {
            if let Some(&(offset, size)) = self.files.get(&name) {
                return Some(BlobSource {
                    path: self.path.clone(),
                    offset,
                    size,
                });
            }
            name = self.links.get(&name)?.clone();
        }
        None
    }
}

/// `./a/b` -> `a/b`; `None` for anything that leaves the archive's root
/// (absolute paths, `..`), which no image archive needs.
fn normalize(p: &Path) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}
