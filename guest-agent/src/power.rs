//! Ending the VM: flush filesystems and reset the machine, which the VMM
//! takes as "the guest is done" (`reboot=k` goes through the i8042).

pub fn off() -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    // SAFETY: reboot with RB_AUTOBOOT restarts the machine; we are PID 1
    // and have nothing left to do.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    // Only reached if reboot failed: idle rather than exit (PID 1 exiting
    // panics the kernel).
    loop {
        // SAFETY: pause just waits for a signal.
        unsafe { libc::pause() };
    }
}
