//! The vsock device: config space, the guest's TX queue (packets from the
//! guest), its RX queue (packets to the guest), and the connection table.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events};
use virtio_queue::{QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::Bytes;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, State};
use super::proto::*;
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::virtio::core::{reschedule, DrainBudget, TOKEN_BACKEND};
use crate::virtio::{
    pop_chain, DeviceCore, GuestMem, Interrupt, VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1,
};

pub const RX: usize = 0;
pub const TX: usize = 1;
const QUEUE_SIZE: u16 = 256;
/// Guest CIDs 0-2 are reserved (hypervisor, local, host).
const MIN_GUEST_CID: u64 = 3;
/// Most connections (and pending host handshakes) at once. With
/// GUEST_DATA_BUDGET and one stashed packet per connection, the device
/// holds at most 16 MiB + 256 x 64 KiB = 32 MiB of data.
const MAX_CONNS: usize = 256;
/// Most RST replies to stray packets kept while the RX queue is full.
const MAX_STRAY: usize = 256;
/// First port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
pub const TOKEN_LISTENER: u32 = TOKEN_BACKEND;
pub const TOKEN_TIMER: u32 = TOKEN_BACKEND + 1;
pub const TOKEN_LIMITER: u32 = TOKEN_BACKEND + 2;
const FIRST_CONN_TOKEN: u32 = TOKEN_BACKEND + 3;
/// How long a host-initiated connection waits for the guest to accept it
/// (Firecracker's figure), and a host client to send its `CONNECT` line.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often those are checked while any is pending.
const TIMER_TICK: Duration = Duration::from_millis(500);
/// Longest `CONNECT <port>\n` line accepted from a host client.
const MAX_HANDSHAKE: usize = 32;

pub type Key = (u32, u32); // (local port, peer port)

// The host side (listener, handshakes, host sockets) lives in its own
// file; as a child module it sees this one's private state.
#[path = "host.rs"]
mod host;

#[derive(Clone, Debug)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
    /// How fast the guest may send (bytes and packets).
    pub rate_limit: RateLimiterConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest CID {0} is reserved; use 3 or more")]
    Cid(u64),
    #[error("cannot listen on {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A host client that connected to the listener and has not yet said
/// which guest port it wants.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    since: Instant,
}

/// What a token registered with the event loop stands for.
#[derive(Clone, Copy)]
enum Owner {
    Conn(Key),
    Handshake,
}

/// A packet parsed from the guest's TX queue.
pub struct GuestPacket {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    pub data: Vec<u8>,
}

pub struct Vsock {
    pub(super) core: DeviceCore,
    cid: u64,
    path: PathBuf,
    config_space: [u8; 8],
    pub(super) listener: UnixListener,
    pub(super) conns: HashMap<Key, Connection>,
    /// Up to MAX_PKT_DATA bytes read from a host socket, waiting for an
    /// RX buffer.
    stash: HashMap<Key, Vec<u8>>,
    handshakes: HashMap<u32, Handshake>,
    tokens: HashMap<u32, Owner>,
    conn_tokens: HashMap<Key, u32>,
    /// Interest currently registered per token.
    interest: HashMap<u32, EventSet>,
    next_token: u32,
    next_local_port: u32,
    rx_work: VecDeque<Key>,
    rx_queued: HashSet<Key>,
    stray: VecDeque<Route>,
    /// Ticks while handshakes or host-initiated connections are pending.
    pub(super) timer: TimerFd,
    timer_armed: bool,
    /// Paces what the guest sends, when limited.
    pub(super) limiter: Option<RateLimiter>,
}

impl Vsock {
    pub fn new(cfg: &VsockConfig, mem: GuestMem, interrupt: Arc<Interrupt>) -> Result<Self, Error> {
        if cfg.guest_cid < MIN_GUEST_CID || cfg.guest_cid > u64::from(u32::MAX) {
            return Err(Error::Cid(cfg.guest_cid));
        }
        let listener = UnixListener::bind(&cfg.uds_path).map_err(|source| Error::Listen {
            path: cfg.uds_path.clone(),
            source,
        })?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            core: DeviceCore::new(mem, interrupt, 3)?,
            cid: cfg.guest_cid,
            path: cfg.uds_path.clone(),
            config_space: cfg.guest_cid.to_le_bytes(),
            listener,
            conns: HashMap::new(),
            stash: HashMap::new(),
            handshakes: HashMap::new(),
            tokens: HashMap::new(),
            conn_tokens: HashMap::new(),
            interest: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            rx_work: VecDeque::new(),
            rx_queued: HashSet::new(),
            stray: VecDeque::new(),
            timer: TimerFd::new().map_err(|e| io::Error::from_raw_os_error(e.errno()))?,
            timer_armed: false,
            limiter: if cfg.rate_limit.is_unlimited() {
                None
            } else {
                Some(RateLimiter::new(&cfg.rate_limit)?)
            },
        })
    }

    pub fn uds_path(&self) -> &PathBuf {
        &self.path
    }

    /// Guest and host data held by the device right now (for tests and
    /// diagnostics): it must stay bounded whatever either side does.
    pub fn buffered_bytes(&self) -> usize {
        self.stash.values().map(Vec::len).sum::<usize>()
            + self
                .conns
                .values()
                .map(Connection::pending_len)
                .sum::<usize>()
    }

    /// The receive buffers granted to connections, in bytes: never more
    /// than GUEST_DATA_BUDGET.
    pub fn granted_bytes(&self) -> usize {
        self.conns.values().map(|c| c.buf_alloc() as usize).sum()
    }

    /// The receive buffer for a new connection: an eighth of what is left
    /// of the budget, at most CONN_BUF (the first fifty-odd connections
    /// get all of it, later ones less and less); None (refuse) below
    /// MIN_CONN_BUF or at MAX_CONNS.
    fn grant(&self) -> Option<u32> {
        if self.conns.len() + self.handshakes.len() >= MAX_CONNS {
            return None;
        }
        let left = GUEST_DATA_BUDGET.saturating_sub(self.granted_bytes());
        let buf = u32::try_from(left / 8).unwrap_or(u32::MAX).min(CONN_BUF);
        (buf >= MIN_CONN_BUF).then_some(buf)
    }

    /// Resets owed to the guest for packets that matched no connection.
    pub fn owed_resets(&self) -> usize {
        self.stray.len()
    }

    fn host_route(&self, key: Key) -> Route {
        Route {
            src_cid: HOST_CID,
            src_port: key.0,
            dst_cid: self.cid,
            dst_port: key.1,
        }
    }

    /// Whether connection `key` has something for the guest: a control
    /// packet it owes, or a hung-up host socket still to be drained.
    fn has_rx_work(&self, key: Key) -> bool {
        self.conns
            .get(&key)
            .is_some_and(|c| c.owed.any() || (c.hung_up && c.wants_host_data()))
    }

    fn schedule(&mut self, key: Key) {
        if self.rx_queued.insert(key) {
            self.rx_work.push_back(key);
        }
    }

    fn stray_rst(&mut self, p: &GuestPacket) {
        if self.stray.len() >= MAX_STRAY {
            crate::guest_log!("vsock: too many unanswered packets; dropping a reset");
            return;
        }
        self.stray.push_back(Route {
            src_cid: HOST_CID,
            src_port: p.dst_port,
            dst_cid: p.src_cid,
            dst_port: p.src_port,
        });
    }

    // ---- registration with the event loop ----

    fn register(&mut self, fd: i32, owner: Owner, ops: &mut EventOps) -> Option<u32> {
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(FIRST_CONN_TOKEN);
        if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
            crate::guest_log!("vsock: cannot watch a socket: {e:?}");
            return None;
        }
        self.tokens.insert(token, owner);
        self.interest.insert(token, EventSet::IN);
        Some(token)
    }

    fn unregister(&mut self, token: u32, fd: i32, ops: &mut EventOps) {
        if let Some(set) = self.interest.remove(&token) {
            let _ = ops.remove(Events::with_data_raw(fd, token, set));
        }
        self.tokens.remove(&token);
    }

    /// Watch a connection's socket for exactly what it can use now.
    pub(super) fn update_interest(&mut self, key: Key, ops: &mut EventOps) {
        let (Some(c), Some(&token)) = (self.conns.get(&key), self.conn_tokens.get(&key)) else {
            return;
        };
        let mut want = EventSet::empty();
        if c.wants_host_data() && !self.stash.contains_key(&key) {
            want |= EventSet::IN;
        }
        if c.wants_writable() {
            want |= EventSet::OUT;
        }
        let fd = c.stream.as_raw_fd();
        if self.interest.get(&token) != Some(&want)
            && ops.modify(Events::with_data_raw(fd, token, want)).is_ok()
        {
            self.interest.insert(token, want);
        }
    }

    fn add_conn(&mut self, key: Key, conn: Connection, ops: &mut EventOps) {
        let fd = conn.stream.as_raw_fd();
        self.conns.insert(key, conn);
        if let Some(token) = self.register(fd, Owner::Conn(key), ops) {
            self.conn_tokens.insert(key, token);
        }
        self.update_interest(key, ops);
        self.schedule(key);
    }

    fn remove_conn(&mut self, key: Key, ops: &mut EventOps) {
        if self.rx_queued.remove(&key) {
            self.rx_work.retain(|k| *k != key);
        }
        if let Some(c) = self.conns.remove(&key) {
            if let Some(token) = self.conn_tokens.remove(&key) {
                self.unregister(token, c.stream.as_raw_fd(), ops);
            }
        }
        self.stash.remove(&key);
    }

    /// Abort a connection: the guest gets a RST, the host socket is closed.
    pub(super) fn kill(&mut self, key: Key, ops: &mut EventOps) {
        if let Some(c) = self.conns.get_mut(&key) {
            c.owed = Default::default();
            c.owed.rst = true;
            c.discard_pending();
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        if let (Some(c), Some(token)) = (self.conns.get(&key), self.conn_tokens.remove(&key)) {
            let fd = c.stream.as_raw_fd();
            self.unregister(token, fd, ops);
        }
        self.stash.remove(&key);
        self.schedule(key);
    }

    /// Starts the timer ticking if it is not (something is pending).
    pub(super) fn arm_timer(&mut self) {
        if !self.timer_armed && self.timer.reset(TIMER_TICK, Some(TIMER_TICK)).is_ok() {
            self.timer_armed = true;
        }
    }

    /// A timer tick: host clients that never sent their `CONNECT` line,
    /// and host-initiated connections the guest never answered, are
    /// refused (`ERR timeout`) and closed; the guest gets a reset for the
    /// latter. The timer stops when nothing is left pending.
    pub(super) fn expire_pending(&mut self, ops: &mut EventOps) {
        let _ = self.timer.wait();
        let late: Vec<u32> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.since.elapsed() >= HANDSHAKE_TIMEOUT)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            if let Some(mut h) = self.handshakes.remove(&t) {
                let _ = h.stream.write_all(b"ERR timeout waiting for CONNECT\n");
                self.unregister(t, h.stream.as_raw_fd(), ops);
            }
        }
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::Connecting && !c.owed.rst)
            .filter(|(_, c)| c.since.elapsed() >= CONNECT_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            if let Some(c) = self.conns.get_mut(&key) {
                let _ = c
                    .stream
                    .write_all(b"ERR timeout: the guest did not accept the connection\n");
            }
            self.kill(key, ops);
        }
        let pending = !self.handshakes.is_empty()
            || self
                .conns
                .values()
                .any(|c| c.state == State::Connecting && !c.owed.rst);
        if !pending && self.timer.clear().is_ok() {
            self.timer_armed = false;
        }
    }

    /// Forget every connection (device reset).
    pub(super) fn drop_all(&mut self, ops: &mut EventOps) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove_conn(k, ops);
        }
        let hs: Vec<u32> = self.handshakes.keys().copied().collect();
        for t in hs {
            if let Some(h) = self.handshakes.remove(&t) {
                self.unregister(t, h.stream.as_raw_fd(), ops);
            }
        }
        self.rx_work.clear();
        self.rx_queued.clear();
        self.stray.clear();
    }

    // ---- guest side: TX queue ----

    pub fn process_tx(&mut self, ops: &mut EventOps) {
        if !self.core.active {
            return;
        }
        let mem = self.core.mem.clone();
        let mut used_any = false;
        // A guest that keeps offering packets does not keep the event loop
        // here (see `DeviceCore::drain_queue`).
        let mut budget = DrainBudget::new();
        loop {
            if !budget.take() {
                reschedule(&self.core.queue_evts[TX], "vsock TX");
                break;
            }
            if self.limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
                break; // its timer calls again
            }
            let Some(queue) = self.core.queues.get_mut(TX) else {
                return;
            };
            let mut chain = match pop_chain(queue, &mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    self.core.fail(&format!("vsock TX queue: {e}"));
                    return;
                }
            };
            let head = chain.head_index();
            let parsed = VsockPacket::from_tx_virtq_chain(&mem, &mut chain, MAX_PKT_DATA)
                .map_err(|e| e.to_string())
                .and_then(|p| read_packet(&p));
            if let Some(l) = &mut self.limiter {
                // What was read, not what the descriptors say now.
                let bytes = parsed.as_ref().map_or(0, |p| p.data.len() as u64);
                if !l.consume(virtio_vsock::packet::PKT_HEADER_SIZE as u64 + bytes) {
                    queue.go_to_previous_position();
                    break;
                }
            }
            if let Err(e) = queue.add_used(&mem, head, 0) {
                self.core.fail(&format!("vsock TX queue: {e}"));
                return;
            }
            used_any = true;
            match parsed {
                Ok(p) => self.guest_packet(p, ops),
                Err(e) => {
                    crate::guest_log!("vsock: dropped a malformed packet from the guest: {e}")
                }
            }
        }
        if used_any {
            self.core.notify_used(TX);
        }
        self.process_rx(ops);
    }

    pub(super) fn guest_packet(&mut self, p: GuestPacket, ops: &mut EventOps) {
        if p.src_cid != self.cid || p.dst_cid != HOST_CID {
            crate::guest_log!(
                "vsock: dropped a packet from CID {} to CID {} (guest is {})",
                p.src_cid,
                p.dst_cid,
                self.cid
            );
            return;
        }
        if p.type_ != TYPE_STREAM {
            if p.op != OP_RST {
                self.stray_rst(&p);
            }
            return;
        }
        let key = (p.dst_port, p.src_port);
        let Some(c) = self.conns.get_mut(&key) else {
            match p.op {
                OP_REQUEST => self.connect_to_host(key, &p, ops),
                OP_RST => {}
                _ => self.stray_rst(&p),
            }
            return;
        };
        if c.owed.rst {
            // Being aborted: only the guest's own reset matters now.
            if p.op == OP_RST {
                self.remove_conn(key, ops);
            }
            return;
        }
        c.update_peer_credit(p.buf_alloc, p.fwd_cnt);
        match p.op {
            OP_RESPONSE if c.state == State::Connecting => {
                c.state = State::Established;
                let line = format!("OK {}\n", c.local_port);
                if c.stream.write_all(line.as_bytes()).is_err() {
                    self.kill(key, ops);
                    return;
                }
            }
            OP_RW if c.state == State::Established => {
                if let Err(e) = c.guest_data(&p.data) {
                    crate::guest_log!("vsock: connection {key:?} reset: {e:?}");
                    self.kill(key, ops);
                    return;
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => c.owed.credit_update = true,
            OP_SHUTDOWN => {
                c.peer_shutdown |= p.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if c.peer_shutdown & SHUTDOWN_SEND != 0 && c.pending_len() == 0 {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                }
                if c.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    // The guest closed its socket: answer with RST (which
                    // completes the close on its side) once data is out.
                    c.owed.rst = true;
                }
            }
            OP_RST => {
                self.remove_conn(key, ops);
                return;
            }
            _ => {
                // Unexpected for the connection's state: abort it.
                self.kill(key, ops);
                return;
            }
        }
        if self.has_rx_work(key) {
            self.schedule(key);
        }
        self.update_interest(key, ops);
    }

    fn connect_to_host(&mut self, key: Key, p: &GuestPacket, ops: &mut EventOps) {
        let Some(buf) = self.grant() else {
            self.stray_rst(p);
            return;
        };
        let Ok(stream) = connect_nonblocking(&port_path(&self.path, key.0)) else {
            self.stray_rst(p);
            return;
        };
        let mut conn = Connection::new(stream, State::Established, key.0, buf);
        conn.update_peer_credit(p.buf_alloc, p.fwd_cnt);
        conn.owed.response = true;
        self.add_conn(key, conn, ops);
    }

    // ---- guest side: RX queue ----

    /// Fill the guest's RX buffers with what is owed: resets to stray
    /// packets, then per connection control packets and data.
    pub fn process_rx(&mut self, ops: &mut EventOps) {
        if !self.core.active {
            return;
        }
        let mem = self.core.mem.clone();
        let mut used_any = false;
        loop {
            let item = match self.stray.front() {
                Some(r) => Some(Err(*r)),
                None => self.next_conn_with_work().map(Ok),
            };
            let Some(item) = item else { break };
            let Some(queue) = self.core.queues.get_mut(RX) else {
                return;
            };
            let mut chain = match pop_chain(queue, &mem) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    // No buffer: keep the work for the next RX notification.
                    if let Ok(key) = item {
                        self.rx_work.push_front(key);
                        self.rx_queued.insert(key);
                    }
                    break;
                }
                Err(e) => {
                    self.core.fail(&format!("vsock RX queue: {e}"));
                    return;
                }
            };
            let head = chain.head_index();
            let written = match VsockPacket::from_rx_virtq_chain(&mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => match item {
                    Err(route) => {
                        self.stray.pop_front();
                        fill(
                            &mut pkt,
                            Control {
                                route,
                                op: OP_RST,
                                flags: 0,
                            },
                            (0, 0),
                            0,
                        )
                    }
                    Ok(key) => self.fill_for_conn(key, &mut pkt, ops),
                },
                Err(e) => {
                    crate::guest_log!("vsock: unusable RX buffer from the guest: {e}");
                    if let Ok(key) = item {
                        self.schedule(key);
                    }
                    0
                }
            };
            let Some(queue) = self.core.queues.get_mut(RX) else {
                return;
            };
            if let Err(e) = queue.add_used(&mem, head, written) {
                self.core.fail(&format!("vsock RX queue: {e}"));
                return;
            }
            used_any = true;
        }
        if used_any {
            self.core.notify_used(RX);
        }
    }

    fn next_conn_with_work(&mut self) -> Option<Key> {
        while let Some(key) = self.rx_work.pop_front() {
            self.rx_queued.remove(&key);
            if self.has_rx_work(key) || self.stash.contains_key(&key) {
                return Some(key);
            }
        }
        None
    }

    /// Put one packet for connection `key` into `pkt`; returns its length.
    fn fill_for_conn<B: BitmapSlice>(
        &mut self,
        key: Key,
        pkt: &mut VsockPacket<B>,
        ops: &mut EventOps,
    ) -> u32 {
        let route = self.host_route(key);
        if self.conns.get(&key).is_some_and(|c| c.hung_up) {
            // Nobody polls this socket any more: read it here.
            self.read_into_stash(key, ops);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return 0;
        };
        let credit = c.credit();
        let o = &mut c.owed;
        let control = if o.rst {
            Some((OP_RST, 0))
        } else if o.response {
            o.response = false;
            Some((OP_RESPONSE, 0))
        } else if o.request {
            o.request = false;
            Some((OP_REQUEST, 0))
        } else {
            None
        };
        let len = if let Some((op, flags)) = control {
            let n = fill(pkt, Control { route, op, flags }, credit, 0);
            if op == OP_RST {
                self.remove_conn(key, ops);
                return n;
            }
            n
        } else if let Some(mut data) = self.stash.remove(&key) {
            let room = pkt.data_slice().map_or(0, |s| s.len());
            let n = data.len().min(room);
            let written = match pkt.data_slice() {
                Some(slice) => slice.write_slice(&data[..n], 0).is_ok(),
                None => false,
            };
            if !written {
                self.stash.insert(key, data);
                return 0;
            }
            if n < data.len() {
                data.drain(..n);
                self.stash.insert(key, data);
            }
            fill(
                pkt,
                Control {
                    route,
                    op: OP_RW,
                    flags: 0,
                },
                credit,
                n as u32,
            )
        } else if o.shutdown != 0 {
            let flags = std::mem::take(&mut o.shutdown);
            fill(
                pkt,
                Control {
                    route,
                    op: OP_SHUTDOWN,
                    flags,
                },
                credit,
                0,
            )
        } else if o.credit_update {
            o.credit_update = false;
            fill(
                pkt,
                Control {
                    route,
                    op: OP_CREDIT_UPDATE,
                    flags: 0,
                },
                credit,
                0,
            )
        } else {
            return 0;
        };
        if self.stash.contains_key(&key) || self.has_rx_work(key) {
            self.schedule(key);
        }
        self.update_interest(key, ops);
        len
    }

    pub(super) fn activated(&mut self, ops: &mut EventOps) {
        if self.core.active {
            self.process_rx(ops);
        } else {
            self.drop_all(ops);
        }
    }
}

/// Write a header into `pkt`; returns the bytes used (header + data).
fn fill<B: BitmapSlice>(
    pkt: &mut VsockPacket<B>,
    c: Control,
    credit: (u32, u32),
    data_len: u32,
) -> u32 {
    pkt.set_src_cid(c.route.src_cid)
        .set_dst_cid(c.route.dst_cid)
        .set_src_port(c.route.src_port)
        .set_dst_port(c.route.dst_port)
        .set_type(TYPE_STREAM)
        .set_op(c.op)
        .set_flags(c.flags)
        .set_buf_alloc(credit.0)
        .set_fwd_cnt(credit.1)
        .set_len(data_len);
    virtio_vsock::packet::PKT_HEADER_SIZE as u32 + data_len
}

fn read_packet<B: BitmapSlice>(p: &VsockPacket<B>) -> Result<GuestPacket, String> {
    let len = p.len() as usize;
    let mut data = vec![0u8; len];
    if len > 0 {
        let slice = p
            .data_slice()
            .ok_or("header says data follows, but there is none")?;
        if slice.len() < len {
            return Err(format!(
                "header length {len} exceeds its buffer ({})",
                slice.len()
            ));
        }
        slice.read_slice(&mut data, 0).map_err(|e| e.to_string())?;
    }
    Ok(GuestPacket {
        src_cid: p.src_cid(),
        dst_cid: p.dst_cid(),
        src_port: p.src_port(),
        dst_port: p.dst_port(),
        type_: p.type_(),
        op: p.op(),
        flags: p.flags(),
        buf_alloc: p.buf_alloc(),
        fwd_cnt: p.fwd_cnt(),
        data,
    })
}

/// Where the host listens for the guest's connections to `port`:
/// `<uds path>_<port>`.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut name = uds_path.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// Connects to a host listener without ever blocking the event loop.
/// A non-blocking Unix stream connect either completes at once or, when
/// the listener's backlog is full (a guest that connects and resets
/// faster than the host accepts), fails with EAGAIN instead of waiting;
/// the guest's request is then refused like one to a closed port.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// Parse `CONNECT <port>` (the newline already removed).
pub fn parse_connect(line: &[u8]) -> Result<u32, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not text".to_string())?;
    let text = text.trim_end_matches('\r');
    let port = text
        .strip_prefix("CONNECT ")
        .ok_or_else(|| format!("expected 'CONNECT <port>', got {text:?}"))?;
    port.trim()
        .parse::<u32>()
        .map_err(|_| format!("bad port {port:?}"))
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_space, offset, data);
    }
    fn core(&self) -> &DeviceCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
