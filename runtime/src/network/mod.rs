//! Container networks, Docker's way: the default network `bridge` is a
//! Linux bridge (`vm0`, 10.213.0.0/16, its gateway on the bridge) with
//! NAT to the outside, and `vm network create` makes more (see `net`),
//! whose containers find each other by name (see `dns`). Each running
//! container gets, on each of its networks, an address from the
//! network's IPAM, a TAP device on the bridge (opened by the monitor and
//! handed to the VMM; it goes away with the last descriptor) and walls in
//! nftables (see `firewall`); its published ports are proxied to its
//! first network (see `ports`). `--network none` gives the guest `lo`
//! alone.
//!
//! The subnets are not Docker's 172.17.0.0/16 and up, so both can run on
//! one host.

pub mod dns;
pub mod firewall;
pub mod ipam;
pub mod net;
mod passt;
pub mod ports;

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::container::Container;
use crate::error::{Error, Result};
use net::Net;
use ports::{PortSpec, Proxies, Published};

/// The default network's name, as Docker's.
pub const DEFAULT: &str = "bridge";

/// How many networks one container may join (each is a network card,
/// and the VM's interrupts are few).
pub const MAX_NETWORKS: usize = 4;

/// The container's network as created (`--network`, `-p`, `--dns`...)
/// and connected since.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Options {
    /// The first network's name, or `none`.
    pub mode: String,
    pub ports: Vec<PortSpec>,
    pub mac: Option<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    /// `--add-host NAME:ADDRESS` (`host-gateway` is the network's gateway).
    pub add_hosts: Vec<(String, String)>,
    /// The first network's ID (see [`Endpoint::network_id`]).
    #[serde(default)]
    pub network_id: Option<String>,
    /// `--ip` on the first network.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// `--network-alias` on the first network.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Networks joined with `vm network connect`.
    #[serde(default)]
    pub connected: Vec<Endpoint>,
}

/// A network a container joins, with its address and aliases there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network: String,
    /// The network's ID when joined: a network removed and made again
    /// under the same name is another network, which is not joined.
    #[serde(default)]
    pub network_id: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub aliases: Vec<String>,
}

impl Options {
    /// Every network the container joins, the first first.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut out = Vec::new();
        if self.mode != "none" && !self.mode.is_empty() {
            out.push(Endpoint {
                network: self.mode.clone(),
                network_id: self.network_id.clone(),
                ip: self.ip,
                aliases: self.aliases.clone(),
            });
        }
        out.extend(self.connected.iter().cloned());
        out
    }
}

/// What `--network` and the publishing flags may be; `exposed` is the
/// image's EXPOSE list, published with `publish_all` (`-P`).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub network: Option<String>,
    pub publish: Vec<String>,
    pub publish_all: bool,
    pub ip: Option<String>,
    pub aliases: Vec<String>,
    pub mac: Option<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    pub add_hosts: Vec<String>,
}

impl Request {
    /// Checks the flags and settles them; `exposed` is the image's EXPOSE.
    pub fn resolve(&self, exposed: &[String]) -> std::result::Result<Options, String> {
        let mode = match self.network.as_deref() {
            None | Some("") | Some("default") | Some(DEFAULT) => DEFAULT,
            Some("none") => "none",
            Some("host") => {
                return Err(
                    "--network host cannot be had: a container here runs in its own \
                            VM with its own kernel and network stack, which cannot share the \
                            host's; publish ports with -p instead"
                        .into(),
                )
            }
            Some(n) if n.starts_with("container:") => {
                return Err(format!(
                    "--network {n}: containers run in separate VMs and cannot share a network stack"
                ))
            }
            Some(n) => n,
        };
        let mut ports = self
            .publish
            .iter()
            .map(|p| PortSpec::parse(p))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if self.publish_all {
            for e in exposed {
                let p = PortSpec::exposed(e)?;
                if !ports
                    .iter()
                    .any(|q| q.container_port == p.container_port && q.proto == p.proto)
                {
                    ports.push(p);
                }
            }
        }
        if mode == "none" && !self.publish.is_empty() {
            return Err("conflicting options: port publishing and --network none".into());
        }
        if mode == "none" {
            ports.clear();
        }
        let user_defined = mode != DEFAULT && mode != "none";
        let ip = match &self.ip {
            None => None,
            Some(_) if !user_defined => {
                return Err(
                    "--ip: a chosen address is supported on user-defined networks only".into(),
                )
            }
            Some(a) => Some(
                a.parse::<Ipv4Addr>()
                    .map_err(|_| format!("--ip {a:?} is not an IPv4 address"))?,
            ),
        };
        if !self.aliases.is_empty() && !user_defined {
            return Err(
                "--network-alias: aliases are supported on user-defined networks only".into(),
            );
        }
        for a in &self.aliases {
            check_alias(a)?;
        }
        let mac = match &self.mac {
            None => None,
            Some(m) => {
                let b = netconf::parse_mac(m)
                    .ok_or_else(|| format!("--mac-address {m:?} is not a MAC address"))?;
                if b[0] & 1 != 0 || b == [0; 6] {
                    return Err(format!(
                        "--mac-address {m}: a container needs a unicast address (first byte even, not all zeros)"
                    ));
                }
                Some(netconf::format_mac(&b))
            }
        };
        for d in &self.dns {
            d.parse::<Ipv4Addr>()
                .map_err(|_| format!("--dns {d:?} is not an IPv4 address"))?;
        }
        let mut add_hosts = Vec::new();
        for h in &self.add_hosts {
            let (name, addr) = h
                .split_once(':')
                .or_else(|| h.split_once('='))
                .ok_or_else(|| format!("--add-host {h:?}: use NAME:ADDRESS"))?;
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("--add-host {h:?}: {name:?} is not a host name"));
            }
            if addr != "host-gateway" && addr.parse::<std::net::IpAddr>().is_err() {
                return Err(format!("--add-host {h:?}: {addr:?} is not an address"));
            }
            add_hosts.push((name.to_string(), addr.to_string()));
        }
        for (flag, v) in [
            ("--dns-search", &self.dns_search),
            ("--dns-option", &self.dns_options),
        ] {
            if let Some(bad) = v
                .iter()
                .find(|s| s.is_empty() || s.contains(char::is_whitespace))
            {
                return Err(format!("{flag} {bad:?} is not a single word"));
            }
        }
        Ok(Options {
            mode: mode.into(),
            ports,
            mac,
            dns: self.dns.clone(),
            dns_search: self.dns_search.clone(),
            dns_options: self.dns_options.clone(),
            add_hosts,
            network_id: None,
            ip,
            aliases: self.aliases.clone(),
            connected: Vec::new(),
        })
    }
}

/// A network alias: a host name (letters, digits, '-', '_', '.').
pub fn check_alias(a: &str) -> std::result::Result<(), String> {
    let ok = !a.is_empty()
        && a.len() <= 253
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !a.starts_with(['.', '-'])
        && !a.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--network-alias {a:?} is not a host name: use letters, digits, '-', '_' and '.'"
        ))
    }
}

/// Checks `o`'s networks against those there are: each must exist (its
/// name is the one kept), a user who is not root has the default one
/// alone, an internal network takes no published ports, and a chosen
/// address must be the network's.
pub fn check(state: &Path, o: &Options) -> Result<Options> {
    let mut o = o.clone();
    let root = nix::unistd::geteuid().is_root();
    if o.mode != "none" {
        let n = net::find(state, &o.mode)?;
        if !root && !n.is_default() {
            return Err(Error::invalid(format!(
                "network {}: user-defined networks need root (they are Linux bridges); \
                 users other than root have the default network, through passt",
                n.name
            )));
        }
        if !root {
            if let Some(p) = o.ports.iter().find(|p| p.proto == ports::Proto::Udp) {
                return Err(Error::invalid(udp_rootless(p.container_port)));
            }
        }
        if n.internal && !o.ports.is_empty() {
            return Err(Error::invalid(format!(
                "network {} is internal: nothing goes in or out of it, so no port can be published",
                n.name
            )));
        }
        if let Some(ip) = o.ip {
            ipam::pick(
                &ipam::Leases::default(),
                n.subnet,
                n.prefix,
                n.gateway,
                Some(ip),
            )
            .map_err(|e| Error::invalid(format!("--ip: {e}")))?;
        }
        o.mode = n.name;
        o.network_id = Some(n.id);
    }
    Ok(o)
}

/// The network as a running container has it, in its state (for `vm
/// port`, `vm ps`, `vm inspect`): its first network's, and every one's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub network: String,
    pub bridge: String,
    pub ip: Option<Ipv4Addr>,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mac: String,
    pub ports: Vec<Published>,
    #[serde(default)]
    pub networks: Vec<Joined>,
}

/// One network of a running container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    pub network: String,
    pub network_id: String,
    pub bridge: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    pub aliases: Vec<String>,
}

/// One start's network: released (proxies, DNS, TAPs, rules, addresses)
/// when dropped, after the VMM has been reaped.
pub struct Attachment {
    // (dropped in this order)
    _relay: Relay,
    _dns: Vec<dns::Responder>,
    nics: Vec<Nic>,
    guest: agent_protocol::Network,
    settings: Settings,
    /// Where the proxies of a passt network get their dialer.
    dial: Option<Arc<std::sync::OnceLock<ports::Dial>>>,
}

/// One network card's host side.
struct Nic {
    /// The TAP, or the VMM's end of passt's stream.
    fd: Arc<OwnedFd>,
    name: String,
    mac: String,
    stream: bool,
    _held: Option<Held>,
}

/// What carries published ports: the monitor's proxies (bridge), or
/// passt, which also carries everything else.
enum Relay {
    Proxies {
        _running: Proxies,
    },
    Passt {
        _proxies: Proxies,
        _running: passt::Passt,
    },
}

/// An address taken and the TAP's chain (if it was made): both let go on
/// drop.
struct Held {
    state: std::path::PathBuf,
    container: String,
    network: String,
    ip: Ipv4Addr,
    tap_name: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        // (a chain that was never made is not there to remove)
        firewall::remove_port(&self.tap_name);
        if let Ok(_lock) = ipam::lock(&self.state) {
            if let Ok(mut l) = ipam::read(&self.state, &self.network) {
                if l.leases
                    .get(&self.ip)
                    .is_some_and(|x| x.container == self.container)
                {
                    l.leases.remove(&self.ip);
                    let _ = ipam::write(&self.state, &self.network, &l);
                }
            }
        }
    }
}

impl Attachment {
    /// The guest's side: interfaces, DNS, hosts.
    pub fn guest(&self) -> agent_protocol::Network {
        self.guest.clone()
    }

    pub fn settings(&self) -> Settings {
        self.settings.clone()
    }

    /// Gives the published ports' proxies a way into the guest through
    /// its agent, where they cannot reach its address (passt).
    pub fn set_dialer(&self, d: ports::Dial) {
        if let Some(slot) = &self.dial {
            let _ = slot.set(d);
        }
    }

    /// The VMM's network cards, one per network.
    pub fn net_configs(&self) -> Vec<devices::virtio::net::NetConfig> {
        self.nics
            .iter()
            .map(|n| devices::virtio::net::NetConfig {
                tap: n.name.clone(),
                tap_fd: (!n.stream).then(|| n.fd.clone()),
                stream_fd: n.stream.then(|| n.fd.clone()),
                mac: netconf::parse_mac(&n.mac).unwrap_or_default(),
                rx_rate_limit: Default::default(),
                tx_rate_limit: Default::default(),
            })
            .collect()
    }
}

/// The guest's network when it has `lo` alone.
pub fn loopback_only(o: &Options) -> agent_protocol::Network {
    agent_protocol::Network {
        hosts: extra_hosts(o, None),
        ..Default::default()
    }
}

fn extra_hosts(o: &Options, gateway: Option<Ipv4Addr>) -> Vec<agent_protocol::HostEntry> {
    o.add_hosts
        .iter()
        .filter_map(|(name, addr)| {
            let address = match addr.as_str() {
                "host-gateway" => gateway?.to_string(),
                a => a.to_string(),
            };
            Some(agent_protocol::HostEntry {
                address,
                names: vec![name.clone()],
            })
        })
        .collect()
}

/// Attaches `c` to its networks for one start: binds its published ports
/// (a taken one fails here, before anything else is made), and on each
/// network takes an address and makes its TAP on the bridge and its
/// rules. None for `--network none`.
pub fn attach(state: &Path, c: &Container) -> Result<Option<Attachment>> {
    let o = &c.config.network;
    let endpoints = o.endpoints();
    if endpoints.is_empty() {
        return Ok(None);
    }
    let mut nets = Vec::new();
    for e in &endpoints {
        let gone = || {
            Error::not_found(format!(
                "network {} not found: it was removed after the container joined it; \
                 `vm network disconnect {} {}` and connect it to another",
                e.network, e.network, c.config.name
            ))
        };
        let n = net::find(state, &e.network).map_err(|_| gone())?;
        if e.network_id.as_ref().is_some_and(|id| *id != n.id) {
            return Err(gone());
        }
        nets.push(n);
    }
    if nets[0].internal && !o.ports.is_empty() {
        return Err(Error::invalid(format!(
            "network {} is internal: nothing goes in or out of it, so no port can be published",
            nets[0].name
        )));
    }
    if !nix::unistd::geteuid().is_root() {
        if nets.len() > 1 || !nets[0].is_default() {
            return Err(Error::invalid(
                "user-defined networks need root (they are Linux bridges); \
                 users other than root have the default network, through passt",
            ));
        }
        return attach_passt(c);
    }
    let bound = ports::bind(&o.ports).map_err(Error::in_use)?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut nics = Vec::new();
    let mut joined = Vec::new();
    let mut responders = Vec::new();
    for (i, (n, e)) in nets.iter().zip(&endpoints).enumerate() {
        let mac = if i == 0 { o.mac.as_deref() } else { None };
        let (nic, j) = join(state, c, i, n, e, mac)?;
        nics.push(nic);
        joined.push(j);
        if !n.is_default() {
            responders.push(dns::start(state, n, &host_resolv).map_err(Error::host)?);
        }
    }
    let first = &joined[0];
    let published = bound.iter().map(ports::Bound::published).collect();
    let proxies = Proxies::start(bound, ports::Target::Address(first.ip)).map_err(Error::host)?;
    let settings = Settings {
        network: first.network.clone(),
        bridge: first.bridge.clone(),
        ip: Some(first.ip),
        prefix: first.prefix,
        gateway: Some(first.gateway),
        mac: first.mac.clone(),
        ports: published,
        networks: joined.clone(),
    };
    // On a user-defined network the guest asks the network's DNS, which
    // forwards what is not a container's name to the flags' servers or
    // the host's.
    let mut resolv = dns(o, &host_resolv);
    if !nets[0].is_default() {
        resolv.dns = vec![first.gateway.to_string()];
    }
    Ok(Some(Attachment {
        _relay: Relay::Proxies { _running: proxies },
        _dns: responders,
        nics,
        guest: guest_network(o, &joined, nets[0].mtu(), resolv),
        settings,
        dial: None,
    }))
}

/// Joins `c` to network `n` as its `index`th card: an address (under the
/// networks' lock), the bridge if it is not there yet, a TAP and its
/// chain.
fn join(
    state: &Path,
    c: &Container,
    index: usize,
    n: &Net,
    e: &Endpoint,
    mac: Option<&str>,
) -> Result<(Nic, Joined)> {
    let id = &c.config.id;
    let tap_name = if index == 0 {
        format!("vm-{}", &id[..id.len().min(12)])
    } else {
        format!("vm{index}-{}", &id[..id.len().min(11)])
    };
    let bridge = firewall::Bridge::of(n);
    let (ip, mac) = {
        let _lock = ipam::lock(state)?;
        // (`vm network rm` may have come between finding it and here)
        if !net::list(state).iter().any(|x| x.id == n.id) {
            return Err(Error::not_found(format!(
                "network {} was removed while the container started",
                n.name
            )));
        }
        ensure_bridge(n).map_err(Error::host)?;
        let mut leases = ipam::read(state, &n.name)?;
        // A lease this container left (a start that did not finish): its
        // TAP's chain, if any is left, goes with it.
        if leases.leases.values().any(|l| l.container == *id) {
            firewall::remove_port(&tap_name);
            leases.leases.retain(|_, l| l.container != *id);
        }
        let ip = ipam::pick(&leases, n.subnet, n.prefix, n.gateway, e.ip)
            .map_err(|e| Error::in_use(format!("network {}: {e}", n.name)))?;
        let mac = match mac {
            Some(m) => {
                check_mac(m, &leases)?;
                m.to_string()
            }
            None => mac_for(ip),
        };
        leases.leases.insert(
            ip,
            ipam::Lease {
                container: id.clone(),
                mac: mac.clone(),
                tap: tap_name.clone(),
            },
        );
        ipam::write(state, &n.name, &leases)?;
        (ip, mac)
    };
    let held = Held {
        state: state.to_path_buf(),
        container: id.clone(),
        network: n.name.clone(),
        ip,
        tap_name: tap_name.clone(),
    };
    let tap = make_tap(&tap_name, &n.bridge).map_err(Error::host)?;
    let port = firewall::Port {
        bridge,
        tap: tap_name.clone(),
        mac: mac.clone(),
        ip,
    };
    // One run of `nft` when the tables are there (each run costs a
    // process); else they are made, under the lock, and it goes again.
    if firewall::add_port(&port).is_err() {
        let _lock = ipam::lock(state)?;
        firewall::ensure_tables(&ipam::dir(state), || live_ports(state)).map_err(Error::host)?;
        firewall::add_port(&port).map_err(Error::host)?;
    }
    let joined = Joined {
        network: n.name.clone(),
        network_id: n.id.clone(),
        bridge: n.bridge.clone(),
        ip,
        prefix: n.prefix,
        gateway: n.gateway,
        mac: mac.clone(),
        aliases: e.aliases.clone(),
    };
    Ok((
        Nic {
            fd: Arc::new(tap),
            name: tap_name,
            mac,
            stream: false,
            _held: Some(held),
        },
        joined,
    ))
}

/// The TAPs of every container with an address, on every network, as
/// the firewall knows them.
fn live_ports(state: &Path) -> Vec<firewall::Port> {
    let mut out = Vec::new();
    for n in net::list(state) {
        let Ok(leases) = ipam::read(state, &n.name) else {
            continue;
        };
        let bridge = firewall::Bridge::of(&n);
        for (ip, l) in leases.leases {
            out.push(firewall::Port {
                bridge: bridge.clone(),
                tap: l.tap,
                mac: l.mac,
                ip,
            });
        }
    }
    out
}

/// The guest's side of its networks, with `dns`'s servers, search list
/// and options; the first network has the default route.
fn guest_network(
    o: &Options,
    joined: &[Joined],
    mtu: u32,
    dns: agent_protocol::Network,
) -> agent_protocol::Network {
    agent_protocol::Network {
        interfaces: joined
            .iter()
            .enumerate()
            .map(|(i, j)| agent_protocol::Interface {
                mac: j.mac.clone(),
                address: j.ip,
                prefix: j.prefix,
                gateway: (i == 0).then_some(j.gateway),
                mtu,
            })
            .collect(),
        hosts: extra_hosts(o, joined.first().map(|j| j.gateway)),
        ..dns
    }
}

/// The default network for a user who is not root: passt.
fn attach_passt(c: &Container) -> Result<Option<Attachment>> {
    let o = &c.config.network;
    passt::available().map_err(Error::host)?;
    // Published ports: our proxies, into the guest through its agent
    // (passt's own forwarding fails in Debian bookworm's passt).
    if let Some(p) = o.ports.iter().find(|p| p.proto == ports::Proto::Udp) {
        return Err(Error::invalid(udp_rootless(p.container_port)));
    }
    let bound = ports::bind(&o.ports).map_err(Error::in_use)?;
    let published: Vec<Published> = bound.iter().map(ports::Bound::published).collect();
    let dial = Arc::new(std::sync::OnceLock::new());
    let proxies = Proxies::start(bound, ports::Target::Agent(dial.clone())).map_err(Error::host)?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| Error::host(format!("a socket pair for passt: {e}")))?;
    // Room for bursts either way (the kernel caps it at its maximum).
    for s in [&ours, &theirs] {
        let size: libc::c_int = 4 << 20;
        // SAFETY: setsockopt reads one int, which lives for the call.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                std::ptr::addr_of!(size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    let relay = passt::start(theirs.into()).map_err(Error::host)?;
    let default = Net::default_bridge();
    let joined = Joined {
        network: default.name,
        network_id: default.id,
        bridge: String::new(),
        ip: passt::ADDRESS,
        prefix: passt::PREFIX,
        gateway: passt::GATEWAY,
        mac: o.mac.clone().unwrap_or_else(|| mac_for(passt::ADDRESS)),
        aliases: Vec::new(),
    };
    let settings = Settings {
        network: joined.network.clone(),
        bridge: String::new(),
        ip: Some(joined.ip),
        prefix: joined.prefix,
        gateway: Some(joined.gateway),
        mac: joined.mac.clone(),
        ports: published,
        networks: vec![joined.clone()],
    };
    // Names go to passt's forwarder unless the flags say otherwise; the
    // host's search list and options stay.
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut resolv = format!("nameserver {}\n", passt::DNS);
    for l in host
        .lines()
        .filter(|l| !l.trim_start().starts_with("nameserver"))
    {
        resolv.push_str(l);
        resolv.push('\n');
    }
    Ok(Some(Attachment {
        _relay: Relay::Passt {
            _proxies: proxies,
            _running: relay,
        },
        _dns: Vec::new(),
        nics: vec![Nic {
            fd: Arc::new(ours.into()),
            name: "passt".into(),
            mac: joined.mac.clone(),
            stream: true,
            _held: None,
        }],
        guest: guest_network(o, &[joined], 65520, dns(o, &resolv)),
        settings,
        dial: Some(dial),
    }))
}

/// Why a user who is not root cannot publish UDP port `port`.
fn udp_rootless(port: u16) -> String {
    format!(
        "-p {port}/udp: a user other than root cannot publish UDP ports (passt, which carries \
         such a user's network, does not deliver them in this Debian release); publish TCP, \
         or run as root"
    )
}

/// Whether a user who is not root can have a network (passt is there).
pub fn rootless_available() -> std::result::Result<(), String> {
    passt::available()
}

/// Docker's MAC for an address: 02:42 and the address's four bytes.
fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    netconf::format_mac(&[0x02, 0x42, o[0], o[1], o[2], o[3]])
}

/// `n`'s bridge, up, with its gateway address.
fn ensure_bridge(n: &Net) -> std::result::Result<(), String> {
    let mut nl = netconf::Netlink::open().map_err(|e| e.to_string())?;
    if nl.link(&n.bridge).map_err(|e| e.to_string())?.is_none() {
        // A fixed MAC: a bridge without one takes its lowest port's,
        // which changes as containers come and go.
        let mac = netconf::parse_mac(&mac_for(n.gateway)).unwrap_or_default();
        nl.add_bridge(&n.bridge, mac).map_err(|e| {
            if e.errno() == Some(libc::EPERM) {
                format!("{e}: the bridge network needs root; run as root or with --network none")
            } else {
                e.to_string()
            }
        })?;
    }
    let link = nl
        .link(&n.bridge)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("bridge {} vanished", n.bridge))?;
    if !Path::new("/sys/class/net")
        .join(&n.bridge)
        .join("bridge")
        .exists()
    {
        return Err(format!(
            "the host has an interface {} that is not a bridge; network {} needs that name",
            n.bridge, n.name
        ));
    }
    let addrs = nl.addresses(link.index).map_err(|e| e.to_string())?;
    if !addrs.contains(&(n.gateway, n.prefix)) {
        nl.add_address(&n.bridge, n.gateway, n.prefix)
            .map_err(|e| e.to_string())?;
    }
    if !link.up {
        nl.set_link(
            &n.bridge,
            &netconf::LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A `--mac-address` must not be another container's, nor one of those
/// the networks make from addresses (`02:42:` and the address).
fn check_mac(mac: &str, leases: &ipam::Leases) -> Result<()> {
    if leases.leases.values().any(|l| l.mac == mac) {
        return Err(Error::in_use(format!(
            "--mac-address {mac}: another container on the network has it"
        )));
    }
    if mac.starts_with("02:42:") {
        return Err(Error::invalid(format!(
            "--mac-address {mac}: addresses 02:42:xx:xx:xx:xx are kept for the containers the networks number themselves; choose another"
        )));
    }
    Ok(())
}

/// Opens a new TAP named `name` (it lives while a descriptor does), puts
/// it on `bridge` and brings it up.
fn make_tap(name: &str, bridge: &str) -> std::result::Result<OwnedFd, String> {
    let tap =
        devices::virtio::net::Tap::open(name).map_err(|e| format!("making TAP {name}: {e}"))?;
    let mut nl = netconf::Netlink::open().map_err(|e| e.to_string())?;
    let bridge = nl
        .link(bridge)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("bridge {bridge} vanished"))?;
    nl.set_link(
        name,
        &netconf::LinkChange {
            up: Some(true),
            controller: Some(bridge.index),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(tap.into_fd())
}

/// resolv.conf's servers, search list and options: the flags', else the
/// host's (its loopback servers cannot be reached from a VM and are left
/// out), else Google's public servers, as Docker does.
fn dns(o: &Options, host_resolv: &str) -> agent_protocol::Network {
    let mut servers = Vec::new();
    let mut search = Vec::new();
    let mut options = Vec::new();
    for line in host_resolv.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("nameserver") => {
                if let Some(Ok(a)) = w.next().map(str::parse::<Ipv4Addr>) {
                    if !a.is_loopback() {
                        servers.push(a.to_string());
                    }
                }
            }
            Some("search") | Some("domain") => search = w.map(String::from).collect(),
            Some("options") => options.extend(w.map(String::from)),
            _ => {}
        }
    }
    if servers.is_empty() {
        servers = vec!["8.8.8.8".into(), "8.8.4.4".into()];
    }
    let pick =
        |flag: &Vec<String>, host: Vec<String>| if flag.is_empty() { host } else { flag.clone() };
    agent_protocol::Network {
        dns: pick(&o.dns, servers),
        dns_search: pick(&o.dns_search, search),
        dns_options: pick(&o.dns_options, options),
        ..Default::default()
    }
}

/// Leases whose container's monitor is gone (killed before it could let
/// go), and their rules, on every network.
pub fn sweep(state: &Path) {
    let nets: Vec<Net> = net::list(state)
        .into_iter()
        .filter(|n| {
            ipam::dir(state)
                .join(format!("{}.leases.json", n.name))
                .exists()
        })
        .collect();
    if nets.is_empty() {
        return;
    }
    let Ok(_lock) = ipam::lock(state) else {
        return;
    };
    let all = crate::container::list(state);
    let mut live_left = false;
    for n in nets {
        let Ok(mut leases) = ipam::read(state, &n.name) else {
            continue;
        };
        let before = leases.leases.len();
        leases.leases.retain(|_, l| {
            let live = all
                .iter()
                .any(|c| c.config.id == l.container && c.monitor_alive());
            if !live {
                firewall::remove_port(&l.tap);
            }
            live
        });
        if leases.leases.len() != before {
            let _ = ipam::write(state, &n.name, &leases);
        }
        live_left |= !leases.leases.is_empty();
    }
    // Someone flushed the host's ruleset (nftables.service does on a
    // reload): the walls of the containers still running come back.
    if live_left {
        let _ = firewall::ensure_tables(&ipam::dir(state), || live_ports(state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Request {
        Request::default()
    }

    #[test]
    fn network_modes() {
        assert_eq!(req().resolve(&[]).expect("default").mode, DEFAULT);
        let none = Request {
            network: Some("none".into()),
            ..req()
        };
        assert_eq!(none.resolve(&[]).expect("none").mode, "none");
        let host = Request {
            network: Some("host".into()),
            ..req()
        };
        assert!(host.resolve(&[]).expect_err("host").contains("own kernel"));
        let named = Request {
            network: Some("backend".into()),
            ip: Some("10.214.0.9".into()),
            aliases: vec!["db".into()],
            ..req()
        };
        let o = named.resolve(&[]).expect("named");
        assert_eq!(o.endpoints()[0].aliases, vec!["db".to_string()]);
        let ip_on_default = Request {
            ip: Some("10.213.0.9".into()),
            ..req()
        };
        assert!(ip_on_default.resolve(&[]).is_err());
        assert!(check_alias("-x").is_err() && check_alias("db.local").is_ok());
        let conflict = Request {
            network: Some("none".into()),
            publish: vec!["80".into()],
            ..req()
        };
        assert!(conflict.resolve(&[]).is_err());
    }

    #[test]
    fn publish_all_takes_the_images_exposed_ports() {
        let r = Request {
            publish: vec!["8080:80".into()],
            publish_all: true,
            ..req()
        };
        let o = r
            .resolve(&["80/tcp".into(), "53/udp".into()])
            .expect("resolve");
        assert_eq!(o.ports.len(), 2);
        assert_eq!(o.ports[0].host_port, 8080);
        assert_eq!((o.ports[1].container_port, o.ports[1].host_port), (53, 0));
    }

    #[test]
    fn flags_are_checked() {
        let bad = |r: Request| r.resolve(&[]).expect_err("bad");
        bad(Request {
            mac: Some("01:00:00:00:00:01".into()),
            ..req()
        });
        bad(Request {
            dns: vec!["dns.example".into()],
            ..req()
        });
        bad(Request {
            add_hosts: vec!["nocolon".into()],
            ..req()
        });
        let ok = Request {
            mac: Some("02:AA:bb:cc:dd:ee".into()),
            add_hosts: vec!["db:192.0.2.1".into(), "gw:host-gateway".into()],
            ..req()
        }
        .resolve(&[])
        .expect("ok");
        assert_eq!(ok.mac.as_deref(), Some("02:aa:bb:cc:dd:ee"));
        let h = extra_hosts(&ok, Some(Ipv4Addr::new(10, 213, 0, 1)));
        assert_eq!(h[1].address, "10.213.0.1");
    }

    #[test]
    fn dns_follows_the_host_without_its_loopback_servers() {
        let host =
            "nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n";
        let n = dns(&Options::default(), host);
        assert_eq!(n.dns, vec!["192.0.2.53"]);
        assert_eq!(n.dns_search, vec!["corp.example"]);
        assert_eq!(n.dns_options, vec!["edns0"]);
        let n = dns(&Options::default(), "nameserver 127.0.0.53\n");
        assert_eq!(n.dns, vec!["8.8.8.8", "8.8.4.4"]);
        let o = Options {
            dns: vec!["1.1.1.1".into()],
            dns_search: vec!["x.example".into()],
            ..Options::default()
        };
        let n = dns(&o, host);
        assert_eq!(
            (n.dns, n.dns_search),
            (vec!["1.1.1.1".to_string()], vec!["x.example".to_string()])
        );
    }
}
