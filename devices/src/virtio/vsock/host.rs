//! The host side of the vsock device: the Unix listener, the `CONNECT`
//! handshake of host clients, and events on connections' host sockets.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;

use event_manager::EventOps;
use vmm_sys_util::epoll::EventSet;

use super::super::connection::{Connection, State};
use super::super::proto::*;
use super::{
    parse_connect, Handshake, Key, Owner, Vsock, FIRST_LOCAL_PORT, MAX_CONNS, MAX_HANDSHAKE,
};

impl Vsock {
    pub(in crate::virtio::vsock) fn accept_host_clients(&mut self, ops: &mut EventOps) {
        use nix::sys::socket::{accept4, SockFlag};
        use std::os::fd::FromRawFd;
        loop {
            // Non-blocking from the start (no FIONBIO afterwards, which
            // the VMM's system call filter refuses).
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            match accept4(self.listener.as_raw_fd(), flags).map_err(io::Error::from) {
                Ok(fd) => {
                    // SAFETY: accept4 returned a new descriptor that
                    // nothing else owns.
                    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
                    if self.conns.len() + self.handshakes.len() >= MAX_CONNS {
                        crate::guest_log!("vsock: too many connections; refusing a host client");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if let Some(token) = self.register(fd, Owner::Handshake, ops) {
                        self.handshakes.insert(
                            token,
                            Handshake {
                                stream,
                                line: Vec::new(),
                                since: std::time::Instant::now(),
                            },
                        );
                        self.arm_timer();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::guest_log!("vsock: accept on {}: {e}", self.path.display());
                    return;
                }
            }
        }
    }

    /// Read a host client's `CONNECT <port>\n` line.
    fn handshake_readable(&mut self, token: u32, ops: &mut EventOps) {
        let Some(h) = self.handshakes.get_mut(&token) else {
            return;
        };
        // Read byte by byte, no further than the end of the line: what
        // follows is data for the guest.
        let mut byte = [0u8; 1];
        let outcome = loop {
            match h.stream.read(&mut byte) {
                Ok(0) => break Err("closed before CONNECT"),
                Ok(_) if byte[0] == b'\n' => break Ok(true),
                Ok(_) => {
                    h.line.push(byte[0]);
                    if h.line.len() >= MAX_HANDSHAKE {
                        break Err("CONNECT line too long");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break Err("read error"),
            }
        };
        let port = match outcome {
            Ok(false) => return,
            Ok(true) => parse_connect(&h.line),
            Err(why) => Err(why.to_string()),
        };
        let Some(h) = self.handshakes.remove(&token) else {
            return;
        };
        self.unregister(token, h.stream.as_raw_fd(), ops);
        let mut stream = h.stream;
        let port = match port {
            Ok(p) => p,
            Err(why) => {
                let _ = stream.write_all(format!("ERR {why}\n").as_bytes());
                return;
            }
        };
        let Some(buf) = self.grant() else {
            let _ = stream.write_all(b"ERR too many connections\n");
            return;
        };
        let Some(local) = self.allocate_local_port(port) else {
            let _ = stream.write_all(b"ERR no free port\n");
            return;
        };
        let mut conn = Connection::new(stream, State::Connecting, local, buf);
        conn.owed.request = true;
        self.add_conn((local, port), conn, ops);
        self.arm_timer();
    }

    fn allocate_local_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..MAX_CONNS * 2 {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer)) {
                return Some(p);
            }
        }
        None
    }

    /// Read what the host sent into the connection's stash (one packet's
    /// worth). Handles EOF; a read error aborts the connection.
    pub(in crate::virtio::vsock) fn read_into_stash(&mut self, key: Key, ops: &mut EventOps) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if !c.wants_host_data() || self.stash.contains_key(&key) {
            return;
        }
        let mut buf = vec![0u8; MAX_PKT_DATA as usize];
        match c.read_host(&mut buf) {
            Ok(0) => {
                c.host_eof = true;
                c.owed.shutdown |= SHUTDOWN_SEND;
                if c.peer_shutdown & SHUTDOWN_SEND != 0 {
                    c.owed.rst = true;
                }
                self.schedule(key);
            }
            Ok(n) => {
                buf.truncate(n);
                self.stash.insert(key, buf);
                self.schedule(key);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.kill(key, ops),
        }
    }

    /// Events on a connection's host socket.
    pub(in crate::virtio::vsock) fn conn_event(
        &mut self,
        key: Key,
        set: EventSet,
        ops: &mut EventOps,
    ) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::ERROR) {
            self.kill(key, ops);
            return;
        }
        if set.contains(EventSet::OUT) && c.flush_to_host().is_err() {
            self.kill(key, ops);
            return;
        }
        if set.contains(EventSet::IN) {
            self.read_into_stash(key, ops);
        } else if set.contains(EventSet::HANG_UP) {
            // The host closed both directions. Guest data still waiting for
            // it cannot be delivered: abort. Otherwise stop polling (a hang
            // up is reported forever) and drain what the host left behind.
            if c.pending_len() > 0 {
                self.kill(key, ops);
                return;
            }
            c.hung_up = true;
            if let Some(token) = self.conn_tokens.remove(&key) {
                let fd = c.stream.as_raw_fd();
                self.unregister(token, fd, ops);
            }
            self.schedule(key);
            return;
        }
        if self.conns.get(&key).is_some_and(|c| c.owed.any()) {
            self.schedule(key);
        }
        self.update_interest(key, ops);
    }

    pub(in crate::virtio::vsock) fn token_event(
        &mut self,
        token: u32,
        set: EventSet,
        ops: &mut EventOps,
    ) {
        match self.tokens.get(&token).copied() {
            Some(Owner::Conn(key)) => self.conn_event(key, set, ops),
            Some(Owner::Handshake) => self.handshake_readable(token, ops),
            None => {}
        }
    }
}
