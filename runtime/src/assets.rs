//! Finding the guest kernel, the agent's initramfs and virtiofsd.

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

/// `VM_VIRTIOFSD`, else `virtiofsd` beside the `vm` binary, on the PATH,
/// in /usr/libexec (Debian's place), or the one that
/// `resources/virtiofsd/build` installed.
pub fn virtiofsd() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("virtiofsd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    find(
        "VM_VIRTIOFSD",
        &["virtiofsd"],
        on_path
            .into_iter()
            .chain([PathBuf::from("/usr/libexec/virtiofsd")])
            .chain(home_cache().map(|c| c.join("virtiofsd/1.14.0/bin/virtiofsd"))),
        "volumes and bind mounts need virtiofsd, which was not found: install it with resources/virtiofsd/build (or `cargo install --locked virtiofsd`), or point VM_VIRTIOFSD at it",
    )
}

/// `var` when set (it must name a file), else the first of `beside_exe`
/// (relative to the `vm` binary's directory) and then `fallbacks` that is
/// a file.
fn find(
    var: &str,
    beside_exe: &[&str],
    fallbacks: impl IntoIterator<Item = PathBuf>,
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
        .chain(fallbacks);
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
