//! Why a VM ended, recorded once by whoever sees it first (a vCPU, the
//! i8042, the console watcher) and then acted on by the main loop.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (reboot through the i8042).
    Reset,
    /// The guest powered off or halted (seen on its console).
    PowerOff,
    /// The guest kernel panicked; the message is its panic line.
    Panic(String),
    /// A triple fault: KVM reports a shutdown of the vCPU.
    TripleFault { cpu: u8, state: String },
    /// KVM could not run the guest.
    InternalError { cpu: u8, detail: String },
    /// Something in the VMM failed while running the guest.
    VmmError(String),
    /// The host side stopped the VM (`vm run` once the container is done,
    /// or when the guest did not answer in time).
    Stopped,
    /// The guest of a VM built to be snapshotted reached the point where
    /// it is to be saved.
    SnapshotPoint,
}

impl ExitReason {
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            ExitReason::Reset | ExitReason::PowerOff | ExitReason::Stopped
        )
    }
}

/// The first exit reason wins; later ones are ignored.
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    /// Readable once a reason is recorded; the main loop waits on it.
    pub evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub fn set(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        // A full eventfd counter still wakes the reader; nothing to do on error.
        let _ = self.evt.write(1);
    }

    pub fn get(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().expect("eventfd");
        assert_eq!(s.get(), None);
        s.set(ExitReason::Panic("x".into()));
        s.set(ExitReason::Reset);
        assert_eq!(s.get(), Some(ExitReason::Panic("x".into())));
        assert!(s.evt.read().expect("woken") >= 1);
    }
}
