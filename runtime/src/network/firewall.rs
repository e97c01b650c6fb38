//! The host's nftables rules for container networks, in two tables of our
//! own (`ip vm`, `bridge vm`) that nothing else touches:
//!
//! - NAT: what comes from one of our bridges and leaves through anything
//!   else is masqueraded.
//! - Walls between networks: nothing is routed from one of our bridges to
//!   another (containers on one bridge are switched, not routed).
//! - The host: a container reaches the host only with answers to
//!   connections the host made (the port proxies) and pings; none of the
//!   host's own services.
//! - No spoofing: each container's port on the bridge passes only frames
//!   with the container's MAC and, for IPv4 and ARP, its address; other
//!   ethertypes (IPv6, VLAN tags) are dropped.
//!
//! The tables are made once and stay, as Docker's chains do; each
//! container adds its port's elements to the sets and removes them when
//! it stops. Rules go through Debian's `nft` (package `nftables`).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const BASE: &str = r#"
table ip vm {
    set bridges { type ifname; }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        iifname @bridges oifname != @bridges masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname @bridges oifname @bridges drop
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname @bridges ct state established,related accept
        iifname @bridges icmp type echo-request accept
        iifname @bridges drop
    }
}
table bridge vm {
    set ports { type ifname; }
    set macs { type ifname . ether_addr; }
    set ips { type ifname . ipv4_addr; }
    chain prerouting {
        type filter hook prerouting priority filter; policy accept;
        iifname != @ports accept
        iifname . ether saddr != @macs drop
        ether type arp iifname . arp saddr ether != @macs drop
        ether type arp iifname . arp saddr ip != @ips drop
        ether type ip iifname . ip saddr != @ips drop
        ether type != { ip, arp } drop
    }
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
    Ok(out.status.success() && has("table ip vm") && has("table bridge vm"))
}

/// Makes the tables if they are missing. Call under the networks' lock.
/// IPv4 forwarding is turned on; if it was off, forwarding between
/// interfaces that are not ours stays refused, so the host routes nothing
/// it did not before.
pub fn ensure_tables() -> Result<(), String> {
    if !tables_exist()? {
        let forward = "/proc/sys/net/ipv4/ip_forward";
        let was = std::fs::read_to_string(forward).map_err(|e| format!("{forward}: {e}"))?;
        let mut script = BASE.to_string();
        if was.trim() == "0" {
            script
                .push_str("add rule ip vm forward iifname != @bridges oifname != @bridges drop\n");
        }
        // One of the two may be left from an interrupted start.
        let _ = run("delete table ip vm\n");
        let _ = run("delete table bridge vm\n");
        run(&script)?;
        std::fs::write(forward, "1").map_err(|e| format!("turning on {forward}: {e}"))?;
    }
    Ok(())
}

/// Lets `tap` (a container's port on `bridge`) send as `mac` and `ip`
/// only; the bridge is added to ours again (adding an element that is
/// there changes nothing).
pub fn add_port(bridge: &str, tap: &str, mac: &str, ip: Ipv4Addr) -> Result<(), String> {
    run(&format!(
        "add element ip vm bridges {{ \"{bridge}\" }}\n\
         add element bridge vm macs {{ \"{tap}\" . {mac} }}\n\
         add element bridge vm ips {{ \"{tap}\" . {ip} }}\n\
         add element bridge vm ports {{ \"{tap}\" }}\n"
    ))
}

/// Takes `tap`'s elements out again: together, or each on its own when
/// one is already gone (which fails the whole transaction).
pub fn remove_port(tap: &str, mac: &str, ip: Ipv4Addr) {
    let all = format!(
        "delete element bridge vm ports {{ \"{tap}\" }}\n\
         delete element bridge vm macs {{ \"{tap}\" . {mac} }}\n\
         delete element bridge vm ips {{ \"{tap}\" . {ip} }}\n"
    );
    if run(&all).is_ok() {
        return;
    }
    let _ = run(&format!("delete element bridge vm ports {{ \"{tap}\" }}\n"));
    let _ = run(&format!(
        "delete element bridge vm macs {{ \"{tap}\" . {mac} }}\n"
    ));
    let _ = run(&format!(
        "delete element bridge vm ips {{ \"{tap}\" . {ip} }}\n"
    ));
}
