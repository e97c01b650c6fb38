//! How fast a container's VM may use its disks and its vsock channel
//! (token buckets in the VMM's devices, see `devices::rate_limiter`), and
//! its share of the host's disk time (the cgroup's `io.weight`).
//!
//! A rate is given per second with an optional one-time burst on top:
//! `--disk-bps 20m` is 20 MiB/s in buckets of a second; `--disk-bps
//! 20m:200m` lets the first 200 MiB through at once (a boot, a cache
//! warm-up) and holds the rate after.

use devices::rate_limiter::{BucketConfig, RateLimiterConfig};
use serde::{Deserialize, Serialize};

/// One limit: so many per second, and a burst once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub per_second: u64,
    #[serde(default)]
    pub burst: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// `--disk-bps`: bytes per second, reads and writes together, for
    /// each of the container's disks.
    #[serde(default)]
    pub disk_bps: Option<Rate>,
    /// `--disk-iops`: requests per second, for each disk.
    #[serde(default)]
    pub disk_iops: Option<Rate>,
    /// `--vsock-bps`: bytes per second the guest sends to the host
    /// (output, logs, copies out).
    #[serde(default)]
    pub vsock_bps: Option<Rate>,
    /// `--vsock-ops`: packets per second the guest sends to the host.
    #[serde(default)]
    pub vsock_ops: Option<Rate>,
    /// `--blkio-weight` (10 to 1000, Docker's scale).
    #[serde(default)]
    pub blkio_weight: Option<u16>,
}

fn bucket(r: Option<Rate>) -> Option<BucketConfig> {
    r.filter(|r| r.per_second > 0)
        .map(|r| BucketConfig::per_second(r.per_second, r.burst))
}

impl Limits {
    pub fn disk(&self) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: bucket(self.disk_bps),
            ops: bucket(self.disk_iops),
        }
    }

    pub fn vsock(&self) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: bucket(self.vsock_bps),
            ops: bucket(self.vsock_ops),
        }
    }

    /// `io.weight` for the cgroup (1 to 10000), from Docker's
    /// `--blkio-weight` (10 to 1000) the way runc maps it.
    pub fn io_weight(&self) -> Option<u64> {
        self.blkio_weight
            .map(|w| 1 + (u64::from(w).clamp(10, 1000) - 10) * 9999 / 990)
    }
}

/// Parses `RATE[:BURST]` where each is a count with an optional k, m, g
/// suffix (powers of 1024 for bytes, `bytes` true; of 1000 for counts).
pub fn parse_rate(s: &str, bytes: bool) -> Result<Rate, String> {
    let (rate, burst) = match s.split_once(':') {
        Some((r, b)) => (r, Some(b)),
        None => (s, None),
    };
    let per_second = parse_count(rate, bytes)?;
    if per_second == 0 {
        return Err(format!("{s}: the rate must be more than 0"));
    }
    let burst = burst.map_or(Ok(0), |b| parse_count(b, bytes))?;
    Ok(Rate { per_second, burst })
}

fn parse_count(s: &str, bytes: bool) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = if bytes {
        t.strip_suffix('b').unwrap_or(&t).to_string()
    } else {
        t
    };
    let unit: u64 = if bytes { 1024 } else { 1000 };
    let (digits, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], unit),
        Some('m') => (&t[..t.len() - 1], unit * unit),
        Some('g') => (&t[..t.len() - 1], unit * unit * unit),
        _ => (t.as_str(), 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            let example = if bytes { "10m or 512k" } else { "100 or 2k" };
            format!(
                "{s:?} is not a rate: give a whole number with an optional k, m or g ({example})"
            )
        })
}

/// Docker's `--blkio-weight`: 10 to 1000 (0 means unset).
pub fn parse_blkio_weight(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(w) if (10..=1000).contains(&w) || w == 0 => Ok(w),
        _ => Err(format!(
            "--blkio-weight {s}: give a weight from 10 to 1000 (or 0 for none)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_with_units_and_bursts() {
        assert_eq!(
            parse_rate("10m", true),
            Ok(Rate {
                per_second: 10 << 20,
                burst: 0
            })
        );
        assert_eq!(
            parse_rate("512kb:1g", true),
            Ok(Rate {
                per_second: 512 << 10,
                burst: 1 << 30
            })
        );
        assert_eq!(
            parse_rate("2k", false),
            Ok(Rate {
                per_second: 2000,
                burst: 0
            })
        );
        assert!(parse_rate("0", true).is_err());
        assert!(parse_rate("fast", true).is_err_and(|e| e.contains("not a rate")));
        assert!(parse_rate("10x", false).is_err());
        assert!(parse_rate("99999999999g", true).is_err());
    }

    #[test]
    fn blkio_weight_maps_as_runc_does() {
        let w = |n| Limits {
            blkio_weight: Some(n),
            ..Limits::default()
        };
        assert_eq!(w(10).io_weight(), Some(1));
        assert_eq!(w(500).io_weight(), Some(4950));
        assert_eq!(w(1000).io_weight(), Some(10000));
        assert!(parse_blkio_weight("5").is_err());
        assert_eq!(parse_blkio_weight("300"), Ok(300));
    }

    #[test]
    fn only_what_is_set_limits() {
        let l = Limits {
            disk_iops: Some(Rate {
                per_second: 100,
                burst: 0,
            }),
            ..Limits::default()
        };
        assert!(l.disk().bandwidth.is_none());
        assert_eq!(l.disk().ops.map(|b| b.size), Some(100));
        assert!(l.vsock().is_unlimited());
    }
}
