//! The virtio-fs device (virtio 1.2, 5.11): a high-priority queue and one
//! request queue, a config space with the tag the guest mounts by, and no
//! DAX window. Queue processing is the daemon's; the device starts and
//! stops it from the event loop (a vCPU thread may not talk on sockets).

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::Queue;

use super::backend::Session;
use super::Error;
use crate::virtio::core::TOKEN_ACTIVATE;
use crate::virtio::{ActivateError, DeviceCore, GuestMem, Interrupt, VirtioDevice, TYPE_FS};

/// The tag's room in the config space.
pub const TAG_LEN: usize = 36;
/// The high-priority queue and one request queue.
const QUEUES: usize = 2;
const QUEUE_SIZE: u16 = 1024;

pub struct FsConfig {
    /// What the guest mounts: `mount -t virtiofs TAG DIR`.
    pub tag: String,
    /// A connection to the daemon serving the directory.
    pub socket: UnixStream,
}

pub struct Fs {
    core: DeviceCore,
    session: Session,
    config: [u8; TAG_LEN + 4],
    sizes: [u16; QUEUES],
    /// Bumped on each activation; the daemon runs the queues of the
    /// activation it was started for.
    activation: u64,
    started: Option<u64>,
    /// The session failed (an error or a daemon that did not answer in
    /// time): its messages may be out of step, so nothing more is sent
    /// and the device stays failed.
    broken: bool,
}

impl Fs {
    pub fn new(cfg: FsConfig, mem: GuestMem, interrupt: Arc<Interrupt>) -> Result<Self, Error> {
        let tag = cfg.tag.as_bytes();
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(Error::Tag(cfg.tag));
        }
        let session = Session::open(cfg.socket, &cfg.tag, QUEUES)?;
        let mut config = [0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag);
        // num_request_queues
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        // The daemon raises the interrupt through the irqfd itself, so the
        // status register cannot learn of it: it always says "used ring".
        interrupt.set_vring_always();
        Ok(Self {
            core: DeviceCore::new(mem, interrupt, QUEUES)?,
            session,
            config,
            sizes: [QUEUE_SIZE; QUEUES],
            activation: 0,
            started: None,
            broken: false,
        })
    }

    /// Brings the daemon in line with the driver: stops queues of an
    /// activation that is over, starts those of the current one.
    fn sync_backend(&mut self) {
        let _ = self.core.activate_evt.read();
        if self.broken {
            if self.core.active {
                self.core
                    .fail("virtio-fs: the file system daemon's session is broken");
            }
            return;
        }
        let current = self.core.active.then_some(self.activation);
        if self.started.is_some() && self.started != current {
            self.started = None;
            if let Err(e) = self.session.stop() {
                self.broken = true;
                crate::guest_log!("{e}");
                return;
            }
        }
        if let (Some(activation), None) = (current, self.started) {
            let core = &self.core;
            let started = self.session.start(
                core.acked_features,
                &core.mem,
                &core.queues,
                &core.queue_evts,
                core.interrupt.irqfd(),
            );
            match started {
                Ok(()) => self.started = Some(activation),
                Err(e) => {
                    self.broken = true;
                    self.core.fail(&e.to_string());
                }
            }
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn avail_features(&self) -> u64 {
        self.session.driver_features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }
    fn core(&self) -> &DeviceCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }
    fn activate(&mut self, queues: Vec<Queue>) -> Result<(), ActivateError> {
        self.activation += 1;
        self.core.activate(queues)
    }
}

impl MutEventSubscriber for Fs {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == TOKEN_ACTIVATE {
            self.sync_backend();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.core.init_events(ops);
    }
}
