//! The scratch disk: a sparse file with an empty ext4 file system that
//! holds the unpacked image and the container's writes. It lives in the
//! run directory and goes away with it.

use std::path::Path;
use std::process::Command;

/// Sparse size: room for big images; only what is written takes space.
pub const SIZE: u64 = 16 << 30;

pub fn create(path: &Path) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.set_len(SIZE)
        .map_err(|e| format!("sizing {}: {e}", path.display()))?;
    drop(f);
    // No journal (the disk dies with the VM), no reserved blocks, one inode
    // per 32 KiB, inode tables left for the guest to skip (noinit_itable).
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-m", "0", "-i", "32768"])
        .args(["-E", "lazy_itable_init=1,nodiscard", "-L", "vm-scratch"])
        .arg(path)
        .output()
        .map_err(|e| {
            format!("cannot run mkfs.ext4 ({e}); install e2fsprogs (apt-get install e2fsprogs)")
        })?;
    if !out.status.success() {
        return Err(format!(
            "mkfs.ext4 {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
