//! User-mode networking for users who cannot make bridges and TAP
//! devices: Debian's `passt`, started by the monitor for each start, on
//! one end of a stream socket whose other end is the VMM's network device
//! (frames after their lengths). passt connects out with ordinary
//! sockets of the user's. It forwards no ports: published TCP ports go
//! through the monitor's proxies and the guest's agent (see `ports` and
//! the monitor's `forward`), because Debian bookworm's passt takes
//! inbound connections and then spins (or, logging, crashes) before the
//! guest sees them, and its UDP forwards deliver nothing.
//!
//! The guest gets 10.0.2.15/24, gateway 10.0.2.2, and DNS at 10.0.2.3,
//! which passt forwards to the host's resolver. The gateway is not mapped
//! to the host's loopback (`--no-map-gw`).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const PREFIX: u8 = 24;
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The descriptor passt is told its socket is.
const PASST_FD: i32 = 3;

fn binary() -> Result<PathBuf, String> {
    for d in ["/usr/bin", "/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = PathBuf::from(d).join("passt");
        if p.exists() {
            return Ok(p);
        }
    }
    Err("networking for users other than root needs Debian's passt \
         (apt-get install passt), or run the container with --network none"
        .into())
}

/// Whether passt is there.
pub fn available() -> Result<(), String> {
    binary().map(|_| ())
}

/// A running passt; stopped when dropped.
pub struct Passt {
    child: Child,
}

impl Drop for Passt {
    fn drop(&mut self) {
        // SAFETY: kill on the pid of a child we have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Starts passt on `sock` (its end of the VMM's stream), forwarding no
/// ports.
pub fn start(sock: OwnedFd) -> Result<Passt, String> {
    let mut cmd = Command::new(binary()?);
    cmd.args(["--foreground", "--quiet", "--one-off", "--ipv4-only"])
        .args(["--fd", &PASST_FD.to_string()])
        .args(["--address", &ADDRESS.to_string()])
        .args(["--netmask", &PREFIX.to_string()])
        .args(["--gateway", &GATEWAY.to_string()])
        .args(["--dns-forward", &DNS.to_string()])
        .args([
            "--no-map-gw",
            "--no-dhcp",
            "--no-ndp",
            "--no-dhcpv6",
            "--no-ra",
        ]);
    let fd = sock.as_raw_fd();
    // SAFETY: between fork and exec the child only moves one descriptor
    // with dup2 and fcntl, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if fd == PASST_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, PASST_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting passt: {e}"))?;
    drop(sock);
    Ok(Passt { child })
}
