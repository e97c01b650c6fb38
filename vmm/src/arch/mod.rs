//! x86_64 specifics: the guest physical layout, the zero page, page tables,
//! segments, CPUID, MSRs, the MP table and the initial vCPU state.

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
