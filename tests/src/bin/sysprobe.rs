//! sysprobe: what a container may do, for the parity tests against
//! Docker. Static, inside the parity image.
//!
//! - `sysprobe calls`: tries system calls that a container's seccomp
//!   profile or capabilities govern, with arguments that change nothing
//!   (or that fail after the checks), and prints `NAME=RESULT` per call:
//!   `ok` or the errno's name. A refusal by the filter shows as EPERM (or
//!   ENOSYS for clone3), whatever the kernel would say past it.
//! - `sysprobe ids`: the real and effective uid (for setuid copies).

use std::ffi::CString;

fn errno_name(e: i32) -> String {
    let names = [
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::ESRCH, "ESRCH"),
        (libc::EBADF, "EBADF"),
        (libc::EFAULT, "EFAULT"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::EACCES, "EACCES"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EAFNOSUPPORT, "EAFNOSUPPORT"),
        (libc::ENOKEY, "ENOKEY"),
        (libc::EBUSY, "EBUSY"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == e)
        .map_or_else(|| format!("errno{e}"), |(_, s)| s.to_string())
}

fn show(name: &str, rc: libc::c_long) {
    if rc < 0 {
        let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        println!("{name}={}", errno_name(e));
    } else {
        println!("{name}=ok");
    }
}

/// clone with `flags`: a child that exits at once; the result of the call.
fn try_clone(flags: libc::c_int) -> libc::c_long {
    // SAFETY: clone without CLONE_VM behaves as fork; the child only
    // calls _exit.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0,
            0,
            0,
            0,
        )
    };
    if rc == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    if rc > 0 {
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(rc as libc::pid_t, &mut status, 0) };
    }
    rc
}

fn calls() {
    let nothing = CString::new("/nonexistent-sysprobe").expect("path");
    let null = std::ptr::null::<libc::c_void>();
    // SAFETY: each call gets arguments that are invalid or inert (null
    // pointers, bad descriptors, paths that do not exist); none of them
    // changes the system when the call is allowed.
    unsafe {
        let pid = libc::getpid();
        show("keyctl", libc::syscall(libc::SYS_keyctl, 0, -3i32, 0));
        show(
            "add_key",
            libc::syscall(libc::SYS_add_key, null, null, null, 0, 0),
        );
        show(
            "request_key",
            libc::syscall(libc::SYS_request_key, null, null, null, 0),
        );
        show(
            "unshare_uts",
            libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUTS),
        );
        show("setns", libc::syscall(libc::SYS_setns, -1, 0));
        show(
            "mount",
            libc::syscall(libc::SYS_mount, null, nothing.as_ptr(), null, 0, null),
        );
        show(
            "umount2",
            libc::syscall(libc::SYS_umount2, nothing.as_ptr(), 0),
        );
        show(
            "pivot_root",
            libc::syscall(libc::SYS_pivot_root, nothing.as_ptr(), nothing.as_ptr()),
        );
        show(
            "swapon",
            libc::syscall(libc::SYS_swapon, nothing.as_ptr(), 0),
        );
        show(
            "swapoff",
            libc::syscall(libc::SYS_swapoff, nothing.as_ptr()),
        );
        show("reboot", libc::syscall(libc::SYS_reboot, 0, 0, 0, null));
        show(
            "init_module",
            libc::syscall(libc::SYS_init_module, null, 0, null),
        );
        show(
            "finit_module",
            libc::syscall(libc::SYS_finit_module, -1, null, 0),
        );
        show(
            "delete_module",
            libc::syscall(libc::SYS_delete_module, nothing.as_ptr(), 0),
        );
        show(
            "kexec_load",
            libc::syscall(libc::SYS_kexec_load, 0, 0, null, 0),
        );
        show("acct", libc::syscall(libc::SYS_acct, nothing.as_ptr()));
        show(
            "settimeofday",
            libc::syscall(libc::SYS_settimeofday, null, null),
        );
        show(
            "clock_settime",
            libc::syscall(libc::SYS_clock_settime, libc::CLOCK_REALTIME, null),
        );
        show(
            "personality_query",
            libc::syscall(libc::SYS_personality, 0xffff_ffffu32),
        );
        show(
            "personality_exec",
            libc::syscall(libc::SYS_personality, 0x0040_0000u32),
        );
        show("clone_newns", try_clone(libc::CLONE_NEWNS));
        show("clone_newpid", try_clone(libc::CLONE_NEWPID));
        show("clone_plain", try_clone(0));
        show("clone3", libc::syscall(libc::SYS_clone3, null, 0));
        show(
            "perf_event_open",
            libc::syscall(libc::SYS_perf_event_open, null, 0, -1, -1, 0),
        );
        show(
            "process_vm_readv",
            libc::syscall(libc::SYS_process_vm_readv, pid, null, 0, null, 0, 0),
        );
        show("kcmp", libc::syscall(libc::SYS_kcmp, pid, pid, 0, 0, 0));
        show("syslog", libc::syscall(libc::SYS_syslog, 10, null, 0));
        show("vhangup", libc::syscall(libc::SYS_vhangup));
        show(
            "open_by_handle_at",
            libc::syscall(libc::SYS_open_by_handle_at, -1, null, 0),
        );
        show(
            "quotactl",
            libc::syscall(libc::SYS_quotactl, 0, null, 0, null),
        );
        show(
            "lookup_dcookie",
            libc::syscall(libc::SYS_lookup_dcookie, 0, null, 0),
        );
        show(
            "fanotify_init",
            libc::syscall(libc::SYS_fanotify_init, 0, 0),
        );
        show("iopl", libc::syscall(libc::SYS_iopl, 0));
        show("ioperm", libc::syscall(libc::SYS_ioperm, 0, 0, 0));
        show("chroot", libc::syscall(libc::SYS_chroot, nothing.as_ptr()));
        show(
            "ptrace_peek",
            libc::syscall(libc::SYS_ptrace, libc::PTRACE_PEEKUSER, 1, 0, 0),
        );
        show(
            "chown",
            libc::syscall(libc::SYS_chown, nothing.as_ptr(), 0, 0),
        );
        show(
            "mknod",
            libc::syscall(libc::SYS_mknod, nothing.as_ptr(), libc::S_IFCHR, 0),
        );
        show("sethostname", libc::syscall(libc::SYS_sethostname, null, 0));
        show(
            "nice_raise",
            libc::syscall(libc::SYS_setpriority, libc::PRIO_PROCESS, 0, -5),
        );
        show("socket_raw", {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
            if fd >= 0 {
                libc::close(fd);
            }
            fd as libc::c_long
        });
        show("socket_packet", {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd >= 0 {
                libc::close(fd);
            }
            fd as libc::c_long
        });
    }
}

fn ids() {
    // SAFETY: plain getters.
    let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    println!("uid={uid} euid={euid}");
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("calls") => calls(),
        Some("ids") => ids(),
        _ => {
            eprintln!("usage: sysprobe calls|ids");
            std::process::exit(2);
        }
    }
}
