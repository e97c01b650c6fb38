//! virtio-net (see `device`), its TAP backend and its place in the
//! event loop.

mod device;
mod event_handler;
mod tap;

pub use device::{
    Backend, Counters, Error, Net, NetConfig, HDR_LEN, MAX_FRAME, OFFLOADS, TYPE_NET,
};
pub use tap::{tun_offloads, Tap};

#[cfg(test)]
mod tests;
