//! Published ports carried over vsock: for a container whose address the
//! host cannot reach (a user other than root, behind passt), each
//! connection to a published port becomes a stream from the agent, which
//! joins it to the port on the guest's loopback.

use std::io;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol::{port, HostMessage};

use super::Shared;
use crate::network::ports::Dial;
use crate::session;

/// How long the agent has to connect a forwarded stream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Forwarded streams take ports from FORWARD_BASE on, this many apart
/// before they come round again.
const PORTS: u32 = 1 << 29;
/// The next port's offset, for the monitor's life: a dial left from one
/// run never takes the port of one in the next.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The dialer the proxies use while the agent is there; the agent
/// connects to `address` (the guest's) in the guest.
pub fn dialer(shared: Arc<Shared>, address: Ipv4Addr) -> Dial {
    Arc::new(move |target: u16| -> io::Result<UnixStream> {
        let (agent, vsock) = {
            let g = shared.lock();
            match (g.agent.clone(), g.vsock.clone()) {
                (Some(a), Some(v)) => (a, v),
                _ => return Err(io::ErrorKind::NotConnected.into()),
            }
        };
        let port = port::FORWARD_BASE + NEXT.fetch_add(1, Ordering::Relaxed) % PORTS;
        let token = super::exec::token()
            .ok_or_else(|| io::Error::other("no random numbers for a token"))?;
        let listener = session::bind_port(&vsock, port)?;
        // A guest that does not read its control stream holds up one send
        // at most; connections meanwhile are closed, not queued.
        let sent = agent.try_send(&HostMessage::Forward {
            port,
            address,
            target,
            token: token.clone(),
        });
        if !sent {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // (gone with its run: no agent, or the next run's)
        let gone = || !shared.lock().agent.as_ref().is_some_and(|a| a.same(&agent));
        listener
            .accept_verified(
                "forwarded port",
                Instant::now() + CONNECT_TIMEOUT,
                &gone,
                &|s| super::exec::has_token(s, &token),
            )
            .map_err(|_| io::Error::other("the agent did not connect a forwarded port"))
    })
}
