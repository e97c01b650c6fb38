//! virtio-blk in the event loop: queue notifications, activation, and the
//! rate limiter's timer.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Block;
use crate::virtio::core::TOKEN_BACKEND;

const TOKEN_LIMITER: u32 = TOKEN_BACKEND;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == TOKEN_LIMITER {
            if let Some(l) = &mut self.limiter {
                l.timer_fired();
            }
            self.process_queue();
        } else if self.core.single_queue_event(&events, ops, "virtio-blk") {
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.core.init_events(ops);
        if let Some(l) = &self.limiter {
            let events = Events::with_data_raw(l.as_raw_fd(), TOKEN_LIMITER, EventSet::IN);
            if let Err(e) = ops.add(events) {
                crate::guest_log!("virtio-blk: cannot watch the rate limiter: {e:?}");
            }
        }
    }
}
