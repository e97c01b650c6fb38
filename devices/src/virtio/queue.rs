//! Taking descriptor chains off a queue without trusting the driver.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::GuestMem;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("the driver's available index moved {moved} entries past ours, more than the queue size {size}")]
    AvailIndexJump { moved: u16, size: u16 },
    #[error("the queue's rings are not in guest memory")]
    BadRing,
}

/// The next available chain, `None` when the driver has offered nothing
/// new, or an error when the driver broke the ring protocol (the device
/// must then stop using the queue until it is reset).
pub fn pop_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMem,
) -> Result<Option<DescriptorChain<&'a GuestMem>>, QueueError> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| QueueError::BadRing)?;
    let moved = (avail - Wrapping(queue.next_avail())).0;
    if moved > queue.size() {
        return Err(QueueError::AvailIndexJump {
            moved,
            size: queue.size(),
        });
    }
    if moved == 0 {
        return Ok(None);
    }
    match queue.iter(mem) {
        Ok(mut it) => Ok(it.next()),
        Err(_) => Err(QueueError::BadRing),
    }
}
