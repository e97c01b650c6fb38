//! The hypervisor: one KVM microVM built from a [`VmConfig`], with its
//! x86_64 boot (`arch`), guest memory, vCPU threads, the kernel loader,
//! the device manager and the console. It knows nothing of containers,
//! images or command-line flags and prints nothing to the user; callers
//! get typed errors and an [`Outcome`].
//!
//! [`Vmm::start`] runs a VM on its own thread and hands back a handle to
//! stop it or wait for it; [`vm::run`] does the same on the caller's
//! thread.

pub mod arch;
pub mod console;
pub mod device_manager;
pub mod exit;
pub mod host;
pub mod loader;
pub mod memory;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

pub use exit::{ExitReason, ExitSignal};
pub use vcpu::thread_ioctls as vcpu_thread_ioctls;
pub use vm::{Error, Outcome, VmConfig};

use std::sync::Arc;
use std::thread::JoinHandle;

/// A VM running on its own thread.
pub struct Vmm {
    exit: Arc<ExitSignal>,
    thread: JoinHandle<Result<Outcome, Error>>,
}

impl Vmm {
    /// Checks `cfg` and starts the VM on a thread named `vmm`.
    pub fn start(cfg: VmConfig) -> Result<Self, Error> {
        vm::validate(&cfg)?;
        let exit = cfg.exit.clone();
        let thread = std::thread::Builder::new()
            .name("vmm".into())
            .spawn(move || vm::run(cfg))
            .map_err(Error::Io)?;
        Ok(Self { exit, thread })
    }

    /// How the VM ended, once it has (without waiting).
    pub fn ended(&self) -> Option<ExitReason> {
        self.exit.get()
    }

    /// Asks the VM to stop now (no guest cooperation needed).
    pub fn stop(&self) {
        self.exit.set(ExitReason::Stopped);
    }

    /// Waits for the VM to end and returns how it ended.
    pub fn wait(self) -> Result<Outcome, Error> {
        self.thread
            .join()
            .map_err(|_| Error::EventLoop("the VMM thread panicked".into()))?
    }
}
