//! vm-agent: PID 1 inside the microVM.
//!
//! It brings the guest up (pseudo-filesystems, console), tells the VMM
//! that userspace has started, and then either runs a container for
//! `vm run` (when the kernel command line carries `vm.agent=PORT`) or
//! reports what the guest sees and powers off (`vm boot`).
//!
//! The same binary is also the container's init: the agent starts it
//! again as `/init --container-init` inside the container's namespaces,
//! and as `/init --container-exec` for `vm exec`.

mod boot_timer;
mod builtin;
mod cgroup;
mod container;
mod disks;
mod exec;
mod forward;
mod host_link;
mod init_spec;
mod network;
mod power;
mod process;
mod pty;
mod rootfs;
mod run;
mod security;
mod snapshot;
mod sysinfo;
mod system;
mod timings;
mod users;
mod volumes;

use std::io::Write;

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some(container::INIT_ARG) => container::init_main(),
        Some(container::EXEC_ARG) => container::exec_main(),
        _ => {}
    }
    if let Err(e) = system::mount_basics() {
        // Without /dev there may be no console: try to say it anyway.
        eprintln!("vm-agent: {e}");
    }
    system::attach_console();
    boot_timer::signal_userspace_started();

    if let Some(port) = host_link::control_port() {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        if snapshot::wanted(&cmdline) {
            snapshot::point();
            // Restored: a new VM from here on.
            snapshot::after_restore(&cmdline);
            boot_timer::signal_userspace_started();
        }
        run::main(port);
        power::off();
    }

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
