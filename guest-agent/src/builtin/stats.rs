//! `vm stats`: the guest's own counters, sampled. The VM is the
//! container's whole machine, so the guest's CPUs, memory, disks and
//! network cards are the container's.

use agent_protocol::StatsSample;

use super::{emit, pids};

pub fn run(interval_ms: u32, count: u32) -> Result<(), String> {
    let mut n = 0u32;
    loop {
        emit(&sample())?;
        n += 1;
        if count != 0 && n >= count {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(u64::from(interval_ms.max(100))));
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn sample() -> StatsSample {
    let mut s = StatsSample::default();
    let stat = read("/proc/stat");
    (s.cpu_busy, s.cpu_total, s.cpus) = cpu(&stat);
    let meminfo = read("/proc/meminfo");
    s.mem_total = meminfo_kib(&meminfo, "MemTotal:") * 1024;
    s.mem_available = meminfo_kib(&meminfo, "MemAvailable:") * 1024;
    (s.block_read, s.block_write) = disks(&read("/proc/diskstats"));
    (s.net_rx, s.net_tx) = net(&read("/proc/net/dev"));
    s.pids = pids().len() as u64;
    s
}

/// (busy ticks, all ticks, CPUs) from /proc/stat.
fn cpu(stat: &str) -> (u64, u64, u32) {
    let mut busy = 0;
    let mut total = 0;
    let mut cpus = 0;
    for l in stat.lines() {
        if let Some(rest) = l.strip_prefix("cpu ") {
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            total = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            busy = total.saturating_sub(idle);
        } else if l.starts_with("cpu") {
            cpus += 1;
        }
    }
    (busy, total, cpus)
}

fn meminfo_kib(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Bytes read and written on the virtio disks (whole disks only).
fn disks(diskstats: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for l in diskstats.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some(name) = f.get(2) else { continue };
        let whole = name.starts_with("vd") && !name.ends_with(|c: char| c.is_ascii_digit());
        if !whole {
            continue;
        }
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        r += n(5) * 512;
        w += n(9) * 512;
    }
    (r, w)
}

/// Bytes received and sent on every card but loopback.
fn net(dev: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0, 0);
    for l in dev.lines().skip(2) {
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        rx += f.first().copied().unwrap_or(0);
        tx += f.get(8).copied().unwrap_or(0);
    }
    (rx, tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_tables() {
        let stat = "cpu  10 0 5 80 5 0 0 0 0 0\ncpu0 5 0 2 40 3 0 0 0 0 0\ncpu1 5 0 3 40 2 0 0 0 0 0\nintr 1\n";
        assert_eq!(cpu(stat), (15, 100, 2));
        assert_eq!(meminfo_kib("MemTotal:  1000 kB\nMemAvailable: 600 kB\n", "MemAvailable:"), 600);
        let ds = " 254 0 vda 10 0 8 0 4 0 16 0 0 0 0\n 254 1 vda1 10 0 8 0 4 0 16 0 0 0 0\n";
        assert_eq!(disks(ds), (8 * 512, 16 * 512));
        let dev = "h1\nh2\n    lo: 5 0 0 0 0 0 0 0 5 0 0 0 0 0 0 0\n  eth0: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n";
        assert_eq!(net(dev), (100, 200));
    }
}
