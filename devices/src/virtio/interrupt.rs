//! How a device gets the driver's attention: the interrupt status register
//! bits and the irqfd that raises the device's IRQ line.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    /// The status register always reports a used ring (see
    /// [`Interrupt::set_vring_always`]).
    vring_always: AtomicBool,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            vring_always: AtomicBool::new(false),
            irqfd,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            crate::guest_log!("virtio: cannot raise interrupt: {e}");
        }
    }

    /// A used ring was updated.
    pub fn signal_used_queue(&self) {
        self.raise(INT_VRING);
    }

    /// The configuration (or the device status) changed.
    pub fn signal_config(&self) {
        self.raise(INT_CONFIG);
    }

    /// The device hit an error it cannot recover from by itself; the
    /// driver must reset it (DEVICE_NEEDS_RESET).
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config();
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    pub fn status(&self) -> u32 {
        let s = self.status.load(Ordering::SeqCst);
        if self.vring_always.load(Ordering::SeqCst) {
            s | INT_VRING
        } else {
            s
        }
    }

    /// For a device whose backend signals the irqfd from another process
    /// (vhost-user): the driver cannot be told which event it was, so it
    /// always looks at its used rings (a spurious look costs nothing).
    pub fn set_vring_always(&self) {
        self.vring_always.store(true, Ordering::SeqCst);
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Forget everything (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}
