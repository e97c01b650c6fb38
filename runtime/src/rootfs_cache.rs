//! Unpacked root file systems kept for the next run of the same image.
//!
//! An entry is an ext4 disk image named by a hash of the verified layer
//! digests (and the unpack recipe). The first run gets an empty one to
//! unpack onto; when the agent reports it sealed (synced, remounted
//! read-only, before any container code runs) the host makes the device
//! refuse writes, flushes the file and renames it into place. Later runs
//! attach it read-only and skip unpacking.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use devices::virtio::block::Seal;

use crate::scratch;

/// The most the cached root file systems may take together (allocated
/// bytes): a first run publishes what its guest unpacked, up to the image
/// disk's 16 GiB, so without a cap a few small gzip bombs would fill the
/// host's disk for good. VM_ROOTFS_CACHE_SIZE overrides (e.g. 8g).
const CACHE_MAX: u64 = 32 << 30;
/// An entry used this recently is not evicted: a run that has just chosen
/// it may not have opened it yet.
const EVICT_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Bump when what the agent makes of the same layers changes.
const RECIPE: &str = "vm-rootfs-2";

pub enum Entry {
    /// Unpacked before: attach read-only.
    Hit(PathBuf),
    /// Unpack onto `tmp`, then `seal` it.
    Miss(Pending),
}

pub struct Pending {
    pub tmp: PathBuf,
    path: PathBuf,
    /// Handed to the VMM's image disk; the VMM seals it.
    pub seal: Arc<Seal>,
    done: bool,
}

/// The state directory: `--root`, else `VM_ROOT`, else /var/lib/vm for
/// root and `$XDG_DATA_HOME/vm` (or ~/.local/share/vm) for others.
pub fn state_root(flag: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("VM_ROOT").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/vm"));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(x).join("vm"));
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/share/vm"))
        .ok_or_else(|| "no state directory: set VM_ROOT or HOME".to_string())
}

/// The cache key of an image's root file system: each layer's digest and
/// how it is compressed (a blob that is valid both as a gzip stream and as
/// a plain tar unpacks differently under each media type).
pub fn key(image: &vm_image::Image) -> String {
    use vm_image::Compression;
    let mut text = RECIPE.to_string();
    for l in &image.layers {
        let how = match l.compression {
            Compression::None => "tar",
            Compression::Gzip => "tar+gzip",
            Compression::Zstd => "tar+zstd",
        };
        text.push_str(&format!("\n{} {how}", l.digest));
    }
    vm_image::Digest::of_bytes(text.as_bytes())
        .hex()
        .to_string()
}

pub fn lookup(root: &Path, key: &str, run_id: &str) -> Result<Entry, String> {
    let dir = root.join("rootfs");
    // Unpacked images are private to the state's owner, as the store is.
    crate::container::private_dir(&dir).map_err(|e| e.message)?;
    let path = dir.join(format!("{key}.ext4"));
    if path.is_file() {
        // Used now: the last to be evicted.
        let _ = std::fs::File::open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        return Ok(Entry::Hit(path));
    }
    let tmp = dir.join(format!(".tmp-{run_id}.ext4"));
    scratch::create(root, &tmp)?;
    // (the template sits in `root`, the same file system as `dir`)
    Ok(Entry::Miss(Pending {
        tmp,
        path,
        seal: Arc::new(Seal::new()),
        done: false,
    }))
}

/// Deletes the cached root file systems whose file names are not in
/// `used`; returns how many and their allocated bytes. A run that has one
/// attached keeps reading it (the file goes when it closes).
pub fn prune(
    root: &Path,
    used: &std::collections::HashSet<String>,
) -> Result<(usize, u64), String> {
    use std::os::unix::fs::MetadataExt;
    let dir = root.join("rootfs");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let (mut n, mut bytes) = (0, 0);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Temporary files belong to runs in progress.
        if name.starts_with('.') || !name.ends_with(".ext4") || used.contains(&name) {
            continue;
        }
        let size = e.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        if std::fs::remove_file(e.path()).is_ok() {
            n += 1;
            bytes += size;
        }
    }
    Ok((n, bytes))
}

impl Pending {
    /// The VMM has sealed the disk (it takes no more writes, and the VMM
    /// holds it read-only): make the file read-only, flush it through a
    /// read-only descriptor and publish it. A concurrent run that
    /// published first wins; ours is dropped.
    pub fn publish(&mut self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let f =
            std::fs::File::open(&self.tmp).map_err(|e| format!("{}: {e}", self.tmp.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o400))
            .map_err(|e| format!("{}: {e}", self.tmp.display()))?;
        f.sync_all()
            .map_err(|e| format!("flushing {}: {e}", self.tmp.display()))?;
        if !self.path.exists() {
            std::fs::rename(&self.tmp, &self.path)
                .map_err(|e| format!("storing {}: {e}", self.path.display()))?;
            self.done = true;
            if let Some(dir) = self.path.parent() {
                evict(dir, cache_max(), &self.path);
            }
        }
        Ok(())
    }
}

fn cache_max() -> u64 {
    std::env::var("VM_ROOTFS_CACHE_SIZE")
        .ok()
        .and_then(|v| crate::spec::parse_memory(&v).ok())
        .map_or(CACHE_MAX, |mib| mib << 20)
}

/// Deletes the least recently used entries (oldest modification time: a
/// hit refreshes it) until the rest take at most `cap` bytes on disk;
/// `keep` (the entry just published) and entries used in the last
/// EVICT_GRACE stay whatever their size. A run that has an entry attached
/// keeps reading it. Returns how many went.
pub fn evict(dir: &Path, cap: u64, keep: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut all: Vec<(SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.') && name.ends_with(".ext4")
        })
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.blocks() * 512, e.path()))
        })
        .collect();
    let mut total: u64 = all.iter().map(|(_, size, _)| size).sum();
    all.sort();
    let now = SystemTime::now();
    let mut gone = 0;
    for (when, size, path) in all {
        if total <= cap {
            break;
        }
        let recent = now.duration_since(when).is_ok_and(|age| age < EVICT_GRACE);
        if path == keep || recent {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            total = total.saturating_sub(size);
            gone += 1;
        }
    }
    gone
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_least_recently_used_entries_go_first_and_the_new_one_stays() {
        let dir = std::env::temp_dir().join(format!("vm-rootfs-evict-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let t0 = SystemTime::now() - Duration::from_secs(3600);
        // a (oldest), b, c: 1 MiB of data each; d is the one just made,
        // and older than all of them (a clock may go back).
        let mut paths = Vec::new();
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let p = dir.join(format!("{name}.ext4"));
            std::fs::write(&p, vec![1u8; 1 << 20]).expect("write");
            let when = if *name == "d" {
                t0
            } else {
                t0 + Duration::from_secs(60 * (i as u64 + 1))
            };
            std::fs::File::open(&p)
                .and_then(|f| f.set_modified(when))
                .expect("mtime");
            paths.push(p);
        }
        std::fs::write(dir.join(".tmp-run.ext4"), vec![1u8; 1 << 20]).expect("tmp");
        // Room for two and a half: d stays, a and b go.
        assert_eq!(evict(&dir, 5 << 19, &paths[3]), 2);
        let left: Vec<bool> = paths.iter().map(|p| p.exists()).collect();
        assert_eq!(left, [false, false, true, true]);
        assert!(
            dir.join(".tmp-run.ext4").exists(),
            "a run's unpacking is not the cache's"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
