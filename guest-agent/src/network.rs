//! The guest's network, set up over rtnetlink before the container
//! starts (the image need not have `ip`): `lo` always, then each
//! interface the host named by its MAC address, with its address, MTU and
//! default route; and the container's resolv.conf and hosts files. The
//! container shares this network namespace.

use agent_protocol::Network;
use netconf::{LinkChange, Netlink};

/// Brings up `lo` and the interfaces of `net`.
pub fn configure(net: &Network) -> Result<(), String> {
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    nl.set_link(
        "lo",
        &LinkChange {
            up: Some(true),
            ..LinkChange::default()
        },
    )
    .map_err(|e| e.to_string())?;
    if net.interfaces.is_empty() {
        return Ok(());
    }
    let links = nl.links().map_err(|e| e.to_string())?;
    for i in &net.interfaces {
        let mac = netconf::parse_mac(&i.mac).ok_or_else(|| format!("bad MAC address {}", i.mac))?;
        let link = links
            .iter()
            .find(|l| l.mac == Some(mac))
            .ok_or_else(|| format!("no network interface has MAC address {}", i.mac))?;
        nl.set_link(
            &link.name,
            &LinkChange {
                up: Some(true),
                mtu: Some(i.mtu),
                ..LinkChange::default()
            },
        )
        .map_err(|e| e.to_string())?;
        nl.add_address(&link.name, i.address, i.prefix)
            .map_err(|e| e.to_string())?;
        if let Some(gw) = i.gateway {
            nl.add_default_route(gw).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// /etc/resolv.conf: the host's choice of servers, search domains and
/// options.
pub fn resolv_conf(net: &Network) -> String {
    let mut out = String::new();
    if net.dns.is_empty() {
        out.push_str("# no name servers: this container has no network\n");
    }
    for s in &net.dns {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !net.dns_search.is_empty() {
        out.push_str(&format!("search {}\n", net.dns_search.join(" ")));
    }
    if !net.dns_options.is_empty() {
        out.push_str(&format!("options {}\n", net.dns_options.join(" ")));
    }
    out
}

/// /etc/hosts as Docker writes it: localhost, the container's own
/// address under its hostname, then the extra entries.
pub fn hosts(net: &Network, hostname: &str) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    match net.interfaces.first() {
        Some(i) => out.push_str(&format!("{}\t{hostname}\n", i.address)),
        None => out.push_str(&format!("127.0.1.1\t{hostname}\n")),
    }
    for h in &net.hosts {
        out.push_str(&format!("{}\t{}\n", h.address, h.names.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::{HostEntry, Interface};

    fn net() -> Network {
        Network {
            interfaces: vec![Interface {
                mac: "02:42:0a:58:00:02".into(),
                address: "10.88.0.2".parse().expect("ip"),
                prefix: 16,
                gateway: None,
                mtu: 1500,
            }],
            dns: vec!["10.0.0.53".into(), "8.8.8.8".into()],
            dns_search: vec!["a.example".into(), "b.example".into()],
            dns_options: vec!["ndots:2".into()],
            hosts: vec![HostEntry {
                address: "192.0.2.7".into(),
                names: vec!["db".into(), "db.local".into()],
            }],
        }
    }

    #[test]
    fn resolv_conf_lists_servers_search_and_options() {
        assert_eq!(
            resolv_conf(&net()),
            "nameserver 10.0.0.53\nnameserver 8.8.8.8\nsearch a.example b.example\noptions ndots:2\n"
        );
        assert!(resolv_conf(&Network::default()).starts_with('#'));
    }

    #[test]
    fn hosts_name_the_container_and_the_extras() {
        let h = hosts(&net(), "web");
        assert!(h.contains("10.88.0.2\tweb\n"), "{h}");
        assert!(h.ends_with("192.0.2.7\tdb db.local\n"), "{h}");
        assert!(hosts(&Network::default(), "web").contains("127.0.1.1\tweb\n"));
    }
}
