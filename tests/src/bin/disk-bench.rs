//! Block device throughput inside a guest, with O_DIRECT so the guest's
//! page cache stays out of it. Static, so it runs from the test initramfs.
//!
//!   disk-bench PATH MIB       sequential write and read of MIB MiB in
//!                             1 MiB requests, then random 4 KiB writes
//!                             and reads for a few seconds each; PATH is a
//!                             device or a file (made if missing; where
//!                             O_DIRECT is refused, the page cache is
//!                             dropped before each read instead)
//!   disk-bench --files DIR N  create N small files in DIR, stat them,
//!                             delete them (as unpacking node_modules does)
//!
//! Prints `disk-bench: <mode> <MiB/s> MiB/s <IOPS> IOPS` lines, and
//! `disk-bench: <mode> <N> files/s` for --files.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::exit;
use std::time::{Duration, Instant};

const ALIGN: usize = 4096;
const SEQ_BLOCK: usize = 1 << 20;
const RAND_BLOCK: usize = 4096;
const RAND_TIME: Duration = Duration::from_secs(4);

struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len, ALIGN).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Self { ptr, layout }
    }
    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of layout.size() bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with the same layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

fn report(mode: &str, bytes: u64, ops: u64, t: Duration) {
    let s = t.as_secs_f64();
    println!(
        "disk-bench: {mode} {:.1} MiB/s {:.0} IOPS",
        bytes as f64 / (1 << 20) as f64 / s,
        ops as f64 / s
    );
}

/// Empties the guest's page cache (for files opened without O_DIRECT).
fn drop_caches(direct: bool) {
    if !direct {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
}

fn files(dir: &str, n: usize) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let name = |i: usize| format!("{dir}/f{i:06}");
    let t = Instant::now();
    for i in 0..n {
        std::fs::write(name(i), b"module.exports = 1;\n").expect("create");
    }
    report_files("files-create", n, t.elapsed());
    drop_caches(false);
    let t = Instant::now();
    for i in 0..n {
        std::fs::metadata(name(i)).expect("stat");
    }
    report_files("files-stat", n, t.elapsed());
    let t = Instant::now();
    for i in 0..n {
        std::fs::remove_file(name(i)).expect("unlink");
    }
    report_files("files-delete", n, t.elapsed());
}

fn report_files(mode: &str, n: usize, t: Duration) {
    println!(
        "disk-bench: {mode} {:.0} files/s",
        n as f64 / t.as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--files" {
        files(&args[2], args[3].parse().expect("N"));
        return;
    }
    if args.len() != 3 {
        eprintln!("usage: disk-bench PATH MIB | disk-bench --files DIR N");
        exit(2);
    }
    let mib: u64 = args[2].parse().expect("MIB");
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(flags)
            .open(&args[1])
    };
    let (dev, direct) = match open(libc::O_DIRECT) {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(0).expect("open"), false),
        Err(e) => {
            eprintln!("disk-bench: open {}: {e}", args[1]);
            exit(2)
        }
    };
    let total = mib << 20;
    let mut buf = Aligned::new(SEQ_BLOCK);
    for (i, b) in buf.slice().iter_mut().enumerate() {
        *b = (i * 31) as u8;
    }

    let t = Instant::now();
    let mut off = 0;
    while off < total {
        dev.write_all_at(buf.slice(), off).expect("write");
        off += SEQ_BLOCK as u64;
    }
    dev.sync_all().expect("sync");
    report("seq-write", total, total / SEQ_BLOCK as u64, t.elapsed());
    drop_caches(direct);

    let t = Instant::now();
    let mut off = 0;
    while off < total {
        dev.read_exact_at(buf.slice(), off).expect("read");
        off += SEQ_BLOCK as u64;
    }
    report("seq-read", total, total / SEQ_BLOCK as u64, t.elapsed());

    let blocks = total / RAND_BLOCK as u64;
    let mut small = Aligned::new(RAND_BLOCK);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % blocks) * RAND_BLOCK as u64
    };
    for (mode, write) in [("rand-write-4k", true), ("rand-read-4k", false)] {
        if !write {
            dev.sync_all().expect("sync");
            drop_caches(direct);
        }
        let t = Instant::now();
        let mut ops = 0u64;
        while t.elapsed() < RAND_TIME {
            for _ in 0..64 {
                let off = next();
                if write {
                    dev.write_all_at(small.slice(), off).expect("write");
                } else {
                    dev.read_exact_at(small.slice(), off).expect("read");
                }
                ops += 1;
            }
        }
        report(mode, ops * RAND_BLOCK as u64, ops, t.elapsed());
    }
}
