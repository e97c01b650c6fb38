//! Published ports for a container whose host side cannot reach its
//! address (a user other than root, behind passt): the host asks for each
//! connection, and the agent joins a vsock stream to the host with a TCP
//! connection to the port on the guest's own address (not loopback: a
//! service that trusts local clients must not take the world for one),
//! in the network the container shares.

use std::fs::File;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::host_link;

/// Carries one connection on threads of its own; a failure closes it,
/// which the host's client sees as its connection closing.
pub fn start(port: u32, to: SocketAddr, token: String) {
    let _ = std::thread::Builder::new()
        .name("forward".into())
        .spawn(move || {
            let _ = carry(port, to, &token);
        });
}

fn carry(port: u32, to: SocketAddr, token: &str) -> io::Result<()> {
    let mut host = host_link::connect_host(port)?;
    host.write_all(format!("{token}\n").as_bytes())?;
    let guest = TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
    let _ = guest.set_nodelay(true);
    let (host2, guest2) = (host.try_clone()?, guest.try_clone()?);
    let back = std::thread::Builder::new()
        .name("forward-back".into())
        .spawn(move || {
            let _ = io::copy(&mut &guest2, &mut &host2);
            shut_write(&host2);
        })?;
    let _ = io::copy(&mut &host, &mut &guest);
    let _ = guest.shutdown(Shutdown::Write);
    let _ = back.join();
    Ok(())
}

/// Says end of file on the vsock stream, keeping it open for reading.
fn shut_write(f: &File) {
    let _ = nix::sys::socket::shutdown(f.as_raw_fd(), nix::sys::socket::Shutdown::Write);
}
