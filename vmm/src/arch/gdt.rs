//! The flat GDT used for the 64-bit boot protocol, and its segments as KVM
//! wants them.

use kvm_bindings::kvm_segment;

/// Pack a GDT entry from its flags (type/S/DPL/P and AVL/L/D/G), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
pub const CODE_INDEX: u16 = 1;
pub const DATA_INDEX: u16 = 2;
pub const TSS_INDEX: u16 = 3;

/// The segment register contents that correspond to GDT entry `index`.
pub fn segment(table: &[u64], index: u16) -> kvm_segment {
    let e = table[index as usize];
    let g = ((e >> 55) & 1) as u8;
    let raw_limit = ((e >> 32) & 0x000f_0000) | (e & 0xffff);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((e >> 47) & 1) as u8;
    kvm_segment {
        base: ((e >> 32) & 0xff00_0000) | ((e >> 16) & 0x00ff_ffff),
        limit: limit as u32,
        selector: index * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_flat_and_present() {
        let cs = segment(&BOOT_GDT, CODE_INDEX);
        assert_eq!(cs.selector, 8);
        assert_eq!((cs.l, cs.db, cs.g, cs.present, cs.s), (1, 0, 1, 1, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.base, 0);
        assert_eq!(cs.limit, 0xffff_ffff);
    }

    #[test]
    fn data_and_tss_segments() {
        let ds = segment(&BOOT_GDT, DATA_INDEX);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (16, 3, 1, 0));
        let tss = segment(&BOOT_GDT, TSS_INDEX);
        assert_eq!((tss.selector, tss.type_, tss.s), (24, 0xb, 0));
        let null = segment(&BOOT_GDT, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn entry_packs_base_and_limit() {
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        let s = segment(&[e], 0);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
    }
}
