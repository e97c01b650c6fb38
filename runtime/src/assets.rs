//! Finding the guest kernel and the agent's initramfs.

use std::path::{Path, PathBuf};

/// `VM_KERNEL`, else `vmlinux` beside the `vm` binary, else the kernel
/// that `resources/guest-kernel/build` built last.
pub fn kernel() -> Result<PathBuf, String> {
    find(
        "VM_KERNEL",
        &["vmlinux"],
        home_cache().map(|c| c.join("guest-kernel/current/vmlinux")),
        "no guest kernel found: build one with resources/guest-kernel/build, or point VM_KERNEL at a vmlinux",
    )
}

/// `VM_INITRD`, else `vm-agent.cpio` beside the binary, else the
/// initramfs that `resources/initramfs/build` leaves in cargo's target
/// directory (beside `release/` or `debug/`).
pub fn initrd() -> Result<PathBuf, String> {
    find(
        "VM_INITRD",
        &["vm-agent.cpio", "../initramfs/agent.cpio"],
        None,
        "no agent initramfs found: build it with resources/initramfs/build, or point VM_INITRD at it",
    )
}

fn find(
    var: &str,
    beside_exe: &[&str],
    fallback: Option<PathBuf>,
    missing: &str,
) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{var}={} is not a file", p.display()))
        };
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let candidates = exe_dir
        .iter()
        .flat_map(|d| beside_exe.iter().map(move |n| d.join(n)))
        .chain(fallback);
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
    }
    Err(missing.to_string())
}

/// The same directory as `vm_cache_dir` in resources/lib.sh.
pub(crate) fn home_cache() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("VM_CACHE_DIR").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x));
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("vm"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/vm"))
}
