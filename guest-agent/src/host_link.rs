//! The vsock connections to `vm run` on the host (CID 2).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

const HOST_CID: u32 = 2;

/// The control port from `vm.agent=PORT` on the kernel command line.
pub fn control_port() -> Option<u32> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    port_from_cmdline(&cmdline)
}

pub fn port_from_cmdline(cmdline: &str) -> Option<u32> {
    let key = format!("{}=", agent_protocol::CMDLINE_PARAM);
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key.as_str()))
        .and_then(|p| p.parse().ok())
}

/// Connects to the host's listener on `port`. The vsock driver may still
/// be probing right after boot, so a few quick retries are allowed.
pub fn connect_host(port: u32) -> std::io::Result<File> {
    let mut last = None;
    for attempt in 0..50 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        let fd: OwnedFd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        match connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &VsockAddr::new(HOST_CID, port),
        ) {
            Ok(()) => return Ok(File::from(fd)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(
        || std::io::Error::other("vsock connect failed"),
        std::io::Error::from,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_comes_from_the_command_line() {
        assert_eq!(
            port_from_cmdline("console=ttyS0 vm.agent=1024 quiet"),
            Some(1024)
        );
        assert_eq!(port_from_cmdline("console=ttyS0 quiet"), None);
        assert_eq!(port_from_cmdline("vm.agent=x"), None);
    }
}
