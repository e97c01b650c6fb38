//! Addresses on a network, kept in the state root
//! (`networks/NAME.leases.json`) and changed only under the networks'
//! lock: no two containers get one address, even when started at once.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub container: String,
    pub mac: String,
    pub tap: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Leases {
    pub leases: BTreeMap<Ipv4Addr, Lease>,
}

/// The directory of the networks' files.
pub fn dir(state: &Path) -> PathBuf {
    state.join("networks")
}

fn path(state: &Path, network: &str) -> PathBuf {
    dir(state).join(format!("{network}.leases.json"))
}

/// The lock every change to a network's files and rules is made under.
pub fn lock(state: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let d = dir(state);
    crate::container::private_dir(&d)?;
    crate::container::lock(&d.join(".lock"))
}

pub fn read(state: &Path, network: &str) -> Result<Leases> {
    let p = path(state, network);
    match std::fs::read(&p) {
        Ok(d) => serde_json::from_slice(&d)
            .map_err(|e| Error::host(format!("{}: {e}; remove it to start afresh", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Leases::default()),
        Err(e) => Err(Error::host(format!("reading {}: {e}", p.display()))),
    }
}

pub fn write(state: &Path, network: &str, l: &Leases) -> Result<()> {
    let data = serde_json::to_vec_pretty(l).map_err(|e| Error::host(e.to_string()))?;
    crate::container::write_atomic(&path(state, network), &data)
}

/// The first free address of `subnet/prefix` after the gateway (or
/// `want`, if it is free and usable); None when the subnet is full.
pub fn pick(
    leases: &Leases,
    subnet: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    want: Option<Ipv4Addr>,
) -> std::result::Result<Ipv4Addr, String> {
    let mask = netconf::netmask(prefix);
    let net = u32::from(subnet) & mask;
    let last = net | !mask;
    let usable = |a: u32| a > net && a < last && a != u32::from(gateway);
    if let Some(w) = want {
        let a = u32::from(w);
        if a & mask != net || !usable(a) {
            return Err(format!(
                "address {w} is not a usable address of {subnet}/{prefix}"
            ));
        }
        if leases.leases.contains_key(&w) {
            return Err(format!("address {w} is already in use on this network"));
        }
        return Ok(w);
    }
    (net + 1..last)
        .filter(|a| usable(*a))
        .map(Ipv4Addr::from)
        .find(|a| !leases.leases.contains_key(a))
        .ok_or_else(|| format!("no address is left in {subnet}/{prefix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(c: &str) -> Lease {
        Lease {
            container: c.into(),
            mac: String::new(),
            tap: String::new(),
        }
    }

    #[test]
    fn picks_the_first_free_address() {
        let subnet = Ipv4Addr::new(10, 1, 0, 0);
        let gw = Ipv4Addr::new(10, 1, 0, 1);
        let mut l = Leases::default();
        assert_eq!(
            pick(&l, subnet, 24, gw, None),
            Ok(Ipv4Addr::new(10, 1, 0, 2))
        );
        l.leases.insert(Ipv4Addr::new(10, 1, 0, 2), lease("a"));
        assert_eq!(
            pick(&l, subnet, 24, gw, None),
            Ok(Ipv4Addr::new(10, 1, 0, 3))
        );
        assert!(pick(&l, subnet, 24, gw, Some(Ipv4Addr::new(10, 1, 0, 2))).is_err());
        assert!(pick(&l, subnet, 24, gw, Some(gw)).is_err());
        assert!(pick(&l, subnet, 24, gw, Some(Ipv4Addr::new(10, 1, 0, 255))).is_err());
        assert!(pick(&l, subnet, 24, gw, Some(Ipv4Addr::new(10, 2, 0, 9))).is_err());
        assert_eq!(
            pick(&l, subnet, 24, gw, Some(Ipv4Addr::new(10, 1, 0, 9))),
            Ok(Ipv4Addr::new(10, 1, 0, 9))
        );
        // A /30 has two usable addresses; the gateway takes one.
        let mut l = Leases::default();
        l.leases.insert(Ipv4Addr::new(10, 1, 0, 2), lease("a"));
        assert!(pick(&l, subnet, 30, gw, None).is_err());
    }
}
