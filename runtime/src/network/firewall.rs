//! The host's nftables rules for container networks, in tables of our own
//! (`ip vm`, `netdev vm`) that nothing else touches:
//!
//! - NAT: what comes from one of our bridges and leaves through anything
//!   else is masqueraded.
//! - Walls between networks: nothing is routed from one of our bridges to
//!   another (containers on one bridge are switched, not routed), and
//!   nothing from elsewhere is routed into one, but answers to what the
//!   containers started (the host's own proxies need no routing).
//! - The host: a container reaches the host only with answers to
//!   connections the host made (the port proxies), pings to its own
//!   network's gateway and, on a user-defined network, DNS to it; none of
//!   the host's own services. Users of the host other than root open no
//!   connections to containers (a rootless tenant's VM, whose passt
//!   connects with the user's sockets, included): they use published
//!   ports.
//! - Internal networks: nothing is routed into or out of them.
//! - No spoofing: each container's TAP has an ingress chain (which sees
//!   every frame before the bridge does, link-local multicast included)
//!   that passes only IPv4 and ARP from the container's own MAC and
//!   address and drops everything else.
//!
//! The tables are made once and stay, as Docker's chains do; each
//! container adds its TAP's chain (which also goes when the TAP does) and
//! removes it when it stops. Rules go through Debian's `nft` (package
//! `nftables`).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BASE: &str = r#"
table ip vm {
    set bridges { type ifname; }
    set pings { type ifname . ipv4_addr; }
    set internal { type ifname; }
    set resolvers { type ifname . ipv4_addr; }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        iifname @bridges oifname != @bridges masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname @internal drop
        oifname @internal drop
        iifname @bridges oifname @bridges drop
        oifname @bridges ct state established,related accept
        oifname @bridges drop
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname @bridges ct state established,related accept
        iifname . ip daddr @pings icmp type echo-request accept
        iifname . ip daddr @resolvers udp dport 53 accept
        iifname @bridges drop
    }
    chain output {
        type filter hook output priority filter; policy accept;
        oifname @bridges ct state new meta skuid != 0 drop
    }
}
table netdev vm {
}
"#;

/// Where `nft` is.
fn nft() -> Result<PathBuf, String> {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = PathBuf::from(d).join("nft");
        if p.exists() {
            return Ok(p);
        }
    }
    Err(
        "container networks need nftables's `nft` (apt-get install nftables), \
         or run the container with --network none"
            .into(),
    )
}

/// Runs an nft script.
fn run(script: &str) -> Result<(), String> {
    let mut child = Command::new(nft()?)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(script.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the container network's rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether both of our tables are there, as this version makes them
/// (older ones lack the pings' set).
fn tables_exist() -> Result<bool, String> {
    let nft = nft()?;
    for what in [
        ["set", "ip", "vm", "resolvers"],
        ["table", "netdev", "vm", ""],
    ] {
        let ok = Command::new(&nft)
            .arg("list")
            .args(what.iter().filter(|w| !w.is_empty()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("running nft: {e}"))?
            .success();
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A network's bridge as the rules know it.
#[derive(Debug, Clone)]
pub struct Bridge {
    pub name: String,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    /// Whether the gateway answers DNS.
    pub dns: bool,
}

impl Bridge {
    pub fn of(n: &super::net::Net) -> Self {
        Self {
            name: n.bridge.clone(),
            gateway: n.gateway,
            internal: n.internal,
            dns: !n.is_default(),
        }
    }
}

/// A container's TAP as the rules know it.
pub struct Port {
    pub bridge: Bridge,
    pub tap: String,
    pub mac: String,
    pub ip: Ipv4Addr,
}

/// Makes the tables if they are missing (and then the chains of `live`,
/// the TAPs of running containers, again: someone flushed the ruleset).
/// Call under the networks' lock. IPv4 forwarding is turned on; if it was
/// off before we first turned it on (kept in `state_dir`), forwarding
/// between interfaces that are not ours stays refused, so the host routes
/// nothing it did not before.
pub fn ensure_tables(state_dir: &Path, live: impl FnOnce() -> Vec<Port>) -> Result<(), String> {
    if tables_exist()? {
        return Ok(());
    }
    let forward = "/proc/sys/net/ipv4/ip_forward";
    let memo = state_dir.join("ip_forward.orig");
    let was = match std::fs::read_to_string(&memo) {
        Ok(v) => v,
        Err(_) => {
            let v = std::fs::read_to_string(forward).map_err(|e| format!("{forward}: {e}"))?;
            std::fs::write(&memo, &v).map_err(|e| format!("{}: {e}", memo.display()))?;
            v
        }
    };
    let mut script = BASE.to_string();
    if was.trim() == "0" {
        script.push_str("add rule ip vm forward iifname != @bridges oifname != @bridges drop\n");
    }
    // One of them may be left from an interrupted start.
    let _ = run("delete table ip vm\n");
    let _ = run("delete table netdev vm\n");
    run(&script)?;
    std::fs::write(forward, "1").map_err(|e| format!("turning on {forward}: {e}"))?;
    for p in live() {
        // (a TAP that is gone has no chain to get back)
        let _ = add_port(&p);
    }
    Ok(())
}

/// Gives `p.tap` its ingress chain: IPv4 and ARP from the container's own
/// MAC and address pass, nothing else. A chain left under the same name
/// is emptied first, in the same transaction. The transaction fails,
/// changing nothing, when our tables are missing or older (what
/// [`tables_exist`] checks, in the same run of `nft`): then make them with
/// [`ensure_tables`] and call this again.
pub fn add_port(p: &Port) -> Result<(), String> {
    let Port {
        bridge,
        tap,
        mac,
        ip,
    } = p;
    let Bridge {
        name,
        gateway,
        internal,
        dns,
    } = bridge;
    // The checks come first: nft evaluates the whole script before it
    // sends the batch, so a failed `list` sends nothing.
    let mut script = format!(
        "list set ip vm resolvers\n\
         list table netdev vm\n\
         add element ip vm bridges {{ \"{name}\" }}\n\
         add element ip vm pings {{ \"{name}\" . {gateway} }}\n"
    );
    if *internal {
        script.push_str(&format!("add element ip vm internal {{ \"{name}\" }}\n"));
    }
    if *dns {
        script.push_str(&format!(
            "add element ip vm resolvers {{ \"{name}\" . {gateway} }}\n"
        ));
    }
    script.push_str(&format!(
        "\
         add chain netdev vm {tap} {{ type filter hook ingress device \"{tap}\" priority -500; policy drop; }}\n\
         flush chain netdev vm {tap}\n\
         add rule netdev vm {tap} ether saddr {mac} ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether {mac} arp saddr ip {ip} accept\n\
         add rule netdev vm {tap} ether saddr {mac} ether type ip ip saddr {ip} accept\n"
    ));
    run(&script)
}

/// Takes a removed network's bridge out of the sets (each on its own:
/// one that is not there is no failure).
pub fn forget_network(b: &Bridge) {
    let Bridge { name, gateway, .. } = b;
    for e in [
        format!("bridges {{ \"{name}\" }}"),
        format!("internal {{ \"{name}\" }}"),
        format!("pings {{ \"{name}\" . {gateway} }}"),
        format!("resolvers {{ \"{name}\" . {gateway} }}"),
    ] {
        let _ = run(&format!("delete element ip vm {e}\n"));
    }
}

/// Takes `tap`'s chain out again (it may be gone with its TAP already).
pub fn remove_port(tap: &str) {
    let _ = run(&format!(
        "flush chain netdev vm {tap}\ndelete chain netdev vm {tap}\n"
    ));
}
