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

/// Milliseconds since the start, when enabled.
pub fn elapsed_ms() -> Option<f64> {
    match START.get() {
        Some(Some(t0)) => Some(t0.elapsed().as_secs_f64() * 1e3),
        _ => None,
    }
}

/// Prints the guest's marks (milliseconds since the agent's hello, which
/// came at `hello` here) as `vm: timing: guest-<what> <ms>`.
pub fn guest_marks(hello: f64, marks: &[(String, f64)]) {
    for line in guest_lines(hello, marks) {
        eprintln!("{line}");
    }
}

/// The guest chose the marks: a few, with plain names and sane times,
/// are printed; the rest is not.
fn guest_lines(hello: f64, marks: &[(String, f64)]) -> Vec<String> {
    marks
        .iter()
        .take(32)
        .filter(|(what, ms)| {
            !what.is_empty()
                && what.len() <= 32
                && what
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && ms.is_finite()
                && (0.0..1e7).contains(ms)
        })
        .map(|(what, ms)| format!("vm: timing: guest-{what} {:.1}", hello + ms))
        .collect()
}

/// Prints `vm: timing: <what> <ms>` when enabled.
pub fn mark(what: &str) {
    if let Some(ms) = elapsed_ms() {
        eprintln!("vm: timing: {what} {ms:.1}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn guest_marks_are_plain_or_dropped() {
        let marks = [
            ("spec".to_string(), 1.5),
            ("bad\u{1b}[2J".to_string(), 2.0),
            ("nan".to_string(), f64::NAN),
            ("late".to_string(), -1.0),
            ("x".repeat(40), 3.0),
        ];
        assert_eq!(
            super::guest_lines(100.0, &marks),
            ["vm: timing: guest-spec 101.5"]
        );
        let many: Vec<_> = (0..100).map(|i| (format!("m{i}"), 0.0)).collect();
        assert_eq!(super::guest_lines(0.0, &many).len(), 32);
    }
}
