//! virtio-blk backed by a raw image file (or a window of one, or several
//! files read-only as one disk).

mod device;
mod event_handler;
pub mod request;
mod seal;

pub use device::{part_offsets, Block, BlockConfig, Error, Part, MAX_PARTS};
pub use seal::Seal;

#[cfg(test)]
mod tests;
