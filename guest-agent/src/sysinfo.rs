//! What the guest sees of its machine.

use std::fs;

pub struct Info {
    pub cpus: usize,
    pub mem_mib: u64,
}

pub fn read() -> Info {
    Info {
        cpus: fs::read_to_string("/proc/cpuinfo")
            .map(|s| count_cpus(&s))
            .unwrap_or(0),
        mem_mib: fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| mem_total_kib(&s))
            .map(|k| k / 1024)
            .unwrap_or(0),
    }
}

fn count_cpus(cpuinfo: &str) -> usize {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            count_cpus("processor\t: 0\nflags: x\n\nprocessor\t: 1\n"),
            2
        );
        assert_eq!(
            mem_total_kib("MemTotal:        1004412 kB\nMemFree: 1 kB\n"),
            Some(1004412)
        );
        assert_eq!(mem_total_kib("nothing"), None);
    }
}
