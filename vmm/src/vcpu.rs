//! vCPUs: their initial state and the thread that runs each one.
//!
//! A vCPU thread runs KVM_RUN in a loop, dispatches port and MMIO exits to
//! the buses, and reports anything that ends the VM to the [`ExitSignal`].
//! The main thread stops it by setting its stop flag and kicking it with a
//! signal, which makes KVM_RUN return EINTR.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::Bus;
use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::{cpuid, regs};
use crate::exit::{ExitReason, ExitSignal};
use crate::memory::GuestMem;

const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_REGS,
    kvm_bindings::KVMIO,
    0x81,
    kvm_bindings::kvm_regs
);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_SREGS,
    kvm_bindings::KVMIO,
    0x83,
    kvm_bindings::kvm_sregs
);

/// The ioctls a running vCPU thread makes: KVM_RUN, and reading the
/// registers to report a failure. (Everything else the VM needs from KVM
/// is done before any vCPU runs.) For system call filters.
pub fn thread_ioctls() -> [u64; 3] {
    [KVM_RUN(), KVM_GET_REGS(), KVM_GET_SREGS()].map(u64::from)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create vCPU {id}: {source}")]
    Create { id: u8, source: kvm_ioctls::Error },
    #[error("cannot set up vCPU {id} ({what}): {source}")]
    Setup {
        id: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot set up vCPU {id}: {source}")]
    Boot { id: u8, source: regs::Error },
    #[error("KVM accepted only {set} of {wanted} MSRs on vCPU {id}")]
    Msrs { id: u8, set: usize, wanted: usize },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("cannot start vCPU thread: {0}")]
    Spawn(std::io::Error),
}

/// Put a freshly created vCPU in the state the 64-bit boot protocol wants.
pub fn configure(
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    base_cpuid: &CpuId,
    caps: cpuid::HostCaps,
    mem: &GuestMem,
    entry: u64,
) -> Result<(), Error> {
    let setup = |what: &'static str| move |source| Error::Setup { id, what, source };
    let mut cpuid = base_cpuid.clone();
    cpuid::normalize(cpuid.as_mut_slice(), id, count, caps);
    vcpu.set_cpuid2(&cpuid).map_err(setup("CPUID"))?;

    let msrs = regs::boot_msrs().map_err(|source| Error::Boot { id, source })?;
    let set = vcpu.set_msrs(&msrs).map_err(setup("MSRs"))?;
    if set != msrs.as_slice().len() {
        return Err(Error::Msrs {
            id,
            set,
            wanted: msrs.as_slice().len(),
        });
    }

    let mut lapic = vcpu.get_lapic().map_err(setup("local APIC"))?;
    regs::set_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(setup("local APIC"))?;

    // Only the boot CPU starts at the kernel entry; the others wait for
    // the INIT/SIPI sequence the kernel sends them.
    if id == 0 {
        let mut sregs = vcpu.get_sregs().map_err(setup("special registers"))?;
        regs::setup_sregs(mem, &mut sregs).map_err(|source| Error::Boot { id, source })?;
        vcpu.set_sregs(&sregs).map_err(setup("special registers"))?;
        vcpu.set_regs(&regs::boot_regs(entry))
            .map_err(setup("registers"))?;
        vcpu.set_fpu(&regs::boot_fpu()).map_err(setup("FPU"))?;
    } else {
        vcpu.set_fpu(&regs::boot_fpu()).map_err(setup("FPU"))?;
    }
    Ok(())
}

/// What a vCPU thread shares with the rest of the VMM.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    pub confine: Option<crate::vm::VcpuConfine>,
    /// Whether the guest's write to the snapshot port ends the VM (only
    /// in a VM built to be snapshotted; any other VM ignores the port).
    pub snapshot_point: bool,
}

pub struct VcpuHandle {
    id: u8,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<VcpuFd>>,
    /// The vCPU, once its thread has been joined.
    fd: Option<VcpuFd>,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivery itself makes KVM_RUN return EINTR.
}

pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

pub fn install_kick_handler() -> Result<(), Error> {
    register_signal_handler(kick_signal(), kick_handler).map_err(Error::Signal)
}

pub fn spawn(mut vcpu: VcpuFd, id: u8, ctx: VcpuContext) -> Result<VcpuHandle, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .stack_size(256 * 1024)
        .spawn(move || {
            run_loop(&mut vcpu, id, &ctx, &thread_stop);
            vcpu
        })
        .map_err(Error::Spawn)?;
    Ok(VcpuHandle {
        id,
        stop,
        thread: Some(thread),
        fd: None,
    })
}

/// Stop every vCPU thread and wait for them, kicking them out of KVM_RUN
/// until they notice. Gives up on a thread after `timeout`. Returns
/// whether every thread was joined.
pub fn stop_all(handles: &mut [VcpuHandle], timeout: Duration) -> bool {
    for h in handles.iter() {
        h.stop.store(true, Ordering::SeqCst);
    }
    let deadline = Instant::now() + timeout;
    loop {
        let mut running = 0;
        for h in handles.iter_mut() {
            let finished = h.thread.as_ref().is_none_or(|t| t.is_finished());
            if finished {
                if let Some(t) = h.thread.take() {
                    h.fd = t.join().ok();
                }
            } else {
                running += 1;
                if let Some(t) = h.thread.as_ref() {
                    let _ = t.kill(kick_signal());
                }
            }
        }
        if running == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            for h in handles.iter() {
                if h.thread.is_some() {
                    eprintln!("vm: vCPU {} did not stop in time", h.id);
                }
            }
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The vCPUs of threads [`stop_all`] joined, in the order given; `None`
/// if any is missing (a thread that did not stop or that panicked).
pub fn collect(handles: &mut [VcpuHandle]) -> Option<Vec<VcpuFd>> {
    handles.iter_mut().map(|h| h.fd.take()).collect()
}

/// Reports a vCPU thread that ends without saying why (it panicked), so
/// the main loop does not wait for it forever.
struct EndGuard<'a> {
    id: u8,
    exit: &'a ExitSignal,
    reported: bool,
}

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        if !self.reported && std::thread::panicking() {
            self.exit.set(ExitReason::VmmError(format!(
                "vCPU {} thread failed",
                self.id
            )));
        }
    }
}

fn run_loop(vcpu: &mut VcpuFd, id: u8, ctx: &VcpuContext, stop: &AtomicBool) {
    let mut guard = EndGuard {
        id,
        exit: &ctx.exit,
        reported: false,
    };
    if let Some(confine) = &ctx.confine {
        if let Err(e) = confine() {
            ctx.exit
                .set(ExitReason::VmmError(format!("vCPU {id} thread: {e}")));
            guard.reported = true;
            return;
        }
    }
    while !stop.load(Ordering::SeqCst) {
        let outcome = match vcpu.run() {
            Ok(exit) => handle_exit(exit, id, ctx),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(ExitReason::VmmError(format!(
                "KVM_RUN failed on vCPU {id}: {e}"
            ))),
        };
        if let Some(mut reason) = outcome {
            if let ExitReason::InternalError { detail, .. } = &mut reason {
                if detail.is_empty() {
                    *detail = describe_internal_error(vcpu);
                }
            }
            if let ExitReason::TripleFault { state, .. } = &mut reason {
                *state = describe_cpu(vcpu);
            }
            ctx.exit.set(reason);
            guard.reported = true;
            return;
        }
    }
}

/// Dispatch one exit. Returns why the VM must end, if it must.
fn handle_exit(exit: VcpuExit, id: u8, ctx: &VcpuContext) -> Option<ExitReason> {
    match exit {
        VcpuExit::IoOut(crate::snapshot::POINT_PORT, [crate::snapshot::POINT_MAGIC])
            if ctx.snapshot_point =>
        {
            Some(ExitReason::SnapshotPoint)
        }
        VcpuExit::IoOut(port, data) => {
            ctx.pio.write(u64::from(port), data);
            None
        }
        VcpuExit::IoIn(port, data) => {
            if !ctx.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                data.fill(0);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            ctx.mmio.write(addr, data);
            None
        }
        VcpuExit::Shutdown => Some(ExitReason::TripleFault {
            cpu: id,
            state: String::new(),
        }),
        VcpuExit::Hlt => Some(ExitReason::PowerOff),
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => Some(ExitReason::Reset),
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Some(ExitReason::PowerOff),
            other => Some(ExitReason::VmmError(format!(
                "vCPU {id}: unexpected system event {other}"
            ))),
        },
        VcpuExit::InternalError => Some(ExitReason::InternalError {
            cpu: id,
            detail: String::new(),
        }),
        VcpuExit::FailEntry(reason, cpu) => Some(ExitReason::InternalError {
            cpu: id,
            detail: format!("VM entry failed (hardware reason {reason:#x}, cpu {cpu})"),
        }),
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
        other => Some(ExitReason::VmmError(format!(
            "vCPU {id}: unexpected exit {other:?}"
        ))),
    }
}

/// Where the vCPU was, for a crash report.
fn describe_cpu(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "rip {:#x} rsp {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cs {:#x}",
            r.rip, r.rsp, s.cr0, s.cr2, s.cr3, s.cs.selector
        ),
        _ => "registers unavailable".into(),
    }
}

fn describe_internal_error(vcpu: &mut VcpuFd) -> String {
    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR (or a failed entry),
    // so reading the `internal` member of the union is what KVM filled in;
    // any bit pattern is a valid u32.
    let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
    let what = if suberror == KVM_INTERNAL_ERROR_EMULATION {
        "instruction emulation failed"
    } else {
        "internal error"
    };
    format!("{what} (suberror {suberror}, guest rip {rip:#x})")
}
