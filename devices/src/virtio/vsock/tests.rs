//! virtio-vsock against driver-side mock queues over real guest memory,
//! with real Unix sockets on the host side; includes hostile guests.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::device::{parse_connect, Vsock, VsockConfig};
use super::proto::*;
use crate::virtio::testutil::{desc, interrupt, memory, Driver, DATA, F_NEXT, F_WRITE};
use crate::virtio::{GuestMem, VirtioDevice, VIRTIO_F_VERSION_1};

const CID: u64 = 3;
const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x4000;
const EV_RING: u64 = 0x8000;
const HDR_LEN: u32 = 44;

#[test]
fn connect_line() {
    assert_eq!(parse_connect(b"CONNECT 52"), Ok(52));
    assert_eq!(parse_connect(b"CONNECT 52\r"), Ok(52));
    assert!(parse_connect(b"CONNECT").is_err());
    assert!(parse_connect(b"CONNECT -1").is_err());
    assert!(parse_connect(b"connect 5").is_err());
    assert!(parse_connect(b"CONNECT 99999999999").is_err());
    assert!(parse_connect(&[0xff, 0xfe]).is_err());
}

struct Rig<'a> {
    mem: &'a GuestMem,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    id: event_manager::SubscriberId,
    rx: Driver<'a>,
    tx: Driver<'a>,
    path: std::path::PathBuf,
    tx_slot: u16,
}

#[allow(clippy::too_many_arguments)]
fn header(
    op: u16,
    src_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    buf_alloc: u32,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(HDR_LEN as usize);
    h.extend_from_slice(&src_cid.to_le_bytes());
    h.extend_from_slice(&HOST_CID.to_le_bytes());
    h.extend_from_slice(&src_port.to_le_bytes());
    h.extend_from_slice(&dst_port.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&TYPE_STREAM.to_le_bytes());
    h.extend_from_slice(&op.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes()); // flags
    h.extend_from_slice(&buf_alloc.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes()); // fwd_cnt
    h
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMem, name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("vm-vsock-test-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (irq, _) = interrupt();
        let cfg = VsockConfig {
            guest_cid: CID,
            uds_path: path.clone(),
            rate_limit: Default::default(),
        };
        let mut dev = Vsock::new(&cfg, mem.clone(), irq).expect("vsock");
        let rx = Driver::at(mem, RX_RING, 16);
        let tx = Driver::at(mem, TX_RING, 16);
        let ev = Driver::at(mem, EV_RING, 16);
        dev.set_acked_features(VIRTIO_F_VERSION_1);
        dev.activate(vec![rx.queue(), tx.queue(), ev.queue()])
            .expect("activate");
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::new().expect("event manager");
        let id = em.add_subscriber(dev.clone());
        Self {
            mem,
            dev,
            em,
            id,
            rx,
            tx,
            path,
            tx_slot: 0,
        }
    }

    fn ops(&mut self) -> EventOps<'_> {
        self.em.event_ops(self.id).expect("ops")
    }

    /// Offer one TX chain: header (+ data descriptor of `buf_len`).
    fn send(&mut self, hdr: &[u8], data: Option<(&[u8], u32)>) {
        let slot = self.tx_slot;
        self.tx_slot = (self.tx_slot + 2) % 16;
        let base = DATA + 0x10000 * u64::from(slot);
        self.mem.write_slice(hdr, GuestAddress(base)).expect("hdr");
        match data {
            Some((bytes, buf_len)) => {
                self.mem
                    .write_slice(bytes, GuestAddress(base + 0x1000))
                    .expect("data");
                self.tx.store(
                    slot,
                    &[
                        desc(base, HDR_LEN, F_NEXT, slot + 1),
                        desc(base + 0x1000, buf_len, 0, 0),
                    ],
                );
            }
            None => self.tx.store(slot, &[desc(base, HDR_LEN, 0, 0)]),
        }
        self.tx.offer(slot);
        let dev = self.dev.clone();
        let mut ops = self.ops();
        dev.lock().expect("lock").process_tx(&mut ops);
    }

    /// Offer `n` RX buffers of header + 64 KiB each.
    fn give_rx(&mut self, n: u16) {
        for i in 0..n {
            let base = DATA + 0x20_0000 + 0x1_1000 * u64::from(i);
            self.rx
                .store(i, &[desc(base, HDR_LEN + 0x10000, F_WRITE, 0)]);
            self.rx.offer(i);
        }
        let dev = self.dev.clone();
        let mut ops = self.ops();
        dev.lock().expect("lock").process_rx(&mut ops);
    }

    /// (op, len) of the packet in used RX entry `i`.
    fn rx_packet(&self, i: u16) -> (u16, u32) {
        let (id, _) = self.rx.used(i);
        let base = DATA + 0x20_0000 + 0x1_1000 * u64::from(id as u16);
        let op: u16 = self.mem.read_obj(GuestAddress(base + 30)).expect("op");
        let len: u32 = self.mem.read_obj(GuestAddress(base + 24)).expect("len");
        (op, len)
    }
}

impl Drop for Rig<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn guest_connects_to_a_host_listener_and_sends_data() {
    let mem = memory();
    let mut rig = Rig::new(&mem, "g2h");
    let listener = UnixListener::bind(format!("{}_5000", rig.path.display())).expect("listen");
    rig.send(&header(OP_REQUEST, CID, 1234, 5000, 0, CONN_BUF), None);
    let (mut host, _) = listener.accept().expect("accepted");
    rig.give_rx(1);
    assert_eq!(rig.rx_packet(0).0, OP_RESPONSE);
    rig.send(
        &header(OP_RW, CID, 1234, 5000, 5, CONN_BUF),
        Some((b"hello", 5)),
    );
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"hello");
    // Host replies; the guest gets an RW packet.
    host.write_all(b"world!").expect("write");
    let dev = rig.dev.clone();
    let tokens: Vec<u32> = (0x201..0x210).collect();
    for t in tokens {
        let mut ops = rig.ops();
        dev.lock()
            .expect("lock")
            .token_event(t, vmm_sys_util::epoll::EventSet::IN, &mut ops);
    }
    rig.give_rx(1);
    assert_eq!(rig.rx_packet(1), (OP_RW, 6));
}

#[test]
fn request_to_a_port_nobody_listens_on_is_reset() {
    let mem = memory();
    let mut rig = Rig::new(&mem, "refused");
    rig.send(&header(OP_REQUEST, CID, 1234, 4444, 0, CONN_BUF), None);
    rig.give_rx(1);
    assert_eq!(rig.rx_packet(0).0, OP_RST);
}

#[test]
fn header_length_beyond_its_buffer_is_dropped() {
    let mem = memory();
    let mut rig = Rig::new(&mem, "badlen");
    let _l = UnixListener::bind(format!("{}_5000", rig.path.display())).expect("listen");
    rig.send(&header(OP_REQUEST, CID, 1, 5000, 0, CONN_BUF), None);
    // Says 4096 bytes of data, brings a 100-byte buffer.
    rig.send(
        &header(OP_RW, CID, 1, 5000, 4096, CONN_BUF),
        Some((&[1u8; 100], 100)),
    );
    // Says more than any packet may carry.
    rig.send(
        &header(OP_RW, CID, 1, 5000, MAX_PKT_DATA + 1, CONN_BUF),
        Some((&[1u8; 100], 100)),
    );
    assert_eq!(rig.tx.used_count(), 3, "every buffer returned");
    assert!(
        rig.dev.lock().expect("lock").core.active,
        "device still working"
    );
}

#[test]
fn packets_with_a_forged_source_cid_are_ignored() {
    let mem = memory();
    let mut rig = Rig::new(&mem, "cid");
    let l = UnixListener::bind(format!("{}_5000", rig.path.display())).expect("listen");
    l.set_nonblocking(true).expect("nonblocking");
    rig.send(&header(OP_REQUEST, 77, 1, 5000, 0, CONN_BUF), None);
    assert!(l.accept().is_err(), "no connection made for a forged CID");
    rig.give_rx(1);
    assert_eq!(rig.rx.used_count(), 0, "and no answer either");
}

#[test]
fn a_guest_that_never_reads_rx_costs_bounded_memory() {
    let mem = memory();
    let mut rig = Rig::new(&mem, "noread");
    // 1000 packets to unknown connections, no RX buffers: the resets owed
    // are capped.
    for i in 0..1000u32 {
        rig.send(&header(OP_RW, CID, 10_000 + i, 9, 0, CONN_BUF), None);
    }
    // A host client floods a connection the guest never reads.
    let mut client = UnixStream::connect(&rig.path).expect("connect");
    client.write_all(b"CONNECT 5000\n").expect("handshake");
    let dev = rig.dev.clone();
    {
        let mut ops = rig.ops();
        let mut d = dev.lock().expect("lock");
        d.accept_host_clients(&mut ops);
        for t in 0x201..0x210 {
            d.token_event(t, vmm_sys_util::epoll::EventSet::IN, &mut ops);
        }
    }
    client.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![0u8; 65536];
    let mut sent = 0usize;
    for _ in 0..400 {
        match client.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
        let mut ops = rig.ops();
        let mut d = dev.lock().expect("lock");
        for t in 0x201..0x210 {
            d.token_event(t, vmm_sys_util::epoll::EventSet::IN, &mut ops);
        }
    }
    let d = dev.lock().expect("lock");
    assert!(
        d.buffered_bytes() <= MAX_PKT_DATA as usize,
        "buffered {}",
        d.buffered_bytes()
    );
    assert!(d.owed_resets() <= 256, "owed {}", d.owed_resets());
    assert!(
        sent < 400 * 65536,
        "no back-pressure: the host wrote {sent} bytes into a guest that never reads"
    );
}

#[test]
fn guest_exceeding_our_buffer_is_reset() {
    let mem = memory();
    let mut rig = Rig::new(&mem, "credit");
    let listener = UnixListener::bind(format!("{}_5000", rig.path.display())).expect("listen");
    rig.send(&header(OP_REQUEST, CID, 7, 5000, 0, CONN_BUF), None);
    let (_host, _) = listener.accept().expect("accepted"); // never reads
    let data = vec![9u8; 0x10000];
    for _ in 0..64 {
        rig.send(
            &header(OP_RW, CID, 7, 5000, 0x10000, CONN_BUF),
            Some((&data, 0x10000)),
        );
    }
    rig.give_rx(8);
    let ops: Vec<u16> = (0..rig.rx.used_count())
        .map(|i| rig.rx_packet(i).0)
        .collect();
    assert!(ops.contains(&OP_RST), "got {ops:?}");
    assert_eq!(rig.dev.lock().expect("lock").buffered_bytes(), 0);
}

#[test]
fn host_connection_the_guest_never_answers_times_out() {
    let mem = memory();
    let mut rig = Rig::new(&mem, "timeout");
    let mut client = UnixStream::connect(&rig.path).expect("connect");
    client.write_all(b"CONNECT 5000\n").expect("handshake");
    // A second client that never says CONNECT at all.
    let mut mute = UnixStream::connect(&rig.path).expect("connect");
    client
        .set_read_timeout(Some(std::time::Duration::from_millis(50)))
        .expect("timeout");
    mute.set_read_timeout(Some(std::time::Duration::from_millis(50)))
        .expect("timeout");
    // The guest takes the REQUEST and never answers.
    for _ in 0..4 {
        rig.em.run_with_timeout(50).expect("event loop");
    }
    rig.give_rx(1);
    assert_eq!(rig.rx_packet(0).0, OP_REQUEST);
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    let mut mute_got = Vec::new();
    while start.elapsed() < std::time::Duration::from_secs(8) {
        rig.em.run_with_timeout(50).expect("event loop");
        let mut buf = [0u8; 128];
        if let Ok(n) = client.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        if let Ok(n) = mute.read(&mut buf) {
            mute_got.extend_from_slice(&buf[..n]);
        }
        if !got.is_empty() && !mute_got.is_empty() {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("ERR timeout"), "client got {text:?}");
    let mute_text = String::from_utf8_lossy(&mute_got);
    assert!(
        mute_text.starts_with("ERR timeout waiting for CONNECT"),
        "mute client got {mute_text:?}"
    );
    // Then the guest is told to forget it.
    rig.give_rx(1);
    assert_eq!(rig.rx.used_count(), 2);
    assert_eq!(rig.rx_packet(1).0, OP_RST);
}

#[test]
fn a_full_listener_backlog_refuses_instead_of_blocking() {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    use std::os::fd::AsRawFd;
    let mem = memory();
    let mut rig = Rig::new(&mem, "backlog");
    // A host listener that accepts nothing, with room for one waiting
    // connection (Linux queues up to backlog + 1).
    let path = std::path::PathBuf::from(format!("{}_5000", rig.path.display()));
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(fd.as_raw_fd(), &UnixAddr::new(&path).expect("addr")).expect("bind");
    listen(&fd, Backlog::new(1).expect("backlog")).expect("listen");
    // Should a request block, the watchdog closes the listener after 10 s,
    // which ends the wait, and the test fails.
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let late = wait
            .recv_timeout(std::time::Duration::from_secs(10))
            .is_err();
        drop(fd);
        late
    });
    let n = 8u16;
    for port in 0..u32::from(n) {
        rig.send(
            &header(OP_REQUEST, CID, 100 + port, 5000, 0, CONN_BUF),
            None,
        );
    }
    let _ = done.send(());
    let late = watchdog.join().expect("watchdog");
    let _ = std::fs::remove_file(&path);
    assert!(!late, "a connect to a full backlog blocked the event loop");
    rig.give_rx(n);
    let ops: Vec<u16> = (0..rig.rx.used_count())
        .map(|i| rig.rx_packet(i).0)
        .collect();
    assert_eq!(ops.len(), usize::from(n), "every request answered: {ops:?}");
    assert!(
        ops.contains(&OP_RESPONSE),
        "the backlog's room was used: {ops:?}"
    );
    assert!(ops.contains(&OP_RST), "the rest refused: {ops:?}");
}

#[test]
fn many_connections_share_a_bounded_budget() {
    let mem = memory();
    let mut rig = Rig::new(&mem, "budget");
    let listener = UnixListener::bind(format!("{}_5000", rig.path.display())).expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    // The host accepts every connection and reads none; the guest opens
    // 300 and fills each with 256 KiB (the most any is ever granted).
    let mut hosts = Vec::new();
    let data = vec![5u8; 0x10000];
    for port in 0..300u32 {
        rig.send(
            &header(OP_REQUEST, CID, 1000 + port, 5000, 0, CONN_BUF),
            None,
        );
        while let Ok((h, _)) = listener.accept() {
            hosts.push(h);
        }
        for _ in 0..4 {
            rig.send(
                &header(OP_RW, CID, 1000 + port, 5000, 0x10000, CONN_BUF),
                Some((&data, 0x10000)),
            );
        }
    }
    let d = rig.dev.lock().expect("lock");
    assert!(
        d.granted_bytes() <= GUEST_DATA_BUDGET,
        "granted {}",
        d.granted_bytes()
    );
    assert!(
        d.buffered_bytes() <= GUEST_DATA_BUDGET,
        "buffered {}",
        d.buffered_bytes()
    );
    assert!(hosts.len() >= 50, "only {} connections made", hosts.len());
    assert!(hosts.len() < 300, "all {} connections made", hosts.len());
    drop(d);
    let _ = std::fs::remove_file(format!("{}_5000", rig.path.display()));
}
