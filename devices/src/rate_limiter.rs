//! Token buckets that cap how fast a guest may use a device, in bytes and
//! in operations, the way Firecracker's rate limiters do: a bucket holds
//! up to `size` tokens, refills `size` tokens every `refill_time`, and may
//! start with a one-time burst on top. A request takes its tokens from
//! every bucket the limiter has, or waits: the device stops serving its
//! queue and a timer wakes it when the tokens are there.
//!
//! A request bigger than a whole bucket still goes through once the bucket
//! is full, and leaves the bucket in debt: on average the rate holds
//! whatever the request sizes.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// One bucket's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full (and refills per `refill_time`).
    pub size: u64,
    /// Tokens available once, at the start, before the bucket's own.
    pub one_time_burst: u64,
    pub refill_time: Duration,
}

impl BucketConfig {
    /// `rate` tokens per second, a second's worth at a time, plus a
    /// one-time `burst`.
    pub fn per_second(rate: u64, burst: u64) -> Self {
        Self {
            size: rate,
            one_time_burst: burst,
            refill_time: Duration::from_secs(1),
        }
    }
}

/// A limiter's buckets: bytes, operations, either or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimiterConfig {
    pub bandwidth: Option<BucketConfig>,
    pub ops: Option<BucketConfig>,
}

impl RateLimiterConfig {
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }
}

#[derive(Debug)]
struct TokenBucket {
    size: u64,
    refill_time: Duration,
    /// May go below zero after a request larger than the bucket.
    budget: i128,
    burst: u64,
    last_refill: Instant,
}

impl TokenBucket {
    fn new(cfg: BucketConfig, now: Instant) -> Option<Self> {
        if cfg.size == 0 || cfg.refill_time.is_zero() {
            return None;
        }
        Some(Self {
            size: cfg.size,
            refill_time: cfg.refill_time,
            budget: i128::from(cfg.size),
            burst: cfg.one_time_burst,
            last_refill: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_refill).as_nanos();
        let period = self.refill_time.as_nanos().max(1);
        // Whole tokens only; the remainder of the time carries over.
        let tokens = elapsed * u128::from(self.size) / period;
        if tokens == 0 {
            return;
        }
        let used = tokens * period / u128::from(self.size);
        self.last_refill += Duration::from_nanos(u64::try_from(used).unwrap_or(u64::MAX));
        let size = i128::from(self.size);
        self.budget = (self.budget + i128::try_from(tokens).unwrap_or(i128::MAX)).min(size);
        if self.budget == size {
            // Full: time spent full earns nothing.
            self.last_refill = now;
        }
    }

    /// Whether `tokens` can be taken now (a request bigger than the
    /// bucket needs it full).
    fn can_take(&self, tokens: u64) -> bool {
        let need = tokens.min(self.size);
        u128::from(self.burst) >= u128::from(tokens) || self.budget >= i128::from(need)
    }

    fn take(&mut self, tokens: u64) {
        if self.burst >= tokens {
            self.burst -= tokens;
        } else {
            self.budget -= i128::from(tokens);
        }
    }

    /// How long until `tokens` can be taken.
    fn wait_for(&self, tokens: u64) -> Duration {
        let need = i128::from(tokens.min(self.size));
        let missing = u128::try_from(need - self.budget).unwrap_or(0);
        let nanos = missing * self.refill_time.as_nanos() / u128::from(self.size);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A device's limiter: its buckets and the timer that ends a wait.
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
}

/// The shortest wait the timer is set for.
const MIN_WAIT: Duration = Duration::from_millis(1);

impl RateLimiter {
    pub fn new(cfg: &RateLimiterConfig) -> std::io::Result<Self> {
        let now = Instant::now();
        Ok(Self {
            bandwidth: cfg.bandwidth.and_then(|b| TokenBucket::new(b, now)),
            ops: cfg.ops.and_then(|b| TokenBucket::new(b, now)),
            timer: TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?,
            blocked: false,
        })
    }

    /// Takes one operation of `bytes` from the buckets, or takes nothing,
    /// starts the timer and returns false: the caller stops serving until
    /// [`timer_fired`](Self::timer_fired).
    pub fn consume(&mut self, bytes: u64) -> bool {
        if self.blocked {
            return false;
        }
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        for (bucket, tokens) in [(&mut self.bandwidth, bytes), (&mut self.ops, 1)] {
            if let Some(b) = bucket {
                b.refill(now);
                if !b.can_take(tokens) {
                    wait = wait.max(b.wait_for(tokens));
                }
            }
        }
        // Without a timer to end the wait, the request goes through: a
        // device is never left waiting for nothing.
        if !wait.is_zero() && self.timer.reset(wait.max(MIN_WAIT), None).is_ok() {
            self.blocked = true;
            return false;
        }
        for (bucket, tokens) in [(&mut self.bandwidth, bytes), (&mut self.ops, 1)] {
            if let Some(b) = bucket {
                b.take(tokens);
            }
        }
        true
    }

    /// Whether the device is waiting for its timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timer went off: the device may serve again.
    pub fn timer_fired(&mut self) {
        // Armed exactly while blocked: read it only then (a read of a
        // timer that is not armed would wait).
        if self.blocked {
            let _ = self.timer.wait();
            self.blocked = false;
        }
    }
}

impl AsRawFd for RateLimiter {
    /// The timer's descriptor, for the event loop.
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: u64, ms: u64) -> TokenBucket {
        TokenBucket::new(
            BucketConfig {
                size,
                one_time_burst: burst,
                refill_time: Duration::from_millis(ms),
            },
            Instant::now(),
        )
        .expect("bucket")
    }

    #[test]
    fn a_bucket_empties_and_refills_at_its_rate() {
        let mut b = bucket(1000, 0, 1000);
        let t0 = b.last_refill;
        assert!(b.can_take(600));
        b.take(600);
        assert!(!b.can_take(600));
        assert_eq!(b.wait_for(600), Duration::from_millis(200));
        b.refill(t0 + Duration::from_millis(100));
        assert_eq!(b.budget, 500);
        b.refill(t0 + Duration::from_millis(200));
        assert!(b.can_take(600));
        // Never more than its size, however long it waits.
        b.refill(t0 + Duration::from_secs(60));
        assert_eq!(b.budget, 1000);
    }

    #[test]
    fn the_one_time_burst_comes_first_and_only_once() {
        let mut b = bucket(100, 1000, 1000);
        assert!(b.can_take(900));
        b.take(900);
        assert_eq!((b.burst, b.budget), (100, 100));
        b.take(100);
        b.take(100);
        assert_eq!((b.burst, b.budget), (0, 0));
        assert!(!b.can_take(1));
    }

    #[test]
    fn a_request_bigger_than_the_bucket_waits_for_a_full_bucket_and_leaves_debt() {
        let mut b = bucket(100, 0, 1000);
        let t0 = b.last_refill;
        assert!(b.can_take(250));
        b.take(250);
        assert_eq!(b.budget, -150);
        // 150 owed plus a full bucket before the next big one.
        assert_eq!(b.wait_for(250), Duration::from_millis(2500));
        b.refill(t0 + Duration::from_millis(1500));
        assert_eq!(b.budget, 0);
        assert!(!b.can_take(250));
        b.refill(t0 + Duration::from_millis(2500));
        assert!(b.can_take(250));
    }

    #[test]
    fn fractions_of_a_token_are_not_lost() {
        let mut b = bucket(3, 0, 1000);
        let t0 = b.last_refill;
        b.take(3);
        // 1/3 s earns one token; ten steps of 100 ms earn three in all.
        for i in 1..=10 {
            b.refill(t0 + Duration::from_millis(100 * i));
        }
        assert_eq!(b.budget, 3);
    }

    #[test]
    fn a_limiter_waits_for_its_timer_once_empty() {
        let cfg = RateLimiterConfig {
            bandwidth: None,
            ops: Some(BucketConfig {
                size: 2,
                one_time_burst: 0,
                refill_time: Duration::from_millis(20),
            }),
        };
        let mut l = RateLimiter::new(&cfg).expect("limiter");
        assert!(l.consume(4096));
        assert!(l.consume(4096));
        assert!(!l.consume(4096));
        assert!(l.is_blocked());
        // Refused while blocked, even once the tokens are back.
        std::thread::sleep(Duration::from_millis(30));
        assert!(!l.consume(1));
        l.timer_fired();
        assert!(l.consume(1));
    }

    #[test]
    fn an_empty_config_limits_nothing() {
        let mut l = RateLimiter::new(&RateLimiterConfig::default()).expect("limiter");
        for _ in 0..10_000 {
            assert!(l.consume(1 << 30));
        }
    }
}
