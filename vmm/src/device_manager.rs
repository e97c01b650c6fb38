//! Places virtio-mmio devices in the MMIO window, gives each an IRQ, wires
//! its notifications (ioeventfd) and interrupt (irqfd) into KVM, and names
//! it on the kernel command line.

use std::sync::{Arc, Mutex};

use devices::virtio::mmio::{MmioTransport, Placeholder, MMIO_SIZE, NOTIFY_OFFSET};
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
        self.cmdline.push(slot_param(base, irq));
        self.subscribers.push(device.clone());
        self.next_irq += 1;
        self.next_base += MMIO_SIZE;
        Ok(device)
    }
}

impl DeviceManager {
    /// How many slots (devices and placeholders) are in use.
    pub fn slots(&self) -> usize {
        (self.next_irq - FIRST_IRQ) as usize
    }

    /// An empty slot (see [`Placeholder`]): it keeps the place, the IRQ
    /// and the command-line entry a device may take in a restored VM.
    pub fn add_placeholder(&mut self) -> Result<(), Error> {
        if self.next_irq > LAST_IRQ {
            return Err(Error::NoIrq);
        }
        self.mmio
            .insert(Arc::new(Mutex::new(Placeholder)), self.next_base, MMIO_SIZE)
            .map_err(Error::Bus)?;
        self.cmdline.push(slot_param(self.next_base, self.next_irq));
        self.next_irq += 1;
        self.next_base += MMIO_SIZE;
        Ok(())
    }
}

/// The most slots a VM can have (one IRQ each).
pub const MAX_SLOTS: usize = (LAST_IRQ - FIRST_IRQ + 1) as usize;

fn slot_param(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// The command-line entries of the first `n` slots, as a VM with `n`
/// devices and placeholders has them.
pub fn slots_cmdline(n: usize) -> String {
    (0..n.min(MAX_SLOTS))
        .map(|i| slot_param(MMIO_GAP_START + i as u64 * MMIO_SIZE, FIRST_IRQ + i as u32))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Clones of a device's queue eventfds (the device keeps the originals).
fn queue_events<D: VirtioDevice>(device: &D) -> Result<Vec<EventFd>, Error> {
    device
        .queue_evts()
        .iter()
        .map(|e| e.try_clone().map_err(Error::Io))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_take_the_slots_devices_would() {
        let mut dm = DeviceManager::new();
        for _ in 0..3 {
            dm.add_placeholder().expect("slot");
        }
        assert_eq!(dm.slots(), 3);
        assert_eq!(dm.cmdline.join(" "), slots_cmdline(3));
        assert!(slots_cmdline(2).ends_with(&format!(
            "4K@{:#x}:{}",
            MMIO_GAP_START + MMIO_SIZE,
            FIRST_IRQ + 1
        )));
        // A placeholder reads as a virtio-mmio device with device ID 0.
        let mut word = [0u8; 4];
        dm.mmio.read(MMIO_GAP_START, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0x7472_6976);
        dm.mmio.read(MMIO_GAP_START + 8, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0);
        for _ in 3..MAX_SLOTS {
            dm.add_placeholder().expect("slot");
        }
        assert!(matches!(dm.add_placeholder(), Err(Error::NoIrq)));
    }
}
