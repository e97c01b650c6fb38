//! virtio over MMIO: the transport (written once), the pieces every device
//! shares, and the devices themselves (one folder each).

pub mod block;
pub mod core;
pub mod fs;
mod interrupt;
pub mod mmio;
pub mod net;
mod queue;
pub mod rng;
#[cfg(test)]
pub(crate) mod testutil;
pub mod vsock;

pub use self::core::{ActivateError, DeviceCore};
pub use interrupt::Interrupt;
pub use queue::{pop_chain, QueueError};

use virtio_queue::Queue;

/// Guest memory as devices see it.
pub type GuestMem = vm_memory::GuestMemoryMmap<()>;

/// Feature bits shared by all devices.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Device ids (virtio 1.2, 5).
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// A virtio device behind the MMIO transport. The transport calls these
/// from vCPU threads; the device's own queue processing runs in the VMM's
/// event loop (see each device's `event_handler`).
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    fn avail_features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The state every device keeps (memory, interrupt, queues).
    fn core(&self) -> &DeviceCore;
    fn core_mut(&mut self) -> &mut DeviceCore;

    /// One eventfd per queue, signalled when the driver notifies it.
    fn queue_evts(&self) -> &[vmm_sys_util::eventfd::EventFd] {
        &self.core().queue_evts
    }
    /// Features the driver accepted (kept to what was offered).
    fn set_acked_features(&mut self, features: u64) {
        let offered = self.avail_features();
        self.core_mut().acked_features = features & offered;
    }
    /// The driver set DRIVER_OK: start processing these queues.
    fn activate(&mut self, queues: Vec<Queue>) -> Result<(), ActivateError> {
        self.core_mut().activate(queues)
    }
    /// The driver wrote 0 to the status: stop and forget the queues.
    fn reset(&mut self) {
        self.core_mut().reset();
    }
}

/// Copy `data.len()` bytes of a config space at `offset`, zero past its end.
pub fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= space.len() {
        return;
    }
    let end = space.len().min(start.saturating_add(data.len()));
    data[..end - start].copy_from_slice(&space[start..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let space = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&space, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&space, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&space, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
