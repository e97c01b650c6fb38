//! virtio-vsock: arbitrary packets on the TX queue (and RX buffers from
//! the same input): must never panic, hang or grow without bound.
#![no_main]

use std::sync::{Arc, Mutex};

use devices::rate_limiter::{BucketConfig, RateLimiterConfig};
use devices::virtio::vsock::{Vsock, VsockConfig};
use devices::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use event_manager::{EventManager, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let path = std::env::temp_dir().join(format!("vm-fuzz-vsock-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    let cfg = VsockConfig {
        guest_cid: 3,
        uds_path: path,
        // Bit 0 of the second byte: rate-limited (a few packets, then the
        // rest are put back for later).
        rate_limit: if data.get(1).is_some_and(|b| b & 1 == 1) {
            RateLimiterConfig {
                bandwidth: Some(BucketConfig::per_second(8192, 0)),
                ops: Some(BucketConfig::per_second(3, 0)),
            }
        } else {
            RateLimiterConfig::default()
        },
    };
    let mut dev = Vsock::new(&cfg, mem, irq).expect("device");
    dev.set_acked_features(VIRTIO_F_VERSION_1);
    // The same rings serve as RX and TX: the device must cope with that too.
    dev.activate(vec![common::queue(), common::queue(), common::queue()]).expect("activate");
    let dev = Arc::new(Mutex::new(dev));
    let mut em: EventManager<Arc<Mutex<Vsock>>> = EventManager::new().expect("event manager");
    let id = em.add_subscriber(dev.clone());
    // Host listeners on ports 1024-1027, so that requests to them make
    // connections, and the rest of the input drives their state machine
    // (data, credit, shutdowns, resets) from the guest side while the
    // host side sends data back.
    let listeners: Vec<_> = (1024..1028)
        .filter_map(|p| std::os::unix::net::UnixListener::bind(format!("{}_{p}", cfg.uds_path.display())).ok())
        .collect();
    for l in &listeners {
        let _ = l.set_nonblocking(true);
    }
    {
        let mut ops = em.event_ops(id).expect("ops");
        let mut d = dev.lock().expect("lock");
        d.process_tx(&mut ops);
        d.process_rx(&mut ops);
    }
    let mut hosts = Vec::new();
    for l in &listeners {
        while let Ok((mut s, _)) = l.accept() {
            let _ = s.set_nonblocking(true);
            let _ = std::io::Write::write(&mut s, b"from the host");
            hosts.push(s);
        }
    }
    for _ in 0..3 {
        let _ = em.run_with_timeout(0);
    }
    {
        let mut ops = em.event_ops(id).expect("ops");
        let mut d = dev.lock().expect("lock");
        d.process_tx(&mut ops);
        d.process_rx(&mut ops);
        assert!(d.buffered_bytes() <= 17 << 20);
    }
    drop(hosts);
    for p in 1024..1028 {
        let _ = std::fs::remove_file(format!("{}_{p}", cfg.uds_path.display()));
    }
});
