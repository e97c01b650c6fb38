//! The 8250 UART at COM1, emulated by vm-superio, its interrupt an irqfd.

use std::io::Write;

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

pub const COM1_PORT_BASE: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// The guest's serial console. Output goes to `W`; input is queued with
/// [`Serial::enqueue_input`].
pub struct Serial<W: Write + Send> {
    inner: vm_superio::Serial<EventFdTrigger, vm_superio::serial::NoEvents, W>,
}

impl<W: Write + Send> Serial<W> {
    pub fn new(irq: EventFdTrigger, out: W) -> Self {
        Self {
            inner: vm_superio::Serial::new(irq, out),
        }
    }

    /// Queue bytes for the guest to read. Returns how many fitted in the
    /// receive FIFO; the rest must be offered again later.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.inner.fifo_capacity();
        let n = bytes.len().min(room);
        if n == 0 {
            return 0;
        }
        match self.inner.enqueue_raw_bytes(&bytes[..n]) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("vm: serial input dropped: {e:?}");
                0
            }
        }
    }

    /// A UART with the registers of `state` (from [`Serial::state`]),
    /// as a restored guest left it; input it had not read is lost.
    pub fn with_state(irq: EventFdTrigger, out: W, state: [u8; 9]) -> Result<Self, String> {
        let [dll, dlh, ier, iir, lcr, lsr, mcr, msr, scr] = state;
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: dll,
            baud_divisor_high: dlh,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: Vec::new(),
        };
        vm_superio::Serial::from_state(&state, irq, vm_superio::serial::NoEvents, out)
            .map(|inner| Self { inner })
            .map_err(|e| format!("serial state: {e:?}"))
    }

    /// The registers the guest programmed, for a snapshot.
    pub fn state(&self) -> [u8; 9] {
        let s = self.inner.state();
        [
            s.baud_divisor_low,
            s.baud_divisor_high,
            s.interrupt_enable,
            s.interrupt_identification,
            s.line_control,
            s.line_status,
            s.modem_control,
            s.modem_status,
            s.scratch,
        ]
    }

    pub fn writer_mut(&mut self) -> &mut W {
        self.inner.writer_mut()
    }
}

impl<W: Write + Send> BusDevice for Serial<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= COM1_PORT_LEN {
            data.fill(0xff);
            return;
        }
        data[0] = self.inner.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= COM1_PORT_LEN {
            return;
        }
        if let Err(e) = self.inner.write(offset as u8, data[0]) {
            // A console that cannot be written (closed pipe) must not stop
            // the guest; the byte is lost.
            let _ = e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn transmits_to_writer_and_raises_interrupt_for_input() {
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let trigger = EventFdTrigger::new(irq.try_clone().expect("clone"));
        let mut serial = Serial::new(trigger, Vec::new());
        for b in b"hi\n" {
            serial.write(0, &[*b]);
        }
        assert_eq!(serial.writer_mut().as_slice(), b"hi\n");
        // Enable the received-data interrupt, then feed input.
        serial.write(1, &[0x01]);
        assert_eq!(serial.enqueue_input(b"ab"), 2);
        assert!(irq.read().expect("irq fired") >= 1);
        let mut b = [0u8];
        serial.read(0, &mut b);
        assert_eq!(b[0], b'a');
        // Wrong-sized accesses are ignored and read as 0xff.
        let mut two = [0u8; 2];
        serial.read(0, &mut two);
        assert_eq!(two, [0xff, 0xff]);
    }

    #[test]
    fn state_round_trips() {
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut serial = Serial::new(EventFdTrigger::new(irq), Vec::new());
        serial.write(1, &[0x03]); // IER
        serial.write(3, &[0x1b]); // LCR
        serial.write(7, &[0x5a]); // scratch
        let state = serial.state();
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let restored =
            Serial::with_state(EventFdTrigger::new(irq), Vec::new(), state).expect("restores");
        assert_eq!(restored.state(), state);
        assert_eq!(state[2], 0x03);
        assert_eq!(state[8], 0x5a);
    }
}
