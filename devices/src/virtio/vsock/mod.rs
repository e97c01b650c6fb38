//! virtio-vsock with a host side on Unix sockets (Firecracker's "hybrid
//! vsock" model):
//!
//! - a guest connecting to CID 2, port P reaches a listener the host has
//!   bound at `<path>_P`;
//! - a host process connecting to `<path>` and sending `CONNECT P\n`
//!   reaches the guest's listener on port P, and is answered
//!   `OK <host port>\n` once the guest accepts.
//!
//! Stream sockets only, with the protocol's credit-based flow control in
//! both directions, so neither side's data is buffered without bound.

mod connection;
mod device;
mod event_handler;
mod proto;

pub use device::{port_path, Error, Vsock, VsockConfig};
pub use proto::HOST_CID;

#[cfg(test)]
mod tests;
