//! Guest RAM: anonymous memory mapped into the VM.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::ram_ranges;

pub type GuestMem = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Allocate {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot register guest memory with KVM: {0}")]
    Register(kvm_ioctls::Error),
}

pub fn create(mem_bytes: u64) -> Result<GuestMem, Error> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem_bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| Error::Allocate {
        mib: mem_bytes >> 20,
        source,
    })
}

pub fn register(vm: &VmFd, mem: &GuestMem) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region.as_ptr() as u64;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the VM
        // keeps for as long as the VM fd exists; slots do not overlap.
        unsafe { vm.set_user_memory_region(region) }.map_err(Error::Register)?;
    }
    Ok(())
}
