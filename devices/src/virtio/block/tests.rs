//! virtio-blk against a driver-side mock queue over real guest memory,
//! including what a hostile driver can hand it.

use std::io::Write;

use vm_memory::{Bytes, GuestAddress};

use super::request::{RequestHeader, S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use super::{part_offsets, Block, BlockConfig, Part, Seal};
use crate::virtio::testutil::{desc, interrupt, memory, Driver, DATA, F_NEXT, F_WRITE};
use crate::virtio::{GuestMem, VirtioDevice, VIRTIO_F_VERSION_1};

const HDR: u64 = DATA;
const BUF: u64 = DATA + 0x1000;
const STATUS: u64 = DATA + 0x3f000;

struct Disk {
    path: std::path::PathBuf,
}

impl Disk {
    fn new(name: &str, sectors: usize, fill: u8) -> Self {
        let path = std::env::temp_dir().join(format!("vm-blk-test-{}-{name}", std::process::id()));
        let mut f = std::fs::File::create(&path).expect("create disk");
        f.write_all(&vec![fill; sectors * 512]).expect("fill disk");
        Self { path }
    }
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read disk")
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn device(mem: &GuestMem, disk: &Disk, read_only: bool, driver: &Driver) -> Block {
    let cfg = BlockConfig {
        id: "serial-1".into(),
        ..config(disk, read_only)
    };
    start(mem, &cfg, driver)
}

/// A device over `cfg`, activated with `driver`'s queue.
fn start(mem: &GuestMem, cfg: &BlockConfig, driver: &Driver) -> Block {
    let (irq, _) = interrupt();
    let mut dev = Block::new(cfg, mem.clone(), irq).expect("block device");
    dev.set_acked_features(VIRTIO_F_VERSION_1);
    dev.activate(vec![driver.queue()]).expect("activate");
    dev
}

fn header(mem: &GuestMem, type_: u32, sector: u64) {
    mem.write_obj(
        RequestHeader {
            type_,
            ioprio: 0,
            sector,
        },
        GuestAddress(HDR),
    )
    .expect("write header");
    mem.write_obj(0xffu8, GuestAddress(STATUS))
        .expect("poison status");
}

fn status(mem: &GuestMem) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).expect("status")
}

/// header (readable), data, status (writable).
fn three(driver: &Driver, data_len: u32, data_flags: u16) {
    driver.store(
        0,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(BUF, data_len, data_flags | F_NEXT, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    );
}

#[test]
fn reads_and_writes_sectors() {
    let mem = memory();
    let disk = Disk::new("rw", 16, 0xab);
    let mut driver = Driver::new(&mem, 16);
    let mut dev = device(&mem, &disk, false, &driver);

    header(&mem, T_IN, 2);
    three(&driver, 1024, F_WRITE);
    driver.offer(0);
    dev.process_queue();
    assert_eq!(status(&mem), S_OK);
    assert_eq!(driver.used(0), (0, 1025));
    let mut buf = [0u8; 1024];
    mem.read_slice(&mut buf, GuestAddress(BUF)).expect("read");
    assert!(buf.iter().all(|b| *b == 0xab));

    mem.write_slice(&[7u8; 512], GuestAddress(BUF))
        .expect("write");
    header(&mem, T_OUT, 15);
    three(&driver, 512, 0);
    driver.offer(0);
    dev.process_queue();
    assert_eq!(status(&mem), S_OK);
    assert_eq!(driver.used(1), (0, 1));
    let bytes = disk.bytes();
    assert!(bytes[15 * 512..].iter().all(|b| *b == 7));
    assert!(bytes[..15 * 512].iter().all(|b| *b == 0xab));
}

#[test]
fn requests_beyond_the_end_fail_with_ioerr() {
    let mem = memory();
    let disk = Disk::new("end", 4, 0);
    let mut driver = Driver::new(&mem, 16);
    let mut dev = device(&mem, &disk, false, &driver);
    for (type_, sector, flags) in [(T_IN, 4, F_WRITE), (T_OUT, 3, 0), (T_IN, u64::MAX, F_WRITE)] {
        header(&mem, type_, sector);
        three(&driver, 1024, flags);
        driver.offer(0);
        dev.process_queue();
        assert_eq!(status(&mem), S_IOERR, "type {type_} sector {sector}");
    }
    assert!(disk.bytes().iter().all(|b| *b == 0));
}

#[test]
fn read_only_disk_refuses_writes_whatever_the_guest_does() {
    let mem = memory();
    let disk = Disk::new("ro", 4, 1);
    let mut driver = Driver::new(&mem, 16);
    let mut dev = device(&mem, &disk, true, &driver);
    assert_ne!(
        dev.avail_features() & (1 << 5),
        0,
        "VIRTIO_BLK_F_RO offered"
    );
    mem.write_slice(&[9u8; 512], GuestAddress(BUF))
        .expect("write");
    header(&mem, T_OUT, 0);
    three(&driver, 512, 0);
    driver.offer(0);
    dev.process_queue();
    assert_eq!(status(&mem), S_IOERR);
    assert!(disk.bytes().iter().all(|b| *b == 1));
}

#[test]
fn get_id_flush_and_unknown_types() {
    let mem = memory();
    let disk = Disk::new("id", 4, 0);
    let mut driver = Driver::new(&mem, 16);
    let mut dev = device(&mem, &disk, false, &driver);
    header(&mem, T_GET_ID, 0);
    three(&driver, 20, F_WRITE);
    driver.offer(0);
    dev.process_queue();
    assert_eq!(status(&mem), S_OK);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(BUF)).expect("read");
    assert_eq!(&id[..8], b"serial-1");

    header(&mem, T_FLUSH, 0);
    driver.store(0, &[desc(HDR, 16, F_NEXT, 1), desc(STATUS, 1, F_WRITE, 0)]);
    driver.offer(0);
    dev.process_queue();
    assert_eq!(status(&mem), S_OK);

    header(&mem, 77, 0);
    driver.offer(0);
    dev.process_queue();
    assert_eq!(status(&mem), S_UNSUPP);
    assert_eq!(driver.used_count(), 3);
}

#[test]
fn looping_chain_ends_and_is_returned() {
    let mem = memory();
    let disk = Disk::new("loop", 4, 0);
    let mut driver = Driver::new(&mem, 16);
    let mut dev = device(&mem, &disk, false, &driver);
    header(&mem, T_IN, 0);
    // 0 -> 1 -> 0 -> ...: no writable status descriptor ever comes.
    driver.store(0, &[desc(HDR, 16, F_NEXT, 1), desc(BUF, 512, F_NEXT, 0)]);
    driver.offer(0);
    dev.process_queue();
    assert_eq!(driver.used(0), (0, 0));
    assert!(dev.core.active, "a bad chain does not break the device");
}

#[test]
fn next_index_past_the_table_ends_the_chain() {
    let mem = memory();
    let disk = Disk::new("next", 4, 0);
    let mut driver = Driver::new(&mem, 16);
    let mut dev = device(&mem, &disk, false, &driver);
    header(&mem, T_IN, 0);
    driver.store(0, &[desc(HDR, 16, F_NEXT, 200)]);
    driver.offer(0);
    dev.process_queue();
    assert_eq!(driver.used(0), (0, 0));
}

#[test]
fn buffers_outside_guest_memory_are_refused() {
    let mem = memory();
    let disk = Disk::new("oob", 4, 5);
    let mut driver = Driver::new(&mem, 16);
    let mut dev = device(&mem, &disk, false, &driver);
    header(&mem, T_IN, 0);
    driver.store(
        0,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(0xffff_ffff_0000, 512, F_WRITE | F_NEXT, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    );
    driver.offer(0);
    dev.process_queue();
    // The request fails with an I/O error; nothing was written anywhere.
    assert_eq!(driver.used(0), (0, 1));
    assert_eq!(status(&mem), S_IOERR);
    // A buffer that starts inside memory and runs past its end.
    header(&mem, T_IN, 0);
    driver.store(
        1,
        &[desc(
            crate::virtio::testutil::MEM_SIZE as u64 - 256,
            512,
            F_WRITE | F_NEXT,
            2,
        )],
    );
    driver.offer(0);
    dev.process_queue();
    assert_eq!(driver.used(1), (0, 1));
    assert_eq!(status(&mem), S_IOERR);
    // A write whose data lies outside memory writes nothing to the disk.
    header(&mem, T_OUT, 0);
    driver.store(1, &[desc(0xffff_ffff_0000, 512, F_NEXT, 2)]);
    driver.offer(0);
    dev.process_queue();
    assert_eq!(status(&mem), S_IOERR);
    assert!(disk.bytes().iter().all(|b| *b == 5));
}

#[test]
fn readable_after_writable_is_refused() {
    let mem = memory();
    let disk = Disk::new("order", 4, 0);
    let mut driver = Driver::new(&mem, 16);
    let mut dev = device(&mem, &disk, false, &driver);
    header(&mem, T_IN, 0);
    driver.store(
        0,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(STATUS, 1, F_WRITE | F_NEXT, 2),
            desc(BUF, 512, F_NEXT, 3),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    );
    driver.offer(0);
    dev.process_queue();
    assert_eq!(driver.used(0), (0, 0));
    assert_eq!(status(&mem), 0xff);
}

#[test]
fn header_split_over_descriptors_and_status_in_data_descriptor() {
    let mem = memory();
    let disk = Disk::new("split", 4, 0x5a);
    let mut driver = Driver::new(&mem, 16);
    let mut dev = device(&mem, &disk, false, &driver);
    header(&mem, T_IN, 1);
    // Header in two pieces; data and status share one writable buffer.
    driver.store(
        0,
        &[
            desc(HDR, 8, F_NEXT, 1),
            desc(HDR + 8, 8, F_NEXT, 2),
            desc(BUF, 513, F_WRITE, 0),
        ],
    );
    driver.offer(0);
    dev.process_queue();
    assert_eq!(driver.used(0), (0, 513));
    let mut buf = [0u8; 513];
    mem.read_slice(&mut buf, GuestAddress(BUF)).expect("read");
    assert!(buf[..512].iter().all(|b| *b == 0x5a));
    assert_eq!(buf[512], S_OK);
}

#[test]
fn zero_length_buffers() {
    let mem = memory();
    let disk = Disk::new("zero", 4, 0);
    let mut driver = Driver::new(&mem, 16);
    let mut dev = device(&mem, &disk, false, &driver);
    header(&mem, T_IN, 0);
    // Empty header: the request cannot be parsed, the status says so.
    driver.store(0, &[desc(HDR, 0, F_NEXT, 1), desc(STATUS, 1, F_WRITE, 0)]);
    driver.offer(0);
    dev.process_queue();
    assert_eq!(status(&mem), S_IOERR);
    // Empty status buffer: nothing can be reported; returned with length 0.
    driver.store(0, &[desc(HDR, 16, F_NEXT, 1), desc(STATUS, 0, F_WRITE, 0)]);
    driver.offer(0);
    dev.process_queue();
    assert_eq!(driver.used(1), (0, 0));
}

#[test]
fn avail_index_jump_marks_the_device_broken() {
    let mem = memory();
    let disk = Disk::new("jump", 4, 0);
    let mut driver = Driver::new(&mem, 16);
    let mut dev = device(&mem, &disk, false, &driver);
    driver.set_avail_idx(40);
    dev.process_queue();
    assert!(!dev.core.active);
    assert!(dev.core.interrupt.needs_reset());
    assert_eq!(driver.used_count(), 0);
    // Further notifications are ignored until a reset...
    header(&mem, T_IN, 0);
    three(&driver, 512, F_WRITE);
    dev.process_queue();
    assert_eq!(status(&mem), 0xff);
    // ...after which a driver that behaves is served again.
    dev.reset();
    dev.core.interrupt.reset();
    let mut driver = Driver::new(&mem, 16);
    dev.activate(vec![driver.queue()]).expect("activate again");
    header(&mem, T_IN, 0);
    three(&driver, 512, F_WRITE);
    driver.offer(0);
    dev.process_queue();
    assert_eq!(status(&mem), S_OK);
}

/// A device over `cfg`, activated with a new driver's queue.
fn activated<'m>(mem: &'m GuestMem, cfg: &BlockConfig) -> (Block, Driver<'m>) {
    let driver = Driver::new(mem, 16);
    (start(mem, cfg, &driver), driver)
}

/// One request of `len` bytes at `sector` through `BUF`; a read's buffer
/// is poisoned first. Returns the status byte.
fn request(
    mem: &GuestMem,
    driver: &mut Driver,
    dev: &mut Block,
    type_: u32,
    sector: u64,
    len: u32,
) -> u8 {
    let flags = if type_ == T_IN {
        mem.write_slice(&vec![0xffu8; len as usize], GuestAddress(BUF))
            .expect("poison");
        F_WRITE
    } else {
        0
    };
    header(mem, type_, sector);
    three(driver, len, flags);
    driver.offer(0);
    dev.process_queue();
    status(mem)
}

fn buffer(mem: &GuestMem, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(BUF)).expect("read");
    buf
}

fn config(disk: &Disk, read_only: bool) -> BlockConfig {
    BlockConfig {
        path: disk.path.clone(),
        read_only,
        id: String::new(),
        window: None,
        seal: None,
        parts: Vec::new(),
        rate_limit: Default::default(),
    }
}

#[test]
fn a_read_only_disk_may_end_mid_sector_and_reads_zeros_past_its_end() {
    let mem = memory();
    let disk = Disk::new("tail", 1, 0x5a);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&disk.path)
        .and_then(|mut f| f.write_all(&[0x11; 100]))
        .expect("grow disk");
    // Writable, it is refused: only a read-only disk may be ragged.
    let (irq, _) = interrupt();
    assert!(Block::new(&config(&disk, false), mem.clone(), irq).is_err());

    let (mut dev, mut driver) = activated(&mem, &config(&disk, true));
    assert_eq!(request(&mem, &mut driver, &mut dev, T_IN, 0, 1024), S_OK);
    let buf = buffer(&mem, 1024);
    assert!(buf[..512].iter().all(|b| *b == 0x5a));
    assert!(buf[512..612].iter().all(|b| *b == 0x11));
    assert!(buf[612..].iter().all(|b| *b == 0));
    // Capacity is two sectors: a third is beyond the end.
    assert_eq!(request(&mem, &mut driver, &mut dev, T_IN, 2, 512), S_IOERR);
}

#[test]
fn a_window_of_a_file_is_a_disk_and_nothing_past_it_shows() {
    let mem = memory();
    let disk = Disk::new("window", 0, 0);
    let mut body = vec![0xaau8; 1000];
    body.extend_from_slice(&[0x22; 700]);
    body.extend_from_slice(&[0x33; 900]);
    std::fs::write(&disk.path, &body).expect("write");
    let cfg = BlockConfig {
        window: Some((1000, 700)),
        ..config(&disk, true)
    };
    let (mut dev, mut driver) = activated(&mem, &cfg);
    assert_eq!(request(&mem, &mut driver, &mut dev, T_IN, 0, 1024), S_OK);
    let buf = buffer(&mem, 1024);
    assert!(buf[..700].iter().all(|b| *b == 0x22));
    assert!(buf[700..].iter().all(|b| *b == 0));
    // A window past the end of the file is refused.
    let (irq, _) = interrupt();
    let bad = BlockConfig {
        window: Some((2000, 700)),
        ..cfg
    };
    assert!(Block::new(&bad, mem.clone(), irq).is_err());
}

#[test]
fn a_sealed_disk_refuses_writes_from_then_on() {
    let mem = memory();
    let disk = Disk::new("seal", 4, 0);
    let seal = std::sync::Arc::new(Seal::new());
    let cfg = BlockConfig {
        seal: Some(seal.clone()),
        ..config(&disk, false)
    };
    let (mut dev, mut driver) = activated(&mem, &cfg);
    mem.write_slice(&[9u8; 512], GuestAddress(BUF))
        .expect("data");
    assert_eq!(request(&mem, &mut driver, &mut dev, T_OUT, 0, 512), S_OK);
    seal.seal().expect("seal");
    // Not even the device's own descriptor writes any more.
    assert!(
        std::io::Write::write_all(&mut &dev.file, b"x").is_err(),
        "the device's descriptor still writes after the seal"
    );
    mem.write_slice(&[7u8; 512], GuestAddress(BUF))
        .expect("data");
    assert_eq!(request(&mem, &mut driver, &mut dev, T_OUT, 1, 512), S_IOERR);
    // Reads go on, through the read-only descriptor.
    assert_eq!(request(&mem, &mut driver, &mut dev, T_IN, 0, 512), S_OK);
    let bytes = disk.bytes();
    assert!(bytes[..512].iter().all(|b| *b == 9));
    assert!(bytes[512..].iter().all(|b| *b == 0));
}

#[test]
fn many_files_make_one_read_only_disk_with_parts_on_sector_boundaries() {
    let mem = memory();
    let a = Disk::new("part-a", 0, 0);
    let b = Disk::new("part-b", 0, 0);
    // a: 700 bytes of 0xa1 after 100 bytes that are not part of it; b: a
    // whole sector of 0xb2, then 10 bytes of 0xb3.
    let mut body = vec![0xffu8; 100];
    body.extend_from_slice(&[0xa1; 700]);
    std::fs::write(&a.path, &body).expect("write a");
    let mut body = vec![0xb2u8; 512];
    body.extend_from_slice(&[0xb3; 10]);
    std::fs::write(&b.path, &body).expect("write b");
    let parts = vec![
        Part {
            path: a.path.clone(),
            offset: 100,
            len: 700,
        },
        Part {
            path: b.path.clone(),
            offset: 0,
            len: 522,
        },
    ];
    assert_eq!(part_offsets(parts.iter().map(|p| p.len)), [0, 1024]);
    let cfg = BlockConfig {
        read_only: true,
        parts: parts.clone(),
        ..BlockConfig::default()
    };
    let (mut dev, mut driver) = activated(&mem, &cfg);
    // One read across both parts and the gaps after each.
    assert_eq!(request(&mem, &mut driver, &mut dev, T_IN, 0, 2048), S_OK);
    let buf = buffer(&mem, 2048);
    assert!(buf[..700].iter().all(|x| *x == 0xa1));
    assert!(buf[700..1024].iter().all(|x| *x == 0));
    assert!(buf[1024..1536].iter().all(|x| *x == 0xb2));
    assert!(buf[1536..1546].iter().all(|x| *x == 0xb3));
    assert!(buf[1546..].iter().all(|x| *x == 0));
    // A read that starts inside the second part.
    assert_eq!(request(&mem, &mut driver, &mut dev, T_IN, 3, 512), S_OK);
    let buf = buffer(&mem, 512);
    assert!(buf[..10].iter().all(|x| *x == 0xb3));
    assert!(buf[10..].iter().all(|x| *x == 0));
    // Four sectors in all; a fifth is beyond the end; writes are refused.
    assert_eq!(request(&mem, &mut driver, &mut dev, T_IN, 4, 512), S_IOERR);
    assert_eq!(request(&mem, &mut driver, &mut dev, T_OUT, 0, 512), S_IOERR);
    // A writable disk of parts, or a part past its file's end, is refused.
    let (irq, _) = interrupt();
    let writable = BlockConfig {
        read_only: false,
        ..cfg.clone()
    };
    assert!(Block::new(&writable, mem.clone(), irq.clone()).is_err());
    let mut long = parts;
    long[1].len = 600;
    let bad = BlockConfig { parts: long, ..cfg };
    assert!(Block::new(&bad, mem.clone(), irq).is_err());
}

#[test]
fn a_rate_limited_disk_serves_what_its_bucket_allows_then_waits_for_its_timer() {
    use crate::rate_limiter::{BucketConfig, RateLimiterConfig};
    use std::time::Duration;
    let mem = memory();
    let disk = Disk::new("limited", 16, 0x5a);
    let mut driver = Driver::new(&mem, 16);
    let cfg = BlockConfig {
        rate_limit: RateLimiterConfig {
            bandwidth: None,
            // Two requests, then one every 50 ms.
            ops: Some(BucketConfig {
                size: 2,
                one_time_burst: 0,
                refill_time: Duration::from_millis(100),
            }),
        },
        ..config(&disk, true)
    };
    let mut dev = start(&mem, &cfg, &driver);
    header(&mem, T_IN, 0);
    three(&driver, 512, F_WRITE);
    for _ in 0..3 {
        driver.offer(0);
    }
    dev.process_queue();
    assert_eq!(driver.used_count(), 2, "the bucket held two requests");
    // A kick while it waits serves nothing.
    dev.process_queue();
    assert_eq!(driver.used_count(), 2);
    let limiter = dev.limiter.as_mut().expect("a limiter");
    assert!(limiter.is_blocked());
    // The timer fires once the next token is there.
    let mut fds = [libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(limiter),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: poll on one valid pollfd for the call's duration.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 2000) };
    assert_eq!(ready, 1, "the limiter's timer fired");
    limiter.timer_fired();
    dev.process_queue();
    assert_eq!(driver.used_count(), 3, "the third request after the wait");
    assert_eq!(status(&mem), S_OK);
}
