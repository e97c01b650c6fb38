//! Where the guest's time goes in one run, for `VM_TIMINGS=1` on the
//! host: marks kept in memory (writing each to the console would cost
//! more than most of the steps it times) and sent once at the end.

use std::sync::Mutex;
use std::time::Instant;

static MARKS: Mutex<Vec<(&'static str, Instant)>> = Mutex::new(Vec::new());

/// Notes that the run got to `what` now. The first mark is the origin.
pub fn mark(what: &'static str) {
    if let Ok(mut m) = MARKS.lock() {
        m.push((what, Instant::now()));
    }
}

/// The marks, in milliseconds since the first.
pub fn take() -> Vec<(String, f64)> {
    let marks = MARKS
        .lock()
        .map(|mut m| std::mem::take(&mut *m))
        .unwrap_or_default();
    let Some(&(_, t0)) = marks.first() else {
        return Vec::new();
    };
    marks
        .into_iter()
        .map(|(what, t)| (what.to_string(), t.duration_since(t0).as_secs_f64() * 1e3))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn marks_count_from_the_first() {
        super::mark("a");
        super::mark("b");
        let m = super::take();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], ("a".to_string(), 0.0));
        assert!(m[1].1 >= 0.0);
        assert!(super::take().is_empty());
    }
}
