//! virtio-net: Ethernet frames between the guest and a host backend,
//! each frame with the 12-byte virtio-net header (`virtio_net_hdr_v1`) in
//! front, which carries the checksum and segmentation offloads through
//! untouched: a TAP device with `IFF_VNET_HDR` takes and gives frames in
//! exactly this form, so a 64 KiB TCP segment crosses as one frame.
//!
//! RX: a frame read from the backend goes into as many of the guest's
//! receive buffers as it needs (mergeable buffers), or into one (when the
//! guest did not take `MRG_RXBUF`); a frame that finds no buffers waits,
//! and the backend is not read until the guest gives some. TX: each chain
//! is one frame, read once into a buffer of ours and written to the
//! backend; a frame the backend cannot take now is dropped, as a NIC
//! whose queue is full would.

use std::io::{self, Read, Write};
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS,
};
use virtio_queue::{QueueOwnedT, QueueT, Reader, Writer};

use super::tap::Tap;
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::virtio::core::{reschedule, DrainBudget};
use crate::virtio::{
    pop_chain, DeviceCore, GuestMem, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

pub const TYPE_NET: u32 = 1;
pub const RX: usize = 0;
pub const TX: usize = 1;
const QUEUE_SIZE: u16 = 256;
/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
pub const HDR_LEN: usize = 12;
const NUM_BUFFERS: usize = 10;
/// The largest frame: the header, an Ethernet header and 64 KiB (a TSO
/// or UFO segment).
pub const MAX_FRAME: usize = HDR_LEN + 14 + 65536;
/// `VIRTIO_NET_S_LINK_UP`.
const LINK_UP: u16 = 1;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// The offloads a backend may support: what it can take from the guest
/// (HOST_*) and hand to it (GUEST_*).
pub const OFFLOADS: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_UFO)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_UFO);

/// Where frames go and come from.
pub trait Backend: Send {
    /// Reads one frame (header first) into `buf`; `WouldBlock` when none
    /// is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (header first).
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// The offload features it supports (a subset of [`OFFLOADS`]).
    fn offloads(&self) -> u64;
    /// The guest accepted `features`: what the backend may hand it.
    fn set_guest_features(&mut self, features: u64) -> io::Result<()>;
    /// What the event loop watches for frames to read (edge-triggered).
    fn fd(&self) -> std::os::fd::RawFd;
}

#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The TAP device to attach to (made by the caller).
    pub tap: String,
    /// The TAP already open in this process (made with [`Tap::open`]):
    /// used instead of opening `tap` again, which then only names it.
    pub tap_fd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Instead of a TAP: a connected stream socket to a user-mode network
    /// (passt), frames after their lengths (see [`super::Stream`]).
    pub stream_fd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    pub mac: [u8; 6],
    /// How fast the guest may receive and send (bytes and frames).
    pub rx_rate_limit: RateLimiterConfig,
    pub tx_rate_limit: RateLimiterConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TAP device {name}: {source}")]
    Tap { name: String, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Frames the device has passed and dropped, for `stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

pub struct Net {
    pub(super) core: DeviceCore,
    pub(super) backend: Box<dyn Backend>,
    config_space: Vec<u8>,
    avail_features: u64,
    /// A frame read from the backend, waiting for the guest's buffers
    /// (`rx_len` bytes of it; 0 when none).
    rx_frame: Vec<u8>,
    rx_len: usize,
    /// Its bytes were taken from the RX limiter already.
    rx_charged: bool,
    tx_frame: Vec<u8>,
    pub(super) rx_limiter: Option<RateLimiter>,
    pub(super) tx_limiter: Option<RateLimiter>,
    pub counters: Counters,
}

fn limiter(cfg: &RateLimiterConfig) -> io::Result<Option<RateLimiter>> {
    if cfg.is_unlimited() {
        Ok(None)
    } else {
        RateLimiter::new(cfg).map(Some)
    }
}

impl Net {
    /// A device on the TAP device `cfg.tap` (or the stream `cfg.stream_fd`).
    pub fn new(cfg: &NetConfig, mem: GuestMem, interrupt: Arc<Interrupt>) -> Result<Self, Error> {
        if let Some(fd) = &cfg.stream_fd {
            let stream = fd
                .try_clone()
                .and_then(super::Stream::from_fd)
                .map_err(|source| Error::Tap {
                    name: cfg.tap.clone(),
                    source,
                })?;
            return Self::with_backend(cfg, Box::new(stream), mem, interrupt);
        }
        let tap = match &cfg.tap_fd {
            Some(fd) => fd.try_clone().map(Tap::from_fd),
            None => Tap::open(&cfg.tap),
        }
        .map_err(|source| Error::Tap {
            name: cfg.tap.clone(),
            source,
        })?;
        Self::with_backend(cfg, Box::new(tap), mem, interrupt)
    }

    pub fn with_backend(
        cfg: &NetConfig,
        backend: Box<dyn Backend>,
        mem: GuestMem,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, Error> {
        // virtio_net_config: mac, status, max_virtqueue_pairs.
        let mut config_space = Vec::with_capacity(10);
        config_space.extend_from_slice(&cfg.mac);
        config_space.extend_from_slice(&LINK_UP.to_le_bytes());
        config_space.extend_from_slice(&1u16.to_le_bytes());
        let avail_features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_STATUS)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | (backend.offloads() & OFFLOADS);
        Ok(Self {
            core: DeviceCore::new(mem, interrupt, 2)?,
            backend,
            config_space,
            avail_features,
            rx_frame: vec![0; MAX_FRAME],
            rx_len: 0,
            rx_charged: false,
            tx_frame: vec![0; MAX_FRAME],
            rx_limiter: limiter(&cfg.rx_rate_limit)?,
            tx_limiter: limiter(&cfg.tx_rate_limit)?,
            counters: Counters::default(),
        })
    }

    fn acked(&self, feature: u32) -> bool {
        self.core.acked_features & bit(feature) != 0
    }

    /// Called when the device is activated: tell the backend what the
    /// guest takes, and read what waited meanwhile.
    pub(super) fn activated(&mut self) {
        if !self.core.active {
            self.rx_len = 0;
            self.rx_charged = false;
            return;
        }
        if let Err(e) = self.backend.set_guest_features(self.core.acked_features) {
            crate::guest_log!("virtio-net: cannot set the backend's offloads: {e}");
        }
        self.process_rx();
    }

    // ---- RX: backend to guest ----

    /// Moves frames from the backend into the guest's receive buffers
    /// until the backend has none, the guest has no buffers, the limiter
    /// says wait, or the drain budget is spent (then it goes on later).
    pub fn process_rx(&mut self) {
        if !self.core.active {
            return;
        }
        let mut used_any = false;
        let mut budget = DrainBudget::new();
        loop {
            if self.rx_len == 0 {
                if !budget.take() {
                    reschedule(&self.core.queue_evts[RX], "virtio-net RX");
                    break;
                }
                match self.backend.recv(&mut self.rx_frame) {
                    Ok(n) if n >= HDR_LEN => {
                        self.rx_len = n;
                        self.rx_charged = false;
                    }
                    Ok(_) => {
                        self.counters.rx_dropped += 1;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        crate::guest_log!("virtio-net: reading from the backend: {e}");
                        break;
                    }
                }
            }
            if !self.rx_charged {
                if let Some(l) = &mut self.rx_limiter {
                    if !l.consume(self.rx_len as u64) {
                        break; // its timer calls again
                    }
                }
                self.rx_charged = true;
            }
            let seen = self.avail_idx();
            match self.deliver() {
                Ok(true) => {
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += (self.rx_len - HDR_LEN) as u64;
                    used_any = true;
                }
                // Not enough buffers: ask for a kick when the guest adds
                // some (with EVENT_IDX it kicks only when asked), and go
                // on at once if it added some since we looked.
                Ok(false) => {
                    let mem = &self.core.mem;
                    if let Some(Err(e)) = self
                        .core
                        .queues
                        .get_mut(RX)
                        .map(|q| q.enable_notification(mem))
                    {
                        self.core.fail(&format!("virtio-net RX queue: {e}"));
                        break;
                    }
                    if self.avail_idx() != seen {
                        continue;
                    }
                    break;
                }
                Err(why) => {
                    self.counters.rx_dropped += 1;
                    crate::guest_log!("virtio-net: dropped a received frame: {why}");
                    if !self.core.active {
                        break;
                    }
                }
            }
            self.rx_len = 0;
        }
        if used_any {
            self.core.notify_used(RX);
        }
    }

    /// The driver's available index on the RX queue.
    fn avail_idx(&self) -> Option<u16> {
        let q = self.core.queues.get(RX)?;
        q.avail_idx(&self.core.mem, std::sync::atomic::Ordering::Acquire)
            .ok()
            .map(|w| w.0)
    }

    /// Puts the waiting frame into the guest's buffers: true when done,
    /// false (and nothing taken) when there are not enough buffers yet.
    fn deliver(&mut self) -> Result<bool, String> {
        let mergeable = self.acked(VIRTIO_NET_F_MRG_RXBUF);
        let len = self.rx_len;
        let mem = self.core.mem.clone();
        let Some(queue) = self.core.queues.get_mut(RX) else {
            return Ok(false);
        };
        // The buffers it needs, each parsed once.
        let mut writers: Vec<(u16, Writer)> = Vec::new();
        let mut room = 0usize;
        while room < len {
            let chain = match pop_chain(queue, &mem) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    for _ in &writers {
                        queue.go_to_previous_position();
                    }
                    return Ok(false);
                }
                Err(e) => {
                    let why = format!("RX queue: {e}");
                    self.core.fail(&why);
                    return Err(why);
                }
            };
            let head = chain.head_index();
            let w = match Writer::new(&mem, chain) {
                Ok(w) => w,
                Err(e) => {
                    let _ = queue.add_used(&mem, head, 0);
                    return Err(format!("a receive buffer: {e}"));
                }
            };
            let cap = w.available_bytes();
            room = room.saturating_add(cap);
            writers.push((head, w));
            if !mergeable || cap == 0 {
                break;
            }
        }
        if room < len {
            // One buffer too small for the frame (without mergeable
            // buffers), or one with no room at all.
            for (head, _) in &writers {
                let _ = queue.add_used(&mem, *head, 0);
            }
            return Err(format!(
                "{len} bytes do not fit in the guest's {room}-byte buffer"
            ));
        }
        let count = u16::try_from(writers.len()).unwrap_or(u16::MAX);
        self.rx_frame[NUM_BUFFERS..NUM_BUFFERS + 2].copy_from_slice(&count.to_le_bytes());
        let mut done = 0;
        for (head, mut w) in writers {
            let n = w.available_bytes().min(len - done);
            let wrote = w.write(&self.rx_frame[done..done + n]).unwrap_or(0);
            done += wrote;
            let used = u32::try_from(wrote).unwrap_or(u32::MAX);
            if let Err(e) = queue.add_used(&mem, head, used) {
                let why = format!("RX queue: cannot return a buffer: {e}");
                self.core.fail(&why);
                return Err(why);
            }
        }
        Ok(true)
    }

    // ---- TX: guest to backend ----

    pub fn process_tx(&mut self) {
        if self
            .tx_limiter
            .as_ref()
            .is_some_and(RateLimiter::is_blocked)
        {
            return; // its timer calls again
        }
        let (limiter, frame, backend) =
            (&mut self.tx_limiter, &mut self.tx_frame, &mut self.backend);
        let counters = &mut self.counters;
        self.core.drain_queue(TX, "virtio-net TX", |chain, mem| {
            // Parsed once: the length charged is the length read.
            let reader = Reader::new(mem, chain).map_err(|e| e.to_string());
            let len = reader.as_ref().map_or(0, Reader::available_bytes);
            if let Some(l) = limiter.as_mut() {
                if !l.consume(len as u64) {
                    return None;
                }
            }
            let read = reader.and_then(|mut r| {
                if !(HDR_LEN..=MAX_FRAME).contains(&len) {
                    return Err(format!("a frame of {len} bytes"));
                }
                r.read_exact(&mut frame[..len]).map_err(|e| e.to_string())
            });
            match read {
                Ok(()) => match backend.send(&frame[..len]) {
                    Ok(()) => {
                        counters.tx_frames += 1;
                        counters.tx_bytes += (len - HDR_LEN) as u64;
                    }
                    // The backend's queue is full: dropped, as by a NIC.
                    Err(_) => counters.tx_dropped += 1,
                },
                Err(why) => {
                    counters.tx_dropped += 1;
                    crate::guest_log!("virtio-net: dropped a frame from the guest: {why}");
                }
            }
            Some(0)
        });
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_space, offset, data);
    }

    fn core(&self) -> &DeviceCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }
}
