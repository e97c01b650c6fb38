//! Published ports: `-p`'s syntax, and the proxies that carry a host
//! port's traffic to the container.
//!
//! The monitor binds every published port on the host before the VM
//! starts (so a port already taken fails the start, naming it) and
//! relays what arrives there to the container's address on its network,
//! as Docker's userland proxy (docker-proxy) does. The same proxy serves
//! 127.0.0.1, the host's other addresses and a given address alike; the
//! container sees its connections come from the network's gateway.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One `-p`: a host address and port (0: any free one) for a container
/// port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl PortSpec {
    /// `[IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp]`, as `docker run -p`.
    pub fn parse(s: &str) -> Result<PortSpec, String> {
        let bad = |why: &str| {
            format!("invalid port specification {s:?}: {why} (use [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp])")
        };
        let (rest, proto) = match s.rsplit_once('/') {
            Some((r, "tcp")) => (r, Proto::Tcp),
            Some((r, "udp")) => (r, Proto::Udp),
            Some((_, p)) => return Err(bad(&format!("protocol {p:?} is not tcp or udp"))),
            None => (s, Proto::Tcp),
        };
        if rest.starts_with('[') {
            return Err(bad("containers have IPv4 only"));
        }
        let parts: Vec<&str> = rest.split(':').collect();
        let (ip, host, container) = match parts.as_slice() {
            [c] => ("", "", *c),
            [h, c] => ("", *h, *c),
            [ip, h, c] => (*ip, *h, *c),
            _ => return Err(bad("too many colons")),
        };
        let port = |p: &str, what: &str| -> Result<u16, String> {
            if p.contains('-') {
                return Err(bad(
                    "port ranges are not supported; give each port its own -p",
                ));
            }
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad(&format!("{what} {p:?} is not a port number (1-65535)"))),
                Ok(n) => Ok(n),
            }
        };
        let host_ip = match ip {
            "" => Ipv4Addr::UNSPECIFIED,
            ip => ip
                .parse()
                .map_err(|_| bad(&format!("{ip:?} is not an IPv4 address")))?,
        };
        Ok(PortSpec {
            host_ip,
            host_port: if host.is_empty() {
                0
            } else {
                port(host, "host port")?
            },
            container_port: port(container, "container port")?,
            proto,
        })
    }

    /// An image's `EXPOSE` entry (`80`, `80/tcp`, `53/udp`), for `-P`.
    pub fn exposed(s: &str) -> Result<PortSpec, String> {
        let p = PortSpec::parse(s)?;
        if p.host_port != 0 || !p.host_ip.is_unspecified() {
            return Err(format!("the image exposes {s:?}, which is not a port"));
        }
        Ok(p)
    }
}

/// A published port as bound: what `vm port` and `vm ps` show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl std::fmt::Display for Published {
    /// `0.0.0.0:8080->80/tcp`, as `docker ps` writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}->{}/{}",
            self.host_ip,
            self.host_port,
            self.container_port,
            self.proto.as_str()
        )
    }
}

/// A host socket bound for one published port, not yet relaying.
pub enum Bound {
    Tcp(PortSpec, TcpListener),
    Udp(PortSpec, UdpSocket),
}

impl Bound {
    pub fn published(&self) -> Published {
        let (spec, port) = match self {
            Bound::Tcp(s, l) => (s, l.local_addr().map(|a| a.port())),
            Bound::Udp(s, u) => (s, u.local_addr().map(|a| a.port())),
        };
        Published {
            host_ip: spec.host_ip,
            host_port: port.unwrap_or(spec.host_port),
            container_port: spec.container_port,
            proto: spec.proto,
        }
    }
}

/// Binds every port in `specs` on the host; the first that cannot be had
/// fails them all, with the port in the message.
pub fn bind(specs: &[PortSpec]) -> Result<Vec<Bound>, String> {
    let mut out = Vec::new();
    for s in specs {
        let addr = SocketAddrV4::new(s.host_ip, s.host_port);
        let taken = |e: io::Error| {
            let why = if e.kind() == io::ErrorKind::AddrInUse {
                "is already in use".to_string()
            } else {
                format!("cannot be bound: {e}")
            };
            format!(
                "port {}/{} on {} {why}; choose another host port with -p HOST_PORT:{}",
                s.host_port,
                s.proto.as_str(),
                s.host_ip,
                s.container_port
            )
        };
        out.push(match s.proto {
            Proto::Tcp => Bound::Tcp(*s, TcpListener::bind(addr).map_err(taken)?),
            Proto::Udp => Bound::Udp(*s, UdpSocket::bind(addr).map_err(taken)?),
        });
    }
    Ok(out)
}

/// A UDP flow with no traffic for this long is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(60);
/// At most this many UDP flows per published port (a socket and a
/// thread each).
const UDP_FLOWS: usize = 256;
/// At most this many TCP connections at once per published port (two
/// threads each); more are closed as they come.
const TCP_CONNECTIONS: usize = 256;

/// Opens a stream to a container port through the guest's agent (see
/// the monitor's `forward`).
pub type Dial = Arc<dyn Fn(u16) -> io::Result<UnixStream> + Send + Sync>;

/// Where the proxies take connections: the container's address, or the
/// agent (its dialer set once the agent is there).
#[derive(Clone)]
pub enum Target {
    Address(Ipv4Addr),
    Agent(Arc<OnceLock<Dial>>),
}

/// The relays of one container's published ports; dropping it stops them
/// and closes their connections.
pub struct Proxies {
    stop: Arc<AtomicBool>,
    /// The bound sockets and open connections, shut down to wake their
    /// threads.
    open: Arc<Mutex<Vec<Arc<dyn Wake>>>>,
    threads: Vec<JoinHandle<()>>,
}

trait Wake: Send + Sync {
    fn wake(&self);
}

impl Wake for TcpListener {
    fn wake(&self) {
        // SAFETY: shutdown on a descriptor this value owns; it wakes a
        // thread blocked in accept.
        unsafe { libc::shutdown(self.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

impl Wake for TcpStream {
    fn wake(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

impl Wake for UnixStream {
    fn wake(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

/// A stream whose writing half can be closed on its own.
trait HalfClose {
    fn close_write(&self);
}

impl HalfClose for TcpStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl HalfClose for UnixStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Wake for UdpSocket {
    fn wake(&self) {
        // SAFETY: as for TcpListener: it wakes a thread blocked in recv.
        unsafe { libc::shutdown(self.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

impl Proxies {
    /// Relays each of `bound` to `target`; UDP needs an address.
    pub fn start(bound: Vec<Bound>, target: Target) -> Result<Proxies, String> {
        let mut p = Proxies {
            stop: Arc::new(AtomicBool::new(false)),
            open: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
        };
        for b in bound {
            let stop = p.stop.clone();
            let open = p.open.clone();
            let (name, run): (String, Box<dyn FnOnce() + Send>) = match b {
                Bound::Tcp(s, l) => {
                    let l = Arc::new(l);
                    track(&open, l.clone());
                    let to = (target.clone(), s.container_port);
                    (
                        format!("tcp-proxy-{}", s.container_port),
                        Box::new(move || tcp_accept(&l, to, &stop, &open)),
                    )
                }
                Bound::Udp(s, u) => {
                    let Target::Address(ip) = target else {
                        return Err("UDP ports are relayed to an address only".into());
                    };
                    let u = Arc::new(u);
                    track(&open, u.clone());
                    let to = SocketAddrV4::new(ip, s.container_port);
                    (
                        format!("udp-proxy-{}", s.container_port),
                        Box::new(move || udp_relay(&u, to, &stop, &open)),
                    )
                }
            };
            let t = std::thread::Builder::new()
                .name(name)
                .spawn(run)
                .map_err(|e| format!("starting a port proxy: {e}"))?;
            p.threads.push(t);
        }
        Ok(p)
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let open = std::mem::take(&mut *lock(&self.open));
        for o in open {
            o.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn track(open: &Mutex<Vec<Arc<dyn Wake>>>, w: Arc<dyn Wake>) {
    let mut g = lock(open);
    // Connections that ended are let go as new ones come.
    g.retain(|w| Arc::strong_count(w) > 1);
    g.push(w);
}

fn tcp_accept(
    l: &TcpListener,
    to: (Target, u16),
    stop: &AtomicBool,
    open: &Arc<Mutex<Vec<Arc<dyn Wake>>>>,
) {
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        let client = match l.accept() {
            Ok((c, _)) => c,
            Err(_) if stop.load(Ordering::SeqCst) => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            // Out of descriptors, memory or buffers: wait a little.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if live.fetch_add(1, Ordering::SeqCst) >= TCP_CONNECTIONS {
            live.fetch_sub(1, Ordering::SeqCst);
            continue; // (dropped: closed)
        }
        let (open, live2, to) = (open.clone(), live.clone(), to.clone());
        let spawned = std::thread::Builder::new()
            .name("tcp-conn".into())
            .spawn(move || {
                tcp_connection(client, &to, &open);
                live2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            live.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One connection: to the container, then bytes both ways until each
/// side has said all it will. Nothing listening there (yet) closes the
/// client's connection.
fn tcp_connection(client: TcpStream, to: &(Target, u16), open: &Mutex<Vec<Arc<dyn Wake>>>) {
    let _ = client.set_nodelay(true);
    match to {
        (Target::Address(ip), port) => {
            let to = SocketAddrV4::new(*ip, *port);
            let Ok(upstream) = TcpStream::connect_timeout(&to.into(), Duration::from_secs(10))
            else {
                return;
            };
            let _ = upstream.set_nodelay(true);
            relay(client, upstream, open);
        }
        (Target::Agent(dial), port) => {
            let Some(Ok(upstream)) = dial.get().map(|d| d(*port)) else {
                return;
            };
            relay(client, upstream, open);
        }
    }
}

fn relay<U>(client: TcpStream, upstream: U, open: &Mutex<Vec<Arc<dyn Wake>>>)
where
    U: Wake + HalfClose + Send + Sync + 'static,
    for<'a> &'a U: io::Read + io::Write,
{
    let (client, upstream) = (Arc::new(client), Arc::new(upstream));
    track(open, client.clone());
    track(open, upstream.clone());
    let (c2, u2) = (client.clone(), upstream.clone());
    let back = std::thread::Builder::new()
        .name("tcp-conn-back".into())
        .spawn(move || pump::<U, TcpStream>(&u2, &c2));
    pump::<TcpStream, U>(&client, &upstream);
    if let Ok(t) = back {
        let _ = t.join();
    }
}

fn pump<A, B: HalfClose>(from: &A, to: &B)
where
    for<'a> &'a A: io::Read,
    for<'a> &'a B: io::Write,
{
    let mut r = from;
    let mut w = to;
    let _ = io::copy(&mut r, &mut w);
    to.close_write();
}

/// Datagrams from each client go out on a socket of their own to the
/// container, so its answers can be told apart and sent back. The flows'
/// threads are waited for before this returns: they use the bound socket,
/// which must be closed when the proxies stop (a restart binds it again).
fn udp_relay(
    u: &Arc<UdpSocket>,
    to: SocketAddrV4,
    stop: &Arc<AtomicBool>,
    open: &Arc<Mutex<Vec<Arc<dyn Wake>>>>,
) {
    type Flows = Mutex<HashMap<std::net::SocketAddr, Arc<UdpSocket>>>;
    let flows: Arc<Flows> = Arc::default();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, from)) = u.recv_from(&mut buf) else {
            if !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        threads.retain(|t| !t.is_finished());
        let known = lock(&flows).get(&from).cloned();
        let flow = match known {
            Some(f) => f,
            None => {
                if lock(&flows).len() >= UDP_FLOWS {
                    continue;
                }
                let Ok(s) = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)) else {
                    continue;
                };
                if s.connect(to).is_err() || s.set_read_timeout(Some(UDP_IDLE)).is_err() {
                    continue;
                }
                let s = Arc::new(s);
                track(open, s.clone());
                lock(&flows).insert(from, s.clone());
                let (back, u, table, stop) = (s.clone(), u.clone(), flows.clone(), stop.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("udp-flow".into())
                        .spawn(move || {
                            udp_flow(&back, &u, from, &stop);
                            lock(&table).remove(&from);
                        });
                match spawned {
                    Ok(t) => threads.push(t),
                    Err(_) => {
                        lock(&flows).remove(&from);
                        continue;
                    }
                }
                s
            }
        };
        let _ = flow.send(&buf[..n]);
    }
    // (flows made after the proxies woke what they knew of)
    for f in lock(&flows).values() {
        f.wake();
    }
    for t in threads {
        let _ = t.join();
    }
}

/// The container's answers to one client, until the flow idles out or
/// the proxies stop.
fn udp_flow(back: &UdpSocket, u: &UdpSocket, client: std::net::SocketAddr, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = back.recv(&mut buf) {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let _ = u.send_to(&buf[..n], client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_port_specs() {
        let p = PortSpec::parse("8080:80").expect("spec");
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.proto),
            (Ipv4Addr::UNSPECIFIED, 8080, 80, Proto::Tcp)
        );
        let p = PortSpec::parse("127.0.0.1:5353:53/udp").expect("spec");
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.proto),
            (Ipv4Addr::LOCALHOST, 5353, 53, Proto::Udp)
        );
        let p = PortSpec::parse("80").expect("spec");
        assert_eq!((p.host_port, p.container_port), (0, 80));
        let p = PortSpec::parse("127.0.0.1::80").expect("spec");
        assert_eq!((p.host_ip, p.host_port), (Ipv4Addr::LOCALHOST, 0));
        for bad in [
            "",
            "x",
            "0",
            "70000",
            "80/sctp",
            "1:2:3:4",
            "8000-8010:80",
            "[::1]:80:80",
            "bad:80:80",
        ] {
            let e = PortSpec::parse(bad).expect_err(bad);
            assert!(e.contains("invalid port specification"), "{e}");
        }
        assert!(PortSpec::exposed("80/tcp").is_ok());
        assert!(PortSpec::exposed("8080:80").is_err());
    }

    #[test]
    fn a_taken_port_is_named() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let spec = PortSpec::parse(&format!("127.0.0.1:{port}:80")).expect("spec");
        let e = bind(&[spec]).err().expect("taken");
        assert!(
            e.contains(&format!("port {port}/tcp")) && e.contains("already in use"),
            "{e}"
        );
    }

    /// A TCP and a UDP relay to echo servers on loopback.
    #[test]
    fn relays_tcp_and_udp() {
        use std::io::{Read, Write};
        let echo = TcpListener::bind("127.0.0.1:0").expect("bind");
        let echo_port = echo.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for c in echo.incoming().flatten() {
                let mut r = &c;
                let mut w = &c;
                let _ = io::copy(&mut r, &mut w);
            }
        });
        let uecho = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let uecho_port = uecho.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            let mut b = [0u8; 1500];
            while let Ok((n, from)) = uecho.recv_from(&mut b) {
                let _ = uecho.send_to(&b[..n], from);
            }
        });
        let bound = bind(&[
            PortSpec::parse(&format!("127.0.0.1::{echo_port}")).expect("spec"),
            PortSpec::parse(&format!("127.0.0.1::{uecho_port}/udp")).expect("spec"),
        ])
        .expect("bind");
        let tcp = bound[0].published().host_port;
        let udp = bound[1].published().host_port;
        let proxies = Proxies::start(bound, Target::Address(Ipv4Addr::LOCALHOST)).expect("start");
        let mut c = TcpStream::connect(("127.0.0.1", tcp)).expect("connect");
        c.write_all(b"hello").expect("write");
        c.shutdown(Shutdown::Write).expect("shutdown");
        let mut got = String::new();
        c.read_to_string(&mut got).expect("read");
        assert_eq!(got, "hello");
        let u = UdpSocket::bind("127.0.0.1:0").expect("bind");
        u.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        u.send_to(b"ping", ("127.0.0.1", udp)).expect("send");
        let mut b = [0u8; 16];
        let n = u.recv(&mut b).expect("an answer");
        assert_eq!(&b[..n], b"ping");
        drop(proxies);
        // The flow's thread is gone too: the port can be bound again.
        UdpSocket::bind(("127.0.0.1", udp)).expect("the UDP port is free again");
        assert!(
            TcpStream::connect(("127.0.0.1", tcp)).is_err(),
            "the port is closed after the proxies stop"
        );
    }
}
