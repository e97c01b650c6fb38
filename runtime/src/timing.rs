//! `VM_TIMINGS=1`: where the time of one `vm run` goes, on stderr, as
//! milliseconds since the run started (for bench/run and for curiosity).

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Option<Instant>> = OnceLock::new();

/// Starts the clock; call first thing.
pub fn start() {
    START.get_or_init(|| std::env::var_os("VM_TIMINGS").map(|_| Instant::now()));
}

pub fn enabled() -> bool {
    matches!(START.get(), Some(Some(_)))
}

/// Prints `vm: timing: <what> <ms>` when enabled.
pub fn mark(what: &str) {
    if let Some(Some(t0)) = START.get() {
        eprintln!("vm: timing: {what} {:.1}", t0.elapsed().as_secs_f64() * 1e3);
    }
}
