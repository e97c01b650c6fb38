//! Empty ext4 disks: the scratch disk (the container's writes) and the
//! disk an image is unpacked onto. Each is a sparse file; only what is
//! written takes space. Running mkfs.ext4 for every run costs more than
//! the rest of the host's set-up, so one formatted template is kept in
//! the state directory and its few data extents are copied.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Sparse size: room for big images; only what is written takes space.
pub const SIZE: u64 = 16 << 30;
/// The smallest disk `--storage-opt size=` may ask for, in MiB.
pub const MIN_SIZE_MIB: u64 = 64;
/// Bump when the mkfs options change.
const TEMPLATE: &str = "empty-ext4-v1";

/// Makes `path` a fresh, empty ext4 disk of the default size.
pub fn create(state: &Path, path: &Path) -> Result<(), String> {
    create_sized(state, path, SIZE)
}

/// Makes `path` a fresh, empty ext4 disk of `size` bytes (one template is
/// kept per size asked for).
pub fn create_sized(state: &Path, path: &Path, size: u64) -> Result<(), String> {
    let template = template(state, size)?;
    match sparse_copy(&template, path) {
        Ok(()) => Ok(()),
        // The file system cannot tell holes from data (9p, some network
        // file systems): copying would read gigabytes of zeros.
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            let _ = std::fs::remove_file(path);
            mkfs(path, size)
        }
        Err(e) => Err(format!(
            "copying {} to {}: {e}",
            template.display(),
            path.display()
        )),
    }
}

fn template(state: &Path, size: u64) -> Result<PathBuf, String> {
    let name = if size == SIZE {
        format!("{TEMPLATE}-16g.img")
    } else {
        format!("{TEMPLATE}-{}m.img", size >> 20)
    };
    let path = state.join(&name);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(state).map_err(|e| format!("creating {}: {e}", state.display()))?;
    let tmp = state.join(format!(".{name}.{}", std::process::id()));
    let made = mkfs(&tmp, size).and_then(|()| {
        std::fs::rename(&tmp, &path).map_err(|e| format!("storing {}: {e}", path.display()))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made.map(|()| path)
}

fn mkfs(path: &Path, size: u64) -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.set_len(size)
        .map_err(|e| format!("sizing {}: {e}", path.display()))?;
    drop(f);
    // No journal (the disk dies with the VM, or is sealed read-only), no
    // reserved blocks, one inode per 32 KiB, inode tables left for the
    // guest to skip (it mounts with noinit_itable).
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-m", "0", "-i", "32768"])
        .args(["-E", "lazy_itable_init=1,nodiscard"])
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

/// Copies the data extents of `src` into a new sparse file `dst` of the
/// same size (SEEK_DATA/SEEK_HOLE, then copy_file_range).
pub fn sparse_copy(src: &Path, dst: &Path) -> io::Result<()> {
    let from = File::open(src)?;
    let meta = from.metadata()?;
    let len = meta.len();
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: lseek on an open descriptor; no memory is passed.
        let hole = unsafe { libc::lseek(from.as_raw_fd(), 0, libc::SEEK_HOLE) };
        let allocated = meta.blocks().saturating_mul(512);
        if u64::try_from(hole).is_ok_and(|h| h >= len) && allocated < len / 2 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the file system does not report holes",
            ));
        }
    }
    // A container's writes and an unpacked image: the owner's alone.
    let to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    to.set_len(len)?;
    let mut pos: i64 = 0;
    let end = i64::try_from(len).map_err(io::Error::other)?;
    let mut by_hand = false;
    while pos < end {
        // SAFETY: lseek on an open descriptor; no memory is passed.
        let data = unsafe { libc::lseek(from.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(from.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        if !by_hand {
            match copy_extent(&from, &to, data, hole) {
                Ok(()) => {}
                // Not between these file systems: copy by hand from here.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS)
                    ) =>
                {
                    by_hand = true
                }
                Err(e) => return Err(e),
            }
        }
        if by_hand {
            copy_range(&from, &to, data, hole)?;
        }
        pos = hole;
    }
    Ok(())
}

/// One data extent with copy_file_range.
fn copy_extent(from: &File, to: &File, start: i64, end: i64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (start, start);
    while off_in < end {
        let want = usize::try_from(end - off_in).unwrap_or(usize::MAX);
        // SAFETY: both descriptors are open; the offsets point to locals
        // that the kernel updates.
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut off_in,
                to.as_raw_fd(),
                &mut off_out,
                want,
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// Copies `[start, end)` with pread/pwrite, skipping all-zero chunks so
/// the destination stays sparse.
fn copy_range(from: &File, to: &File, start: i64, end: i64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = u64::try_from(start).map_err(io::Error::other)?;
    let end = u64::try_from(end).map_err(io::Error::other)?;
    while off < end {
        let want = usize::try_from(end - off)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = from.read_at(&mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            to.write_all_at(&buf[..n], off)?;
        }
        off += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = std::env::temp_dir().join(format!("vm-sparse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let src = dir.join("src");
        let mut f = File::create(&src).expect("create");
        f.set_len(64 << 20).expect("len");
        f.write_all(b"head").expect("write");
        f.seek(SeekFrom::Start(40 << 20)).expect("seek");
        f.write_all(b"middle").expect("write");
        drop(f);
        let dst = dir.join("dst");
        sparse_copy(&src, &dst).expect("copy");
        assert_eq!(
            std::fs::read(&src).expect("src"),
            std::fs::read(&dst).expect("dst")
        );
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&dst).expect("meta").blocks();
        assert!(blocks < 1024, "the copy is not sparse: {blocks} blocks");
        // It never overwrites.
        assert!(sparse_copy(&src, &dst).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
