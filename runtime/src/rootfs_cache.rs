//! Unpacked root file systems kept for the next run of the same image.
//!
//! An entry is an ext4 disk image named by a hash of the verified layer
//! digests (and the unpack recipe). The first run gets an empty one to
//! unpack onto; when the agent reports it sealed (synced, remounted
//! read-only, before any container code runs) the host makes the device
//! refuse writes, flushes the file and renames it into place. Later runs
//! attach it read-only and skip unpacking.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::scratch;

/// Bump when what the agent makes of the same layers changes.
const RECIPE: &str = "vm-rootfs-1";

pub enum Entry {
    /// Unpacked before: attach read-only.
    Hit(PathBuf),
    /// Unpack onto `tmp`, then `seal` it.
    Miss(Pending),
}

pub struct Pending {
    pub tmp: PathBuf,
    path: PathBuf,
    pub flag: Arc<AtomicBool>,
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

pub fn key(layer_digests: &[String]) -> String {
    let mut text = RECIPE.to_string();
    for d in layer_digests {
        text.push('\n');
        text.push_str(d);
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
        return Ok(Entry::Hit(path));
    }
    let tmp = dir.join(format!(".tmp-{run_id}.ext4"));
    scratch::create(root, &tmp)?;
    // (the template sits in `root`, the same file system as `dir`)
    Ok(Entry::Miss(Pending {
        tmp,
        path,
        flag: Arc::new(AtomicBool::new(false)),
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
    /// The agent is done writing: refuse further writes, flush, publish.
    /// A concurrent run that published first wins; ours is dropped.
    pub fn seal(&mut self) -> Result<(), String> {
        self.flag.store(true, Ordering::Release);
        let f =
            std::fs::File::open(&self.tmp).map_err(|e| format!("{}: {e}", self.tmp.display()))?;
        f.sync_all()
            .map_err(|e| format!("flushing {}: {e}", self.tmp.display()))?;
        if !self.path.exists() {
            std::fs::rename(&self.tmp, &self.path)
                .map_err(|e| format!("storing {}: {e}", self.path.display()))?;
            self.done = true;
        }
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
