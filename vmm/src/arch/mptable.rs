//! The Intel MultiProcessor table (spec 1.4), so a guest without ACPI finds
//! every vCPU, the IOAPIC and the ISA interrupt routing.

use super::layout::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_MAX};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_PINS: u8 = 24;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Stepping/model/family as reported in the CPU entries.
const CPU_SIGNATURE: u32 = 0x600;
/// FPU and APIC present.
const CPU_FEATURES: u32 = 0x201;

const ENTRY_CPU: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const IRQ_INT: u8 = 0;
const IRQ_NMI: u8 = 1;
const IRQ_EXTINT: u8 = 3;

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the MP table cannot describe {0} vCPUs (at most 254)")]
    TooManyCpus(u8),
}

/// Sum of bytes is zero mod 256 when the checksum byte holds this.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP floating pointer, the table header and its entries, laid out to
/// be written at guest address `base`.
pub fn build(base: u64, cpus: u8) -> Result<Vec<u8>, Error> {
    if cpus == 0 || cpus > 254 {
        return Err(Error::TooManyCpus(cpus));
    }
    let ioapic_id = cpus; // APIC ids 0..cpus are the vCPUs
    let table_addr = base + FLOATING_LEN as u64;

    let mut entries = Vec::new();
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_CPU, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    for irq in 0..IOAPIC_PINS {
        // type, irq type, flags (conforming polarity/trigger), bus, bus irq,
        // destination IOAPIC, its pin.
        entries.extend_from_slice(&[ENTRY_INTSRC, IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = u16::from(cpus) + 1 + 1 + u16::from(IOAPIC_PINS) + 2;

    let table_len = HEADER_LEN + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"VMVMM   "); // OEM id
    table.extend_from_slice(b"MICROVM     "); // product id
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length, checksum, reserved
    debug_assert_eq!(table.len(), HEADER_LEN);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(FLOATING_LEN + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.push(1); // length in 16-byte units
    out.push(4); // spec revision
    out.push(0); // checksum, below
    out.extend_from_slice(&[0u8; 5]); // features: table present, no default config
    out[10] = checksum(&out[..FLOATING_LEN]);
    out.extend_from_slice(&table);
    debug_assert!(out.len() as u64 <= MPTABLE_MAX);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_are_valid() {
        for cpus in [1u8, 2, 32, 254] {
            let t = build(0xf0000, cpus).expect("table");
            assert_eq!(sum(&t[..16]), 0, "floating pointer, {cpus} cpus");
            let len = u16::from_le_bytes([t[20], t[21]]) as usize;
            assert_eq!(t.len(), 16 + len);
            assert_eq!(sum(&t[16..]), 0, "table, {cpus} cpus");
            assert!(t.len() as u64 <= MPTABLE_MAX);
        }
    }

    #[test]
    fn lists_every_cpu_with_one_boot_processor() {
        let t = build(0xf0000, 3).expect("table");
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(u32::from_le_bytes([t[4], t[5], t[6], t[7]]), 0xf0010);
        assert_eq!(&t[16..20], b"PCMP");
        let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
        assert_eq!(count, 3 + 1 + 1 + 24 + 2);
        let cpus: Vec<(u8, u8)> = (0..3)
            .map(|i| {
                let e = 16 + HEADER_LEN + i * 20;
                assert_eq!(t[e], ENTRY_CPU);
                (t[e + 1], t[e + 3])
            })
            .collect();
        assert_eq!(cpus, vec![(0, 3), (1, 1), (2, 1)]);
    }

    #[test]
    fn refuses_impossible_cpu_counts() {
        assert_eq!(build(0, 0), Err(Error::TooManyCpus(0)));
        assert_eq!(build(0, 255), Err(Error::TooManyCpus(255)));
    }
}
