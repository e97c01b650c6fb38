//! The networks containers join: the default `bridge`, built in, and the
//! user-defined ones of `vm network create`, each a file
//! `networks/NAME.network.json` in the state root, written under the
//! networks' lock. A network's bridge is made when its first container
//! starts and goes when the network is removed.
//!
//! User-defined networks get subnets of their own (a /24 from
//! 10.214.0.0/15 unless `--subnet` says), never one that overlaps another
//! network's or an address the host has; containers on them find each
//! other by name through the network's DNS (see `dns`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{firewall, ipam};
use crate::error::{Error, Result};

/// A network's shape on the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Net {
    pub id: String,
    pub name: String,
    /// The Linux bridge.
    pub bridge: String,
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// No way out: no NAT, no forwarding, no published ports.
    pub internal: bool,
    pub created: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Net {
    /// The default network (`bridge`, on `vm0`).
    pub fn default_bridge() -> Self {
        Self {
            // (a fixed ID: the default network is the same one everywhere)
            id: format!("{:0<64}", "b71d9e"),
            name: super::DEFAULT.into(),
            bridge: "vm0".into(),
            subnet: Ipv4Addr::new(10, 213, 0, 0),
            prefix: 16,
            gateway: Ipv4Addr::new(10, 213, 0, 1),
            internal: false,
            created: String::new(),
            labels: BTreeMap::new(),
        }
    }

    /// Whether this is the default network, which has no DNS of its own
    /// and takes no aliases or chosen addresses, as Docker's.
    pub fn is_default(&self) -> bool {
        self.name == super::DEFAULT
    }

    pub fn mtu(&self) -> u32 {
        1500
    }

    /// `10.214.3.0/24`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.subnet, self.prefix)
    }

    /// Whether `a` is in the subnet.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        self.overlaps(a, 32)
    }

    fn overlaps(&self, subnet: Ipv4Addr, prefix: u8) -> bool {
        overlap((self.subnet, self.prefix), (subnet, prefix))
    }
}

fn overlap(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let m = netconf::netmask(a.1.min(b.1));
    u32::from(a.0) & m == u32::from(b.0) & m
}

fn path(state: &Path, name: &str) -> PathBuf {
    ipam::dir(state).join(format!("{name}.network.json"))
}

/// Every network, the default first, then by name.
pub fn list(state: &Path) -> Vec<Net> {
    let mut out: Vec<Net> = match std::fs::read_dir(ipam::dir(state)) {
        Ok(d) => d
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".network.json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|d| serde_json::from_slice(&d).ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort_by(|a: &Net, b| a.name.cmp(&b.name));
    out.insert(0, Net::default_bridge());
    out
}

/// A network by name, full ID or unique ID prefix, as Docker finds them.
pub fn find(state: &Path, key: &str) -> Result<Net> {
    let all = list(state);
    // A full ID first, then a name, then an ID's start, as Docker.
    if let Some(n) = all
        .iter()
        .find(|n| n.id == key)
        .or_else(|| all.iter().find(|n| n.name == key))
    {
        return Ok(n.clone());
    }
    let hex = !key.is_empty() && key.chars().all(|c| c.is_ascii_hexdigit());
    let matches: Vec<&Net> = if hex {
        all.iter().filter(|n| n.id.starts_with(key)).collect()
    } else {
        Vec::new()
    };
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::not_found(format!("network {key} not found"))),
        _ => Err(Error::invalid(format!(
            "network {key} is ambiguous ({} networks have IDs that start with it)",
            matches.len()
        ))),
    }
}

/// What `vm network create` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub name: String,
    /// `A.B.C.D/N`.
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
}

/// Names the network kinds Docker has built in, which cannot be made.
const RESERVED: [&str; 4] = ["bridge", "none", "host", "default"];

/// Makes a user-defined network (its bridge comes with its first
/// container).
pub fn create(state: &Path, o: &CreateOptions) -> Result<Net> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::invalid(
            "user-defined networks need root (they are Linux bridges); \
             users other than root have the default network, through passt",
        ));
    }
    crate::create::check_name(&o.name)
        .map_err(|_| Error::invalid(format!("invalid network name {:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit", o.name)))?;
    if RESERVED.contains(&o.name.as_str()) {
        return Err(Error::invalid(format!(
            "network name {} is reserved: choose another",
            o.name
        )));
    }
    let requested = o.subnet.as_deref().map(parse_cidr).transpose()?;
    let gateway = o
        .gateway
        .as_deref()
        .map(|g| {
            g.parse::<Ipv4Addr>()
                .map_err(|_| Error::invalid(format!("--gateway {g:?} is not an IPv4 address")))
        })
        .transpose()?;
    if gateway.is_some() && requested.is_none() {
        return Err(Error::invalid("--gateway needs --subnet"));
    }
    let _lock = ipam::lock(state)?;
    let all = list(state);
    if all.iter().any(|n| n.name == o.name) {
        return Err(Error::new(
            crate::error::Kind::NameConflict,
            format!("network with name {} already exists", o.name),
        ));
    }
    let host = host_addresses();
    let routes = host_routes();
    let taken = |s: Ipv4Addr, p: u8| -> Option<String> {
        if let Some(n) = all.iter().find(|n| n.overlaps(s, p)) {
            return Some(format!("network {} ({})", n.name, n.cidr()));
        }
        if let Some((a, ap, what)) = SPECIAL.iter().find(|(a, ap, _)| overlap((*a, *ap), (s, p))) {
            return Some(format!("{a}/{ap} ({what})"));
        }
        if let Some((a, ap)) = host.iter().find(|(a, ap)| overlap((*a, *ap), (s, p))) {
            return Some(format!("the host's address {a}/{ap}"));
        }
        routes
            .iter()
            .find(|(a, ap, _)| overlap((*a, *ap), (s, p)))
            .map(|(a, ap, dev)| format!("the host's route to {a}/{ap} (via {dev})"))
    };
    let (subnet, prefix) = match requested {
        Some((s, p)) => {
            if let Some(who) = taken(s, p) {
                return Err(Error::in_use(format!(
                    "--subnet {s}/{p} overlaps {who}: choose another subnet"
                )));
            }
            (s, p)
        }
        None => (0..512u32)
            .map(|i| {
                (
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 214, 0, 0)) + (i << 8)),
                    24,
                )
            })
            .find(|(s, p)| taken(*s, *p).is_none())
            .ok_or_else(|| {
                Error::in_use(
                    "every /24 of 10.214.0.0/15 is taken: remove networks or give --subnet",
                )
            })?,
    };
    let mask = netconf::netmask(prefix);
    let net = u32::from(subnet);
    let gateway = match gateway {
        Some(g) => {
            let a = u32::from(g);
            if a & mask != net || a == net || a == net | !mask {
                return Err(Error::invalid(format!(
                    "--gateway {g} is not a usable address of {subnet}/{prefix}"
                )));
            }
            g
        }
        None => Ipv4Addr::from(net + 1),
    };
    let id = crate::create::random_id();
    let n = Net {
        bridge: format!("vmbr-{}", &id[..10]),
        id,
        name: o.name.clone(),
        subnet,
        prefix,
        gateway,
        internal: o.internal,
        created: crate::container::now_rfc3339(),
        labels: o.labels.clone(),
    };
    let data = serde_json::to_vec_pretty(&n).map_err(|e| Error::host(e.to_string()))?;
    crate::container::write_atomic(&path(state, &n.name), &data)?;
    Ok(n)
}

/// `A.B.C.D/N` with no host bits set, N from 8 to 30.
fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let bad = || {
        Error::invalid(format!(
            "--subnet {s:?}: use an IPv4 subnet such as 10.50.0.0/24"
        ))
    };
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let p: u8 = p.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&p) {
        return Err(Error::invalid(format!(
            "--subnet {s}: the prefix must be from /8 to /30"
        )));
    }
    let net = u32::from(a) & netconf::netmask(p);
    if net != u32::from(a) {
        return Err(Error::invalid(format!(
            "--subnet {s} has host bits set: did you mean {}/{p}?",
            Ipv4Addr::from(net)
        )));
    }
    Ok((a, p))
}

/// Ranges no network may have: the host's own, link-local (cloud
/// metadata services live there), multicast and the rest.
const SPECIAL: [(Ipv4Addr, u8, &str); 5] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\""),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
];

/// The host's IPv4 routes but default routes and those of our own
/// bridges, from /proc/net/route: a network over one of them would take
/// the host's traffic (its resolver's, say) for itself.
fn host_routes() -> Vec<(Ipv4Addr, u8, String)> {
    parse_routes(&std::fs::read_to_string("/proc/net/route").unwrap_or_default())
}

fn parse_routes(table: &str) -> Vec<(Ipv4Addr, u8, String)> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dev = *f.first()?;
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            // (the kernel prints them in the host's byte order)
            let dest = Ipv4Addr::from(dest.to_le_bytes());
            let prefix = mask.count_ones() as u8;
            let ours = dev == "vm0" || dev.starts_with("vmbr-");
            (prefix > 0 && !ours).then(|| (dest, prefix, dev.to_string()))
        })
        .collect()
}

/// The host's IPv4 addresses but those of our own bridges.
fn host_addresses() -> Vec<(Ipv4Addr, u8)> {
    let Ok(mut nl) = netconf::Netlink::open() else {
        return Vec::new();
    };
    let Ok(links) = nl.links() else {
        return Vec::new();
    };
    links
        .iter()
        .filter(|l| l.name != "vm0" && !l.name.starts_with("vmbr-"))
        .flat_map(|l| nl.addresses(l.index).unwrap_or_default())
        .collect()
}

/// The containers with `n` among their networks, running or not.
pub fn users(state: &Path, n: &Net) -> Vec<crate::container::Container> {
    crate::container::list(state)
        .into_iter()
        .filter(|c| {
            c.config
                .network
                .endpoints()
                .iter()
                .any(|e| e.network == n.name)
        })
        .collect()
}

/// Removes a user-defined network: its bridge, its place in the
/// firewall's sets and its files. One with running containers is kept.
pub fn remove(state: &Path, key: &str) -> Result<Net> {
    let _lock = ipam::lock(state)?;
    let n = find(state, key)?;
    if n.is_default() {
        return Err(Error::invalid(format!(
            "{} is a pre-defined network and cannot be removed",
            n.name
        )));
    }
    let running: Vec<String> = users(state, &n)
        .iter()
        .filter(|c| c.monitor_alive())
        .map(|c| c.config.name.clone())
        .collect();
    if !running.is_empty() {
        return Err(Error::in_use(format!(
            "network {} has active endpoints (running containers {}): stop them, or disconnect them once stopped",
            n.name,
            running.join(", ")
        )));
    }
    if let Ok(mut nl) = netconf::Netlink::open() {
        if nl.link(&n.bridge).ok().flatten().is_some() {
            nl.delete_link(&n.bridge)
                .map_err(|e| Error::host(format!("removing bridge {}: {e}", n.bridge)))?;
        }
    }
    firewall::forget_network(&firewall::Bridge::of(&n));
    let _ = std::fs::remove_file(ipam::dir(state).join(format!("{}.leases.json", n.name)));
    std::fs::remove_file(path(state, &n.name))
        .map_err(|e| Error::host(format!("removing network {}: {e}", n.name)))?;
    Ok(n)
}

/// Why a running container's networks cannot change.
fn refuse_running(c: &crate::container::Container, what: &str) -> Result<()> {
    if c.monitor_alive() || c.state().status.is_live() {
        return Err(Error::in_use(format!(
            "container {} is running: a VM's network cards are fixed while it runs \
             (no hot-plug), so it can be {what} only when stopped; \
             `vm stop {}`, then again, then `vm start {}`",
            c.config.name, c.config.name, c.config.name
        )));
    }
    Ok(())
}

/// Writes `c`'s network options back to its config.
fn save(c: &crate::container::Container, o: super::Options) -> Result<()> {
    let mut config = c.config.clone();
    config.network = o;
    let data = serde_json::to_vec_pretty(&config)
        .map_err(|e| Error::host(format!("encoding the config: {e}")))?;
    crate::container::write_atomic(&c.config_path(), &data)
}

/// `vm network connect`: joins stopped container `c` to network `key`
/// (from its next start), with a chosen address and aliases there.
pub fn connect(
    state: &Path,
    c: &crate::container::Container,
    key: &str,
    ip: Option<Ipv4Addr>,
    aliases: &[String],
) -> Result<()> {
    let _lock = c.command_lock()?;
    let c = crate::container::find(state, &c.config.id)?;
    refuse_running(&c, "connected")?;
    let n = find(state, key)?;
    let mut o = c.config.network.clone();
    if o.mode == "none" {
        return Err(Error::invalid(format!(
            "container {} has --network none: a container with no network cannot join one",
            c.config.name
        )));
    }
    let endpoints = o.endpoints();
    if endpoints.iter().any(|e| e.network == n.name) {
        return Err(Error::new(
            crate::error::Kind::NameConflict,
            format!(
                "container {} is already connected to network {}",
                c.config.name, n.name
            ),
        ));
    }
    if endpoints.len() >= super::MAX_NETWORKS {
        return Err(Error::invalid(format!(
            "container {} has {} networks, as many as a VM here takes; disconnect one first",
            c.config.name,
            endpoints.len()
        )));
    }
    if n.is_default() && (ip.is_some() || !aliases.is_empty()) {
        return Err(Error::invalid(
            "--ip and --alias are supported on user-defined networks only",
        ));
    }
    for a in aliases {
        super::check_alias(a).map_err(Error::invalid)?;
    }
    o.connected.push(super::Endpoint {
        network: n.name.clone(),
        network_id: Some(n.id.clone()),
        ip,
        aliases: aliases.to_vec(),
    });
    // The same checks as `vm run` (root, the address in the subnet), on
    // the new network as if it were the first.
    let alone = super::Options {
        mode: n.name.clone(),
        ip,
        ..Default::default()
    };
    super::check(state, &alone)?;
    save(&c, o)
}

/// `vm network disconnect`: takes stopped container `c` off network
/// `key`. Its first network's place goes to the next one, or it is left
/// with none (and its published ports go: nothing could carry them).
pub fn disconnect(state: &Path, c: &crate::container::Container, key: &str) -> Result<()> {
    let _lock = c.command_lock()?;
    let c = crate::container::find(state, &c.config.id)?;
    refuse_running(&c, "disconnected")?;
    // (a network removed since may be named as the container has it)
    let name = find(state, key)
        .map(|n| n.name)
        .unwrap_or_else(|_| key.to_string());
    let mut o = c.config.network.clone();
    if o.mode == name {
        if o.connected.is_empty() {
            o.mode = "none".into();
            o.network_id = None;
            o.ip = None;
            o.aliases.clear();
            o.ports.clear();
            o.mac = None;
        } else {
            let next = o.connected.remove(0);
            if !o.ports.is_empty() && find(state, &next.network).is_ok_and(|n| n.internal) {
                return Err(Error::invalid(format!(
                    "container {} publishes ports, which would go to its next network, {}, \
                     which is internal; disconnect {} first",
                    c.config.name, next.network, next.network
                )));
            }
            o.mode = next.network;
            o.network_id = next.network_id;
            o.ip = next.ip;
            o.aliases = next.aliases;
        }
    } else if let Some(i) = o.connected.iter().position(|e| e.network == name) {
        o.connected.remove(i);
    } else {
        return Err(Error::not_found(format!(
            "container {} is not connected to network {key}",
            c.config.name
        )));
    }
    save(&c, o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_checked() {
        assert_eq!(
            parse_cidr("10.50.0.0/24").expect("ok"),
            (Ipv4Addr::new(10, 50, 0, 0), 24)
        );
        assert!(parse_cidr("10.50.0.1/24")
            .expect_err("host bits")
            .message
            .contains("10.50.0.0/24"));
        assert!(parse_cidr("10.50.0.0/31").is_err());
        assert!(parse_cidr("10.50.0.0").is_err());
        assert!(parse_cidr("fe80::/64").is_err());
    }

    #[test]
    fn routes_but_defaults_and_ours() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            vm0\t0000D50A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
            tun0\t0064640A\t0101A8C0\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_routes(table),
            vec![
                (Ipv4Addr::new(192, 168, 1, 0), 24, "eth0".to_string()),
                (Ipv4Addr::new(10, 100, 100, 0), 24, "tun0".to_string()),
            ]
        );
    }

    #[test]
    fn overlaps_either_way() {
        let a = (Ipv4Addr::new(10, 213, 0, 0), 16);
        assert!(overlap(a, (Ipv4Addr::new(10, 213, 7, 0), 24)));
        assert!(overlap((Ipv4Addr::new(10, 0, 0, 0), 8), a));
        assert!(!overlap(a, (Ipv4Addr::new(10, 214, 0, 0), 24)));
    }
}
