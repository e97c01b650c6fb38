//! One stream connection between a guest port and a host Unix socket:
//! its state, its credit in both directions, and the bytes the guest sent
//! that the host socket has not taken yet.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::proto::{SHUTDOWN_RCV, SHUTDOWN_SEND};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

/// Control packets a connection owes the guest, sent before any data.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owed {
    pub request: bool,
    pub response: bool,
    pub credit_update: bool,
    /// SHUTDOWN flags to send, 0 for none.
    pub shutdown: u32,
    pub rst: bool,
}

impl Owed {
    pub fn any(&self) -> bool {
        self.request || self.response || self.credit_update || self.shutdown != 0 || self.rst
    }
}

pub struct Connection {
    /// When it was made (a host-initiated one times out while the guest
    /// does not answer).
    pub since: std::time::Instant,
    pub stream: UnixStream,
    pub state: State,
    /// Port on the host side (CID 2).
    pub local_port: u32,
    pub owed: Owed,
    /// Our receive buffer for this connection (the `buf_alloc` we
    /// advertise), granted from the device's budget when it was made.
    buf_alloc: u32,
    // Host -> guest credit: what the guest told us of its buffer.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    // Guest -> host: bytes taken from the guest, bytes handed to the host.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    pending: VecDeque<u8>,
    /// SHUTDOWN flags the guest sent us.
    pub peer_shutdown: u32,
    /// The host side will send no more (EOF read).
    pub host_eof: bool,
    /// The host socket hung up; it is no longer polled, and what is left
    /// in it is read as RX buffers allow.
    pub hung_up: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum GuestDataError {
    /// The guest sent more than the buffer we advertised.
    CreditViolation,
    /// The host socket failed or closed.
    HostClosed,
}

impl Connection {
    pub fn new(stream: UnixStream, state: State, local_port: u32, buf_alloc: u32) -> Self {
        Self {
            since: std::time::Instant::now(),
            stream,
            state,
            local_port,
            owed: Owed::default(),
            buf_alloc,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            pending: VecDeque::new(),
            peer_shutdown: 0,
            host_eof: false,
            hung_up: false,
        }
    }

    /// Every packet from the guest carries its current buffer state.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// How many bytes the guest can take from us now.
    pub fn peer_free(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Our side of the credit, for every packet we send.
    pub fn credit(&mut self) -> (u32, u32) {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        (self.buf_alloc, self.fwd_cnt.0)
    }

    /// The buffer this connection was granted.
    pub fn buf_alloc(&self) -> u32 {
        self.buf_alloc
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Drops guest data the host will never get (the connection is being
    /// aborted).
    pub fn discard_pending(&mut self) {
        self.pending = VecDeque::new();
    }

    /// Whether we want to read from the host socket now.
    pub fn wants_host_data(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && !self.owed.rst
            && self.peer_free() > 0
    }

    /// Whether the host socket should be polled for writability.
    pub fn wants_writable(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Take data the guest sent and pass as much as possible to the host.
    pub fn guest_data(&mut self, data: &[u8]) -> Result<(), GuestDataError> {
        if self.pending.len() + data.len() > self.buf_alloc as usize {
            return Err(GuestDataError::CreditViolation);
        }
        self.pending.extend(data);
        self.flush_to_host()
    }

    /// Write pending guest data to the host socket until it would block.
    pub fn flush_to_host(&mut self) -> Result<(), GuestDataError> {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(GuestDataError::HostClosed),
                Ok(n) => {
                    self.pending.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(GuestDataError::HostClosed),
            }
        }
        // Tell the guest about freed buffer space before it runs dry.
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= self.buf_alloc / 2 {
            self.owed.credit_update = true;
        }
        if self.pending.is_empty() && self.peer_shutdown & SHUTDOWN_SEND != 0 {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// Read host data for the guest into `buf` (at most the guest's
    /// credit). Ok(0) means the host closed its sending side.
    pub fn read_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = buf.len().min(self.peer_free() as usize);
        if max == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        loop {
            match self.stream.read(&mut buf[..max]) {
                Ok(n) => {
                    self.tx_cnt += Wrapping(n as u32);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::vsock::proto::CONN_BUF;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        (Connection::new(a, State::Established, 1024, CONN_BUF), b)
    }

    #[test]
    fn credit_limits_what_we_read_for_the_guest() {
        let (mut c, mut host) = pair();
        assert!(!c.wants_host_data(), "no credit before the guest says so");
        c.update_peer_credit(10, 0);
        host.write_all(b"0123456789abcdef").expect("write");
        let mut buf = [0u8; 64];
        assert_eq!(c.read_host(&mut buf).expect("read"), 10);
        assert_eq!(c.peer_free(), 0);
        assert!(c.read_host(&mut buf).is_err());
        c.update_peer_credit(10, 4);
        assert_eq!(c.peer_free(), 4);
        assert_eq!(c.read_host(&mut buf).expect("read"), 4);
    }

    #[test]
    fn guest_data_is_bounded_by_our_buffer() {
        let (mut c, host) = pair();
        // Nobody reads `host`: the socket buffer fills, then ours.
        let chunk = vec![7u8; 32 * 1024];
        let mut sent = 0usize;
        loop {
            match c.guest_data(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(e) => {
                    assert_eq!(e, GuestDataError::CreditViolation);
                    break;
                }
            }
            assert!(sent < 64 << 20, "unbounded buffering");
        }
        assert!(c.pending_len() <= CONN_BUF as usize);
        drop(host);
    }

    #[test]
    fn credit_update_is_owed_after_half_the_buffer() {
        let (mut c, mut host) = pair();
        c.guest_data(&vec![1u8; (CONN_BUF / 2) as usize])
            .expect("data");
        let mut sink = vec![0u8; CONN_BUF as usize];
        let _ = host.read(&mut sink);
        assert!(c.owed.credit_update);
        let (alloc, fwd) = c.credit();
        assert_eq!(alloc, CONN_BUF);
        assert_eq!(fwd, CONN_BUF / 2);
    }

    #[test]
    fn host_close_is_reported() {
        let (mut c, host) = pair();
        drop(host);
        assert_eq!(c.guest_data(b"x"), Err(GuestDataError::HostClosed));
    }
}
