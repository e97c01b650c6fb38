//! CPUID as the guest sees it: what KVM supports, made consistent with the
//! VM's topology (APIC ids, CPU counts, one core per vCPU, one socket).

use kvm_bindings::kvm_cpuid_entry2;

/// The leaves this module rewrites.
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_VMX: u32 = 1 << 5;
const EDX_HTT: u32 = 1 << 28;

/// Topology level types of leaves 0xb/0x1f.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `n` items.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// What the host's KVM offers beyond `KVM_GET_SUPPORTED_CPUID`.
#[derive(Clone, Copy, Default)]
pub struct HostCaps {
    /// The in-kernel LAPIC emulates the TSC-deadline timer. KVM does not
    /// list it in the supported CPUID; without it the guest spends a
    /// quarter of a second calibrating the APIC timer.
    pub tsc_deadline: bool,
}

/// Rewrite `entries` (from `KVM_GET_SUPPORTED_CPUID`) for vCPU `cpu` of `count`.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], cpu: u8, count: u8, caps: HostCaps) {
    let apic_id = u32::from(cpu);
    let count = u32::from(count.max(1));
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors
                // per package; keep CLFLUSH size and brand index.
                e.ebx = (e.ebx & 0xffff) | (count << 16) | (apic_id << 24);
                e.ecx |= ECX_HYPERVISOR;
                e.ecx &= !ECX_VMX;
                if caps.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX: [31:26] cores per package - 1, [25:14] threads
                // sharing this cache - 1. L1/L2 private, L3 shared.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax &= 0x3fff;
                e.eax |= ((count - 1).min(63) << 26) | ((sharing & 0xfff) << 14);
            }
            LEAF_PMU => {
                // No virtual PMU.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        // One thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = id_bits(count);
                        e.ebx = count;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_AMD_SIZE => {
                // ECX: [15:12] APIC id size, [7:0] cores per package - 1.
                e.ecx = (id_bits(count) << 12) | (count - 1);
            }
            LEAF_AMD_EXT_APIC => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff; // core id, one thread per core
                e.ecx = 0; // node 0, one node
                e.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            edx: EDX_HTT,
            ecx: ECX_VMX,
            eax: (3 << 5) | 0x1f,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_and_count() {
        let mut v = vec![entry(1, 0)];
        normalize(&mut v, 3, 4, HostCaps { tsc_deadline: true });
        assert_eq!(v[0].ebx >> 24, 3);
        assert_eq!((v[0].ebx >> 16) & 0xff, 4);
        assert_eq!(v[0].ebx & 0xffff, 0x0800);
        assert_ne!(v[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(v[0].ecx & ECX_VMX, 0);
        assert_ne!(v[0].edx & EDX_HTT, 0);
        assert_ne!(v[0].ecx & ECX_TSC_DEADLINE, 0);
        let mut v = vec![entry(1, 0)];
        normalize(&mut v, 0, 1, HostCaps::default());
        assert_eq!(v[0].edx & EDX_HTT, 0);
        assert_eq!(v[0].ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn topology_leaf_describes_one_socket() {
        let mut v = vec![entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        normalize(&mut v, 5, 6, HostCaps::default());
        assert_eq!((v[0].ebx, v[0].ecx >> 8, v[0].edx), (1, LEVEL_SMT, 5));
        assert_eq!((v[1].eax, v[1].ebx, v[1].ecx >> 8), (3, 6, LEVEL_CORE));
        assert_eq!((v[2].ebx, v[2].ecx >> 8), (0, 0));
    }

    #[test]
    fn cache_leaf_sharing() {
        let mut v = vec![entry(4, 0), entry(4, 3)];
        v[0].eax = (1 << 5) | 1;
        normalize(&mut v, 0, 2, HostCaps::default());
        assert_eq!(v[0].eax >> 26, 1);
        assert_eq!((v[0].eax >> 14) & 0xfff, 0);
        assert_eq!((v[1].eax >> 14) & 0xfff, 1);
    }

    #[test]
    fn amd_leaves() {
        let mut v = vec![entry(0x8000_0008, 0), entry(0x8000_001e, 0)];
        normalize(&mut v, 1, 2, HostCaps::default());
        assert_eq!(v[0].ecx & 0xff, 1);
        assert_eq!(v[1].eax, 1);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }
}
