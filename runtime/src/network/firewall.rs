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
//!   connections the host made (the port proxies) and pings to its
//!   gateway; none of the host's own services.
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
    set gateways { type ipv4_addr; }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        iifname @bridges oifname != @bridges masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname @bridges oifname @bridges drop
        oifname @bridges ct state established,related accept
        oifname @bridges drop
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname @bridges ct state established,related accept
        iifname @bridges ip daddr @gateways icmp type echo-request accept
        iifname @bridges drop
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

/// Whether both of our tables are there.
fn tables_exist() -> Result<bool, String> {
    let out = Command::new(nft()?)
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("running nft: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let has = |t: &str| text.lines().any(|l| l.trim() == t);
    Ok(out.status.success() && has("table ip vm") && has("table netdev vm"))
}

/// A container's TAP as the rules know it.
pub struct Port<'a> {
    pub bridge: &'a str,
    pub gateway: Ipv4Addr,
    pub tap: &'a str,
    pub mac: &'a str,
    pub ip: Ipv4Addr,
}

/// Makes the tables if they are missing (and then the chains of `live`,
/// the TAPs of running containers, again: someone flushed the ruleset).
/// Call under the networks' lock. IPv4 forwarding is turned on; if it was
/// off before we first turned it on (kept in `state_dir`), forwarding
/// between interfaces that are not ours stays refused, so the host routes
/// nothing it did not before.
pub fn ensure_tables(state_dir: &Path, live: &[Port]) -> Result<(), String> {
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
    for p in live {
        // (a TAP that is gone has no chain to get back)
        let _ = add_port(p);
    }
    Ok(())
}

/// Gives `p.tap` its ingress chain: IPv4 and ARP from the container's own
/// MAC and address pass, nothing else. A chain left under the same name
/// is emptied first, in the same transaction.
pub fn add_port(p: &Port) -> Result<(), String> {
    let Port {
        bridge,
        gateway,
        tap,
        mac,
        ip,
    } = p;
    run(&format!(
        "add element ip vm bridges {{ \"{bridge}\" }}\n\
         add element ip vm gateways {{ {gateway} }}\n\
         add chain netdev vm {tap} {{ type filter hook ingress device \"{tap}\" priority -500; policy drop; }}\n\
         flush chain netdev vm {tap}\n\
         add rule netdev vm {tap} ether saddr {mac} ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether {mac} arp saddr ip {ip} accept\n\
         add rule netdev vm {tap} ether saddr {mac} ether type ip ip saddr {ip} accept\n"
    ))
}

/// Takes `tap`'s chain out again (it may be gone with its TAP already).
pub fn remove_port(tap: &str) {
    let _ = run(&format!(
        "flush chain netdev vm {tap}\ndelete chain netdev vm {tap}\n"
    ));
}
