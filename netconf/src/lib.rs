//! Network links, addresses and routes over rtnetlink, without the `ip`
//! binary: what the guest agent sets on its interfaces (an image need not
//! have `ip`), and the bridges and taps the runtime makes on the host.
//!
//! One request at a time on a blocking socket; every request asks for an
//! acknowledgement, and the kernel's error comes back as an `io::Error`.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}: the kernel's answer could not be read")]
    Decode(String),
    #[error("no network interface named {0}")]
    NoLink(String),
}

impl Error {
    /// The kernel's errno, when the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// The bridge it is a port of.
    pub controller: Option<u32>,
    pub up: bool,
}

/// What to change on a link; `None` leaves it as it is.
#[derive(Debug, Clone, Default)]
pub struct LinkChange {
    pub up: Option<bool>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// Make it a port of this bridge.
    pub controller: Option<u32>,
}

/// An rtnetlink socket.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Netlink> {
        let io = |source| Error::Io {
            what: "opening a netlink socket".into(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
        socket.bind_auto().map_err(io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends `msg` and collects the answers until the acknowledgement (or
    /// the end of a dump).
    fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        let io = |source| Error::Io {
            what: what.to_string(),
            source,
        };
        self.socket.send(&buf, 0).map_err(io)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(io)?;
            let mut at = 0;
            while at < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..])
                    .map_err(|_| Error::Decode(what.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(Error::Decode(what.to_string()));
                }
                at += len.next_multiple_of(4);
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(io(e.to_io())),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Every interface.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let msgs = self.request(
            "listing network interfaces",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })
            .collect())
    }

    /// The interface named `name`, if there is one.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    fn index(&mut self, name: &str) -> Result<u32> {
        self.link(name)?
            .map(|l| l.index)
            .ok_or_else(|| Error::NoLink(name.into()))
    }

    /// Changes what `change` says on the interface `name`.
    pub fn set_link(&mut self, name: &str, change: &LinkChange) -> Result<()> {
        let index = self.index(name)?;
        let mut m = LinkMessage::default();
        m.header.index = index;
        if let Some(up) = change.up {
            m.header.change_mask = LinkFlags::Up;
            if up {
                m.header.flags = LinkFlags::Up;
            }
        }
        if let Some(mtu) = change.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = change.mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(c) = change.controller {
            m.attributes.push(LinkAttribute::Controller(c));
        }
        self.request(
            &format!("changing interface {name}"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )?;
        Ok(())
    }

    /// Makes a bridge named `name` with the MAC address `mac` (down, no
    /// IP address).
    pub fn add_bridge(&mut self, name: &str, mac: [u8; 6]) -> Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            &format!("making bridge {name}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Removes the interface `name`.
    pub fn delete_link(&mut self, name: &str) -> Result<()> {
        let index = self.index(name)?;
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(
            &format!("removing interface {name}"),
            RouteNetlinkMessage::DelLink(m),
            0,
        )?;
        Ok(())
    }

    /// The IPv4 addresses on interface `index`, with their prefix lengths.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut q = AddressMessage::default();
        q.header.family = AddressFamily::Inet;
        let msgs = self.request(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(q),
            NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(IpAddr::V4(ip))
                        | AddressAttribute::Address(IpAddr::V4(ip)) => {
                            Some((*ip, a.header.prefix_len))
                        }
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Puts `ip/prefix` on interface `name`.
    pub fn add_address(&mut self, name: &str, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let index = self.index(name)?;
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        m.attributes.push(AddressAttribute::Address(IpAddr::V4(ip)));
        if prefix < 31 {
            m.attributes
                .push(AddressAttribute::Broadcast(broadcast(ip, prefix)));
        }
        self.request(
            &format!("adding address {ip}/{prefix} to {name}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// The default route through `gateway`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        self.request(
            &format!("adding the default route via {gateway}"),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }
}

fn link_of(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: None,
        controller: None,
        up: l.header.flags.contains(LinkFlags::Up),
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(m) => link.mac = m.as_slice().try_into().ok(),
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            _ => {}
        }
    }
    link
}

/// The broadcast address of `ip/prefix`.
pub fn broadcast(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = netmask(prefix);
    Ipv4Addr::from(u32::from(ip) | !mask)
}

/// The mask of a prefix length (0 to 32).
pub fn netmask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_broadcasts() {
        assert_eq!(netmask(0), 0);
        assert_eq!(netmask(16), 0xffff_0000);
        assert_eq!(netmask(32), u32::MAX);
        assert_eq!(
            broadcast(Ipv4Addr::new(10, 88, 0, 1), 16),
            Ipv4Addr::new(10, 88, 255, 255)
        );
    }

    #[test]
    fn macs_read_and_written() {
        let m = parse_mac("02:42:0a:58:00:02").expect("a mac");
        assert_eq!(m, [2, 0x42, 10, 0x58, 0, 2]);
        assert_eq!(format_mac(&m), "02:42:0a:58:00:02");
        for bad in [
            "",
            "02:42:0a:58:00",
            "02:42:0a:58:00:02:03",
            "2:42:0a:58:00:02",
            "zz:42:0a:58:00:02",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    /// Lists this machine's interfaces: `lo` is always there.
    #[test]
    fn lists_links() {
        let mut nl = Netlink::open().expect("netlink");
        let links = nl.links().expect("links");
        assert!(links.iter().any(|l| l.name == "lo"), "{links:?}");
        assert!(matches!(
            nl.set_link("no-such-if0", &LinkChange::default()),
            Err(Error::NoLink(_))
        ));
    }
}
