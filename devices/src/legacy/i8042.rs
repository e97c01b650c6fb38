//! The i8042 keyboard controller, reduced to what a guest uses it for here:
//! resetting the machine (`reboot=k`). vm-superio does the emulation.

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60 (data) to 0x64 (command/status).
pub const I8042_PORT_LEN: u64 = 5;

pub struct I8042 {
    inner: vm_superio::I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// `reset` is fired when the guest asks for a CPU reset.
    pub fn new(reset: EventFdTrigger) -> Self {
        Self {
            inner: vm_superio::I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = self.inner.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        if let Err(e) = self.inner.write(offset as u8, data[0]) {
            eprintln!("vm: i8042 could not signal the reset: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn reset_command_fires_the_reset_event() {
        let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut dev = I8042::new(EventFdTrigger::new(evt.try_clone().expect("clone")));
        dev.write(0, &[0xfe]); // data port: not a command
        assert!(evt.read().is_err());
        dev.write(4, &[0xfe]); // command port: pulse reset line
        assert_eq!(evt.read().expect("reset fired"), 1);
    }
}
