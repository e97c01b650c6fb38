//! Applying one layer: decompress, walk the tar entries, and create each
//! one inside the root.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

use rustix::fs::{self, AtFlags, FileType, Mode, OFlags};

use crate::meta;
use crate::path::components;
use crate::tree::{children, kind_at, open_dir, remove_all};
use crate::{Error, Result};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

pub use agent_protocol::Compression;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most bytes the decompressed stream may have.
    pub max_bytes: u64,
    /// Most entries in the layer.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 30,
            max_entries: 4 << 20,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Set owners from the layer (needs privilege; off in unprivileged tests).
    pub set_owner: bool,
    /// Create character and block devices (skipped by default).
    pub allow_devices: bool,
    /// A `vm cp` archive, not an image layer: names that start with
    /// `.wh.` are ordinary files, an existing directory is never replaced
    /// by something else, and extended attributes are not set.
    pub copy: bool,
    /// Clear setuid and setgid bits (for files from a guest landing on
    /// the host).
    pub strip_setid: bool,
    /// Mode bits to clear (the caller's umask, for files from a guest
    /// landing on the host).
    pub umask: u32,
}

/// How a copy's entries map to the destination.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Shape<'a> {
    /// Drop each entry's first component (the archive's top directory
    /// itself is skipped).
    pub strip_top: bool,
    /// Every entry (and hardlink target) must lie under this first
    /// component: the name the caller asked for, not one the archive
    /// chose.
    pub top: Option<&'a str>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
    pub skipped_devices: u64,
    pub whiteouts: u64,
    /// Extended attributes the file system does not support.
    pub skipped_xattrs: u64,
}

/// Counts what flows out of the decompressor and stops at the limit.
struct Capped<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One byte more would pass the limit: is there one?
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(format!(
                    "decompressed size over {} bytes",
                    self.limit
                ))),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

pub(crate) fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::Corrupt(e.to_string())
}

/// Apply a layer read from `src` to the directory `root` (an fd opened on
/// the root directory).
pub fn apply_layer<R: Read>(
    root: &OwnedFd,
    src: R,
    compression: Compression,
    limits: Limits,
    opts: Options,
) -> Result<Stats> {
    apply(root, src, compression, limits, opts, Shape::default())
}

/// [`apply_layer`], with the entries' names mapped by `shape`.
pub(crate) fn apply<R: Read>(
    root: &OwnedFd,
    src: R,
    compression: Compression,
    limits: Limits,
    opts: Options,
    shape: Shape<'_>,
) -> Result<Stats> {
    let strip_top = shape.strip_top;
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(src),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(src)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(src).map_err(corrupt)?),
    };
    let capped = Capped {
        inner: reader,
        left: limits.max_bytes,
        limit: limits.max_bytes,
    };
    let guarded: Box<dyn Read> = if opts.copy {
        Box::new(crate::guard::MetaCap::new(capped))
    } else {
        Box::new(capped)
    };
    let mut archive = tar::Archive::new(guarded);
    let mut stats = Stats::default();
    let mut buf = vec![0u8; COPY_BUF];
    // Paths this layer created: an opaque directory keeps them.
    let mut created: HashSet<Vec<String>> = HashSet::new();
    // The directory the last entry went into, by its components.
    let mut last_dir: Option<(Vec<String>, OwnedFd)> = None;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(|e| limit_or_corrupt(e, limits))?;
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(Error::Limit {
                what: "entries",
                limit: limits.max_entries,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let mut comps = components(&raw)?;
        check_top(shape, &comps, &raw)?;
        if strip_top && comps.len() == 1 && !entry.header().entry_type().is_dir() {
            return Err(Error::Corrupt(format!(
                "{} is not a directory (a source ending in /. copies a directory's contents)",
                comps[0]
            )));
        }
        if strip_top && !comps.is_empty() {
            comps.remove(0);
        }
        let Some((name, parent)) = comps.split_last() else {
            continue; // the root itself
        };
        let path = comps.join("/");
        let dir = match last_dir.take() {
            Some((at, fd)) if at.as_slice() == parent => fd,
            _ => open_dir(root, parent, opts.copy)?,
        };
        if name == OPAQUE && !opts.copy {
            stats.whiteouts += 1;
            let parent_path = parent.join("/");
            let sub = fs::openat(
                &dir,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| fs_err("open", &parent_path, e))?;
            for child in children(&sub, &parent_path)? {
                let mut p = parent.to_vec();
                p.push(child.clone());
                if !created.contains(&p) {
                    remove_all(&dir, &child, &p.join("/"))?;
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT).filter(|_| !opts.copy) {
            stats.whiteouts += 1;
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(Error::UnsafePath {
                    path,
                    why: "bad whiteout",
                });
            }
            remove_all(&dir, hidden, &path)?;
            continue;
        }
        let header = entry.header().clone();
        let kind = header.entry_type();
        let xattrs = if opts.copy {
            Vec::new()
        } else {
            xattrs(&mut entry)?
        };
        let mut mode = header.mode().map_err(corrupt)? & 0o7777;
        if opts.strip_setid {
            mode &= !0o6000;
        }
        mode &= !opts.umask;
        let mut removed = false;
        let made = match kind {
            tar::EntryType::Directory => make_dir(&dir, name, &path, opts.copy, &mut removed)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = create_file(&dir, name, &path, opts.copy, &mut removed)?;
                let mut file = std::fs::File::from(fd);
                stats.bytes += copy_data(&mut entry, &mut file, &mut buf, &path, limits)?;
                Made::Fd(file.into())
            }
            _ => {
                removed = clear_way(&dir, name, &path, false, opts.copy)?.1;
                make_other(root, &dir, name, &path, &entry, shape, opts, &mut stats)?
            }
        };
        match &made {
            Made::Fd(fd) => {
                meta::set_on_fd(fd, &path, &header, mode, opts)?;
                // After chown, which drops security.capability.
                stats.skipped_xattrs += meta::set_xattrs_on_fd(fd, &path, &xattrs)?;
            }
            Made::AtPath | Made::DirAtPath(_) => {
                meta::set_at(&dir, name, &path, &header, mode, kind, opts)?;
                stats.skipped_xattrs += meta::set_xattrs_at(&dir, name, &path, &xattrs)?;
            }
            Made::Link | Made::Skipped => {}
        }
        if !matches!(made, Made::Skipped) {
            created.insert(comps.clone());
        }
        // Keep a directory for the entries that follow: the one just made
        // (its children come next in a tar stream), else this entry's
        // parent; none after a removal, which may have changed what a
        // path through the removed name resolves to.
        last_dir = match made {
            _ if removed => None,
            Made::Fd(fd) | Made::DirAtPath(fd) if kind == tar::EntryType::Directory => {
                Some((comps, fd))
            }
            _ => Some((parent.to_vec(), dir)),
        };
    }
    Ok(stats)
}

/// What an entry became.
enum Made {
    /// A file or directory, still open: its metadata goes through this.
    Fd(OwnedFd),
    /// Something set by name (symlink, fifo, device).
    AtPath,
    /// A directory set by name (we may not read it), open as `O_PATH`.
    DirAtPath(OwnedFd),
    /// A hard link, which shares its target's metadata.
    Link,
    /// Nothing (a device when devices are not allowed, an unknown kind).
    Skipped,
}

/// Clears `name` in `dir` for a new entry: anything but a directory
/// replacing a directory (or vice versa) removes what was there; a
/// directory over a directory merges. Returns (a directory is kept,
/// something was removed).
fn clear_way(
    dir: &OwnedFd,
    name: &str,
    path: &str,
    is_dir: bool,
    copy: bool,
) -> Result<(bool, bool)> {
    let existing = kind_at(dir, name);
    let keep_dir = is_dir && existing == Some(FileType::Directory);
    if copy && existing == Some(FileType::Directory) && !keep_dir {
        return Err(Error::UnsafePath {
            path: path.to_string(),
            why: "would replace a directory with a non-directory",
        });
    }
    if existing.is_some() && !keep_dir {
        remove_all(dir, name, path)?;
        return Ok((false, true));
    }
    Ok((keep_dir, false))
}

/// Makes directory `name` (or keeps the one there) and opens it. Made
/// first, looked at only when something is in the way: most entries
/// land on an empty name.
fn make_dir(dir: &OwnedFd, name: &str, path: &str, copy: bool, removed: &mut bool) -> Result<Made> {
    let mkdir = || fs::mkdirat(dir, name, Mode::from_raw_mode(0o700));
    match mkdir() {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => {
            let (keep, gone) = clear_way(dir, name, path, true, copy)?;
            *removed = gone;
            if !keep {
                mkdir().map_err(|e| fs_err("mkdir", path, e))?;
            }
        }
        Err(e) => return Err(fs_err("mkdir", path, e)),
    }
    let open = |how: OFlags| {
        fs::openat(
            dir,
            name,
            how | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    match open(OFlags::RDONLY) {
        Ok(fd) => Ok(Made::Fd(fd)),
        // An existing directory we may not read (an unprivileged copy
        // merging into one): its metadata goes by name, as other kinds'.
        Err(rustix::io::Errno::ACCESS) => open(OFlags::PATH).map(Made::DirAtPath),
        Err(e) => Err(e),
    }
    .map_err(|e| fs_err("open", path, e))
}

/// Creates the regular file `name`, replacing whatever was there.
fn create_file(
    dir: &OwnedFd,
    name: &str,
    path: &str,
    copy: bool,
    removed: &mut bool,
) -> Result<OwnedFd> {
    let create = || {
        fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
    };
    match create() {
        Err(rustix::io::Errno::EXIST) => {
            *removed = clear_way(dir, name, path, false, copy)?.1;
            create()
        }
        other => other,
    }
    .map_err(|e| fs_err("create", path, e))
}

/// Makes a symlink, hard link, fifo or device (the way already clear).
#[allow(clippy::too_many_arguments)]
fn make_other<R: Read>(
    root: &OwnedFd,
    dir: &OwnedFd,
    name: &str,
    path: &str,
    entry: &tar::Entry<'_, R>,
    shape: Shape<'_>,
    opts: Options,
    stats: &mut Stats,
) -> Result<Made> {
    let header = entry.header();
    let kind = header.entry_type();
    match kind {
        tar::EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| corrupt(format!("symlink {path} without a target")))?;
            let target = String::from_utf8_lossy(&target).into_owned();
            fs::symlinkat(target.as_str(), dir, name).map_err(|e| fs_err("symlink", path, e))?;
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| corrupt(format!("hardlink {path} without a target")))?;
            let mut tcomps = components(&target)?;
            check_top(shape, &tcomps, &target)?;
            if shape.strip_top && !tcomps.is_empty() {
                tcomps.remove(0);
            }
            let Some((tname, tparent)) = tcomps.split_last() else {
                return Err(Error::UnsafePath {
                    path: path.to_string(),
                    why: "hardlink to the root",
                });
            };
            let tdir = open_dir(root, tparent, opts.copy)?;
            fs::linkat(&tdir, tname.as_str(), dir, name, AtFlags::empty())
                .map_err(|e| fs_err("link", path, e))?;
            return Ok(Made::Link);
        }
        tar::EntryType::Fifo => {
            fs::mknodat(dir, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                .map_err(|e| fs_err("mkfifo", path, e))?;
        }
        tar::EntryType::Char | tar::EntryType::Block => {
            if !opts.allow_devices {
                stats.skipped_devices += 1;
                return Ok(Made::Skipped);
            }
            let ft = if kind == tar::EntryType::Char {
                FileType::CharacterDevice
            } else {
                FileType::BlockDevice
            };
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            fs::mknodat(
                dir,
                name,
                ft,
                Mode::from_raw_mode(0o600),
                fs::makedev(major, minor),
            )
            .map_err(|e| fs_err("mknod", path, e))?;
        }
        // PAX and GNU long-name headers are consumed by the tar crate;
        // anything else is ignored.
        _ => return Ok(Made::Skipped),
    }
    Ok(Made::AtPath)
}

/// Extended attributes travel as PAX records `SCHILY.xattr.NAME`.
const XATTR_PREFIX: &str = "SCHILY.xattr.";
/// The kernel's limit for one value.
const XATTR_MAX: usize = 64 * 1024;

fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let Some(exts) = entry.pax_extensions().map_err(corrupt)? else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(corrupt)?;
        let Ok(key) = ext.key() else { continue };
        let Some(name) = key.strip_prefix(XATTR_PREFIX) else {
            continue;
        };
        if name.is_empty() || name.contains('\0') || ext.value_bytes().len() > XATTR_MAX {
            return Err(corrupt(format!("bad extended attribute {name:?}")));
        }
        out.push((name.to_string(), ext.value_bytes().to_vec()));
    }
    Ok(out)
}

/// Refuses an entry outside the top name the caller expects.
fn check_top(shape: Shape<'_>, comps: &[String], raw: &[u8]) -> Result<()> {
    match (shape.top, comps.first()) {
        (Some(top), Some(first)) if first != top => Err(Error::UnsafePath {
            path: String::from_utf8_lossy(raw).into_owned(),
            why: "outside the path that was asked for",
        }),
        _ => Ok(()),
    }
}

pub(crate) fn fs_err(op: &'static str, path: &str, e: rustix::io::Errno) -> Error {
    Error::Fs {
        op,
        path: path.to_string(),
        source: e.into(),
    }
}

/// File data moves in chunks this big: a tenth of the write calls of
/// `io::copy`'s 8 KiB, which counts when unpacking under emulation.
const COPY_BUF: usize = 128 * 1024;

/// Copy one entry's data into `file`. A failing read is the layer's fault
/// (corrupt, or over the limit); a failing write is the disk's.
fn copy_data(
    entry: &mut impl Read,
    file: &mut std::fs::File,
    buf: &mut [u8],
    path: &str,
    limits: Limits,
) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match entry.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(limit_or_corrupt(e, limits)),
        };
        file.write_all(&buf[..n]).map_err(|e| Error::Fs {
            op: "write",
            path: path.to_string(),
            source: e,
        })?;
        total += n as u64;
    }
}

fn limit_or_corrupt(e: io::Error, limits: Limits) -> Error {
    if e.to_string().contains("decompressed size over") {
        Error::Limit {
            what: "decompressed bytes",
            limit: limits.max_bytes,
        }
    } else {
        Error::Corrupt(e.to_string())
    }
}

#[cfg(test)]
mod copy_data_tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 10,
    };

    #[test]
    fn copies_in_chunks_and_counts() {
        let dir = std::env::temp_dir().join(format!("vm-copy-data-{}", std::process::id()));
        let data: Vec<u8> = (0..COPY_BUF * 2 + 17).map(|i| (i % 251) as u8).collect();
        let mut file = std::fs::File::create(&dir).expect("create");
        let mut buf = vec![0u8; COPY_BUF];
        let n = copy_data(&mut &data[..], &mut file, &mut buf, "f", LIMITS).expect("copy");
        assert_eq!(n, data.len() as u64);
        assert_eq!(std::fs::read(&dir).expect("read back"), data);
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn a_failing_write_is_blamed_on_the_disk_not_the_layer() {
        // A descriptor open for reading only refuses writes (EBADF).
        let mut file = std::fs::File::open("/dev/null").expect("open");
        let mut buf = vec![0u8; COPY_BUF];
        let err = copy_data(&mut &b"data"[..], &mut file, &mut buf, "etc/x", LIMITS)
            .expect_err("write must fail");
        assert!(
            matches!(&err, Error::Fs { op: "write", path, .. } if path == "etc/x"),
            "{err}"
        );
    }

    #[test]
    fn a_failing_read_is_the_layer_s_fault() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::InvalidData, "bad gzip"))
            }
        }
        let mut file = std::fs::File::open("/dev/null").expect("open");
        let mut buf = vec![0u8; COPY_BUF];
        let err = copy_data(&mut Broken, &mut file, &mut buf, "x", LIMITS).expect_err("must fail");
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
    }
}
