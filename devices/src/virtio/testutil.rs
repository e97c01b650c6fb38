//! Helpers for device unit tests: real guest memory, a driver-side mock
//! queue, and ways to hand the device hostile descriptors.

use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{GuestMem, Interrupt};

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
/// Guest memory size for tests; buffers go at DATA and above.
pub const MEM_SIZE: usize = 0x40_0000;
pub const DATA: u64 = 0x10_0000;

pub fn memory() -> GuestMem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}

pub fn interrupt() -> (Arc<Interrupt>, EventFd) {
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let clone = irq.try_clone().expect("clone");
    (Arc::new(Interrupt::new(irq)), clone)
}

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A driver-side queue of `size` entries at guest address 0.
pub struct Driver<'a> {
    pub vq: MockSplitQueue<'a, GuestMem>,
    size: u16,
    avail: u16,
}

impl<'a> Driver<'a> {
    pub fn new(mem: &'a GuestMem, size: u16) -> Self {
        Self::at(mem, 0, size)
    }

    /// A queue whose rings start at guest address `addr`.
    pub fn at(mem: &'a GuestMem, addr: u64, size: u16) -> Self {
        Self {
            vq: MockSplitQueue::create(mem, GuestAddress(addr), size),
            size,
            avail: 0,
        }
    }

    pub fn queue(&self) -> Queue {
        self.vq.create_queue().expect("queue")
    }

    /// Store descriptors at table index `at`..
    pub fn store(&self, at: u16, descs: &[RawDescriptor]) {
        for (i, d) in descs.iter().enumerate() {
            self.vq
                .desc_table()
                .store(at + i as u16, *d)
                .expect("store descriptor");
        }
    }

    /// Offer the chain starting at `head`.
    pub fn offer(&mut self, head: u16) {
        let size = usize::from(self.size);
        self.vq
            .avail()
            .ring()
            .ref_at(usize::from(self.avail) % size)
            .expect("avail slot")
            .store(head);
        self.avail = self.avail.wrapping_add(1);
        self.vq.avail().idx().store(self.avail);
    }

    /// Set the available index directly (to jump it).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail = idx;
        self.vq.avail().idx().store(idx);
    }

    pub fn used_count(&self) -> u16 {
        self.vq.used().idx().load()
    }

    /// (descriptor id, length) of used entry `i`.
    pub fn used(&self, i: u16) -> (u32, u32) {
        let size = usize::from(self.size);
        let e = self
            .vq
            .used()
            .ring()
            .ref_at(usize::from(i) % size)
            .expect("used slot")
            .load();
        (e.id(), e.len())
    }
}
