//! Mounting the pseudo-filesystems and opening the console.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
}

const BASICS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
    },
];

fn mount(m: &Mount) -> io::Result<()> {
    fs::create_dir_all(m.target)?;
    let c = |s: &str| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (src, tgt, fst) = (c(m.source)?, c(m.target)?, c(m.fstype)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive
    // the call; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fst.as_ptr(),
            m.flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(io::Error::new(
                err.kind(),
                format!("mount {}: {err}", m.target),
            ));
        }
    }
    Ok(())
}

pub fn mount_basics() -> io::Result<()> {
    for m in BASICS {
        mount(m)?;
    }
    Ok(())
}

/// Make /dev/console our stdin, stdout and stderr (the kernel could not
/// open it for us when the initramfs has no /dev).
pub fn attach_console() {
    let Ok(console) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; `console` is open.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
}
