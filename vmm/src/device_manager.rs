//! Places virtio-mmio devices in the MMIO window, gives each an IRQ, wires
//! its notifications (ioeventfd) and interrupt (irqfd) into KVM, and names
//! it on the kernel command line.

use std::sync::{Arc, Mutex};

use devices::virtio::mmio::{MmioTransport, MMIO_SIZE, NOTIFY_OFFSET};
use devices::virtio::{Interrupt, VirtioDevice};
use devices::Bus;
use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::layout::MMIO_GAP_START;
use crate::memory::GuestMem;

/// IRQs below 5 are taken by legacy devices (COM1 is 4).
const FIRST_IRQ: u32 = 5;
const LAST_IRQ: u32 = 23;

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("too many devices: no IRQ left (at most {})", LAST_IRQ - FIRST_IRQ + 1)]
    NoIrq,
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("MMIO bus: {0}")]
    Bus(#[from] devices::BusError),
}

pub struct DeviceManager {
    pub mmio: Bus,
    next_base: u64,
    next_irq: u32,
    /// `virtio_mmio.device=` parameters for the kernel command line.
    pub cmdline: Vec<String>,
    /// Devices whose queues the event loop serves.
    pub subscribers: Vec<Subscriber>,
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceManager {
    pub fn new() -> Self {
        Self {
            mmio: Bus::new(),
            next_base: MMIO_GAP_START,
            next_irq: FIRST_IRQ,
            cmdline: Vec::new(),
            subscribers: Vec::new(),
        }
    }

    /// Create a device with `make` (given its interrupt) and attach it.
    pub fn add_virtio<D, F, E>(
        &mut self,
        vm: &VmFd,
        mem: &GuestMem,
        make: F,
    ) -> Result<Arc<Mutex<D>>, E>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
        F: FnOnce(Arc<Interrupt>) -> Result<D, E>,
        E: From<Error>,
    {
        if self.next_irq > LAST_IRQ {
            return Err(Error::NoIrq.into());
        }
        let irq = self.next_irq;
        let base = self.next_base;
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(Error::Io)?;
        vm.register_irqfd(&irqfd, irq)
            .map_err(|source| Error::Kvm {
                what: "register irqfd",
                source,
            })?;
        let interrupt = Arc::new(Interrupt::new(irqfd));
        let device = make(interrupt.clone())?;
        let queue_evts = queue_events(&device)?;
        for (i, evt) in queue_evts.iter().enumerate() {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(base + NOTIFY_OFFSET), i as u32)
                .map_err(|source| Error::Kvm {
                    what: "register ioeventfd",
                    source,
                })?;
        }
        let device = Arc::new(Mutex::new(device));
        let transport = MmioTransport::new(device.clone(), interrupt, mem.clone(), queue_evts);
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), base, MMIO_SIZE)
            .map_err(Error::Bus)?;
        self.cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.subscribers.push(device.clone());
        self.next_irq += 1;
        self.next_base += MMIO_SIZE;
        Ok(device)
    }
}

/// Clones of a device's queue eventfds (the device keeps the originals).
fn queue_events<D: VirtioDevice>(device: &D) -> Result<Vec<EventFd>, Error> {
    device
        .queue_evts()
        .iter()
        .map(|e| e.try_clone().map_err(Error::Io))
        .collect()
}
