//! Owner, mode, times and extended attributes of an entry once it exists.
//!
//! Regular files and directories get theirs through the descriptor they
//! were made with: no path is looked up again (a lookup is most of the
//! cost of a small file under emulation), and nothing anyone put at the
//! name meanwhile can receive them. Other kinds go by name, never
//! following a symlink.

use std::os::fd::{AsRawFd, OwnedFd};

use rustix::fs::{self, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use crate::layer::{corrupt, fs_err, Options};
use crate::Result;

fn owner(header: &tar::Header) -> Result<(fs::Uid, fs::Gid)> {
    let uid = u32::try_from(header.uid().map_err(corrupt)?).map_err(corrupt)?;
    let gid = u32::try_from(header.gid().map_err(corrupt)?).map_err(corrupt)?;
    Ok((fs::Uid::from_raw(uid), fs::Gid::from_raw(gid)))
}

fn times(header: &tar::Header) -> Timestamps {
    let mtime = header.mtime().unwrap_or(0);
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Owner, then mode (chown clears setuid and setgid), then times (after
/// the data, whose writes would move them), on the entry open as `fd`.
pub fn set_on_fd(
    fd: &OwnedFd,
    path: &str,
    header: &tar::Header,
    mode: u32,
    opts: Options,
) -> Result<()> {
    if opts.set_owner {
        let (u, g) = owner(header)?;
        fs::fchown(fd, Some(u), Some(g)).map_err(|e| fs_err("chown", path, e))?;
    }
    fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(|e| fs_err("chmod", path, e))?;
    fs::futimens(fd, &times(header)).map_err(|e| fs_err("utimes", path, e))
}

/// The same for `name` in `dir`, never following it.
pub fn set_at(
    dir: &OwnedFd,
    name: &str,
    path: &str,
    header: &tar::Header,
    mode: u32,
    kind: tar::EntryType,
    opts: Options,
) -> Result<()> {
    if opts.set_owner {
        let (u, g) = owner(header)?;
        fs::chownat(dir, name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fs_err("chown", path, e))?;
    }
    if kind != tar::EntryType::Symlink {
        chmod_nofollow(dir, name, mode).map_err(|e| fs_err("chmod", path, e))?;
    }
    fs::utimensat(dir, name, &times(header), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| fs_err("utimes", path, e))
}

/// chmod that never follows a symlink: whoever else can write the
/// directory may have swapped `name` for one since it was made. The mode
/// goes on the inode `name` is now, through a descriptor of it; a symlink
/// found there is left alone.
fn chmod_nofollow(dir: &OwnedFd, name: &str, mode: u32) -> rustix::io::Result<()> {
    let fd = fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        return Ok(());
    }
    // (Needs /proc, which the guest agent and any host have.)
    let magic = format!("/proc/self/fd/{}", fd.as_raw_fd());
    fs::chmod(magic.as_str(), Mode::from_raw_mode(mode))
}

/// Sets extended attributes on the entry open as `fd`. Returns how many
/// the file system refused as unsupported.
pub fn set_xattrs_on_fd(fd: &OwnedFd, path: &str, attrs: &[(String, Vec<u8>)]) -> Result<u64> {
    set_xattrs(path, attrs, |key, value| {
        fs::fsetxattr(fd, key, value, fs::XattrFlags::empty())
    })
}

/// Sets extended attributes on `name` (never following it, even if it is
/// a symlink: the path goes through our descriptor of its directory).
pub fn set_xattrs_at(
    dir: &OwnedFd,
    name: &str,
    path: &str,
    attrs: &[(String, Vec<u8>)],
) -> Result<u64> {
    if attrs.is_empty() {
        return Ok(0);
    }
    let at = format!("/proc/self/fd/{}/{name}", dir.as_raw_fd());
    set_xattrs(path, attrs, |key, value| {
        fs::lsetxattr(at.as_str(), key, value, fs::XattrFlags::empty())
    })
}

/// Sets each attribute with `set`, counting those the file system does
/// not support.
fn set_xattrs(
    path: &str,
    attrs: &[(String, Vec<u8>)],
    set: impl Fn(&str, &[u8]) -> rustix::io::Result<()>,
) -> Result<u64> {
    let mut skipped = 0;
    for (key, value) in attrs {
        match set(key.as_str(), value) {
            Ok(()) => {}
            Err(rustix::io::Errno::OPNOTSUPP) => skipped += 1,
            Err(e) => return Err(fs_err("setxattr", path, e)),
        }
    }
    Ok(skipped)
}
