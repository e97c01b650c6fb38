//! The agent's side of VM snapshots. In a VM booted to be snapshotted
//! (`vm.snapshot` on the command line) the agent stops at its snapshot
//! point, before it has touched any device: the VMM saves the VM there.
//! Every VM restored from that snapshot goes on from the same point, so
//! the agent then makes it its own: it stirs the time into the kernel's
//! random generator and reseeds it, binds the devices this VM has in the
//! slots the snapshot left empty, and, once the host's run spec arrives,
//! mixes in the host's fresh seed and sets the clock (`fresh_start`).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;

/// Must match the VMM (`vmm::snapshot`).
const POINT_PORT: u16 = 0x441;
const POINT_MAGIC: u8 = 0x5a;
const BIND: &str = "/sys/bus/platform/drivers/virtio-mmio/bind";

// RNDADDENTROPY = _IOW('R', 0x03, int[2]); RNDRESEEDCRNG = _IO('R', 0x07).
nix::ioctl_write_ptr_bad!(rnd_add_entropy, 0x4008_5203, libc::c_int);
nix::ioctl_none_bad!(rnd_reseed_crng, 0x5207);

/// Whether this boot is one to be snapshotted (and restored).
pub fn wanted(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|w| w == agent_protocol::SNAPSHOT_PARAM)
}

/// How many virtio-mmio slots the command line declares.
pub fn slots(cmdline: &str) -> usize {
    cmdline
        .split_whitespace()
        .filter(|w| w.starts_with("virtio_mmio.device="))
        .count()
}

/// Stops here while the VMM saves the VM; a restored VM goes on from
/// here. (In a VM not being snapshotted the write is ignored.)
pub fn point() {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(libc::c_ulong::from(POINT_PORT), 1, 1) } != 0 {
        return;
    }
    // SAFETY: the port was granted above; the VMM listens on it only to
    // take the snapshot, and the write has no other effect.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") POINT_PORT, in("al") POINT_MAGIC, options(nomem, nostack, preserves_flags));
    }
    // The permission would pass to every process forked from here,
    // containers included.
    // SAFETY: as above.
    unsafe { libc::ioperm(libc::c_ulong::from(POINT_PORT), 1, 0) };
}

/// Right after a restore: the generator's state is the snapshot's, the
/// same in every VM restored from it, so the cycle counter and the clock
/// (which differ from one restore to the next) are mixed in and the
/// generator reseeded before anything draws from it; the host's seed
/// follows in `fresh_start`. Then the devices are bound.
pub fn after_restore(cmdline: &str) {
    let mut noise = Vec::with_capacity(32);
    // SAFETY: rdtsc has no side effects.
    noise.extend_from_slice(&unsafe { core::arch::x86_64::_rdtsc() }.to_le_bytes());
    for clock in [
        libc::CLOCK_MONOTONIC,
        libc::CLOCK_BOOTTIME,
        libc::CLOCK_REALTIME,
    ] {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into `t`.
        if unsafe { libc::clock_gettime(clock, &mut t) } == 0 {
            noise.extend_from_slice(&t.tv_sec.to_le_bytes());
            noise.extend_from_slice(&t.tv_nsec.to_le_bytes());
        }
    }
    if let Err(e) = reseed(&noise, false) {
        eprintln!("vm-agent: reseeding after restore: {e}");
    }
    bind_devices(slots(cmdline));
}

/// Binds the virtio-mmio driver to each slot in order, as a cold boot
/// probes them: disks and network cards get the same names. Empty slots
/// refuse (ENODEV), which is expected.
fn bind_devices(slots: usize) {
    for i in 0..slots {
        let name = format!("virtio-mmio.{i}");
        let result = std::fs::OpenOptions::new()
            .write(true)
            .open(BIND)
            .and_then(|mut f| f.write_all(name.as_bytes()));
        match result {
            Ok(()) => {}
            // An empty slot; or a device bound at boot (a cold boot).
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::EBUSY)) => {}
            Err(e) => eprintln!("vm-agent: binding {name}: {e}"),
        }
    }
}

/// Before the container: the host's seed into the generator, which is
/// reseeded at once, and the host's time on the clock.
pub fn fresh_start(seed: &[u8], host_time_ns: u64) -> std::io::Result<()> {
    if !seed.is_empty() {
        reseed(seed, true)?;
    }
    if host_time_ns > 0 {
        let ts = libc::timespec {
            tv_sec: (host_time_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (host_time_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: clock_settime with a valid timespec that outlives the call.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                e.kind(),
                format!("setting the clock: {e}"),
            ));
        }
    }
    Ok(())
}

/// Mixes `bytes` into the kernel's pool (credited as entropy when
/// `credit`: the host's seed comes from its own generator) and reseeds.
fn reseed(bytes: &[u8], credit: bool) -> std::io::Result<()> {
    let words = bytes.len().div_ceil(4);
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<libc::c_int> = vec![0; 2 + words];
    let bits = if credit { bytes.len() * 8 } else { 0 };
    info[0] = libc::c_int::try_from(bits).map_err(std::io::Error::other)?;
    info[1] = libc::c_int::try_from(bytes.len()).map_err(std::io::Error::other)?;
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = libc::c_int::from_ne_bytes(w);
    }
    let f = File::open("/dev/urandom")?;
    let err = |what: &str, e: nix::Error| std::io::Error::other(format!("{what}: {e}"));
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buffer holds
    // `buf_size` bytes: `info` has room for them after its two ints.
    unsafe { rnd_add_entropy(f.as_raw_fd(), info.as_ptr()) }
        .map_err(|e| err("adding entropy", e))?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let reseeded = unsafe { rnd_reseed_crng(f.as_raw_fd()) };
    // ENODATA: the generator is not initialized yet; it will be, from
    // the pool that now holds these bytes.
    match reseeded {
        Ok(_) | Err(nix::errno::Errno::ENODATA) => {}
        Err(e) => return Err(err("reseeding", e)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_command_line() {
        let c = "reboot=k virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 vm.snapshot quiet vm.agent=1024";
        assert!(wanted(c));
        assert_eq!(slots(c), 2);
        assert!(!wanted("quiet vm.snapshotx vm.agent=1024"));
        assert_eq!(slots("quiet"), 0);
    }
}
