//! virtio-vsock in the event loop: queue notifications, the listener, and
//! every connection's host socket.

use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::AsRawFd;
use vmm_sys_util::epoll::EventSet;

use super::device::{Vsock, RX, TOKEN_LIMITER, TOKEN_LISTENER, TOKEN_TIMER, TX};
use crate::virtio::core::TOKEN_ACTIVATE;

const EVT: usize = 2;

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        match token {
            TOKEN_ACTIVATE => {
                self.core.sync_registrations(ops);
                self.activated(ops);
            }
            t if t == RX as u32 => {
                let _ = self.core.queue_evts[RX].read();
                self.process_rx(ops);
            }
            t if t == TX as u32 => {
                let _ = self.core.queue_evts[TX].read();
                self.process_tx(ops);
            }
            t if t == EVT as u32 => {
                // We never send transport events; the buffers stay queued.
                let _ = self.core.queue_evts[EVT].read();
            }
            TOKEN_TIMER => {
                self.expire_pending(ops);
                self.process_rx(ops);
            }
            TOKEN_LIMITER => {
                if let Some(l) = &mut self.limiter {
                    l.timer_fired();
                }
                self.process_tx(ops);
            }
            TOKEN_LISTENER => {
                self.accept_host_clients(ops);
                self.process_rx(ops);
            }
            t => {
                self.token_event(t, events.event_set(), ops);
                self.process_rx(ops);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.core.init_events(ops);
        let fd = self.listener.as_raw_fd();
        if let Err(e) = ops.add(Events::with_data_raw(fd, TOKEN_LISTENER, EventSet::IN)) {
            eprintln!("vm: vsock: cannot watch the listener: {e:?}");
        }
        let fd = self.timer.as_raw_fd();
        if let Err(e) = ops.add(Events::with_data_raw(fd, TOKEN_TIMER, EventSet::IN)) {
            eprintln!("vm: vsock: cannot watch the timer: {e:?}");
        }
        if let Some(l) = &self.limiter {
            let events = Events::with_data_raw(l.as_raw_fd(), TOKEN_LIMITER, EventSet::IN);
            if let Err(e) = ops.add(events) {
                eprintln!("vm: vsock: cannot watch the rate limiter: {e:?}");
            }
        }
    }
}
