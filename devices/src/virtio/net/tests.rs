//! virtio-net against driver-side mock queues over real guest memory, with
//! a datagram socket pair standing in for the TAP device (frames keep
//! their boundaries, as on a TAP).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use vm_memory::{Bytes, GuestAddress};

use super::device::{Backend, Net, NetConfig, HDR_LEN, OFFLOADS, RX, TX};
use crate::rate_limiter::{BucketConfig, RateLimiterConfig};
use crate::virtio::testutil::{desc, interrupt, memory, Driver, DATA, F_NEXT, F_WRITE};
use crate::virtio::{GuestMem, VirtioDevice, VIRTIO_F_VERSION_1};

struct Pair(UnixDatagram);

impl Backend for Pair {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.send(frame).map(|_| ())
    }
    fn offloads(&self) -> u64 {
        OFFLOADS
    }
    fn set_guest_features(&mut self, _features: u64) -> io::Result<()> {
        Ok(())
    }
    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

const RX_RING: u64 = 0;
const TX_RING: u64 = 0x8000;

fn config() -> NetConfig {
    NetConfig {
        tap: String::new(),
        tap_fd: None,
        stream_fd: None,
        mac: [0x02, 0, 0, 0, 0, 1],
        rx_rate_limit: RateLimiterConfig::default(),
        tx_rate_limit: RateLimiterConfig::default(),
    }
}

/// A device with `features` acked, its queues from `rx` and `tx`, and
/// the host end of its backend.
fn start(
    mem: &GuestMem,
    cfg: &NetConfig,
    features: u64,
    rx: &Driver,
    tx: &Driver,
) -> (Net, UnixDatagram) {
    let (ours, theirs) = UnixDatagram::pair().expect("socket pair");
    ours.set_nonblocking(true).expect("nonblocking");
    theirs.set_nonblocking(true).expect("nonblocking");
    let (irq, _) = interrupt();
    let mut dev =
        Net::with_backend(cfg, Box::new(Pair(ours)), mem.clone(), irq).expect("net device");
    dev.set_acked_features(VIRTIO_F_VERSION_1 | features);
    dev.activate(vec![rx.queue(), tx.queue()])
        .expect("activate");
    dev.activated();
    (dev, theirs)
}

fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![fill; len];
    f[..HDR_LEN].fill(0);
    f
}

#[test]
fn frames_from_the_guest_reach_the_backend_whole() {
    let mem = memory();
    let rx = Driver::at(&mem, RX_RING, 16);
    let mut tx = Driver::at(&mem, TX_RING, 16);
    let (mut dev, host) = start(&mem, &config(), 0, &rx, &tx);
    // Header and frame in two descriptors.
    let f = frame(HDR_LEN + 60, 0x5a);
    mem.write_slice(&f, GuestAddress(DATA)).expect("write");
    tx.store(
        0,
        &[
            desc(DATA, HDR_LEN as u32, F_NEXT, 1),
            desc(DATA + HDR_LEN as u64, 60, 0, 0),
        ],
    );
    tx.offer(0);
    dev.process_tx();
    assert_eq!(tx.used_count(), 1);
    let mut got = vec![0u8; 200];
    let n = host.recv(&mut got).expect("a frame");
    assert_eq!(&got[..n], &f[..]);
    assert_eq!(dev.counters.tx_frames, 1);
    assert_eq!(dev.counters.tx_bytes, 60);
}

#[test]
fn a_frame_spreads_over_mergeable_buffers_with_their_count_in_the_header() {
    let mem = memory();
    let mut rx = Driver::at(&mem, RX_RING, 16);
    let tx = Driver::at(&mem, TX_RING, 16);
    let (mut dev, host) = start(&mem, &config(), 1 << VIRTIO_NET_F_MRG_RXBUF, &rx, &tx);
    for i in 0..3u16 {
        rx.store(i, &[desc(DATA + u64::from(i) * 0x1000, 1526, F_WRITE, 0)]);
        rx.offer(i);
    }
    let f = frame(3000, 0x77);
    host.send(&f).expect("send");
    dev.process_rx();
    assert_eq!(rx.used_count(), 2, "two buffers for 3000 bytes");
    assert_eq!(rx.used(0), (0, 1526));
    assert_eq!(rx.used(1), (1, 3000 - 1526));
    let mut got = vec![0u8; 3000];
    mem.read_slice(&mut got[..1526], GuestAddress(DATA))
        .expect("read");
    mem.read_slice(&mut got[1526..], GuestAddress(DATA + 0x1000))
        .expect("read");
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 2, "num_buffers");
    assert_eq!(&got[HDR_LEN..], &f[HDR_LEN..]);
    assert_eq!(dev.counters.rx_frames, 1);
}

#[test]
fn a_frame_waits_for_buffers_and_the_backend_is_not_read_meanwhile() {
    let mem = memory();
    let mut rx = Driver::at(&mem, RX_RING, 16);
    let tx = Driver::at(&mem, TX_RING, 16);
    let (mut dev, host) = start(&mem, &config(), 1 << VIRTIO_NET_F_MRG_RXBUF, &rx, &tx);
    host.send(&frame(100, 1)).expect("send");
    host.send(&frame(200, 2)).expect("send");
    dev.process_rx();
    assert_eq!(rx.used_count(), 0);
    // Two buffers too small for one frame each: nothing is taken.
    rx.store(0, &[desc(DATA, 50, F_WRITE, 0)]);
    rx.offer(0);
    dev.process_rx();
    assert_eq!(rx.used_count(), 0, "a frame is never split short");
    for i in 1..4u16 {
        rx.store(i, &[desc(DATA + u64::from(i) * 0x1000, 1526, F_WRITE, 0)]);
        rx.offer(i);
    }
    dev.process_rx();
    // 100 bytes in the 50-byte buffer and the next; 200 in the next.
    assert_eq!(rx.used_count(), 3);
    assert_eq!(rx.used(0), (0, 50));
    assert_eq!(rx.used(1), (1, 50));
    assert_eq!(rx.used(2), (2, 200));
    assert_eq!(dev.counters.rx_frames, 2);
}

#[test]
fn without_mergeable_buffers_a_frame_too_big_for_its_buffer_is_dropped() {
    let mem = memory();
    let mut rx = Driver::at(&mem, RX_RING, 16);
    let tx = Driver::at(&mem, TX_RING, 16);
    let (mut dev, host) = start(&mem, &config(), 0, &rx, &tx);
    for i in 0..2u16 {
        rx.store(i, &[desc(DATA + u64::from(i) * 0x1000, 1526, F_WRITE, 0)]);
        rx.offer(i);
    }
    host.send(&frame(3000, 1)).expect("send");
    host.send(&frame(1000, 2)).expect("send");
    dev.process_rx();
    assert_eq!(dev.counters.rx_dropped, 1);
    assert_eq!(dev.counters.rx_frames, 1);
    assert_eq!(rx.used_count(), 2);
    assert_eq!(rx.used(1), (1, 1000));
    let mut n = [0u8; 2];
    mem.read_slice(&mut n, GuestAddress(DATA + 0x1000 + 10))
        .expect("read");
    assert_eq!(u16::from_le_bytes(n), 1, "num_buffers is 1 without merging");
}

#[test]
fn hostile_frames_from_the_guest_are_dropped_not_sent() {
    let mem = memory();
    let rx = Driver::at(&mem, RX_RING, 16);
    let mut tx = Driver::at(&mem, TX_RING, 16);
    let (mut dev, host) = start(&mem, &config(), 0, &rx, &tx);
    // Shorter than the header; a device-writable buffer; one far outside
    // guest memory; longer than any frame.
    tx.store(0, &[desc(DATA, 4, 0, 0)]);
    tx.store(1, &[desc(DATA, 100, F_WRITE, 0)]);
    tx.store(2, &[desc(0xffff_ffff_0000, 100, 0, 0)]);
    tx.store(3, &[desc(DATA, 0x20_0000, 0, 0)]);
    for i in 0..4 {
        tx.offer(i);
    }
    dev.process_tx();
    assert_eq!(tx.used_count(), 4, "every chain is given back");
    assert_eq!(dev.counters.tx_frames, 0);
    assert_eq!(dev.counters.tx_dropped, 4);
    let mut buf = [0u8; 16];
    assert!(host.recv(&mut buf).is_err(), "nothing reached the backend");
}

#[test]
fn a_rate_limited_guest_sends_what_its_bucket_allows_then_waits() {
    let mem = memory();
    let rx = Driver::at(&mem, RX_RING, 16);
    let mut tx = Driver::at(&mem, TX_RING, 16);
    let cfg = NetConfig {
        tx_rate_limit: RateLimiterConfig {
            bandwidth: None,
            ops: Some(BucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time: Duration::from_millis(50),
            }),
        },
        ..config()
    };
    let (mut dev, host) = start(&mem, &cfg, 0, &rx, &tx);
    mem.write_slice(&frame(HDR_LEN + 60, 3), GuestAddress(DATA))
        .expect("write");
    tx.store(0, &[desc(DATA, HDR_LEN as u32 + 60, 0, 0)]);
    tx.offer(0);
    tx.offer(0);
    dev.process_tx();
    assert_eq!(tx.used_count(), 1);
    let limiter = dev.tx_limiter.as_mut().expect("limiter");
    let mut fds = [libc::pollfd {
        fd: limiter.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: poll on one valid pollfd for the call's duration.
    assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 2000) }, 1);
    limiter.timer_fired();
    dev.process_tx();
    assert_eq!(tx.used_count(), 2);
    let mut buf = [0u8; 128];
    assert!(host.recv(&mut buf).is_ok() && host.recv(&mut buf).is_ok());
}

#[test]
fn the_config_space_has_the_mac_and_link_up() {
    let mem = memory();
    let rx = Driver::at(&mem, RX_RING, 16);
    let tx = Driver::at(&mem, TX_RING, 16);
    let (dev, _host) = start(&mem, &config(), 0, &rx, &tx);
    let mut space = [0u8; 10];
    dev.read_config(0, &mut space);
    assert_eq!(&space[..6], &[0x02, 0, 0, 0, 0, 1]);
    assert_eq!(u16::from_le_bytes([space[6], space[7]]), 1);
    let _ = (RX, TX);
}
