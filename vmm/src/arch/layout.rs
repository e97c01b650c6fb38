//! Where things live in guest physical memory.

/// GDT and IDT used for the 64-bit entry.
pub const BOOT_GDT: u64 = 0x500;
pub const BOOT_IDT: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, one PDPT, one PD (1 GiB of 2 MiB pages).
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Linux x86's COMMAND_LINE_SIZE, including the terminating NUL.
pub const CMDLINE_MAX: usize = 2048;
/// End of conventional memory (start of the EBDA); RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// The BIOS area where the MP table is placed (the kernel scans it).
pub const MPTABLE_START: u64 = 0xf0000;
pub const MPTABLE_MAX: u64 = 0x10000;
/// Where the kernel and everything above 1 MiB may go.
pub const HIMEM_START: u64 = 0x10_0000;
/// The hole below 4 GiB for MMIO (IOAPIC, LAPIC, virtio devices).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Three pages KVM needs for the TSS on Intel, inside the MMIO gap.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;

/// The RAM ranges (start, length) of a guest with `mem_size` bytes: one
/// below the MMIO gap and, when it does not fit, the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        let big = ram_ranges(4 << 30);
        assert_eq!(big.len(), 2);
        assert_eq!(big[0], (0, MMIO_GAP_START));
        assert_eq!(big[1].0, MMIO_GAP_END);
        assert_eq!(big[0].1 + big[1].1, 4 << 30);
    }
}
