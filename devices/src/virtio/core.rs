//! State every virtio device has: guest memory, its interrupt, the queue
//! notification eventfds, the queues once active, and the "activated"
//! eventfd that tells the event loop to (un)register the queue events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{pop_chain, GuestMem, Interrupt, VIRTIO_RING_F_EVENT_IDX};

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("{0}")]
    Backend(String),
}

pub struct DeviceCore {
    pub mem: GuestMem,
    pub interrupt: Arc<Interrupt>,
    /// One per queue; the VMM registers them as ioeventfds on QueueNotify.
    pub queue_evts: Vec<EventFd>,
    /// Written when the device is activated or reset.
    pub activate_evt: EventFd,
    pub acked_features: u64,
    pub queues: Vec<Queue>,
    pub active: bool,
    /// Whether the queue events are registered with the event loop.
    pub registered: bool,
}

impl DeviceCore {
    pub fn new(
        mem: GuestMem,
        interrupt: Arc<Interrupt>,
        queue_count: usize,
    ) -> std::io::Result<Self> {
        let mut queue_evts = Vec::with_capacity(queue_count);
        for _ in 0..queue_count {
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(Self {
            mem,
            interrupt,
            queue_evts,
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            acked_features: 0,
            queues: Vec::new(),
            active: false,
            registered: false,
        })
    }

    pub fn activate(&mut self, mut queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != self.queue_evts.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_evts.len(),
                got: queues.len(),
            });
        }
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        self.queues = queues;
        self.active = true;
        self.kick_event_loop();
        Ok(())
    }

    pub fn reset(&mut self) {
        self.queues.clear();
        self.active = false;
        self.acked_features = 0;
        self.kick_event_loop();
    }

    fn kick_event_loop(&self) {
        if let Err(e) = self.activate_evt.write(1) {
            crate::guest_log!("virtio: cannot wake the event loop: {e}");
        }
    }

    /// Tell the driver about used buffers on `queue`, if it wants to know.
    pub fn notify_used(&mut self, queue: usize) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        match q.needs_notification(&self.mem) {
            Ok(true) => self.interrupt.signal_used_queue(),
            Ok(false) => {}
            Err(_) => self.interrupt.signal_used_queue(),
        }
    }

    /// Stop using the queues: the driver broke the protocol.
    pub fn fail(&mut self, what: &str) {
        crate::guest_log!("virtio: {what}; the device needs a reset");
        self.active = false;
        self.queues.clear();
        self.interrupt.set_needs_reset();
        self.kick_event_loop();
    }
}

/// Event tokens: queue `i` is `i`; these are the others.
pub const TOKEN_ACTIVATE: u32 = 0x100;
/// First token a device may use for its own backend fds.
pub const TOKEN_BACKEND: u32 = 0x200;

impl DeviceCore {
    /// Called from the device's `init`: watch the activation eventfd.
    pub fn init_events(&self, ops: &mut event_manager::EventOps) {
        use event_manager::Events;
        use vmm_sys_util::epoll::EventSet;
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            TOKEN_ACTIVATE,
            EventSet::IN,
        )) {
            crate::guest_log!("virtio: cannot watch the activation event: {e:?}");
        }
    }

    /// After an activation or reset: make the queue eventfds watched
    /// exactly while the device is active.
    pub fn sync_registrations(&mut self, ops: &mut event_manager::EventOps) {
        use event_manager::Events;
        use vmm_sys_util::epoll::EventSet;
        let _ = self.activate_evt.read();
        if self.active == self.registered {
            return;
        }
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let events = Events::with_data(evt, i as u32, EventSet::IN);
            let r = if self.active {
                ops.add(events)
            } else {
                ops.remove(events)
            };
            if let Err(e) = r {
                crate::guest_log!("virtio: cannot (un)watch queue {i}: {e:?}");
            }
        }
        self.registered = self.active;
    }
}

impl DeviceCore {
    /// Event handling shared by devices with one queue: returns true when
    /// that queue was notified and should be processed.
    pub fn single_queue_event(
        &mut self,
        events: &event_manager::Events,
        ops: &mut event_manager::EventOps,
        name: &str,
    ) -> bool {
        match events.data() {
            TOKEN_ACTIVATE => {
                self.sync_registrations(ops);
                false
            }
            0 => {
                let _ = self.queue_evts[0].read();
                true
            }
            other => {
                crate::guest_log!("{name}: unexpected event {other}");
                false
            }
        }
    }
}

/// Most chains one drain serves before it lets the event loop go on.
pub const DRAIN_BUDGET_CHAINS: usize = 256;
/// Most time one drain takes (checked between chains) before it lets the
/// event loop go on.
pub const DRAIN_BUDGET_TIME: Duration = Duration::from_millis(20);

/// What one drain of a queue may still take: DRAIN_BUDGET_CHAINS chains
/// and DRAIN_BUDGET_TIME. A drain that runs out stops and calls
/// [`reschedule`].
pub struct DrainBudget {
    started: Instant,
    served: usize,
}

impl Default for DrainBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl DrainBudget {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            served: 0,
        }
    }

    /// Counts one more chain; false once the budget is spent.
    pub fn take(&mut self) -> bool {
        if self.served >= DRAIN_BUDGET_CHAINS || self.started.elapsed() >= DRAIN_BUDGET_TIME {
            return false;
        }
        self.served += 1;
        true
    }
}

/// Signals a queue's own eventfd, so that the event loop comes back to
/// it once it has served everything else that is ready (a stop, other
/// devices).
pub fn reschedule(queue_evt: &EventFd, name: &str) {
    if let Err(e) = queue_evt.write(1) {
        crate::guest_log!("{name}: cannot reschedule the queue: {e}");
    }
}

impl DeviceCore {
    /// Serve the chains the driver has made available on queue `idx`,
    /// with the disable-notification / drain / re-enable loop; `serve`
    /// handles one chain and returns the length for the used ring, or
    /// None to leave the chain where it is and stop (it is served by a
    /// later drain that the caller arranges). Tells
    /// the driver about used buffers, and stops using the queues if the
    /// driver broke the ring protocol.
    ///
    /// A driver that keeps offering chains cannot keep the event loop
    /// here: after [`DRAIN_BUDGET_CHAINS`] chains or [`DRAIN_BUDGET_TIME`]
    /// the drain stops and signals the queue's own eventfd, so the loop
    /// serves everything else that is ready (a stop, other devices) and
    /// then comes back.
    pub fn drain_queue(
        &mut self,
        idx: usize,
        name: &str,
        mut serve: impl FnMut(DescriptorChain<&GuestMem>, &GuestMem) -> Option<u32>,
    ) {
        if !self.active {
            return;
        }
        let mem = &self.mem;
        let Some(queue) = self.queues.get_mut(idx) else {
            return;
        };
        let mut used_any = false;
        let mut budget = DrainBudget::new();
        let broken = 'outer: loop {
            if let Err(e) = queue.disable_notification(mem) {
                break Some(format!("{name} queue: {e}"));
            }
            loop {
                if !budget.take() {
                    reschedule(&self.queue_evts[idx], name);
                    break 'outer None;
                }
                match pop_chain(queue, mem) {
                    Ok(Some(chain)) => {
                        let head = chain.head_index();
                        let Some(len) = serve(chain, mem) else {
                            // Not now (a rate limiter's wait): the chain
                            // stays for the next drain, which the
                            // limiter's timer starts.
                            queue.go_to_previous_position();
                            break 'outer None;
                        };
                        if let Err(e) = queue.add_used(mem, head, len) {
                            break 'outer Some(format!("{name} queue: cannot return buffer: {e}"));
                        }
                        used_any = true;
                    }
                    Ok(None) => break,
                    Err(e) => break 'outer Some(format!("{name} queue: {e}")),
                }
            }
            match queue.enable_notification(mem) {
                Ok(true) => continue, // more arrived meanwhile
                Ok(false) => break None,
                Err(e) => break Some(format!("{name} queue: {e}")),
            }
        };
        if used_any {
            self.notify_used(idx);
        }
        if let Some(why) = broken {
            self.fail(&why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testutil::{desc, interrupt, memory, Driver, DATA, F_WRITE};

    /// The driver's queue of 16, with the used ring well away from the
    /// available ring (the mock's own layout lets them overlap past
    /// half the ring, and this test goes round it many times).
    fn queue_of(driver: &Driver) -> Queue {
        let mut q = Queue::new(16).expect("queue");
        let avail = driver.vq.avail_addr().0;
        q.set_desc_table_address(Some(0), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(0x8000), Some(0));
        q.set_size(16);
        q.set_ready(true);
        q
    }

    #[test]
    fn a_driver_that_keeps_offering_cannot_hold_the_event_loop() {
        let mem = memory();
        let mut driver = Driver::new(&mem, 16);
        let (irq, _) = interrupt();
        let mut core = DeviceCore::new(mem.clone(), irq, 1).expect("core");
        core.activate(vec![queue_of(&driver)]).expect("activate");
        let _ = core.activate_evt.read();
        driver.store(0, &[desc(DATA, 16, F_WRITE, 0)]);
        driver.offer(0);
        // Each chain served is offered again at once, as a hostile driver
        // would: without a budget this drain would never end.
        let mut served = 0usize;
        core.drain_queue(0, "test", |_, _| {
            served += 1;
            driver.offer(0);
            Some(0)
        });
        assert!(core.active, "a busy driver is not a broken one");
        assert!(
            (1..=DRAIN_BUDGET_CHAINS).contains(&served),
            "served {served} chains in one drain"
        );
        assert_eq!(
            core.queue_evts[0].read().ok(),
            Some(1),
            "the queue is rescheduled"
        );
        // The next drain goes on where this one stopped.
        let mut more = 0usize;
        core.drain_queue(0, "test", |_, _| {
            more += 1;
            Some(0)
        });
        assert_eq!(more, 1, "the chain offered last is served next");
        assert!(core.queue_evts[0].read().is_err(), "nothing left to do");
    }
}
