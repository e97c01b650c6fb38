//! Test peer for virtio-vsock, built static so the same binary runs in the
//! guest (AF_VSOCK) and on the host (our Unix-socket side).
//!
//! Servers answer one command line per connection:
//!   `put N`      read N bytes, answer `sha256 <hex>`
//!   `get N SEED` send N bytes of the SEED stream, then close our side
//!   `echo`       echo until EOF, then close (half-close check)
//!   `abort N SEED` send half of N bytes of the SEED stream, then reset
//!
//! Usage:
//!   vsock-tool serve-vsock PORT            guest: listen on vsock PORT
//!   vsock-tool serve-unix PATH             host: listen on a Unix socket
//!   vsock-tool ADDR put N SEED [STREAMS]   send, compare the server's hash
//!   vsock-tool ADDR get N SEED [STREAMS]   receive, compare our hash
//!   vsock-tool ADDR echo TEXT              half-close round trip
//!   vsock-tool ADDR abort N SEED           expect a short read, not a hang
//!   vsock-tool ADDR put-and-vanish N SEED  send half of N bytes, then exit
//!   vsock-tool ADDR ping                   connect, then close
//!   vsock-tool wait-vsock PORT             guest: wait for one connection
//! where ADDR is `vsock:CID:PORT` or `unix:PATH:PORT` (the hybrid-vsock
//! handshake `CONNECT PORT`).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::exit;
use std::time::Instant;

use sha2::{Digest, Sha256};
use vsock::{VsockAddr, VsockListener, VsockStream};

const CHUNK: usize = 64 * 1024;

/// Deterministic test data: a xorshift stream from a seed.
struct DataStream(u64);

impl DataStream {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn expected_hash(n: u64, seed: u64) -> String {
    let mut gen = DataStream::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        gen.fill(&mut buf[..k]);
        h.update(&buf[..k]);
        left -= k as u64;
    }
    hex(&h.finalize())
}

trait Stream: Read + Write + Send {
    fn shutdown_write(&self);
}

impl Stream for UnixStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Stream for VsockStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

fn send_stream(s: &mut dyn Stream, n: u64, seed: u64) -> std::io::Result<()> {
    let mut gen = DataStream::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        gen.fill(&mut buf[..k]);
        s.write_all(&buf[..k])?;
        left -= k as u64;
    }
    Ok(())
}

fn hash_reader(r: &mut dyn Read, limit: Option<u64>) -> std::io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let want = match limit {
            Some(l) if total >= l => break,
            Some(l) => (l - total).min(CHUNK as u64) as usize,
            None => CHUNK,
        };
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex(&h.finalize())))
}

fn read_line(s: &mut dyn Stream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 || b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > 256 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn serve_one(mut s: Box<dyn Stream>) {
    let line = match read_line(&mut *s) {
        Ok(l) => l,
        Err(_) => return,
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| {
        words
            .get(i)
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
    };
    match words.first().copied() {
        Some("put") => {
            if let Ok((n, sum)) = hash_reader(&mut *s, Some(num(1))) {
                let _ = writeln!(s, "sha256 {sum} {n}");
            }
        }
        Some("get") => {
            let _ = send_stream(&mut *s, num(1), num(2));
            s.shutdown_write();
            let mut sink = [0u8; 64];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        }
        Some("echo") => {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            s.shutdown_write();
        }
        Some("abort") => {
            let _ = send_stream(&mut *s, num(1) / 2, num(2));
            // Dropping the socket mid-stream closes it under the reader.
        }
        _ => {
            let _ = writeln!(s, "error unknown command {line:?}");
        }
    }
}

fn connect(addr: &str) -> Box<dyn Stream> {
    let parts: Vec<&str> = addr.splitn(3, ':').collect();
    match parts.as_slice() {
        ["vsock", cid, port] => {
            let (cid, port) = (cid.parse().expect("cid"), port.parse().expect("port"));
            Box::new(
                VsockStream::connect(&VsockAddr::new(cid, port)).unwrap_or_else(|e| {
                    eprintln!("vsock-tool: connect {addr}: {e}");
                    exit(2)
                }),
            )
        }
        ["unix", rest @ ..] => {
            let joined = rest.join(":");
            let (path, port) = joined.rsplit_once(':').expect("unix:PATH:PORT");
            let mut s = UnixStream::connect(path).unwrap_or_else(|e| {
                eprintln!("vsock-tool: connect {path}: {e}");
                exit(2)
            });
            writeln!(s, "CONNECT {port}").expect("handshake");
            let line = read_line(&mut s).expect("handshake reply");
            if !line.starts_with("OK ") {
                eprintln!("vsock-tool: handshake refused: {line:?}");
                exit(2);
            }
            Box::new(s)
        }
        _ => {
            eprintln!("vsock-tool: bad address {addr}");
            exit(2)
        }
    }
}

/// Run one client operation; Err describes a failed check.
fn client(addr: &str, op: &str, n: u64, seed: u64, text: &str) -> Result<(), String> {
    let mut s = connect(addr);
    match op {
        "put" => {
            writeln!(s, "put {n}").map_err(|e| e.to_string())?;
            send_stream(&mut *s, n, seed).map_err(|e| format!("send: {e}"))?;
            let reply = read_line(&mut *s).map_err(|e| e.to_string())?;
            let want = format!("sha256 {} {n}", expected_hash(n, seed));
            if reply != want {
                return Err(format!("server got {reply:?}, want {want:?}"));
            }
        }
        "get" => {
            writeln!(s, "get {n} {seed}").map_err(|e| e.to_string())?;
            let (got, sum) = hash_reader(&mut *s, None).map_err(|e| format!("recv: {e}"))?;
            let want = expected_hash(n, seed);
            if got != n || sum != want {
                return Err(format!(
                    "received {got} bytes hashing {sum}, want {n} hashing {want}"
                ));
            }
        }
        "echo" => {
            writeln!(s, "echo").map_err(|e| e.to_string())?;
            s.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
            s.shutdown_write();
            let mut back = String::new();
            s.read_to_string(&mut back).map_err(|e| e.to_string())?;
            if back != text {
                return Err(format!("echo returned {back:?}"));
            }
        }
        "abort" => {
            writeln!(s, "abort {n} {seed}").map_err(|e| e.to_string())?;
            let (got, _) = hash_reader(&mut *s, None).unwrap_or((0, String::new()));
            if got >= n {
                return Err(format!("got all {got} bytes from an aborted stream"));
            }
        }
        "ping" => {}
        "put-and-vanish" => {
            writeln!(s, "put {n}").map_err(|e| e.to_string())?;
            let _ = send_stream(&mut *s, n / 2, seed);
            // Exit without closing cleanly: the process ends mid-transfer.
            exit(0);
        }
        _ => return Err(format!("unknown operation {op}")),
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match a(0) {
        "serve-vsock" => {
            let port: u32 = a(1).parse().expect("port");
            let l = VsockListener::bind(&VsockAddr::new(libc_vmaddr_cid_any(), port))
                .unwrap_or_else(|e| {
                    eprintln!("vsock-tool: listen on vsock port {port}: {e}");
                    exit(2)
                });
            println!("vsock-tool: listening on vsock port {port}");
            for s in l.incoming().flatten() {
                std::thread::spawn(move || serve_one(Box::new(s)));
            }
        }
        "wait-vsock" => {
            // Accept one connection on vsock PORT, then exit: a barrier.
            let port: u32 = a(1).parse().expect("port");
            let l = VsockListener::bind(&VsockAddr::new(libc_vmaddr_cid_any(), port))
                .unwrap_or_else(|e| {
                    eprintln!("vsock-tool: listen on vsock port {port}: {e}");
                    exit(2)
                });
            let _ = l.accept();
        }
        "serve-unix" => {
            let _ = std::fs::remove_file(a(1));
            let l = UnixListener::bind(a(1)).unwrap_or_else(|e| {
                eprintln!("vsock-tool: listen on {}: {e}", a(1));
                exit(2)
            });
            for s in l.incoming().flatten() {
                std::thread::spawn(move || serve_one(Box::new(s)));
            }
        }
        addr if addr.starts_with("vsock:") || addr.starts_with("unix:") => {
            let op = a(1).to_string();
            let n: u64 = a(2).parse().unwrap_or(0);
            let seed: u64 = a(3).parse().unwrap_or(1);
            let streams: u64 = if op == "echo" {
                1
            } else {
                a(4).parse().unwrap_or(1)
            };
            let text = a(2).to_string();
            let start = Instant::now();
            let handles: Vec<_> = (0..streams)
                .map(|i| {
                    let (addr, op, text) = (addr.to_string(), op.clone(), text.clone());
                    std::thread::spawn(move || client(&addr, &op, n, seed + i, &text))
                })
                .collect();
            let mut failed = 0;
            for h in handles {
                match h.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        eprintln!("vsock-tool: {e}");
                        failed += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let mib = (n * streams) as f64 / (1 << 20) as f64;
            if failed == 0 {
                println!("vsock-tool: {op} ok: {streams} streams, {mib:.1} MiB in {secs:.2} s, {:.1} MiB/s", mib / secs);
            } else {
                println!("vsock-tool: {op} FAILED on {failed} of {streams} streams");
                exit(1);
            }
        }
        _ => {
            eprintln!("usage: see the top of tests/src/bin/vsock-tool.rs");
            exit(2);
        }
    }
}

fn libc_vmaddr_cid_any() -> u32 {
    u32::MAX // VMADDR_CID_ANY
}
