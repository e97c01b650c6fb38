//! Block device throughput inside a guest, with O_DIRECT so the guest's
//! page cache stays out of it. Static, so it runs from the test initramfs.
//!
//!   disk-bench DEVICE MIB     sequential write and read of MIB MiB in
//!                             1 MiB requests, then random 4 KiB writes
//!                             and reads for a few seconds each
//!
//! Prints `disk-bench: <mode> <MiB/s> MiB/s <IOPS> IOPS` lines.

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: disk-bench DEVICE MIB");
        exit(2);
    }
    let mib: u64 = args[2].parse().expect("MIB");
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&args[1])
        .unwrap_or_else(|e| {
            eprintln!("disk-bench: open {}: {e}", args[1]);
            exit(2)
        });
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
