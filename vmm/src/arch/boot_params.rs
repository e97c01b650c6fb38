//! The Linux zero page: setup header, command line, initrd and e820 map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use super::layout::{EBDA_START, HIMEM_START};

pub const E820_RAM: u32 = 1;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// loadflags: the kernel is loaded high, and may use the heap.
const LOADED_HIGH: u8 = 0x01;
const CAN_USE_HEAP: u8 = 0x80;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the e820 map has room for {max} entries")]
    TooManyE820Entries { max: usize },
}

pub struct ZeroPage<'a> {
    /// The setup header read from a bzImage; `None` for an ELF vmlinux.
    pub header: Option<setup_header>,
    /// RAM ranges of the guest as (start, length).
    pub ram: &'a [(u64, u64)],
    pub cmdline_addr: u64,
    /// Length of the command line including its NUL.
    pub cmdline_size: u32,
    /// Address and size of the initrd, if any.
    pub initrd: Option<(u64, u32)>,
}

impl ZeroPage<'_> {
    pub fn build(&self) -> Result<boot_params, Error> {
        let mut params = boot_params::default();
        if let Some(hdr) = self.header {
            params.hdr = hdr;
        } else {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        }
        params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
        params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
        params.hdr.cmd_line_ptr = self.cmdline_addr as u32;
        params.hdr.cmdline_size = self.cmdline_size;
        if let Some((addr, size)) = self.initrd {
            params.hdr.ramdisk_image = addr as u32;
            params.hdr.ramdisk_size = size;
        }
        for (addr, size, kind) in e820_map(self.ram) {
            add_e820_entry(&mut params, addr, size, kind)?;
        }
        Ok(params)
    }
}

/// The e820 map for the given RAM ranges: conventional memory below the
/// EBDA, then everything from 1 MiB on (the area between is BIOS/ROM).
pub fn e820_map(ram: &[(u64, u64)]) -> Vec<(u64, u64, u32)> {
    let mut map = Vec::new();
    for &(start, len) in ram {
        let end = start + len;
        if start < EBDA_START {
            map.push((start, EBDA_START.min(end) - start, E820_RAM));
        }
        let high_start = start.max(HIMEM_START);
        if end > high_start {
            map.push((high_start, end - high_start, E820_RAM));
        }
    }
    map
}

fn add_e820_entry(params: &mut boot_params, addr: u64, size: u64, kind: u32) -> Result<(), Error> {
    let max = params.e820_table.len();
    let n = params.e820_entries as usize;
    if n >= max {
        return Err(Error::TooManyE820Entries { max });
    }
    params.e820_table[n] = boot_e820_entry {
        addr,
        size,
        r#type: kind,
    };
    params.e820_entries += 1;
    Ok(())
}

/// Where to put an initrd of `size` bytes: page aligned, as high as
/// possible in the low RAM range but below `addr_max` (the kernel's
/// `initrd_addr_max`) and above `kernel_end`.
pub fn initrd_address(
    ram: &[(u64, u64)],
    size: u64,
    addr_max: u64,
    kernel_end: u64,
) -> Option<u64> {
    let &(start, len) = ram.first()?;
    let top = (start + len).min(addr_max.saturating_add(1));
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= kernel_end).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::{ram_ranges, MMIO_GAP_END, MMIO_GAP_START};

    #[test]
    fn e820_small_guest() {
        let map = e820_map(&ram_ranges(128 << 20));
        assert_eq!(
            map,
            vec![
                (0, EBDA_START, E820_RAM),
                (HIMEM_START, (128 << 20) - HIMEM_START, E820_RAM)
            ]
        );
    }

    #[test]
    fn e820_large_guest_skips_the_gap() {
        let map = e820_map(&ram_ranges(6 << 30));
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[1],
            (HIMEM_START, MMIO_GAP_START - HIMEM_START, E820_RAM)
        );
        assert_eq!(map[2], (MMIO_GAP_END, (6 << 30) - MMIO_GAP_START, E820_RAM));
    }

    #[test]
    fn zero_page_for_elf_kernel() {
        let ram = ram_ranges(256 << 20);
        let zp = ZeroPage {
            header: None,
            ram: &ram,
            cmdline_addr: 0x20000,
            cmdline_size: 12,
            initrd: Some((0x0f00_0000, 4096)),
        }
        .build()
        .expect("zero page");
        // Copy out of the packed struct before comparing.
        let (magic, flag, ptr, size) = (
            zp.hdr.header,
            zp.hdr.boot_flag,
            zp.hdr.cmd_line_ptr,
            zp.hdr.cmdline_size,
        );
        assert_eq!(
            (magic, flag, ptr, size),
            (KERNEL_HDR_MAGIC, 0xaa55, 0x20000, 12)
        );
        let (rd, rds) = (zp.hdr.ramdisk_image, zp.hdr.ramdisk_size);
        assert_eq!((rd, rds), (0x0f00_0000, 4096));
        assert_eq!(zp.e820_entries, 2);
        assert_eq!(zp.hdr.type_of_loader, 0xff);
    }

    #[test]
    fn zero_page_keeps_bzimage_header() {
        let hdr = setup_header {
            version: 0x20f,
            setup_sects: 27,
            ..Default::default()
        };
        let ram = ram_ranges(64 << 20);
        let zp = ZeroPage {
            header: Some(hdr),
            ram: &ram,
            cmdline_addr: 0x20000,
            cmdline_size: 1,
            initrd: None,
        }
        .build()
        .expect("zero page");
        let (v, s, rd) = (zp.hdr.version, zp.hdr.setup_sects, zp.hdr.ramdisk_image);
        assert_eq!((v, s, rd), (0x20f, 27, 0));
        assert_eq!(zp.hdr.loadflags & LOADED_HIGH, LOADED_HIGH);
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let ram = ram_ranges(128 << 20);
        let a = initrd_address(&ram, 5000, u64::from(u32::MAX), 0x200_0000).expect("fits");
        assert_eq!(a % 4096, 0);
        assert!(a + 5000 <= 128 << 20);
        assert!(a + 5000 + 4096 > 128 << 20);
        // Respects initrd_addr_max.
        let b = initrd_address(&ram, 4096, 0x37ff_ffff, 0).expect("fits");
        assert!(b + 4096 <= 0x3800_0000);
        // Does not overlap the kernel.
        assert_eq!(initrd_address(&ram, 127 << 20, u64::MAX, 0x200_0000), None);
    }
}
