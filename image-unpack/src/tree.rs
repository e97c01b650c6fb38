//! File-system operations confined to the root: every directory is opened
//! with openat2(RESOLVE_IN_ROOT) and the final component is handled with
//! *at() calls that do not follow it.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{self, AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::{Error, Result};

fn fs_err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(rustix::io::Errno) -> Error + 'a {
    move |e| Error::Fs {
        op,
        path: path.to_string(),
        source: e.into(),
    }
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Open directory `rel` (components joined) inside `root`, creating
/// missing directories (mode 0755) on the way, as tar extraction does.
/// Symlinks on the way are followed inside the root (image layers write
/// through links such as `/lib -> usr/lib`) unless `no_symlinks`: a copy
/// must not reach, through a link its own archive made, places beside the
/// name it was asked for.
pub fn open_dir(root: &OwnedFd, comps: &[String], no_symlinks: bool) -> Result<OwnedFd> {
    let resolve = if no_symlinks {
        RESOLVE.union(ResolveFlags::NO_SYMLINKS)
    } else {
        RESOLVE
    };
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    // Nearly always the directory is there already: one lookup. A name
    // missing on the way (or any other failure, reported precisely)
    // takes the walk below.
    if !comps.is_empty() {
        if let Ok(dir) = fs::openat2(
            root,
            comps.join("/").as_str(),
            flags,
            Mode::empty(),
            resolve,
        ) {
            return Ok(dir);
        }
    }
    let mut dir =
        fs::openat2(root, ".", flags, Mode::empty(), resolve).map_err(fs_err("open", "/"))?;
    for (i, c) in comps.iter().enumerate() {
        let so_far = comps[..=i].join("/");
        dir = match fs::openat2(root, so_far.as_str(), flags, Mode::empty(), resolve) {
            Ok(d) => d,
            Err(rustix::io::Errno::NOENT) => {
                match fs::mkdirat(&dir, c.as_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(fs_err("mkdir", &so_far)(e)),
                }
                fs::openat2(root, so_far.as_str(), flags, Mode::empty(), resolve)
                    .map_err(fs_err("open", &so_far))?
            }
            Err(e) => return Err(fs_err("open", &so_far)(e)),
        };
    }
    Ok(dir)
}

/// What is at `name` in `dir`, without following a symlink.
pub fn kind_at(dir: &OwnedFd, name: &str) -> Option<FileType> {
    fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| FileType::from_raw_mode(st.st_mode))
}

/// Remove `name` in `dir`, recursively if it is a directory; a symlink is
/// removed itself, never followed.
pub fn remove_all(dir: &OwnedFd, name: &str, path: &str) -> Result<()> {
    match kind_at(dir, name) {
        None => Ok(()),
        Some(FileType::Directory) => {
            let sub = fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(fs_err("open", path))?;
            for child in children(&sub, path)? {
                remove_all(&sub, &child, &format!("{path}/{child}"))?;
            }
            fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(fs_err("rmdir", path))
        }
        Some(_) => fs::unlinkat(dir, name, AtFlags::empty()).map_err(fs_err("unlink", path)),
    }
}

/// Names in a directory, without `.` and `..`.
pub fn children(dir: &impl AsFd, path: &str) -> Result<Vec<String>> {
    let mut d = fs::Dir::read_from(dir).map_err(fs_err("read", path))?;
    let mut out = Vec::new();
    while let Some(e) = d.read() {
        let e = e.map_err(fs_err("read", path))?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            out.push(n);
        }
    }
    Ok(out)
}
