//! The virtio-mmio transport: register reads and writes in any order, at
//! any offset in the device's window, of any size (1 to 8 bytes), with any
//! values, over an entropy device and a block device (whose queues, once
//! a driver brings one up, point wherever the input says). Must never
//! panic or hang, and must keep the status a value it accepted.
#![no_main]

use std::sync::{Arc, Mutex};

use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::mmio::{MmioTransport, MMIO_SIZE};
use devices::virtio::rng::Rng;
use devices::virtio::{Interrupt, VirtioDevice};
use devices::BusDevice;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[path = "common.rs"]
mod common;

fn disk() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("vm-fuzz-mmio-{}.img", std::process::id()));
    if !path.exists() {
        std::fs::write(&path, vec![0u8; 64 * 1024]).expect("disk");
    }
    path
}

fn transport(data: &[u8], block: bool) -> MmioTransport {
    let mem = common::memory(data);
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    let device: Arc<Mutex<dyn VirtioDevice>> = if block {
        let cfg = BlockConfig {
            path: disk(),
            ..BlockConfig::default()
        };
        Arc::new(Mutex::new(Block::new(&cfg, mem.clone(), irq.clone()).expect("block")))
    } else {
        Arc::new(Mutex::new(Rng::new(mem.clone(), irq.clone()).expect("rng")))
    };
    let evts = {
        let d = device.lock().expect("lock");
        d.queue_evts()
            .iter()
            .map(|e| e.try_clone().expect("eventfd"))
            .collect()
    };
    MmioTransport::new(device, irq, mem, evts)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, ops)) = data.split_first() else {
        return;
    };
    let mut t = transport(data, first & 1 == 1);
    // Each operation: a byte (bit 7: write; bits 0-2: size - 1), a 16-bit
    // offset (within the window, or just past it), an 8-byte value.
    for op in ops.chunks_exact(11) {
        let write = op[0] & 0x80 != 0;
        let size = usize::from(op[0] & 7) + 1;
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) % (MMIO_SIZE + 0x10);
        let mut value = [0u8; 8];
        value.copy_from_slice(&op[3..11]);
        if write {
            t.write(offset, &value[..size]);
        } else {
            t.read(offset, &mut value[..size]);
        }
        // Only the bits the state machine knows, whatever was written.
        assert_eq!(t.status() & !0xcf, 0, "status {:#x}", t.status());
    }
});
