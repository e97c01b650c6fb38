//! Tell the VMM that userspace has started: one byte to its boot-timer port.

/// Must match the VMM's boot-timer device.
const PORT: u16 = 0x440;
const MAGIC: u8 = 123;

pub fn signal_userspace_started() {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(libc::c_ulong::from(PORT), 1, 1) } != 0 {
        return; // not fatal: the VMM just does not learn the boot time
    }
    // SAFETY: the port was granted above; writing it is what the VMM's
    // boot-timer device expects and has no other effect.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") PORT, in("al") MAGIC, options(nomem, nostack, preserves_flags));
    }
    // The permission would pass to every process forked from here,
    // containers included.
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    unsafe { libc::ioperm(libc::c_ulong::from(PORT), 1, 0) };
}
