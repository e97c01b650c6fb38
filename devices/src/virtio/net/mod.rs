//! virtio-net (see `device`), its TAP and stream backends and its place
//! in the event loop.

mod device;
mod event_handler;
mod stream;
mod tap;

pub use device::{
    Backend, Counters, Error, Net, NetConfig, HDR_LEN, MAX_FRAME, OFFLOADS, TYPE_NET,
};
pub use stream::Stream;
pub use tap::{tun_offloads, Tap};

#[cfg(test)]
mod tests;
