//! virtio-net in the event loop: the two queues, activation, the
//! backend's frames (edge-triggered: the device reads until the backend
//! has none, or keeps the rest for when it can go on) and the rate
//! limiters' timers.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Net, RX, TX};
use crate::virtio::core::{TOKEN_ACTIVATE, TOKEN_BACKEND};

const TOKEN_FRAMES: u32 = TOKEN_BACKEND;
const TOKEN_RX_LIMITER: u32 = TOKEN_BACKEND + 1;
const TOKEN_TX_LIMITER: u32 = TOKEN_BACKEND + 2;

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_ACTIVATE => {
                self.core.sync_registrations(ops);
                self.activated();
            }
            t if t == RX as u32 => {
                let _ = self.core.queue_evts[RX].read();
                self.process_rx();
            }
            t if t == TX as u32 => {
                let _ = self.core.queue_evts[TX].read();
                self.process_tx();
            }
            TOKEN_FRAMES => self.process_rx(),
            TOKEN_RX_LIMITER => {
                if let Some(l) = &mut self.rx_limiter {
                    l.timer_fired();
                }
                self.process_rx();
            }
            TOKEN_TX_LIMITER => {
                if let Some(l) = &mut self.tx_limiter {
                    l.timer_fired();
                }
                self.process_tx();
            }
            other => crate::guest_log!("virtio-net: unexpected event {other}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.core.init_events(ops);
        let watch = [
            (
                Some(self.backend.fd()),
                TOKEN_FRAMES,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ),
            (
                self.rx_limiter.as_ref().map(AsRawFd::as_raw_fd),
                TOKEN_RX_LIMITER,
                EventSet::IN,
            ),
            (
                self.tx_limiter.as_ref().map(AsRawFd::as_raw_fd),
                TOKEN_TX_LIMITER,
                EventSet::IN,
            ),
        ];
        for (fd, token, set) in watch {
            if let Some(fd) = fd {
                if let Err(e) = ops.add(Events::with_data_raw(fd, token, set)) {
                    crate::guest_log!("virtio-net: cannot watch event {token}: {e:?}");
                }
            }
        }
    }
}
