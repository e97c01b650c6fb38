//! An interrupt or event line backed by an eventfd.

use std::io;
use std::ops::Deref;

use vmm_sys_util::eventfd::EventFd;

/// An eventfd that vm-superio devices can fire (an irqfd for the serial
/// port, the reset event for the i8042).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self(self.0.try_clone()?))
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl Deref for EventFdTrigger {
    type Target = EventFd;

    fn deref(&self) -> &EventFd {
        &self.0
    }
}
