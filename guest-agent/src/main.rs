//! vm-agent: PID 1 inside the microVM.
//!
//! This first version brings the guest up (pseudo-filesystems, console),
//! tells the VMM that userspace has started, reports what the guest sees,
//! and powers the VM off. Running containers comes on top of this.

mod boot_timer;
mod power;
mod sysinfo;
mod system;

use std::io::Write;

fn main() {
    if let Err(e) = system::mount_basics() {
        // Without /dev there may be no console: try to say it anyway.
        eprintln!("vm-agent: {e}");
    }
    system::attach_console();
    boot_timer::signal_userspace_started();

    let info = sysinfo::read();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "vm-agent: ready ({} CPUs, {} MiB memory)",
        info.cpus, info.mem_mib
    );
    let _ = out.flush();
    drop(out);

    power::off();
}
