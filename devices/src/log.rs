//! Messages a guest can cause (a malformed request, a refused write, a
//! driver breaking the rules). A guest can cause them as often as it
//! likes, so they are rate-limited (a burst, then a few a second, with a
//! count of what was left out), and they are never written by the thread
//! that noticed them: a vCPU or the event loop only queues the line, and
//! one writer thread blocks on stderr if the reader of stderr stalls. A
//! full queue drops lines (counted) instead of waiting.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Lines let through at once before the rate applies.
const BURST: f64 = 20.0;
/// Lines let through per second after a burst.
const PER_SECOND: f64 = 2.0;
/// Lines waiting for the writer thread.
const QUEUE: usize = 64;

/// A token bucket over lines, with the count of lines refused since the
/// last one let through.
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
    suppressed: u64,
}

impl Bucket {
    const fn new() -> Self {
        Self {
            tokens: BURST,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether a line may go out at `now`; if so, how many were refused
    /// before it.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if let Some(last) = self.last {
            let secs = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + secs * PER_SECOND).min(BURST);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

struct Logger {
    bucket: Mutex<Bucket>,
    queue: SyncSender<String>,
    /// Lines queued and not yet written.
    unwritten: Arc<AtomicUsize>,
}

impl Logger {
    fn new(mut sink: impl Write + Send + 'static) -> Self {
        let (queue, lines) = sync_channel::<String>(QUEUE);
        let unwritten = Arc::new(AtomicUsize::new(0));
        let count = unwritten.clone();
        let spawned = std::thread::Builder::new()
            .name("guest-log".into())
            .spawn(move || {
                for line in lines {
                    let _ = sink.write_all(line.as_bytes());
                    let _ = sink.flush();
                    count.fetch_sub(1, Ordering::AcqRel);
                }
            });
        // Without the thread the receiver is gone and every line is
        // dropped: a guest's messages are never worth blocking for.
        drop(spawned);
        Self {
            bucket: Mutex::new(Bucket::new()),
            queue,
            unwritten,
        }
    }

    fn emit(&self, args: fmt::Arguments) {
        let admitted = self
            .bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(Instant::now());
        let Some(suppressed) = admitted else {
            return;
        };
        let mut line = String::new();
        if suppressed > 0 {
            line.push_str(&format!(
                "vm: ({suppressed} more messages caused by the guest were not shown)\n"
            ));
        }
        line.push_str(&format!("vm: {args}\n"));
        self.unwritten.fetch_add(1, Ordering::AcqRel);
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.unwritten.fetch_sub(1, Ordering::AcqRel);
                let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
                b.suppressed += 1 + suppressed;
            }
        }
    }

    /// Waits (at most `limit`) for the queued lines to be written.
    fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.unwritten.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn logger() -> &'static Logger {
    LOGGER.get_or_init(|| Logger::new(std::io::stderr()))
}

/// Starts the writer thread now (it starts on the first message
/// otherwise), from a thread that may still start threads.
pub fn start() {
    logger();
}

/// Logs a message the guest caused (see the module's text). Use
/// [`guest_log!`](crate::guest_log).
pub fn guest(args: fmt::Arguments) {
    logger().emit(args);
}

/// Writes out what is still queued, waiting at most a second (a stderr
/// nobody reads does not hold the VM's end up longer). Call before the
/// process exits.
pub fn flush() {
    if let Some(l) = LOGGER.get() {
        l.flush(Duration::from_secs(1));
    }
}

/// `guest_log!("virtio-blk: {why}")`: a rate-limited line on stderr, with
/// the `vm: ` prefix, that never blocks the caller.
#[macro_export]
macro_rules! guest_log {
    ($($arg:tt)*) => {
        $crate::log::guest(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Condvar;

    #[test]
    fn a_burst_then_the_rate_with_a_count_of_what_was_left_out() {
        let mut b = Bucket::new();
        let t0 = Instant::now();
        let let_through = (0..1000).filter(|_| b.admit(t0).is_some()).count();
        assert_eq!(let_through, BURST as usize);
        // Half a second later, one more line, which says how many were
        // not shown.
        assert_eq!(b.admit(t0 + Duration::from_millis(500)), Some(1000 - 20));
        assert_eq!(b.admit(t0 + Duration::from_millis(500)), None);
        // A quiet minute fills the bucket again, no further.
        let later = t0 + Duration::from_secs(60);
        let let_through = (0..1000).filter(|_| b.admit(later).is_some()).count();
        assert_eq!(let_through, BURST as usize);
    }

    /// A sink whose writes block until released: stderr piped to a reader
    /// that stopped reading.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>, Arc<Mutex<Vec<u8>>>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut open = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !*open {
                open = cv.wait(open).unwrap_or_else(|e| e.into_inner());
            }
            self.1
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_stderr_never_blocks_the_caller() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let logger = Arc::new(Logger::new(Stuck(gate.clone(), written.clone())));
        let (done, finished) = std::sync::mpsc::channel();
        let flood = logger.clone();
        std::thread::spawn(move || {
            for i in 0..100_000 {
                flood.emit(format_args!("flood {i}"));
            }
            let _ = done.send(());
        });
        // A hang detector, not a speed limit: a caller that waited for the
        // sink would wait for ever.
        let blocked = finished.recv_timeout(Duration::from_secs(120)).is_err();
        // Release the sink: at most the burst went out.
        *gate.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        gate.1.notify_all();
        assert!(!blocked, "a stalled sink blocked the caller");
        let read = || {
            String::from_utf8_lossy(&written.lock().unwrap_or_else(|e| e.into_inner())).to_string()
        };
        for _ in 0..100 {
            if !read().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = read();
        // Of 100,000: the burst, and what the rate let through while the
        // flood ran.
        let lines = text.lines().count();
        assert!(lines <= 2 * BURST as usize, "{lines} lines:\n{text}");
        assert!(text.starts_with("vm: flood 0\n"), "{text}");
    }
}
