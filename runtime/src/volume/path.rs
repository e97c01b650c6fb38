//! Host directories reached without following symbolic links. A bind
//! source may lie in a directory that some container's guest can write
//! (another container's bind mount or volume): a guest that swapped a
//! directory on the way for a symlink to `/` must not get the host's root
//! shared with the next container that starts. So every component of a
//! source path must be a real directory, when the container is created
//! and again each time it starts, and the daemon is given the directory
//! that was checked (as its working directory), not a path to resolve
//! again.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

fn how() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

fn explain(path: &Path, e: Errno) -> io::Error {
    match e {
        Errno::ELOOP => io::Error::other(format!(
            "{} goes through a symbolic link, which a container could have put there; name the real directory instead{}",
            path.display(),
            std::fs::canonicalize(path)
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default()
        )),
        Errno::ENOTDIR => io::Error::other(format!(
            "{} is not a directory: only directories can be shared with a VM; put the file in a directory of its own and mount that",
            path.display()
        )),
        e => io::Error::other(format!("{}: {e}", path.display())),
    }
}

/// The directory at absolute `path`, opened without following any
/// symbolic link on the way.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    openat2(nix::fcntl::AT_FDCWD, path, how()).map_err(|e| match e {
        Errno::ENOENT => io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} does not exist", path.display()),
        ),
        e => explain(path, e),
    })
}

/// `base/rel` (rel relative), not leaving `base` and following no
/// symbolic link below it.
pub fn open_beneath(base: &Path, rel: &Path) -> io::Result<OwnedFd> {
    let dir = open_dir_following(base)?;
    openat2(
        &dir,
        rel,
        how().resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH),
    )
    .map_err(|e| explain(&base.join(rel), e))
}

fn open_dir_following(path: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
}

/// Makes the directory at absolute `path` and its missing parents (mode
/// 0755), following no symbolic link on the way.
pub fn make_dirs(path: &Path) -> io::Result<()> {
    let mut dir = open_dir(Path::new("/"))?;
    let mut sofar = std::path::PathBuf::from("/");
    for c in path.components() {
        let Component::Normal(name) = c else { continue };
        sofar.push(name);
        match nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(explain(&sofar, e)),
        }
        dir = openat2(&dir, name, how()).map_err(|e| explain(&sofar, e))?;
    }
    Ok(())
}
