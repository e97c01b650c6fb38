//! A port the guest writes once when its userspace starts, so the VMM can
//! tell how long the boot took (Firecracker has the same idea on MMIO).

use std::time::{Duration, Instant};

use crate::bus::BusDevice;

pub const BOOT_TIMER_PORT: u64 = 0x440;
/// The byte the guest writes; anything else is ignored.
pub const BOOT_TIMER_MAGIC: u8 = 123;

type Report = Box<dyn FnMut(Duration) + Send>;

pub struct BootTimer {
    start: Instant,
    report: Option<Report>,
}

impl BootTimer {
    /// `report` is called once, with the time since `start`.
    pub fn new(start: Instant, report: Report) -> Self {
        Self {
            start,
            report: Some(report),
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_TIMER_MAGIC) {
            return;
        }
        if let Some(mut report) = self.report.take() {
            report(self.start.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn reports_once_on_magic() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut t = BootTimer::new(
            Instant::now(),
            Box::new(move |d| s.lock().expect("lock").push(d)),
        );
        t.write(0, &[1]);
        assert!(seen.lock().expect("lock").is_empty());
        t.write(0, &[BOOT_TIMER_MAGIC]);
        t.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(seen.lock().expect("lock").len(), 1);
    }
}
