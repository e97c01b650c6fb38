//! virtio-blk backed by a raw image file.

mod device;
mod event_handler;
pub mod request;

pub use device::{Block, BlockConfig, Error};

#[cfg(test)]
mod tests;
