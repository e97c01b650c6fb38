//! What the host's KVM can do, checked before a VM is built so that the
//! user gets one clear sentence instead of a register dump.

use std::path::Path;

use kvm_ioctls::Kvm;

/// The README section that explains hosts without usable KVM.
pub const README_SECTION: &str = "README.md, section \"Hosts without usable KVM\"";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("/dev/kvm does not exist: this host has no KVM. Load kvm_intel or kvm_amd, or run inside a machine with nested virtualization (see {README_SECTION})")]
    NoKvm,
    #[error("permission denied opening /dev/kvm: run as root or add your user to the 'kvm' group")]
    KvmDenied,
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("this host's /dev/kvm is provided by kvm_pvm (PVM, pagetable-based virtual machine): it runs only guest kernels built with the out-of-tree PVM patches, and an unmodified Linux guest fails early in boot. Use a host with hardware virtualization, or the nested KVM host: resources/kvm-host/run (see {README_SECTION}). Set VM_ALLOW_PVM=1 to try anyway")]
    Pvm,
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("the host's KVM lacks {0}, which vm needs")]
    MissingCap(&'static str),
}

/// Whether `/dev/kvm` is the PVM module.
pub fn is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

pub fn open_kvm() -> Result<Kvm, Error> {
    if is_pvm() && std::env::var_os("VM_ALLOW_PVM").is_none_or(|v| v != "1") {
        return Err(Error::Pvm);
    }
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => Error::NoKvm,
        libc::EACCES | libc::EPERM => Error::KvmDenied,
        _ => Error::KvmOpen(e),
    })?;
    let api = kvm.get_api_version();
    if api != 12 {
        return Err(Error::ApiVersion(api));
    }
    use kvm_ioctls::Cap;
    for (cap, name) in [
        (Cap::Irqchip, "an in-kernel IRQ chip"),
        (Cap::Irqfd, "irqfd"),
        (Cap::Ioeventfd, "ioeventfd"),
        (Cap::Pit2, "the in-kernel PIT"),
        (Cap::UserMemory, "user memory regions"),
        (Cap::ExtCpuid, "extended CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::MissingCap(name));
        }
    }
    Ok(kvm)
}
