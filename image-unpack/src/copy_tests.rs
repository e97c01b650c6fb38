//! `vm cp` archives placed at destinations, hostile ones included: the
//! destination is `Scratch::root()`, its parent plays "outside".

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tar::EntryType::{Char, Directory as Dir, Link, Regular as File, Symlink};

use crate::copy::{pack, unpack_at, CopyOptions, Place};
use crate::tests::{layer, Scratch};
use crate::Limits;

fn opts(place: Place) -> CopyOptions {
    CopyOptions {
        place,
        top: None,
        set_owner: false,
        strip_setid: true,
        umask: 0,
        limits: Limits::default(),
    }
}

fn named(top: &str) -> CopyOptions {
    CopyOptions {
        top: Some(top.into()),
        umask: 0o022,
        ..opts(Place::Named)
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn named_file_into_a_directory_into_a_new_name_and_over_a_file() {
    let s = Scratch::new("cp-named");
    let tar = layer(&[("hello.txt", File, b"hi\n", 0o4755)]);
    unpack_at(&s.root(), &tar[..], &opts(Place::Named)).expect("into dir");
    let got = s.root().join("hello.txt");
    assert_eq!(std::fs::read(&got).expect("read"), b"hi\n");
    let mode = std::fs::metadata(&got).expect("stat").permissions().mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid stripped");

    let new = s.root().join("renamed");
    unpack_at(&new, &tar[..], &opts(Place::Named)).expect("new name");
    assert_eq!(std::fs::read(&new).expect("read"), b"hi\n");

    std::fs::write(&new, b"old").expect("write");
    let tar2 = layer(&[("x", File, b"new\n", 0o644)]);
    unpack_at(&new, &tar2[..], &opts(Place::Named)).expect("over a file");
    assert_eq!(std::fs::read(&new).expect("read"), b"new\n");
    assert_eq!(names(&s.root()), ["hello.txt", "renamed"], "no temporary left");
}

#[test]
fn a_directory_becomes_a_new_directory_or_its_contents_are_merged() {
    let s = Scratch::new("cp-dir");
    let tar = layer(&[
        ("data/", Dir, b"", 0o755),
        ("data/a", File, b"A", 0o644),
        ("data/.wh.b", File, b"B", 0o644),
        ("data/sub/c", File, b"C", 0o644),
    ]);
    let new = s.root().join("copy");
    unpack_at(&new, &tar[..], &opts(Place::Named)).expect("named");
    assert_eq!(names(&new), [".wh.b", "a", "sub"], "whiteout names are plain files");
    let into = s.root().join("into");
    std::fs::create_dir(&into).expect("mkdir");
    unpack_at(&into, &tar[..], &opts(Place::Named)).expect("into");
    assert_eq!(names(&into), ["data"]);
    unpack_at(&into, &tar[..], &opts(Place::Contents)).expect("contents");
    assert_eq!(names(&into), [".wh.b", "a", "data", "sub"]);
    let fresh = s.root().join("fresh");
    unpack_at(&fresh, &tar[..], &opts(Place::Contents)).expect("contents, new");
    assert_eq!(names(&fresh), [".wh.b", "a", "sub"]);
    let missing = s.root().join("nope/");
    let e = unpack_at(&missing, &tar[..], &opts(Place::Named)).expect_err("missing dir");
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn hostile_archives_write_nothing_outside_the_destination() {
    let s = Scratch::new("cp-hostile");
    let outside = s.root().parent().expect("parent").to_path_buf();
    // A symlink pointing out, then files written through it.
    let tar = layer(&[
        ("data/", Dir, b"", 0o755),
        ("data/out", Symlink, b"../../..", 0o777),
        ("data/out/escaped", File, b"x", 0o644),
        ("data/abs", Symlink, outside.to_str().expect("utf8").as_bytes(), 0o777),
        ("data/abs/escaped2", File, b"x", 0o644),
        ("data/hard", Link, b"../../etc/passwd", 0o644),
    ]);
    let r = unpack_at(&s.root(), &tar[..], &opts(Place::Named));
    assert!(r.is_err(), "{r:?}");
    assert!(s.outside().is_empty(), "escaped: {:?}", s.outside());

    // A link the archive made is never a way through, even inside.
    let tar = layer(&[
        ("data/", Dir, b"", 0o755),
        ("data/out", Symlink, b"/", 0o777),
        ("data/out/escaped", File, b"x", 0o644),
    ]);
    assert!(unpack_at(&s.root(), &tar[..], &opts(Place::Named)).is_err());
    assert!(s.outside().is_empty(), "escaped: {:?}", s.outside());
    assert!(!s.root().join("escaped").exists(), "not written through the link");
    let tar = layer(&[("data2/", Dir, b"", 0o755), ("data2/null", Char, b"", 0o666)]);
    unpack_at(&s.root(), &tar[..], &opts(Place::Named)).expect("devices are skipped");
    assert!(!s.root().join("data2/null").exists(), "no device nodes");

    let tar = layer(&[("../up", File, b"x", 0o644)]);
    assert!(unpack_at(&s.root(), &tar[..], &opts(Place::Named)).is_err());
    assert!(s.outside().is_empty(), "escaped: {:?}", s.outside());
}

#[test]
fn a_bad_archive_leaves_nothing_new_and_no_directory_is_replaced() {
    let s = Scratch::new("cp-bad");
    let two = layer(&[("a", File, b"A", 0o644), ("b", File, b"B", 0o644)]);
    let dest = s.root().join("new");
    assert!(unpack_at(&dest, &two[..], &opts(Place::Named)).is_err());
    assert!(names(&s.root()).is_empty(), "left: {:?}", names(&s.root()));
    let mut cut = layer(&[("d/", Dir, b"", 0o755), ("d/f", File, b"0123456789", 0o644)]);
    cut.truncate(512 + 512 + 5);
    assert!(unpack_at(&s.root().join("d2"), &cut[..], &opts(Place::Contents)).is_err());
    assert!(names(&s.root()).is_empty(), "left: {:?}", names(&s.root()));

    std::fs::create_dir_all(s.root().join("keep/inner")).expect("mkdir");
    let over = layer(&[("keep", File, b"x", 0o644)]);
    let e = unpack_at(&s.root(), &over[..], &opts(Place::Named)).expect_err("refused");
    assert!(e.to_string().contains("directory"), "{e}");
    assert!(s.root().join("keep/inner").is_dir());
    let dir_on_file = layer(&[("x/", Dir, b"", 0o755)]);
    std::fs::write(s.root().join("file"), b"f").expect("write");
    let e = unpack_at(&s.root().join("file"), &dir_on_file[..], &opts(Place::Named))
        .expect_err("dir onto file");
    assert!(e.to_string().contains("onto a file"), "{e}");
}

#[test]
fn pack_then_unpack_round_trips_a_tree() {
    let s = Scratch::new("cp-pack");
    let src = s.root().join("src");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("sub/f"), b"data").expect("write");
    std::os::unix::fs::symlink("sub/f", src.join("link")).expect("symlink");
    std::os::unix::fs::symlink("/", src.join("root")).expect("symlink");
    let tar = pack(Vec::new(), &src, Path::new("src")).expect("pack");
    let dest = s.root().join("dest");
    unpack_at(&dest, &tar[..], &opts(Place::Named)).expect("unpack");
    assert_eq!(std::fs::read(dest.join("sub/f")).expect("read"), b"data");
    assert_eq!(
        std::fs::read_link(dest.join("link")).expect("link"),
        Path::new("sub/f")
    );
    assert_eq!(
        std::fs::read_link(dest.join("root")).expect("link"),
        Path::new("/"),
        "a link target is kept byte for byte"
    );
}

#[test]
fn an_archive_cannot_choose_names_beside_the_one_asked_for() {
    let s = Scratch::new("cp-top");
    // The user asked for `report.txt`; the archive also brings a dot file.
    let tar = layer(&[
        ("report.txt", File, b"r", 0o644),
        (".bashrc", File, b"evil", 0o644),
    ]);
    let e = unpack_at(&s.root(), &tar[..], &named("report.txt")).expect_err("refused");
    assert!(e.to_string().contains("asked for"), "{e}");
    assert!(!s.root().join(".bashrc").exists());
    let link = layer(&[("d/", Dir, b"", 0o777), ("d/h", Link, b"other/x", 0o644)]);
    assert!(unpack_at(&s.root(), &link[..], &named("d")).is_err());
    let ok = layer(&[("d/", Dir, b"", 0o777), ("d/f", File, b"f", 0o666)]);
    unpack_at(&s.root(), &ok[..], &named("d")).expect("the name asked for");
    let mode = |p: &str| std::fs::metadata(s.root().join(p)).expect("stat").permissions().mode() & 0o777;
    assert_eq!((mode("d"), mode("d/f")), (0o755, 0o644), "the umask applies");
}

#[test]
fn huge_metadata_entries_are_refused_before_they_are_read() {
    let s = Scratch::new("cp-meta");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(8 << 30);
    h.set_path("././@LongLink").expect("path");
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend(vec![b'a'; 4096]);
    let e = unpack_at(&s.root(), &tar[..], &opts(Place::Named)).expect_err("refused");
    assert!(e.to_string().contains("metadata entry"), "{e}");
}

#[test]
fn the_name_asked_for_cannot_be_a_link_to_beside_it() {
    // `vm cp ctr:/report.txt ~`: the guest makes report.txt a link to the
    // destination's root, then writes through it.
    let s = Scratch::new("cp-top-link");
    std::fs::write(s.root().join("keep"), b"mine").expect("write");
    let tar = layer(&[
        ("report.txt", Symlink, b"/", 0o777),
        ("report.txt/keep", File, b"evil", 0o644),
    ]);
    assert!(unpack_at(&s.root(), &tar[..], &named("report.txt")).is_err());
    assert_eq!(std::fs::read(s.root().join("keep")).expect("read"), b"mine");
}

#[test]
fn contents_of_a_file_are_refused() {
    let s = Scratch::new("cp-contents-file");
    let tar = layer(&[("f", File, b"x", 0o644)]);
    let e = unpack_at(&s.root().join("new"), &tar[..], &opts(Place::Contents)).expect_err("refused");
    assert!(e.to_string().contains("not a directory"), "{e}");
    assert!(names(&s.root()).is_empty());
}
