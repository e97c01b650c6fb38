//! The DNS of a user-defined network, as Docker's embedded DNS: on the
//! network's gateway, UDP port 53, it answers the names of the network's
//! running containers (name, aliases on this network, short ID) with
//! their addresses there, and forwards every other question to the
//! asking container's servers (`--dns`, else the host's, loopback ones
//! included, since the host can reach them). An internal network's DNS
//! forwards nothing.
//!
//! There is no daemon: the monitor of every container on the network
//! runs a responder, each on its own socket bound with `SO_REUSEPORT`,
//! and each reads the network's leases and the containers' records for
//! every question, so all of them answer alike and the network keeps
//! its DNS for as long as one container runs on it. Names stay current
//! as containers join, leave and are renamed, with no file in any guest
//! to rewrite (the reason for a DNS rather than hosts entries).
//!
//! Only the network's own containers are answered (by source address:
//! the TAP's filter makes that address the container's), and only so
//! many forwarded questions wait at once.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use simple_dns::{rdata::RData, Packet, PacketFlag, ResourceRecord, CLASS, QTYPE, RCODE, TYPE};

use super::{ipam, net::Net};

/// How long an answer about a container may be kept.
const TTL: u32 = 60;
/// Forwarded questions waiting at once; more are dropped (the guest's
/// resolver asks again).
const MAX_FORWARDS: usize = 64;
/// How long one upstream server has to answer.
const UPSTREAM_WAIT: Duration = Duration::from_secs(2);
/// Questions one responder takes in a second, from all and from one
/// asker; more are dropped, so a guest that floods its DNS costs the
/// host little and leaves its neighbours theirs.
const MAX_PER_SECOND: u32 = 500;
const MAX_PER_ASKER: u32 = 100;
/// Upstream servers tried per question (resolv.conf's own limit).
const MAX_UPSTREAM: usize = 3;

/// A running responder; stopped when dropped.
pub struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a responder for `net` on its gateway (which must be on its
/// bridge already). `host_resolv` is the host's resolv.conf.
pub fn start(state: &Path, net: &Net, host_resolv: &str) -> Result<Responder, String> {
    let sock = bind(SocketAddrV4::new(net.gateway, 53)).map_err(|e| {
        format!(
            "network {}'s DNS cannot listen on {}:53: {e}; another service holds that port on every address",
            net.name, net.gateway
        )
    })?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| format!("network {}'s DNS: {e}", net.name))?;
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = Context {
        state: state.to_path_buf(),
        net: net.clone(),
        host_servers: servers(host_resolv),
        forwards: Arc::new(AtomicUsize::new(0)),
    };
    let halt = stop.clone();
    let thread = std::thread::Builder::new()
        .name("dns".into())
        .spawn(move || serve(&sock, &ctx, &halt))
        .map_err(|e| format!("network {}'s DNS: {e}", net.name))?;
    Ok(Responder {
        stop,
        thread: Some(thread),
    })
}

/// A UDP socket on `addr` that other responders may share.
fn bind(addr: SocketAddrV4) -> std::io::Result<UdpSocket> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(addr),
    )?;
    Ok(UdpSocket::from(fd))
}

/// The name servers of a resolv.conf.
fn servers(resolv: &str) -> Vec<Ipv4Addr> {
    resolv
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next()?.parse().ok())
                .flatten()
        })
        .collect()
}

struct Context {
    state: PathBuf,
    net: Net,
    host_servers: Vec<Ipv4Addr>,
    forwards: Arc<AtomicUsize>,
}

fn serve(sock: &UdpSocket, ctx: &Context, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    let mut second = std::time::Instant::now();
    let mut taken = 0u32;
    let mut per_asker = std::collections::HashMap::new();
    let mut records = Records::default();
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if second.elapsed() >= Duration::from_secs(1) {
            second = std::time::Instant::now();
            taken = 0;
            per_asker.clear();
        }
        taken += 1;
        if taken > MAX_PER_SECOND {
            continue;
        }
        let SocketAddr::V4(from) = from else {
            continue;
        };
        let mine = per_asker.entry(*from.ip()).or_insert(0u32);
        *mine += 1;
        if *mine > MAX_PER_ASKER {
            continue;
        }
        if let Some(reply) = answer(ctx, &mut records, &buf[..n], *from.ip(), sock, from) {
            let _ = sock.send_to(&reply, from);
        }
    }
}

/// The containers' records, read again only when they are old: a flood
/// of questions costs a few reads of them a second, not one each.
#[derive(Default)]
struct Records {
    read_at: Option<std::time::Instant>,
    list: Vec<crate::container::Container>,
}

impl Records {
    /// The records, read again if older than `age`.
    fn newer_than(&mut self, state: &Path, age: Duration) -> &[crate::container::Container] {
        if self.read_at.is_none_or(|t| t.elapsed() >= age) {
            self.list = crate::container::list(state);
            self.read_at = Some(std::time::Instant::now());
        }
        &self.list
    }
}

/// Records at most a second old; a tenth of a second when they lack
/// what is asked (a container that has just started).
const RECORDS_AGE: Duration = Duration::from_secs(1);
const RECORDS_AGE_MISSING: Duration = Duration::from_millis(100);

/// The reply to one question from `ip`, or None when there is none to
/// give now (not ours, not a question, or forwarded).
fn answer(
    ctx: &Context,
    records: &mut Records,
    query: &[u8],
    ip: Ipv4Addr,
    sock: &UdpSocket,
    from: SocketAddrV4,
) -> Option<Vec<u8>> {
    let leases = ipam::read(&ctx.state, &ctx.net.name).ok()?;
    let asker = leases.leases.get(&ip)?.container.clone();
    let q = Packet::parse(query).ok()?;
    if q.has_flags(PacketFlag::RESPONSE) || q.questions.len() != 1 {
        return None;
    }
    let question = &q.questions[0];
    let name = question.qname.to_string().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    // A container's own name (unique on the host) or short ID comes
    // before anyone's alias: no alias can shadow a name.
    let lookup = |containers: &[crate::container::Container]| -> Vec<Ipv4Addr> {
        let matching = |by_alias: bool| -> Vec<Ipv4Addr> {
            leases
                .leases
                .iter()
                .filter(|(_, l)| {
                    containers.iter().any(|c| {
                        c.config.id == l.container
                            && names(c, &ctx.net.name, by_alias).iter().any(|n| n == name)
                    })
                })
                .map(|(a, _)| *a)
                .collect()
        };
        let by_name = matching(false);
        if by_name.is_empty() {
            matching(true)
        } else {
            by_name
        }
    };
    let mut found = lookup(records.newer_than(&ctx.state, RECORDS_AGE));
    if found.is_empty() {
        found = lookup(records.newer_than(&ctx.state, RECORDS_AGE_MISSING));
    }
    if !found.is_empty() {
        return reply(&q, |r| {
            if question.qtype == QTYPE::TYPE(TYPE::A) {
                for a in &found {
                    r.answers.push(ResourceRecord::new(
                        question.qname.clone(),
                        CLASS::IN,
                        TTL,
                        RData::A((*a).into()),
                    ));
                }
            }
        });
    }
    if ctx.net.internal {
        return reply(&q, |r| *r.rcode_mut() = RCODE::Refused);
    }
    // The asker's --dns (what is left of it: an empty list answers
    // SERVFAIL), else the host's.
    let known = records
        .newer_than(&ctx.state, RECORDS_AGE)
        .iter()
        .any(|c| c.config.id == asker);
    let age = if known {
        RECORDS_AGE
    } else {
        RECORDS_AGE_MISSING
    };
    let containers = records.newer_than(&ctx.state, age);
    let upstream: Vec<Ipv4Addr> = match containers.iter().find(|c| c.config.id == asker) {
        Some(c) if !c.config.network.dns.is_empty() => {
            upstream_of(&ctx.state, &c.config.network.dns)
        }
        _ => ctx
            .host_servers
            .iter()
            .copied()
            .take(MAX_UPSTREAM)
            .collect(),
    };
    forward(ctx, query.to_vec(), upstream, sock, from);
    None
}

/// The names a container answers to on `network`: its name and short
/// ID, or its aliases there.
fn names(c: &crate::container::Container, network: &str, aliases: bool) -> Vec<String> {
    if !aliases {
        return vec![c.config.name.to_ascii_lowercase(), c.short_id().to_string()];
    }
    c.config
        .network
        .endpoints()
        .iter()
        .filter(|e| e.network == network)
        .flat_map(|e| e.aliases.iter().map(|a| a.to_ascii_lowercase()))
        .collect()
}

/// The servers a container's `--dns` may have its questions forwarded
/// to: none of the host's own (loopback), none on any of our networks
/// (whose walls the host's socket would pass), at most three.
fn upstream_of(state: &Path, dns: &[String]) -> Vec<Ipv4Addr> {
    let ours = super::net::list(state);
    dns.iter()
        .filter_map(|d| d.parse::<Ipv4Addr>().ok())
        .filter(|a| {
            !a.is_loopback()
                && !a.is_unspecified()
                && !a.is_multicast()
                && !a.is_broadcast()
                && !ours.iter().any(|n| n.contains(*a))
        })
        .take(MAX_UPSTREAM)
        .collect()
}

/// `q`'s reply, made by `fill`.
fn reply<'a>(q: &Packet<'a>, fill: impl FnOnce(&mut Packet<'a>)) -> Option<Vec<u8>> {
    let mut r = Packet::new_reply(q.id());
    r.set_flags(PacketFlag::AUTHORITATIVE_ANSWER | PacketFlag::RECURSION_AVAILABLE);
    if q.has_flags(PacketFlag::RECURSION_DESIRED) {
        r.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    r.questions = q.questions.clone();
    fill(&mut r);
    r.build_bytes_vec_compressed().ok()
}

/// Asks `upstream`'s servers in turn, on a thread of its own, and sends
/// the first answer back; SERVFAIL when none answers.
fn forward(
    ctx: &Context,
    query: Vec<u8>,
    upstream: Vec<Ipv4Addr>,
    sock: &UdpSocket,
    to: SocketAddrV4,
) {
    if ctx.forwards.fetch_add(1, Ordering::AcqRel) >= MAX_FORWARDS {
        ctx.forwards.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let Ok(back) = sock.try_clone() else {
        ctx.forwards.fetch_sub(1, Ordering::AcqRel);
        return;
    };
    let count = ctx.forwards.clone();
    let spawned = std::thread::Builder::new()
        .name("dns-forward".into())
        .spawn(move || {
            let answer = upstream.iter().find_map(|s| ask(*s, &query)).or_else(|| {
                let q = Packet::parse(&query).ok()?;
                reply(&q, |r| *r.rcode_mut() = RCODE::ServerFailure)
            });
            if let Some(a) = answer {
                let _ = back.send_to(&a, to);
            }
            count.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        ctx.forwards.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One server's answer to `query` (with its ID), if it gives one in time.
fn ask(server: Ipv4Addr, query: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    s.connect((server, 53)).ok()?;
    s.set_read_timeout(Some(UPSTREAM_WAIT)).ok()?;
    s.send(query).ok()?;
    let mut buf = vec![0u8; 65535];
    let deadline = std::time::Instant::now() + UPSTREAM_WAIT;
    while std::time::Instant::now() < deadline {
        let n = s.recv(&mut buf).ok()?;
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_of_a_resolv_conf() {
        let r =
            "# x\nnameserver 127.0.0.53\nnameserver ::1\nsearch a.example\nnameserver 192.0.2.1\n";
        assert_eq!(
            servers(r),
            vec![Ipv4Addr::new(127, 0, 0, 53), Ipv4Addr::new(192, 0, 2, 1)]
        );
    }

    #[test]
    fn replies_keep_the_question_and_id() {
        let mut q = Packet::new_query(0x1234);
        q.set_flags(PacketFlag::RECURSION_DESIRED);
        q.questions.push(simple_dns::Question::new(
            simple_dns::Name::new_unchecked("web"),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        let bytes = q.build_bytes_vec().expect("query");
        let q = Packet::parse(&bytes).expect("parse");
        let r = reply(&q, |r| {
            r.answers.push(ResourceRecord::new(
                simple_dns::Name::new_unchecked("web"),
                CLASS::IN,
                TTL,
                RData::A(Ipv4Addr::new(10, 214, 0, 2).into()),
            ))
        })
        .expect("reply");
        let r = Packet::parse(&r).expect("parse reply");
        assert_eq!(r.id(), 0x1234);
        assert!(r.has_flags(PacketFlag::RESPONSE | PacketFlag::RECURSION_DESIRED));
        assert_eq!(r.questions.len(), 1);
        assert_eq!(r.answers.len(), 1);
    }
}
