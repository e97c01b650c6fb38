//! Legacy PC devices on the I/O port bus.

mod boot_timer;
mod i8042;
mod serial;

pub use boot_timer::{BootTimer, BOOT_TIMER_MAGIC, BOOT_TIMER_PORT};
pub use i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use serial::{Serial, COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN};
