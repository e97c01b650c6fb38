//! What the VMM child gives up before it runs any guest code: it is the
//! one process of a container that a guest escaping the VM would find
//! itself in, so it keeps only what running the VM needs.
//!
//! - Its own network, IPC, UTS and mount namespaces (a non-root caller's
//!   VMM makes a user namespace first, mapping only its own uid and gid).
//!   The VMM talks to the world through descriptors and Unix sockets
//!   named by path, which work across network namespaces; it needs no
//!   network of its own.
//! - Mounts made private, so nothing it could mount leaks back.
//! - `no_new_privs`: no exec can give privileges back.
//! - No capabilities at all: the bounding set is emptied, then the
//!   permitted, effective and inheritable sets. (It keeps its uid: the
//!   files it opens are its owner's.)
//! - Limits: no core dumps (guest memory would be in them), a cap on open
//!   descriptors, and on the size of a file it writes.

use std::io;

/// The most descriptors a VMM may have open: its disks (an image of up
/// to 1,024 layers is one disk of as many files), vsock connections (at
/// most 256), event descriptors and sockets.
const MAX_FILES: u64 = 4096;

/// Confines the calling process (the VMM child, single-threaded, before
/// it starts the VM). `max_file_size` is the largest file it may write:
/// its largest disk.
pub fn enter(max_file_size: u64) -> Result<(), String> {
    namespaces().map_err(|e| format!("new namespaces for the VMM: {e}"))?;
    limits(max_file_size).map_err(|e| format!("limits for the VMM: {e}"))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("no_new_privs: {}", io::Error::last_os_error()));
    }
    drop_capabilities().map_err(|e| format!("dropping the VMM's capabilities: {e}"))
}

fn namespaces() -> io::Result<()> {
    use nix::sched::{unshare, CloneFlags};
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    let mut flags = CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWNS;
    if !uid.is_root() {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    match unshare(flags) {
        Ok(()) => {}
        // Where namespaces cannot be made (user namespaces off for
        // unprivileged users; root without CAP_SYS_ADMIN, as in a
        // container), the VMM runs without its own rather than not at
        // all, and says so.
        Err(
            e @ (nix::errno::Errno::EPERM | nix::errno::Errno::EACCES | nix::errno::Errno::ENOSPC),
        ) => {
            eprintln!("vm: the VMM runs without namespaces of its own (unshare: {e})");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    if !uid.is_root() {
        // The caller's own ids, and nothing else, inside.
        std::fs::write("/proc/self/setgroups", "deny")?;
        std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
        std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    }
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    Ok(())
}

fn limits(max_file_size: u64) -> io::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    // A write past the limit fails (EFBIG) instead of killing the VMM: its
    // stderr may be a log file that has grown past it.
    // SAFETY: ignoring a signal installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    // MAX_FILES, or less if the caller's hard limit is lower.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(
        Resource::RLIMIT_NOFILE,
        hard.min(MAX_FILES),
        hard.min(MAX_FILES),
    )?;
    let (soft, hard) = getrlimit(Resource::RLIMIT_FSIZE)?;
    setrlimit(
        Resource::RLIMIT_FSIZE,
        soft.min(max_file_size),
        hard.min(max_file_size),
    )?;
    Ok(())
}

/// `struct __user_cap_header_struct` and `__user_cap_data_struct` of
/// <linux/capability.h> (version 3: two data structs, 64 capabilities).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

fn drop_capabilities() -> io::Result<()> {
    // The bounding set first (that needs CAP_SETPCAP, dropped below),
    // for every capability this kernel knows.
    let last: u64 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } != 1 {
            continue; // not in the set (or not known to this kernel)
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                // Without CAP_SETPCAP the bounding set stays; the
                // capabilities themselves still go below, and
                // no_new_privs keeps an exec from regaining any.
                eprintln!("vm: the VMM cannot empty its capability bounding set ({e})");
                break;
            }
            return Err(e);
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a header and two data structs laid out as the
    // kernel's; both live for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
