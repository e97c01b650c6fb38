//! virtio-blk in the event loop: queue notifications and activation.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::device::Block;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.core.single_queue_event(&events, ops, "virtio-blk") {
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.core.init_events(ops);
    }
}
