//! The initial state of a vCPU for the Linux 64-bit boot protocol:
//! identity-mapped page tables, flat segments, long mode, FPU, MSRs and the
//! local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::gdt::{self, BOOT_GDT};
use super::layout::{BOOT_GDT as GDT_ADDR, BOOT_IDT, BOOT_STACK, PD, PDPT, PML4, ZERO_PAGE};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Page table entry bits: present, writable, and (for a PD entry) 2 MiB page.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_LARGE: u64 = 0x80;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing boot structures into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("building the MSR list: {0:?}")]
    Msrs(vmm_sys_util::fam::Error),
}

/// Identity-map the first 1 GiB with 2 MiB pages: enough for the kernel,
/// the zero page and the command line at entry; the kernel builds its own
/// tables right after.
pub fn page_tables() -> [(u64, u64); 514] {
    let mut out = [(0u64, 0u64); 514];
    out[0] = (PML4, PDPT | PTE_PRESENT_RW);
    out[1] = (PDPT, PD | PTE_PRESENT_RW);
    for (i, slot) in out[2..].iter_mut().enumerate() {
        let i = i as u64;
        *slot = (PD + i * 8, (i << 21) | PTE_PRESENT_RW | PDE_LARGE);
    }
    out
}

pub fn write_page_tables<M: GuestMemory>(mem: &M) -> Result<(), Error> {
    for (addr, value) in page_tables() {
        mem.write_obj(value, GuestAddress(addr))?;
    }
    Ok(())
}

/// Write the GDT and an empty IDT into guest memory and set up the special
/// registers for 64-bit mode with paging on.
pub fn setup_sregs<M: GuestMemory>(mem: &M, sregs: &mut kvm_sregs) -> Result<(), Error> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + (i * 8) as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT))?;
    write_page_tables(mem)?;

    let code = gdt::segment(&BOOT_GDT, gdt::CODE_INDEX);
    let data = gdt::segment(&BOOT_GDT, gdt::DATA_INDEX);
    let tss = gdt::segment(&BOOT_GDT, gdt::TSS_INDEX);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr3 = PML4;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// General registers at the kernel's 64-bit entry point.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    }
}

pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

pub fn boot_msrs() -> Result<Msrs, Error> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    Msrs::from_entries(&entries).map_err(Error::Msrs)
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let r = &state.regs[offset..offset + 4];
    u32::from_le_bytes([r[0] as u8, r[1] as u8, r[2] as u8, r[3] as u8])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *b as _;
    }
}

/// LINT0 delivers the PIC's interrupts (ExtINT), LINT1 NMIs, as a BIOS
/// would leave them.
pub fn set_lint(state: &mut kvm_lapic_state) {
    let mode = |v: u32, m: u32| (v & !0x700) | (m << 8);
    let lint0 = lapic_reg(state, APIC_LVT_LINT0);
    set_lapic_reg(state, APIC_LVT_LINT0, mode(lint0, APIC_MODE_EXTINT));
    let lint1 = lapic_reg(state, APIC_LVT_LINT1);
    set_lapic_reg(state, APIC_LVT_LINT1, mode(lint1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn page_tables_identity_map_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem");
        write_page_tables(&mem).expect("write");
        let pml4: u64 = mem.read_obj(GuestAddress(PML4)).expect("read");
        assert_eq!(pml4, PDPT | 3);
        let pdpt: u64 = mem.read_obj(GuestAddress(PDPT)).expect("read");
        assert_eq!(pdpt, PD | 3);
        for i in [0u64, 1, 8, 511] {
            let pde: u64 = mem.read_obj(GuestAddress(PD + i * 8)).expect("read");
            assert_eq!(pde, (i << 21) | 0x83, "PD entry {i}");
        }
        let after: u64 = mem.read_obj(GuestAddress(PD + 512 * 8)).expect("read");
        assert_eq!(after, 0);
    }

    #[test]
    fn sregs_enter_long_mode() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem");
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mem, &mut sregs).expect("sregs");
        assert_eq!(sregs.cr0 & X86_CR0_PG, X86_CR0_PG);
        assert_eq!(sregs.cr0 & X86_CR0_PE, X86_CR0_PE);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cr3, PML4);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.gdt.limit, 31);
        let gdt1: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 8)).expect("read");
        assert_eq!(gdt1, BOOT_GDT[1]);
    }

    #[test]
    fn lint_modes() {
        let mut s = kvm_lapic_state::default();
        set_lapic_reg(&mut s, APIC_LVT_LINT0, 0x0001_0700);
        set_lint(&mut s);
        assert_eq!(lapic_reg(&s, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!((lapic_reg(&s, APIC_LVT_LINT1) >> 8) & 7, APIC_MODE_NMI);
    }

    #[test]
    fn regs_point_at_zero_page() {
        let r = boot_regs(0x100_0000);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0000, ZERO_PAGE, 2));
        assert_eq!(boot_msrs().expect("msrs").as_slice().len(), 11);
    }
}
