//! The container's volumes, bind mounts and tmpfs mounts, made in its
//! mount namespace once its root is in place (so every target resolves
//! inside the container's root), before the root is made read-only.
//! A new, empty volume first gets a copy of what the image has at its
//! target, as Docker does.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use agent_protocol::{Mount, MountSource};
use nix::dir::Dir;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{
    fstat, fstatat, mkdirat, mknodat, utimensat, FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, symlinkat, Gid, Uid};

type R = Result<(), String>;

/// Deeper trees than this are not copied up (a hostile image's, most
/// likely).
const MAX_DEPTH: usize = 256;

/// Mounts each of `mounts`, parents first (the host sends them so).
pub fn mount_all(mounts: &[Mount]) -> R {
    for m in mounts {
        let target = Path::new(&m.target);
        match std::fs::metadata(target) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "mount target {} is not a directory in the image",
                    m.target
                ))
            }
            Err(_) => std::fs::create_dir_all(target)
                .map_err(|e| format!("creating mount point {}: {e}", m.target))?,
        }
        let ro = if m.read_only {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        match &m.source {
            MountSource::Virtiofs { tag, copy_up: copy } => {
                // Opened before the mount hides it: the image's files.
                let image_dir = if *copy {
                    Some(open_dir(None, target).map_err(|e| format!("{}: {e}", m.target))?)
                } else {
                    None
                };
                mount(
                    Some(tag.as_str()),
                    target,
                    Some("virtiofs"),
                    ro,
                    None::<&str>,
                )
                .map_err(|e| format!("mounting the volume at {}: {e}", m.target))?;
                if let Some(src) = image_dir {
                    let dst = open_dir(None, target).map_err(|e| format!("{}: {e}", m.target))?;
                    copy_up(&src, &dst, 0).map_err(|e| {
                        format!("copying the image's {} into its volume: {e}", m.target)
                    })?;
                }
            }
            MountSource::Tmpfs { size, mode, exec } => {
                let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | ro;
                if !exec {
                    flags |= MsFlags::MS_NOEXEC;
                }
                let mut data = Vec::new();
                if *size > 0 {
                    data.push(format!("size={size}"));
                }
                if let Some(mode) = mode {
                    data.push(format!("mode={mode:o}"));
                }
                mount(
                    Some("tmpfs"),
                    target,
                    Some("tmpfs"),
                    flags,
                    Some(data.join(",").as_str()),
                )
                .map_err(|e| format!("mounting a tmpfs at {}: {e}", m.target))?;
            }
        }
    }
    Ok(())
}

fn open_dir(at: Option<&OwnedFd>, path: &(impl nix::NixPath + ?Sized)) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match at {
        Some(fd) => openat(fd, path, flags, Mode::empty()),
        None => openat(nix::fcntl::AT_FDCWD, path, flags, Mode::empty()),
    }
}

/// Copies the tree under `src` into `dst` (an empty directory): files,
/// directories, symlinks, FIFOs and sockets with their owners, modes and
/// times; device nodes only where the volume allows them (the host's
/// daemon refuses them), and the top directory's owner and mode too.
fn copy_up(src: &OwnedFd, dst: &OwnedFd, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("directories nested deeper than {MAX_DEPTH}"));
    }
    let mut dir =
        Dir::from_fd(src.try_clone().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    for entry in dir.iter() {
        let entry = entry.map_err(|e| format!("reading a directory: {e}"))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        copy_entry(src, dst, name, depth)
            .map_err(|e| format!("{}: {e}", name.to_string_lossy()))?;
    }
    if depth == 0 {
        let st = fstat(src).map_err(|e| e.to_string())?;
        set_owner_mode(dst, &st, Mode::from_bits_truncate(st.st_mode & 0o7777))?;
    }
    Ok(())
}

fn copy_entry(src: &OwnedFd, dst: &OwnedFd, name: &CStr, depth: usize) -> Result<(), String> {
    let st = fstatat(src, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| e.to_string())?;
    let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
    let perm = Mode::from_bits_truncate(st.st_mode & 0o7777);
    match kind {
        SFlag::S_IFDIR => {
            mkdirat(dst, name, Mode::from_bits_truncate(0o700))
                .map_err(|e| format!("mkdir: {e}"))?;
            let s = open_dir(Some(src), name).map_err(|e| e.to_string())?;
            let d = open_dir(Some(dst), name).map_err(|e| e.to_string())?;
            copy_up(&s, &d, depth + 1)?;
            set_owner_mode(&d, &st, perm)?;
            times(dst, name, &st)
        }
        SFlag::S_IFREG => {
            let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let s = File::from(openat(src, name, flags, Mode::empty()).map_err(|e| e.to_string())?);
            let flags = OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            let mut d = File::from(
                openat(dst, name, flags, Mode::from_bits_truncate(0o600))
                    .map_err(|e| format!("create: {e}"))?,
            );
            std::io::copy(&mut &s, &mut d).map_err(|e| format!("copy: {e}"))?;
            // The owner before the mode: chown clears set-id bits.
            set_owner_mode(&d, &st, perm)?;
            times(dst, name, &st)
        }
        SFlag::S_IFLNK => {
            let target = nix::fcntl::readlinkat(src, name).map_err(|e| format!("readlink: {e}"))?;
            symlinkat(target.as_os_str(), dst, name).map_err(|e| format!("symlink: {e}"))?;
            chown_at(dst, name, &st)?;
            times(dst, name, &st)
        }
        _ => {
            match mknodat(dst, name, kind, perm, st.st_rdev) {
                Ok(()) => {}
                // Device nodes: the host's daemon may not make them.
                Err(nix::errno::Errno::EPERM)
                    if matches!(kind, SFlag::S_IFCHR | SFlag::S_IFBLK) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(format!("mknod: {e}")),
            }
            chown_at(dst, name, &st)?;
            times(dst, name, &st)
        }
    }
}

fn set_owner_mode(fd: &impl AsFd, st: &FileStat, perm: Mode) -> R {
    fchown(
        fd,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
    )
    .or_else(unmapped_owner)
    .map_err(|e| format!("chown: {e}"))?;
    nix::sys::stat::fchmod(fd, perm).map_err(|e| format!("chmod: {e}"))
}

/// Gives `name` in `dir` (not following a symlink) the owner in `st`.
fn chown_at(dir: &OwnedFd, name: &CStr, st: &FileStat) -> R {
    fchownat(
        dir,
        name,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .or_else(unmapped_owner)
    .map_err(|e| format!("chown: {e}"))
}

/// A chown that the host's daemon cannot do because it maps no such
/// owner (the daemon of a user who is not root maps only that user):
/// the file stays the volume owner's, and the copy goes on.
fn unmapped_owner(e: nix::errno::Errno) -> nix::Result<()> {
    match e {
        nix::errno::Errno::EINVAL | nix::errno::Errno::EPERM => Ok(()),
        e => Err(e),
    }
}

fn times(dir: &OwnedFd, name: &CStr, st: &FileStat) -> R {
    let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
    let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    utimensat(dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| format!("setting times: {e}"))
}
