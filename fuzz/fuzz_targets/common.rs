//! Guest memory and a queue laid out from fuzz input: the input is copied
//! to guest address 0, where the descriptor table (16 entries), the
//! available ring (0x100) and the used ring (0x200) live, and descriptors
//! may point anywhere, inside guest memory or not.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const MEM: usize = 0x2_0000;

pub fn memory(data: &[u8]) -> GuestMemoryMmap<()> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).expect("memory");
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).expect("copy input");
    mem
}

pub fn queue() -> Queue {
    let mut q = Queue::new(16).expect("queue");
    q.set_size(16);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x100), Some(0));
    q.set_used_ring_address(Some(0x200), Some(0));
    q.set_ready(true);
    q
}
