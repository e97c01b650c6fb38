//! virtio-blk in the event loop: queue notifications and activation.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::device::Block;
use crate::virtio::core::TOKEN_ACTIVATE;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_ACTIVATE => self.core.sync_registrations(ops),
            0 => {
                let _ = self.core.queue_evts[0].read();
                self.process_queue();
            }
            other => eprintln!("vm: virtio-blk: unexpected event {other}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.core.init_events(ops);
    }
}
