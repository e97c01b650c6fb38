//! Layers built in memory, applied to a scratch root; hostile ones too.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::{apply_layer, Compression, Error, Limits, Options};

pub(crate) struct Scratch {
    base: PathBuf,
}

impl Scratch {
    /// `base/root` is the root; `base` itself plays "outside the root".
    pub(crate) fn new(name: &str) -> Self {
        let base = std::env::temp_dir().join(format!("image-unpack-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("root")).expect("mkdir");
        Self { base }
    }
    pub(crate) fn root(&self) -> PathBuf {
        self.base.join("root")
    }
    fn fd(&self) -> OwnedFd {
        rustix::fs::open(
            self.root(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open root")
    }
    fn apply(&self, layer: &[u8]) -> crate::Result<crate::Stats> {
        apply_layer(
            &self.fd(),
            layer,
            Compression::None,
            Limits::default(),
            Options::default(),
        )
    }
    /// Everything in `base` but the root: what escaped.
    pub(crate) fn outside(&self) -> Vec<String> {
        std::fs::read_dir(&self.base)
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "root")
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A tar stream from (path, type, data-or-link-target, mode) entries,
/// written byte by byte so that hostile paths survive.
pub(crate) fn layer(entries: &[(&str, tar::EntryType, &[u8], u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, kind, payload, mode) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let name = &mut h.as_old_mut().name;
            name.fill(0);
            name[..path.len()].copy_from_slice(path.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_mtime(1_000_000);
        let is_link = matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link);
        if is_link {
            let link = &mut h.as_old_mut().linkname;
            link.fill(0);
            link[..payload.len()].copy_from_slice(payload);
            h.set_size(0);
        } else {
            h.set_size(payload.len() as u64);
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        if !is_link {
            out.extend_from_slice(payload);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

use tar::EntryType::{Block, Char, Directory as Dir, Fifo, Link, Regular as File, Symlink};

#[test]
fn creates_every_kind_with_modes_and_times() {
    let s = Scratch::new("kinds");
    let stats = s
        .apply(&layer(&[
            ("bin/", Dir, b"", 0o755),
            ("bin/tool", File, b"#!/bin/sh\n", 0o4755),
            ("bin/alias", Symlink, b"tool", 0o777),
            ("bin/hard", Link, b"bin/tool", 0o755),
            ("run/pipe", Fifo, b"", 0o644),
            ("dev/null", Char, b"", 0o666),
            ("dev/sda", Block, b"", 0o660),
        ]))
        .expect("apply");
    let r = s.root();
    assert_eq!(
        std::fs::read(r.join("bin/tool")).expect("read"),
        b"#!/bin/sh\n"
    );
    let m = std::fs::metadata(r.join("bin/tool")).expect("stat");
    assert_eq!(m.permissions().mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(m.mtime(), 1_000_000);
    assert_eq!(
        std::fs::read_link(r.join("bin/alias")).expect("link"),
        Path::new("tool")
    );
    assert_eq!(
        std::fs::metadata(r.join("bin/hard")).expect("stat").ino(),
        m.ino()
    );
    assert!(std::fs::symlink_metadata(r.join("run/pipe"))
        .expect("fifo")
        .file_type()
        .is_fifo());
    assert!(
        !r.join("dev/null").exists() && !r.join("dev/sda").exists(),
        "devices skipped"
    );
    assert_eq!(stats.skipped_devices, 2);
    assert_eq!(stats.bytes, 10);
}

use std::os::unix::fs::FileTypeExt;

#[test]
fn whiteouts_and_opaque_directories() {
    let s = Scratch::new("whiteout");
    s.apply(&layer(&[
        ("etc/keep", File, b"k", 0o644),
        ("etc/gone", File, b"g", 0o644),
        ("var/lib/", Dir, b"", 0o755),
        ("var/lib/a", File, b"a", 0o644),
        ("var/lib/sub/b", File, b"b", 0o644),
    ]))
    .expect("lower");
    let stats = s
        .apply(&layer(&[
            ("etc/.wh.gone", File, b"", 0o644),
            ("var/lib/new", File, b"n", 0o644),
            ("var/lib/.wh..wh..opq", File, b"", 0o644),
        ]))
        .expect("upper");
    let r = s.root();
    assert!(r.join("etc/keep").exists());
    assert!(!r.join("etc/gone").exists());
    assert!(!r.join("etc/.wh.gone").exists(), "markers are not files");
    assert!(
        !r.join("var/lib/a").exists() && !r.join("var/lib/sub").exists(),
        "lower contents hidden"
    );
    assert!(r.join("var/lib/new").exists(), "same-layer entries kept");
    assert_eq!(stats.whiteouts, 2);
}

#[test]
fn dot_dot_is_refused_and_nothing_escapes() {
    let s = Scratch::new("dotdot");
    let err = s
        .apply(&layer(&[("../escaped", File, b"x", 0o644)]))
        .expect_err("refused");
    assert!(matches!(err, Error::UnsafePath { .. }), "{err}");
    let err = s
        .apply(&layer(&[("a/../../escaped", File, b"x", 0o644)]))
        .expect_err("refused");
    assert!(matches!(err, Error::UnsafePath { .. }), "{err}");
    assert!(s.outside().is_empty(), "{:?}", s.outside());
}

#[test]
fn absolute_paths_land_inside_the_root() {
    let s = Scratch::new("abs");
    s.apply(&layer(&[("/etc/hostname", File, b"box", 0o644)]))
        .expect("apply");
    assert_eq!(
        std::fs::read(s.root().join("etc/hostname")).expect("read"),
        b"box"
    );
}

#[test]
fn writing_through_symlinks_stays_inside() {
    let s = Scratch::new("symlink");
    s.apply(&layer(&[
        ("up", Symlink, b"../..", 0o777),
        ("abs", Symlink, b"/", 0o777),
        ("up/escaped-1", File, b"x", 0o644),
        ("abs/escaped-2", File, b"x", 0o644),
    ]))
    .expect("apply");
    assert!(s.outside().is_empty(), "escaped: {:?}", s.outside());
    // The symlinks resolve to the root itself.
    assert!(s.root().join("escaped-1").exists() && s.root().join("escaped-2").exists());
    // A final-component symlink is replaced, not written through.
    std::fs::write(s.base.join("victim"), b"safe").expect("victim");
    s.apply(&layer(&[
        ("v", Symlink, b"../victim", 0o777),
        ("v", File, b"overwritten", 0o644),
    ]))
    .expect("apply");
    assert_eq!(std::fs::read(s.base.join("victim")).expect("read"), b"safe");
    assert_eq!(
        std::fs::read(s.root().join("v")).expect("read"),
        b"overwritten"
    );
}

#[test]
fn hardlinks_cannot_reach_outside() {
    let s = Scratch::new("hardlink");
    std::fs::write(s.base.join("secret"), b"host data").expect("secret");
    let err = s
        .apply(&layer(&[("h", Link, b"../secret", 0o644)]))
        .expect_err("refused");
    assert!(matches!(err, Error::UnsafePath { .. }), "{err}");
    // An absolute target is looked up inside the root, where it is missing.
    let secret = s.base.join("secret");
    let target = secret.to_string_lossy().into_owned();
    assert!(s
        .apply(&layer(&[("h2", Link, target.as_bytes(), 0o644)]))
        .is_err());
    // Through a symlink that points out: still inside the root.
    assert!(s
        .apply(&layer(&[
            ("out", Symlink, b"..", 0o777),
            ("h3", Link, b"out/secret", 0o644)
        ]))
        .is_err());
    assert!(
        !s.root().join("h").exists()
            && !s.root().join("h2").exists()
            && !s.root().join("h3").exists()
    );
}

#[test]
fn symlink_replacing_a_directory_mid_layer() {
    let s = Scratch::new("replace");
    s.apply(&layer(&[
        ("e/", Dir, b"", 0o755),
        ("d/", Dir, b"", 0o755),
        ("d/f", File, b"1", 0o644),
        ("d", Symlink, b"/e", 0o777),
        ("d/g", File, b"2", 0o644),
    ]))
    .expect("apply");
    assert!(s.outside().is_empty());
    assert!(std::fs::symlink_metadata(s.root().join("d"))
        .expect("d")
        .file_type()
        .is_symlink());
    // The old directory is gone; writes through the new link land in /e.
    assert_eq!(std::fs::read(s.root().join("e/g")).expect("read"), b"2");
    assert!(!s.root().join("e/f").exists());
    // A dangling link cannot be written through, and nothing escapes.
    assert!(s
        .apply(&layer(&[
            ("x", Symlink, b"/nowhere", 0o777),
            ("x/y", File, b"3", 0o644)
        ]))
        .is_err());
    assert!(s.outside().is_empty());
}

#[test]
fn gzip_bomb_stops_at_the_limit() {
    let s = Scratch::new("bomb");
    let big = layer(&[("zeros", File, &vec![0u8; 32 << 20], 0o644)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&big).expect("gzip");
    let bomb = gz.finish().expect("gzip");
    assert!(bomb.len() < 1 << 20);
    let limits = Limits {
        max_bytes: 4 << 20,
        max_entries: 100,
    };
    let err = apply_layer(
        &s.fd(),
        bomb.as_slice(),
        Compression::Gzip,
        limits,
        Options::default(),
    )
    .expect_err("capped");
    assert!(matches!(err, Error::Limit { .. }), "{err}");
}

#[test]
fn corrupt_gzip_and_too_many_entries() {
    let s = Scratch::new("corrupt");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer(&[("a", File, b"hello", 0o644)]))
        .expect("gzip");
    let mut bytes = gz.finish().expect("gzip");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    bytes.truncate(bytes.len() - 4);
    let err = apply_layer(
        &s.fd(),
        bytes.as_slice(),
        Compression::Gzip,
        Limits::default(),
        Options::default(),
    )
    .expect_err("corrupt");
    assert!(matches!(err, Error::Corrupt(_)), "{err}");

    let many: Vec<(String, tar::EntryType, &[u8], u32)> = (0..20)
        .map(|i| (format!("f{i}"), File, &b""[..], 0o644))
        .collect();
    let refs: Vec<(&str, tar::EntryType, &[u8], u32)> = many
        .iter()
        .map(|(p, k, d, m)| (p.as_str(), *k, *d, *m))
        .collect();
    let limits = Limits {
        max_bytes: 1 << 30,
        max_entries: 10,
    };
    let err = apply_layer(
        &s.fd(),
        layer(&refs).as_slice(),
        Compression::None,
        limits,
        Options::default(),
    )
    .expect_err("capped");
    assert!(
        matches!(
            err,
            Error::Limit {
                what: "entries",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn zstd_layers() {
    let s = Scratch::new("zstd");
    let z = zstd::encode_all(layer(&[("z", File, b"zstd!", 0o600)]).as_slice(), 3).expect("zstd");
    apply_layer(
        &s.fd(),
        z.as_slice(),
        Compression::Zstd,
        Limits::default(),
        Options::default(),
    )
    .expect("apply");
    assert_eq!(std::fs::read(s.root().join("z")).expect("read"), b"zstd!");
}

#[test]
fn extended_attributes_are_kept_including_file_capabilities() {
    let s = Scratch::new("xattr");
    let mut b = tar::Builder::new(Vec::new());
    // security.capability: revision 2, effective, permitted cap_net_raw (13).
    let mut cap = Vec::new();
    cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    cap.extend_from_slice(&(1u32 << 13).to_le_bytes());
    cap.extend_from_slice(&[0u8; 12]);
    b.append_pax_extensions([
        ("SCHILY.xattr.user.note", b"hello".as_slice()),
        ("SCHILY.xattr.security.capability", cap.as_slice()),
    ])
    .expect("pax");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(File);
    h.set_mode(0o4755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(3);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "ping", &b"elf"[..]).expect("append");
    let data = b.into_inner().expect("tar");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let stats = apply_layer(
        &s.fd(),
        data.as_slice(),
        Compression::None,
        Limits::default(),
        // Owners are set (chown clears setuid and capabilities) as root.
        Options {
            set_owner: root,
            ..Options::default()
        },
    )
    .expect("apply");
    let p = s.root().join("ping");
    let mut buf = vec![0u8; 64];
    let n = rustix::fs::getxattr(&p, "user.note", &mut buf).expect("user.note");
    assert_eq!(&buf[..n], b"hello");
    let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
    assert_eq!(mode & 0o7777, 0o4755, "setuid survives the chown");
    // security.* needs privilege; as root the capability must be there.
    if root {
        let n = rustix::fs::getxattr(&p, "security.capability", &mut buf).expect("capability");
        assert_eq!(&buf[..n], cap.as_slice());
    }
    assert_eq!(stats.skipped_xattrs, 0);
}

#[test]
fn later_entries_replace_or_merge_with_what_is_there() {
    let s = Scratch::new("over");
    s.apply(&layer(&[
        ("a/", Dir, b"", 0o755),
        ("a/file", File, b"old", 0o644),
        ("a/was-file", File, b"f", 0o644),
        ("a/was-dir/", Dir, b"", 0o755),
        ("a/was-dir/inner", File, b"i", 0o644),
        ("b/", Dir, b"", 0o700),
        ("b/x", File, b"x", 0o644),
    ]))
    .expect("lower");
    s.apply(&layer(&[
        ("a/file", File, b"new", 0o600),
        ("a/was-file/", Dir, b"", 0o750),
        ("a/was-file/child", File, b"c", 0o644),
        ("a/was-dir", File, b"now a file", 0o640),
        ("b/", Dir, b"", 0o711),
        ("b/y", File, b"y", 0o644),
        // Back and forth between directories: each lands in its own.
        ("a/z", File, b"z", 0o644),
        ("b/w", File, b"w", 0o644),
    ]))
    .expect("upper");
    let r = s.root();
    let mode = |p: &str| std::fs::metadata(r.join(p)).expect(p).permissions().mode() & 0o7777;
    assert_eq!(std::fs::read(r.join("a/file")).expect("read"), b"new");
    assert_eq!(mode("a/file"), 0o600);
    assert_eq!(mode("a/was-file"), 0o750);
    assert_eq!(
        std::fs::read(r.join("a/was-file/child")).expect("read"),
        b"c"
    );
    assert_eq!(
        std::fs::read(r.join("a/was-dir")).expect("read"),
        b"now a file"
    );
    assert_eq!(mode("a/was-dir"), 0o640);
    assert_eq!(
        mode("b"),
        0o711,
        "a directory over a directory takes the new mode"
    );
    for (p, body) in [("b/x", b"x"), ("b/y", b"y"), ("a/z", b"z"), ("b/w", b"w")] {
        assert_eq!(std::fs::read(r.join(p)).expect(p), body, "{p}");
    }
    assert!(s.outside().is_empty());
}

#[test]
fn a_directory_replacing_a_symlink_on_its_own_path() {
    // `l/l/` resolves its parent through the link `l -> .` (to the root)
    // and replaces that very link: `l/l/x` then lands in the new `l/l`.
    let s = Scratch::new("relink");
    s.apply(&layer(&[
        ("l", Symlink, b".", 0o777),
        ("l/l/", Dir, b"", 0o755),
        ("l/l/x", File, b"x", 0o644),
    ]))
    .expect("apply");
    let r = s.root();
    assert!(std::fs::symlink_metadata(r.join("l")).expect("l").is_dir());
    assert_eq!(std::fs::read(r.join("l/l/x")).expect("l/l/x"), b"x");
    assert!(!r.join("l/x").exists());
    assert!(s.outside().is_empty());
}
