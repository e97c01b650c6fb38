//! virtio-blk queue handling and request parsing on arbitrary rings and
//! descriptors: must never panic, hang or touch memory it should not.
#![no_main]

use std::sync::Arc;

use devices::rate_limiter::{BucketConfig, RateLimiterConfig};
use devices::virtio::block::{Block, BlockConfig, Part};
use devices::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let path = std::env::temp_dir().join(format!("vm-fuzz-blk-{}", std::process::id()));
    std::fs::write(&path, vec![0u8; 64 * 512]).expect("disk");
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    // Bit 1 of the first byte: a read-only disk of two parts of the file
    // (odd lengths, so reads cross parts and the gaps between them).
    let parts = if data.first().is_some_and(|b| b & 2 == 2) {
        vec![
            Part { path: path.clone(), offset: 100, len: 700 },
            Part { path: path.clone(), offset: 1000, len: 5000 },
        ]
    } else {
        Vec::new()
    };
    let cfg = BlockConfig {
        path: path.clone(),
        read_only: data.first().is_some_and(|b| b & 3 != 0),
        id: "fuzz".into(),
        window: None,
        seal: None,
        parts,
        // Bit 2: rate-limited (a request or two, then chains are put back
        // for later).
        rate_limit: if data.first().is_some_and(|b| b & 4 == 4) {
            RateLimiterConfig {
                bandwidth: Some(BucketConfig::per_second(4096, 0)),
                ops: Some(BucketConfig::per_second(2, 0)),
            }
        } else {
            RateLimiterConfig::default()
        },
    };
    let mut dev = Block::new(&cfg, mem, irq).expect("device");
    dev.set_acked_features(VIRTIO_F_VERSION_1);
    dev.activate(vec![common::queue()]).expect("activate");
    dev.process_queue();
    dev.process_queue();
});
