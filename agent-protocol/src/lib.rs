//! The protocol between `vm run` (host) and the guest agent (PID 1).
//!
//! The agent connects to the host over vsock (CID 2). The control
//! connection carries frames: a 4-byte big-endian length, then that many
//! bytes of JSON. A frame longer than [`MAX_FRAME`] or one that does not
//! parse is an error for the reader, never a crash. The container's stdio
//! travel as plain byte streams on their own connections, so output needs
//! no framing and flows with vsock's own flow control.
//!
//! Sequence: agent -> `Hello`; host -> `Run`; agent opens the stdio
//! connections it was asked for, unpacks the image, starts the process,
//! -> `Started`; host -> `Signal`/`Resize` at any time; agent -> `Exited`
//! (after the process's stdout and stderr reached end of file) or
//! `Failed`; then the agent syncs and powers the VM off. While the
//! process runs, the host may send `Exec` (another process, with its own
//! stdio ports); the agent answers `ExecStarted`, then `ExecExited` or
//! `ExecFailed`. For a published port it cannot reach otherwise, the
//! host sends `Forward`: the agent connects to the given port with the
//! given token and joins that stream to a TCP connection in the guest.

mod frame;
mod spec;

pub use frame::{read_frame, write_frame, FrameError, MAX_FRAME};
pub use spec::*;

/// Bumped on any change that an older peer would misread.
pub const VERSION: u32 = 9;

/// vsock ports on the host (CID 2) that the agent connects to.
pub mod port {
    pub const CONTROL: u32 = 1024;
    pub const STDIN: u32 = 1025;
    pub const STDOUT: u32 = 1026;
    pub const STDERR: u32 = 1027;
    /// Exec `id` uses the three ports from `EXEC_BASE + 3 * id` on.
    pub const EXEC_BASE: u32 = 2048;
    /// Forwarded connections (see `HostMessage::Forward`) take ports from
    /// here on, one each.
    pub const FORWARD_BASE: u32 = 1 << 30;
}

/// The kernel command-line parameter that tells the agent to connect to
/// the host and run a container (its value is the control port).
pub const CMDLINE_PARAM: &str = "vm.agent";

/// The kernel command-line flag of a VM booted to be snapshotted: the
/// agent stops at its snapshot point before it touches any device, and
/// binds the devices once restored.
pub const SNAPSHOT_PARAM: &str = "vm.snapshot";

#[cfg(test)]
mod tests;
