//! A hostile layer: any bytes as a tar (plain, gzip or zstd by the first
//! byte) unpacked into a fresh directory. It must end in Ok or a clean
//! error, and nothing may appear outside the root.
#![no_main]

use std::os::fd::OwnedFd;

use image_unpack::{apply_layer, Compression, Limits, Options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, layer)) = data.split_first() else { return };
    let compression = match sel % 3 {
        0 => Compression::None,
        1 => Compression::Gzip,
        _ => Compression::Zstd,
    };
    let base = std::env::temp_dir().join(format!("vm-fuzz-layer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let fd: OwnedFd = std::fs::File::open(&root).expect("open root").into();
    let limits = Limits { max_bytes: 1 << 20, max_entries: 256 };
    let _ = apply_layer(&fd, layer, compression, limits, Options::default());
    let outside: Vec<_> = std::fs::read_dir(&base)
        .expect("read base")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "root")
        .collect();
    assert!(outside.is_empty(), "escaped: {outside:?}");
    let _ = std::fs::remove_dir_all(&base);
});
