//! The frontend side of a vhost-user session with the file system daemon:
//! the handshake when the device is made, and starting and stopping the
//! queues when the driver activates or resets the device.
//!
//! Every message is answered within `REPLY_TIMEOUT` or the session is
//! broken: a daemon that hangs does not hang the VMM's event loop.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::Error;
use crate::virtio::GuestMem;

const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Virtio features we pass on to the driver when the daemon offers them.
const DRIVER_FEATURES: u64 =
    crate::virtio::VIRTIO_F_VERSION_1 | crate::virtio::VIRTIO_RING_F_EVENT_IDX | (1 << 28); // VIRTIO_RING_F_INDIRECT_DESC

pub struct Session {
    frontend: Frontend,
    tag: String,
    /// Features the daemon offers (including the vhost-user bit).
    features: u64,
    queue_count: usize,
}

impl Session {
    /// Takes over `stream`, a connection to the daemon, and learns what it
    /// offers.
    pub fn open(stream: UnixStream, tag: &str, queue_count: usize) -> Result<Self, Error> {
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        let mut frontend = Frontend::from_stream(stream, queue_count as u64);
        let err = |what| err(tag, what);
        frontend
            .set_owner()
            .map_err(err("did not take us as its owner"))?;
        let features = frontend
            .get_features()
            .map_err(err("did not give its features"))?;
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(Error::Refused {
                tag: tag.into(),
                what: "does not speak the vhost-user protocol features".into(),
            });
        }
        let offered = frontend
            .get_protocol_features()
            .map_err(err("did not give its protocol features"))?;
        let wanted = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
        if !offered.contains(VhostUserProtocolFeatures::MQ) {
            return Err(Error::Refused {
                tag: tag.into(),
                what: "does not say how many queues it serves".into(),
            });
        }
        frontend
            .set_protocol_features(offered & wanted)
            .map_err(err("refused the protocol features"))?;
        let queues = frontend
            .get_queue_num()
            .map_err(err("did not give its queue count"))?;
        if queues < queue_count as u64 {
            return Err(Error::Refused {
                tag: tag.into(),
                what: format!("serves {queues} queues, {queue_count} are needed"),
            });
        }
        Ok(Self {
            frontend,
            tag: tag.into(),
            features,
            queue_count,
        })
    }

    /// The virtio features the driver may accept.
    pub fn driver_features(&self) -> u64 {
        self.features & DRIVER_FEATURES
    }

    /// Hands the daemon the guest's memory and the ready queues, each
    /// with its kick eventfd (the driver's notifications, which KVM
    /// signals) and its call eventfd (the device's interrupt).
    pub fn start(
        &mut self,
        acked: u64,
        mem: &GuestMem,
        queues: &[Queue],
        kicks: &[EventFd],
        call: &EventFd,
    ) -> Result<(), Error> {
        self.frontend
            .set_features(acked | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
            .map_err(err(&self.tag, "refused the features"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(err(
                &self.tag,
                "cannot be given guest memory that is not shared",
            ))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(err(&self.tag, "refused the guest memory"))?;
        for (i, (q, kick)) in queues.iter().zip(kicks).enumerate() {
            if !q.ready() {
                continue;
            }
            let addr = |a: u64| host_address(mem, a, &self.tag);
            let ring = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: addr(q.desc_table())?,
                used_ring_addr: addr(q.used_ring())?,
                avail_ring_addr: addr(q.avail_ring())?,
                log_addr: None,
            };
            let (f, tag) = (&mut self.frontend, self.tag.as_str());
            f.set_vring_num(i, q.size())
                .map_err(err(tag, "refused a queue size"))?;
            f.set_vring_addr(i, &ring)
                .map_err(err(tag, "refused a queue's addresses"))?;
            f.set_vring_base(i, 0)
                .map_err(err(tag, "refused a queue's start"))?;
            f.set_vring_call(i, call)
                .map_err(err(tag, "refused a queue's interrupt"))?;
            f.set_vring_kick(i, kick)
                .map_err(err(tag, "refused a queue's notifications"))?;
            f.set_vring_enable(i, true)
                .map_err(err(tag, "did not enable a queue"))?;
        }
        Ok(())
    }

    /// Stops the queues (GET_VRING_BASE stops a ring in vhost-user).
    pub fn stop(&mut self) -> Result<(), Error> {
        for i in 0..self.queue_count {
            self.frontend
                .set_vring_enable(i, false)
                .map_err(err(&self.tag, "did not disable a queue"))?;
            self.frontend
                .get_vring_base(i)
                .map_err(err(&self.tag, "did not stop a queue"))?;
        }
        Ok(())
    }
}

/// Where guest address `gpa` is in this process (vhost-user names ring
/// addresses in the frontend's address space).
fn host_address(mem: &GuestMem, gpa: u64, tag: &str) -> Result<u64, Error> {
    mem.get_host_address(GuestAddress(gpa))
        .map(|p| p as u64)
        .map_err(|_| Error::Refused {
            tag: tag.into(),
            what: format!("was not started: a queue lies outside guest memory ({gpa:#x})"),
        })
}

fn err(tag: &str, what: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    let tag = tag.to_string();
    move |source| Error::Backend { tag, what, source }
}
