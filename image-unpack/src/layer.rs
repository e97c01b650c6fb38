//! Applying one layer: decompress, walk the tar entries, and create each
//! one inside the root.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

use rustix::fs::{self, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

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

fn corrupt(e: impl std::fmt::Display) -> Error {
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
        let dir = open_dir(root, parent, opts.copy)?;
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
        let existing = kind_at(&dir, name);
        // Anything but a directory replacing a directory (or vice versa)
        // removes what was there; a directory over a directory merges.
        let keep_dir = kind.is_dir() && existing == Some(FileType::Directory);
        if opts.copy && existing == Some(FileType::Directory) && !keep_dir {
            return Err(Error::UnsafePath {
                path,
                why: "would replace a directory with a non-directory",
            });
        }
        if existing.is_some() && !keep_dir {
            remove_all(&dir, name, &path)?;
        }
        match kind {
            tar::EntryType::Directory => {
                if !keep_dir {
                    fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o700))
                        .map_err(|e| fs_err("mkdir", &path, e))?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = fs::openat(
                    &dir,
                    name.as_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| fs_err("create", &path, e))?;
                let mut file = std::fs::File::from(fd);
                stats.bytes += copy_data(&mut entry, &mut file, &mut buf, &path, limits)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| corrupt(format!("symlink {path} without a target")))?;
                let target = String::from_utf8_lossy(&target).into_owned();
                fs::symlinkat(target.as_str(), &dir, name.as_str())
                    .map_err(|e| fs_err("symlink", &path, e))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| corrupt(format!("hardlink {path} without a target")))?;
                let mut tcomps = components(&target)?;
                check_top(shape, &tcomps, &target)?;
                if strip_top && !tcomps.is_empty() {
                    tcomps.remove(0);
                }
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(Error::UnsafePath {
                        path,
                        why: "hardlink to the root",
                    });
                };
                let tdir = open_dir(root, tparent, opts.copy)?;
                fs::linkat(&tdir, tname.as_str(), &dir, name.as_str(), AtFlags::empty())
                    .map_err(|e| fs_err("link", &path, e))?;
                // A hard link shares its target's metadata: nothing to set.
                created.insert(comps);
                continue;
            }
            tar::EntryType::Fifo => {
                fs::mknodat(
                    &dir,
                    name.as_str(),
                    FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(|e| fs_err("mkfifo", &path, e))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                if !opts.allow_devices {
                    stats.skipped_devices += 1;
                    continue;
                }
                let ft = if kind == tar::EntryType::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                fs::mknodat(
                    &dir,
                    name.as_str(),
                    ft,
                    Mode::from_raw_mode(0o600),
                    fs::makedev(major, minor),
                )
                .map_err(|e| fs_err("mknod", &path, e))?;
            }
            // PAX and GNU long-name headers are consumed by the tar crate;
            // anything else is ignored.
            _ => continue,
        }
        set_metadata(&dir, name, &path, &header, mode, kind, opts)?;
        // After chown, which drops security.capability.
        stats.skipped_xattrs += set_xattrs(&dir, name, &path, &xattrs)?;
        created.insert(comps);
    }
    Ok(stats)
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

/// Sets the attributes on `name` (never following it, even if it is a
/// symlink: the path goes through our descriptor of its directory).
/// Returns how many the file system refused as unsupported.
fn set_xattrs(dir: &OwnedFd, name: &str, path: &str, attrs: &[(String, Vec<u8>)]) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let mut skipped = 0;
    if attrs.is_empty() {
        return Ok(0);
    }
    let at = format!("/proc/self/fd/{}/{name}", dir.as_raw_fd());
    for (key, value) in attrs {
        match fs::lsetxattr(at.as_str(), key.as_str(), value, fs::XattrFlags::empty()) {
            Ok(()) => {}
            Err(rustix::io::Errno::OPNOTSUPP) => skipped += 1,
            Err(e) => return Err(fs_err("setxattr", path, e)),
        }
    }
    Ok(skipped)
}

fn set_metadata(
    dir: &OwnedFd,
    name: &str,
    path: &str,
    header: &tar::Header,
    mode: u32,
    kind: tar::EntryType,
    opts: Options,
) -> Result<()> {
    let is_link = kind == tar::EntryType::Symlink;
    if opts.set_owner {
        let uid = header.uid().map_err(corrupt)?;
        let gid = header.gid().map_err(corrupt)?;
        let (uid, gid) = (
            u32::try_from(uid).map_err(corrupt)?,
            u32::try_from(gid).map_err(corrupt)?,
        );
        let (u, g) = (fs::Uid::from_raw(uid), fs::Gid::from_raw(gid));
        fs::chownat(dir, name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fs_err("chown", path, e))?;
    }
    // After chown, which clears setuid/setgid.
    if !is_link {
        chmod_nofollow(dir, name, mode).map_err(|e| fs_err("chmod", path, e))?;
    }
    let mtime = header.mtime().unwrap_or(0);
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    fs::utimensat(
        dir,
        name,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| fs_err("utimes", path, e))?;
    Ok(())
}

/// chmod that never follows a symlink: whoever else can write the
/// directory may have swapped `name` for one since it was made. The mode
/// goes on the inode `name` is now, through a descriptor of it; a symlink
/// found there is left alone.
fn chmod_nofollow(dir: &OwnedFd, name: &str, mode: u32) -> rustix::io::Result<()> {
    use std::os::fd::AsRawFd;
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

fn fs_err(op: &'static str, path: &str, e: rustix::io::Errno) -> Error {
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
