//! `vm cp` and `vm export`: a path archived as `docker cp` sends it, and
//! an archive put at a destination as `docker cp` puts it, under the same
//! rules as a layer (every path resolved inside the destination, `..`
//! refused, no device nodes unless asked for). The archive may come from
//! a hostile guest; the destination is then on the host.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::layer::{apply, Shape};
use crate::{Compression, Error, Limits, Options, Result};

fn io_err(op: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Fs {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Writes a tar archive of `path` to `out`: its own entry is `name`, its
/// descendants are below `name`. Symlinks are archived, never followed;
/// sockets are left out; a file that goes away meanwhile is skipped.
pub fn pack<W: Write>(out: W, path: &Path, name: &Path) -> Result<W> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    add(&mut b, path, name, None)?;
    b.into_inner().map_err(|e| io_err("write", path, e))
}

/// Writes a tar archive of the tree at `root` (names relative to it, no
/// entry for `root` itself) without descending into other file systems
/// mounted below it: their mount points are archived, empty.
pub fn pack_root<W: Write>(out: W, root: &Path) -> Result<W> {
    let dev = std::fs::symlink_metadata(root)
        .map_err(|e| io_err("stat", root, e))?
        .dev();
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    add(&mut b, root, Path::new(""), Some(dev))?;
    b.into_inner().map_err(|e| io_err("write", root, e))
}

fn add<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    dev: Option<u64>,
) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", path, e)),
    };
    let ft = meta.file_type();
    if !ft.is_dir() {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_socket() {
            return Ok(());
        }
        if ft.is_symlink() {
            return add_symlink(b, path, name, &meta);
        }
        return match b.append_path_with_name(path, name) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| io_err("archive", path, e)),
        };
    }
    if !name.as_os_str().is_empty() {
        b.append_dir(name, path)
            .map_err(|e| io_err("archive", path, e))?;
    }
    if dev.is_some_and(|d| d != meta.dev()) {
        return Ok(());
    }
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", path, e)),
    };
    for e in entries {
        names.push(e.map_err(|e| io_err("read", path, e))?.file_name());
    }
    names.sort();
    for n in names {
        add(b, &path.join(&n), &name.join(&n), dev)?;
    }
    Ok(())
}

/// A symlink with its target exactly as it reads (the tar crate's own
/// path handling would turn `/` into `//`).
fn add_symlink<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    meta: &std::fs::Metadata,
) -> Result<()> {
    let target = match std::fs::read_link(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("readlink", path, e)),
    };
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    let bytes = target.as_os_str().as_bytes();
    let r = if bytes.len() < h.as_old().linkname.len() {
        h.set_link_name_literal(bytes)
            .and_then(|()| b.append_data(&mut h, name, std::io::empty()))
    } else {
        b.append_link(&mut h, name, &target)
    };
    r.map_err(|e| io_err("archive", path, e))
}

/// Where an archive's entries go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The archive holds one top entry (a file, a directory, a link): it
    /// goes into the destination when that is a directory, and becomes
    /// the destination otherwise (replacing a file there).
    Named,
    /// The top entry is a directory whose children go into the
    /// destination directory, made when missing (a source ending `/.`).
    Contents,
    /// The archive goes as it is into the existing destination directory
    /// (a tar stream given as `-`).
    Stream,
}

#[derive(Clone, Debug)]
pub struct CopyOptions {
    pub place: Place,
    /// The name the archive's top entry must have (the last component of
    /// the path asked for): with [`Place::Named`], an entry under any
    /// other name is refused, so an archive cannot put files of its
    /// choosing beside the one asked for.
    pub top: Option<String>,
    /// Keep the archive's owners (else the caller owns everything).
    pub set_owner: bool,
    /// Clear setuid and setgid bits.
    pub strip_setid: bool,
    /// Mode bits to clear (the caller's umask).
    pub umask: u32,
    pub limits: Limits,
}

/// Puts the archive read from `src` at `dest` as `docker cp` does (see
/// [`Place`]). Nothing is written outside `dest` (a new file or directory
/// is made in a private temporary directory beside it, then renamed), and
/// when the archive is bad nothing new is left behind.
pub fn unpack_at<R: Read>(dest: &Path, src: R, o: &CopyOptions) -> Result<()> {
    let opts = Options {
        set_owner: o.set_owner,
        allow_devices: false,
        copy: true,
        strip_setid: o.strip_setid,
        umask: o.umask,
    };
    let named = Shape {
        strip_top: false,
        top: o.top.as_deref(),
    };
    let contents = Shape {
        strip_top: true,
        top: None,
    };
    let wants_dir = dest.as_os_str().as_bytes().ends_with(b"/");
    let missing_dir = || Error::Fs {
        op: "copy to",
        path: dest.display().to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the destination directory does not exist",
        ),
    };
    match std::fs::metadata(dest) {
        Ok(m) if m.is_dir() => {
            let root = open_root(dest, false)?;
            let shape = match o.place {
                Place::Named => named,
                Place::Contents => contents,
                Place::Stream => Shape::default(),
            };
            apply(&root, src, Compression::None, o.limits, opts, shape).map(drop)
        }
        Ok(_) if o.place == Place::Named && !wants_dir => {
            via_temp(dest, src, o.limits, opts, named)
        }
        Ok(_) => Err(io_err(
            "copy to",
            dest,
            std::io::Error::other("not a directory"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if wants_dir {
                return Err(missing_dir());
            }
            match o.place {
                Place::Named => via_temp(dest, src, o.limits, opts, named),
                Place::Contents => {
                    std::fs::DirBuilder::new()
                        .mode(0o755)
                        .create(dest)
                        .map_err(|e| io_err("mkdir", dest, e))?;
                    let r = open_root(dest, true).and_then(|root| {
                        apply(&root, src, Compression::None, o.limits, opts, contents).map(drop)
                    });
                    if r.is_err() {
                        let _ = std::fs::remove_dir_all(dest);
                    }
                    r
                }
                Place::Stream => Err(missing_dir()),
            }
        }
        Err(e) => Err(io_err("stat", dest, e)),
    }
}

/// A descriptor of the directory `dir`; with `made`, one this call just
/// made, so a symlink found there now was put there by someone else.
fn open_root(dir: &Path, made: bool) -> Result<OwnedFd> {
    let mut flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if made {
        flags |= OFlags::NOFOLLOW;
    }
    rustix::fs::open(dir, flags, Mode::empty()).map_err(|e| io_err("open", dir, e.into()))
}

/// Unpacks into a new private directory beside `dest`, then renames the
/// archive's one top entry to `dest`.
fn via_temp<R: Read>(
    dest: &Path,
    src: R,
    limits: Limits,
    opts: Options,
    shape: Shape<'_>,
) -> Result<()> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dest.file_name().is_none() {
        return Err(io_err(
            "copy to",
            dest,
            std::io::Error::other("the destination has no file name"),
        ));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = parent.join(format!(".vm-cp-{}-{nanos:x}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(|e| io_err("mkdir", &tmp, e))?;
    let r = (|| {
        let root = open_root(&tmp, true)?;
        apply(&root, src, Compression::None, limits, opts, shape)?;
        let mut tops = Vec::new();
        for e in std::fs::read_dir(&tmp).map_err(|e| io_err("read", &tmp, e))? {
            tops.push(e.map_err(|e| io_err("read", &tmp, e))?.file_name());
        }
        let [top] = tops.as_slice() else {
            return Err(Error::Corrupt(format!(
                "the archive should hold one top entry, it holds {}",
                tops.len()
            )));
        };
        let from = tmp.join(top);
        let st = rustix::fs::statat(&root, top.as_os_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err("stat", &from, e.into()))?;
        let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
        if is_dir && dest.exists() {
            return Err(io_err(
                "copy to",
                dest,
                std::io::Error::other("cannot copy a directory onto a file"),
            ));
        }
        // From our descriptor of the temporary directory, not its path.
        rustix::fs::renameat(&root, top.as_os_str(), rustix::fs::CWD, dest)
            .map_err(|e| io_err("rename", dest, e.into()))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    r
}
