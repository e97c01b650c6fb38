//! The virtio-mmio transport, version 2 ("modern") register layout
//! (virtio 1.2, 4.2.2), with the device status state machine.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};

use super::interrupt::Interrupt;
use super::{GuestMem, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;

pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (where ioeventfds are attached).
pub const NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4d56_4d56; // "VMVM"

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// An empty virtio-mmio slot: it answers the magic value and version
/// with device ID 0, which Linux's virtio-mmio driver takes as "no device
/// here" and leaves unbound. A VM snapshot is taken with every slot
/// empty; the restored VM finds real devices in the same slots and binds
/// them then. Writes are ignored.
pub struct Placeholder;

impl BusDevice for Placeholder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x0c => VENDOR_ID,
            _ => 0,
        };
        if data.len() == 4 {
            data.copy_from_slice(&value.to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// The register side of one virtio device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<Interrupt>,
    mem: GuestMem,
    /// Notifications that did not go through an ioeventfd (odd sizes) are
    /// forwarded to these.
    queue_evts: Vec<vmm_sys_util::eventfd::EventFd>,
    device_type: u32,
    avail_features: u64,
    features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    status: u32,
    config_generation: u32,
}

fn lock(dev: &Mutex<dyn VirtioDevice>) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

impl MmioTransport {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<Interrupt>,
        mem: GuestMem,
        queue_evts: Vec<vmm_sys_util::eventfd::EventFd>,
    ) -> Self {
        let (device_type, avail_features, queues) = {
            let d = lock(&device);
            let queues = d
                .queue_max_sizes()
                .iter()
                .filter_map(|&max| Queue::new(max).ok())
                .collect();
            (
                d.device_type(),
                d.avail_features() | VIRTIO_F_VERSION_1,
                queues,
            )
        };
        Self {
            device,
            interrupt,
            mem,
            queue_evts,
            device_type,
            avail_features,
            features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            status: 0,
            config_generation: 0,
        }
    }

    pub fn status(&self) -> u32 {
        let mut s = self.status;
        if self.interrupt.needs_reset() {
            s |= STATUS_NEEDS_RESET;
        }
        s
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn queue_writable(&self) -> bool {
        self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED) == STATUS_FEATURES_OK
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.interrupt.reset();
        self.features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & STATUS_FAILED != 0 {
            self.status |= STATUS_FAILED;
            return;
        }
        let old = self.status;
        // Status bits are only ever added, in this order.
        if value & old != old {
            crate::guest_log!("virtio: driver cleared status bits {old:#x} -> {value:#x}; ignored");
            return;
        }
        let added = value & !old;
        let ok = match added {
            STATUS_ACKNOWLEDGE => old == 0,
            STATUS_DRIVER => old == STATUS_ACKNOWLEDGE,
            STATUS_FEATURES_OK => old == STATUS_ACKNOWLEDGE | STATUS_DRIVER,
            STATUS_DRIVER_OK => old == STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
            0 => true,
            _ => false,
        };
        if !ok {
            crate::guest_log!("virtio: invalid status transition {old:#x} -> {value:#x}; ignored");
            return;
        }
        match added {
            STATUS_FEATURES_OK => {
                // A modern device requires VERSION_1; without it the
                // FEATURES_OK bit is not taken and the driver gives up.
                if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                    crate::guest_log!("virtio: driver did not accept VIRTIO_F_VERSION_1");
                    return;
                }
                lock(&self.device).set_acked_features(self.driver_features);
            }
            STATUS_DRIVER_OK => {
                if let Err(why) = self.activate() {
                    crate::guest_log!(
                        "virtio: cannot activate device type {}: {why}",
                        self.device_type
                    );
                    self.status = value;
                    self.interrupt.set_needs_reset();
                    return;
                }
            }
            _ => {}
        }
        self.status = value;
    }

    fn activate(&mut self) -> Result<(), String> {
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(format!(
                    "queue {i} is not valid (size or rings out of memory)"
                ));
            }
        }
        if !self.queues.iter().any(|q| q.ready()) {
            return Err("no queue is ready".into());
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            queues.push(Queue::try_from(q.state()).map_err(|e| format!("queue: {e:?}"))?);
        }
        lock(&self.device)
            .activate(queues)
            .map_err(|e| e.to_string())
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device_type,
            0x0c => VENDOR_ID,
            0x10 => match self.features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            0x34 => q.map_or(0, |q| u32::from(q.max_size())),
            0x44 => q.map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status(),
            0xfc => self.config_generation,
            _ => {
                crate::guest_log!("virtio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let driver_may_set_features =
            self.status & (STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_FAILED) == STATUS_DRIVER;
        let queue_writable = self.queue_writable();
        match offset {
            0x14 => self.features_sel = v,
            0x20 if driver_may_set_features => {
                let v = u64::from(v);
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
                // Never more than offered.
                self.driver_features &= self.avail_features;
            }
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 if queue_writable => {
                if let Some(q) = self.queue() {
                    q.set_size(v as u16);
                }
            }
            0x44 if queue_writable => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            0x50 => {
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 if queue_writable => {
                let Some(q) = self.queue() else { return };
                let (lo, hi) = if offset & 4 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                match offset & !4 {
                    0x80 => q.set_desc_table_address(lo, hi),
                    0x90 => q.set_avail_ring_address(lo, hi),
                    _ => q.set_used_ring_address(lo, hi),
                }
            }
            _ => crate::guest_log!(
                "virtio: write {v:#x} to register {offset:#x} ignored (status {:#x})",
                self.status
            ),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            if self.status & STATUS_DRIVER == 0 && self.status != 0 {
                data.fill(0);
                return;
            }
            lock(&self.device).read_config(offset - 0x100, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            lock(&self.device).write_config(offset - 0x100, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if data.len() != 4 {
            crate::guest_log!(
                "virtio: {}-byte register write at {offset:#x} ignored",
                data.len()
            );
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testutil::{interrupt, memory, MEM_SIZE};
    use crate::virtio::ActivateError;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    struct Dummy {
        acked: u64,
        activated: usize,
        resets: usize,
        evts: Vec<EventFd>,
        core: crate::virtio::DeviceCore,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn queue_evts(&self) -> &[EventFd] {
            &self.evts
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0b101
        }
        fn set_acked_features(&mut self, f: u64) {
            self.acked = f;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::virtio::read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn activate(&mut self, _q: Vec<Queue>) -> Result<(), ActivateError> {
            self.activated += 1;
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
        fn core(&self) -> &crate::virtio::DeviceCore {
            &self.core
        }
        fn core_mut(&mut self) -> &mut crate::virtio::DeviceCore {
            &mut self.core
        }
    }

    struct Rig {
        t: MmioTransport,
        dev: Arc<Mutex<Dummy>>,
    }

    impl Rig {
        fn new() -> Self {
            let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
            let (irq, _) = interrupt();
            let dev = Arc::new(Mutex::new(Dummy {
                acked: 0,
                activated: 0,
                resets: 0,
                evts: vec![evt.try_clone().expect("clone")],
                core: crate::virtio::DeviceCore::new(memory(), irq.clone(), 1).expect("core"),
            }));
            let t = MmioTransport::new(dev.clone(), irq, memory(), vec![evt]);
            Self { t, dev }
        }
        fn r(&mut self, off: u64) -> u32 {
            let mut b = [0u8; 4];
            self.t.read(off, &mut b);
            u32::from_le_bytes(b)
        }
        fn w(&mut self, off: u64, v: u32) {
            self.t.write(off, &v.to_le_bytes());
        }
        /// Walk the driver through ACK, DRIVER and the feature handshake.
        fn negotiate(&mut self, features_hi: u32) {
            self.w(0x70, STATUS_ACKNOWLEDGE);
            self.w(0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
            self.w(0x24, 1);
            self.w(0x20, features_hi);
            self.w(0x24, 0);
            self.w(0x20, 0xffff_ffff);
            self.w(
                0x70,
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
            );
        }
        fn setup_queue(&mut self, desc: u64) {
            self.w(0x30, 0);
            self.w(0x38, 16);
            self.w(0x80, desc as u32);
            self.w(0x84, (desc >> 32) as u32);
            self.w(0x90, 0x1000);
            self.w(0xa0, 0x2000);
            self.w(0x44, 1);
        }
    }

    #[test]
    fn identifies_itself() {
        let mut rig = Rig::new();
        assert_eq!(rig.r(0x00), 0x7472_6976);
        assert_eq!(rig.r(0x04), 2);
        assert_eq!(rig.r(0x08), 42);
        assert_eq!(rig.r(0x34), 16);
        rig.w(0x14, 1);
        assert_eq!(rig.r(0x10), 1, "VERSION_1 is bit 32");
        rig.w(0x14, 0);
        assert_eq!(rig.r(0x10), 0b101);
        let mut b = [0u8; 2];
        rig.t.read(0x101, &mut b);
        assert_eq!(b, [2, 3]);
    }

    #[test]
    fn features_ok_requires_version_1_and_keeps_only_offered_bits() {
        let mut rig = Rig::new();
        rig.negotiate(0);
        assert_eq!(rig.r(0x70) & STATUS_FEATURES_OK, 0, "legacy driver refused");
        let mut rig = Rig::new();
        rig.negotiate(1);
        assert_ne!(rig.r(0x70) & STATUS_FEATURES_OK, 0);
        assert_eq!(
            rig.dev.lock().expect("lock").acked,
            VIRTIO_F_VERSION_1 | 0b101
        );
    }

    #[test]
    fn out_of_order_status_is_ignored() {
        let mut rig = Rig::new();
        rig.w(0x70, STATUS_DRIVER_OK);
        assert_eq!(rig.r(0x70), 0);
        rig.w(0x70, STATUS_ACKNOWLEDGE);
        rig.w(0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
        assert_eq!(rig.r(0x70), STATUS_ACKNOWLEDGE);
        assert_eq!(rig.dev.lock().expect("lock").activated, 0);
    }

    #[test]
    fn queue_registers_only_between_features_ok_and_driver_ok() {
        let mut rig = Rig::new();
        rig.setup_queue(0x3000);
        assert_eq!(
            rig.r(0x44),
            0,
            "queue set up before FEATURES_OK was ignored"
        );
        rig.negotiate(1);
        rig.setup_queue(0x3000);
        assert_eq!(rig.r(0x44), 1);
        rig.w(
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_eq!(rig.dev.lock().expect("lock").activated, 1);
        rig.w(0x44, 0);
        assert_eq!(rig.r(0x44), 1, "live queue cannot be changed");
    }

    #[test]
    fn invalid_queue_sets_needs_reset_instead_of_activating() {
        let mut rig = Rig::new();
        rig.negotiate(1);
        rig.setup_queue(MEM_SIZE as u64 + 0x1000);
        rig.w(
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_eq!(rig.dev.lock().expect("lock").activated, 0);
        assert_ne!(rig.r(0x70) & STATUS_NEEDS_RESET, 0);
        assert_ne!(rig.r(0x60) & 2, 0, "config interrupt raised");
        // Reset clears everything and reaches the device.
        rig.w(0x70, 0);
        assert_eq!(rig.r(0x70), 0);
        assert_eq!(rig.r(0x60), 0);
        assert_eq!(rig.dev.lock().expect("lock").resets, 1);
    }

    #[test]
    fn interrupt_ack_and_odd_sized_accesses() {
        let mut rig = Rig::new();
        rig.t.interrupt.signal_used_queue();
        assert_eq!(rig.r(0x60), 1);
        rig.w(0x64, 1);
        assert_eq!(rig.r(0x60), 0);
        rig.t.write(0x70, &[1, 0]);
        assert_eq!(rig.r(0x70), 0, "2-byte register write ignored");
        let mut b = [0xaau8; 2];
        rig.t.read(0x00, &mut b);
        assert_eq!(b, [0, 0]);
        // A notification that missed the ioeventfd still reaches the device.
        rig.w(0x50, 0);
        assert_eq!(
            rig.dev.lock().expect("lock").evts[0]
                .read()
                .expect("notified"),
            1
        );
        rig.w(0x50, 7); // no such queue: ignored
    }
}
