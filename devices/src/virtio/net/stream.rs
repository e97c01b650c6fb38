//! A stream socket as the network backend, as passt (and QEMU's `-netdev
//! stream`) speaks it: each Ethernet frame after its length, 32 bits in
//! network order, with no virtio-net header. So no offloads: the guest
//! checksums and segments itself.
//!
//! Reads gather whole frames from what the socket gives; a length that
//! no Ethernet frame can have means the peer is lost, and the stream is
//! dropped. Writes that the socket takes only in part keep the rest in
//! order, up to a cap, and it goes out before anything newer: on the next
//! frame either way, since passt answers what the guest sends.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use super::device::{Backend, HDR_LEN};

/// An Ethernet header and 64 KiB; passt sends frames of its MTU (65520
/// by default).
const MAX_ETH: usize = 14 + 65536;
const MIN_ETH: usize = 14;
/// What may wait to be written before frames are dropped.
const MAX_PENDING: usize = 1 << 20;

pub struct Stream {
    sock: UnixStream,
    input: Vec<u8>,
    filled: usize,
    pending: Vec<u8>,
    broken: bool,
}

impl Stream {
    /// A connected stream socket (made non-blocking here).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let sock = UnixStream::from(fd);
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock,
            input: vec![0; 4 + MAX_ETH],
            filled: 0,
            pending: Vec::new(),
            broken: false,
        })
    }

    /// One whole frame from what has been read, into `buf` after a zeroed
    /// virtio-net header.
    fn take_frame(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if self.filled < 4 {
            return Ok(None);
        }
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&self.input[..4]);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if !(MIN_ETH..=MAX_ETH).contains(&len) || HDR_LEN + len > buf.len() {
            self.broken = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the network peer sent a frame of {len} bytes; its stream is dropped"),
            ));
        }
        if self.filled < 4 + len {
            return Ok(None);
        }
        buf[..HDR_LEN].fill(0);
        buf[HDR_LEN..HDR_LEN + len].copy_from_slice(&self.input[4..4 + len]);
        self.input.copy_within(4 + len..self.filled, 0);
        self.filled -= 4 + len;
        Ok(Some(HDR_LEN + len))
    }

    /// Writes what is pending; `Ok` when the socket takes no more now.
    fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            match self.sock.write(&self.pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Backend for Stream {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // The peer reads what we send as it answers: a good time to send
        // what waits.
        self.flush()?;
        loop {
            if let Some(n) = self.take_frame(buf)? {
                return Ok(n);
            }
            match self.sock.read(&mut self.input[self.filled..]) {
                Ok(0) => {
                    self.broken = true;
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "the network peer closed its stream",
                    ));
                }
                Ok(n) => self.filled += n,
                Err(e) => return Err(e),
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let eth = frame.get(HDR_LEN..).unwrap_or_default();
        if !(MIN_ETH..=MAX_ETH).contains(&eth.len()) {
            // No peer takes it: dropped here, not passed on to break it.
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let len = (eth.len() as u32).to_be_bytes();
        self.flush()?;
        if !self.pending.is_empty() {
            if self.pending.len() + 4 + eth.len() > MAX_PENDING {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.pending.extend_from_slice(&len);
            self.pending.extend_from_slice(eth);
            return Ok(());
        }
        let total = 4 + eth.len();
        let mut done = loop {
            match self
                .sock
                .write_vectored(&[IoSlice::new(&len), IoSlice::new(eth)])
            {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(e);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if done < total {
            // The rest keeps its place in the stream.
            if done < 4 {
                self.pending.extend_from_slice(&len[done..]);
                done = 4;
            }
            self.pending.extend_from_slice(&eth[done - 4..]);
        }
        Ok(())
    }

    fn offloads(&self) -> u64 {
        0
    }

    fn set_guest_features(&mut self, _features: u64) -> io::Result<()> {
        Ok(())
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Stream, UnixStream) {
        let (a, b) = UnixStream::pair().expect("pair");
        (Stream::from_fd(a.into()).expect("stream"), b)
    }

    fn eth(len: usize, fill: u8) -> Vec<u8> {
        vec![fill; len]
    }

    #[test]
    fn frames_cross_with_their_lengths_and_without_the_header() {
        let (mut s, mut peer) = pair();
        let mut out = vec![0xee; HDR_LEN];
        out.extend(eth(60, 7));
        s.send(&out).expect("send");
        let mut got = [0u8; 64];
        peer.read_exact(&mut got).expect("read");
        assert_eq!(&got[..4], &60u32.to_be_bytes());
        assert!(got[4..].iter().all(|b| *b == 7));

        // Two frames in one write, the second split across two.
        let mut bytes = Vec::new();
        for (len, fill) in [(60, 1u8), (1500, 2)] {
            bytes.extend((len as u32).to_be_bytes());
            bytes.extend(eth(len, fill));
        }
        peer.write_all(&bytes[..100]).expect("write");
        let mut buf = vec![0u8; HDR_LEN + MAX_ETH];
        assert_eq!(s.recv(&mut buf).expect("first"), HDR_LEN + 60);
        assert!(buf[..HDR_LEN].iter().all(|b| *b == 0));
        assert!(buf[HDR_LEN..HDR_LEN + 60].iter().all(|b| *b == 1));
        assert_eq!(
            s.recv(&mut buf).expect_err("half a frame").kind(),
            io::ErrorKind::WouldBlock
        );
        peer.write_all(&bytes[100..]).expect("write");
        assert_eq!(s.recv(&mut buf).expect("second"), HDR_LEN + 1500);
        assert!(buf[HDR_LEN..HDR_LEN + 1500].iter().all(|b| *b == 2));
    }

    #[test]
    fn an_impossible_length_drops_the_stream() {
        let (mut s, mut peer) = pair();
        peer.write_all(&u32::MAX.to_be_bytes()).expect("write");
        let mut buf = vec![0u8; HDR_LEN + MAX_ETH];
        assert_eq!(
            s.recv(&mut buf).expect_err("bad").kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            s.recv(&mut buf).expect_err("dropped").kind(),
            io::ErrorKind::WouldBlock
        );
        drop(peer);
    }

    #[test]
    fn a_full_socket_keeps_the_stream_whole() {
        let (mut s, mut peer) = pair();
        let mut frame = vec![0u8; HDR_LEN];
        frame.extend(eth(60000, 9));
        // Until the socket and the pending buffer are both full.
        let mut sent = 0;
        while s.send(&frame).is_ok() {
            sent += 1;
            assert!(sent < 10_000, "the cap never applied");
        }
        assert!(s.pending.len() <= MAX_PENDING);
        peer.set_nonblocking(true).expect("nonblocking");
        // Read it all back, flushing as we go: every frame arrives whole.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut frames = 0;
        let mut parse = |got: &mut Vec<u8>| {
            while got.len() >= 4 {
                let len = u32::from_be_bytes([got[0], got[1], got[2], got[3]]) as usize;
                if got.len() < 4 + len {
                    break;
                }
                assert_eq!(len, 60000);
                assert!(got[4..4 + len].iter().all(|b| *b == 9));
                got.drain(..4 + len);
                frames += 1;
            }
        };
        loop {
            match peer.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) if s.pending.is_empty() => break,
                Err(_) => {
                    let mut b = vec![0u8; HDR_LEN + MAX_ETH];
                    let _ = s.recv(&mut b); // flushes
                }
            }
            parse(&mut got);
        }
        parse(&mut got);
        assert_eq!(frames, sent);
        assert!(got.is_empty());
    }
}
