//! virtio-rng (entropy device) fed from the host's getrandom(2).

use std::io::Write;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::Writer;

use super::{DeviceCore, GuestMem, Interrupt, VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1};

const QUEUE_SIZE: u16 = 64;
/// Most bytes handed out per request, whatever the buffer size.
const MAX_REQUEST: usize = 64 * 1024;

pub struct Rng {
    core: DeviceCore,
}

impl Rng {
    pub fn new(mem: GuestMem, interrupt: Arc<Interrupt>) -> std::io::Result<Self> {
        Ok(Self {
            core: DeviceCore::new(mem, interrupt, 1)?,
        })
    }

    fn process_queue(&mut self) {
        self.core
            .drain_queue(0, "rng", |chain, mem| match Writer::new(mem, chain) {
                Ok(mut w) => Some(fill_random(&mut w)),
                Err(e) => {
                    crate::guest_log!("virtio-rng: bad descriptor chain: {e}");
                    Some(0)
                }
            });
    }
}

fn fill_random(w: &mut Writer) -> u32 {
    let n = w.available_bytes().min(MAX_REQUEST);
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: getrandom writes at most `n - filled` bytes into the
        // buffer, which is that long from the given pointer.
        let r = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if r <= 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            crate::guest_log!("virtio-rng: getrandom: {err}");
            break;
        }
        filled += r as usize;
    }
    match w.write_all(&buf[..filled]) {
        Ok(()) => filled as u32,
        Err(_) => 0,
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn core(&self) -> &DeviceCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }
}

impl MutEventSubscriber for Rng {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.core.single_queue_event(&events, ops, "virtio-rng") {
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.core.init_events(ops);
    }
}
