//! A bus maps address ranges (I/O ports or MMIO) to devices. vCPU threads
//! dispatch their port and MMIO exits through it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`]. `offset` is relative to the start
/// of the range the device was inserted at.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or wraps around the address space.
    InvalidRange { base: u64, len: u64 },
    /// The new range overlaps one that is already taken.
    Overlap { base: u64, len: u64 },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::InvalidRange { base, len } => {
                write!(f, "invalid bus range {base:#x}+{len:#x}")
            }
            BusError::Overlap { base, len } => {
                write!(f, "bus range {base:#x}+{len:#x} overlaps another device")
            }
        }
    }
}

impl std::error::Error for BusError {}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// Ranges of addresses, each owned by one device.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if let Some((&b, e)) = self.ranges.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        if offset.checked_add(size as u64)? <= entry.len {
            Some((offset, &entry.device))
        } else {
            None
        }
    }

    /// Dispatch a read. Returns false, leaving `data` untouched, when no
    /// device owns the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write. Returns false when no device owns the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// A device whose lock was poisoned by a panicking thread is still used:
/// its state is plain data and the VM is being torn down anyway.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).expect("insert");
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 2);
        assert!(bus.write(0x3ff, &[9]));
        assert!(!bus.write(0x400, &[9]));
        assert!(!bus.read(0x3f7, &mut b));
        // An access that straddles the end of the range is refused.
        assert!(!bus.write(0x3fe, &[1, 2, 3, 4]));
        assert_eq!(dev.lock().expect("lock").writes, vec![(7, vec![9])]);
    }

    #[test]
    fn refuses_overlaps_and_empty_ranges() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x60, 1).expect("insert");
        bus.insert(dev.clone(), 0x64, 1).expect("insert");
        assert_eq!(
            bus.insert(dev.clone(), 0x5f, 2),
            Err(BusError::Overlap { base: 0x5f, len: 2 })
        );
        assert!(bus.insert(dev.clone(), 0x10, 0).is_err());
        assert!(bus.insert(dev, u64::MAX, 2).is_err());
    }
}
