//! Devices of the vm microVM: the I/O bus they sit on and the legacy PC
//! devices a Linux guest needs (8250 serial, i8042 reset, boot timer).
//! Devices know nothing of containers or of KVM.

pub mod bus;
pub mod legacy;
pub mod log;
pub mod rate_limiter;
pub mod trigger;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use trigger::EventFdTrigger;
