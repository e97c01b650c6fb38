//! The monitor's side of health checks (see `crate::health`): while a
//! run lasts, every interval, the check's command runs in the container
//! as an exec does, and its result goes into the container's state.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{exec, read_reply, Shared};
use crate::container;
use crate::frames::{read_frame, write_frame, Failure, Frame};
use crate::health::{Check, Health, Probe, MAX_OUTPUT};

/// Probes the run numbered `runs` (see `Inner::runs`) until it ends.
pub fn watch(shared: Arc<Shared>, check: Check, runs: u64) {
    let started = Instant::now();
    // The exec of the last probe: a probe that timed out may still be
    // going (a guest need not end it); no other starts until it is done.
    let mut last: Option<std::thread::JoinHandle<()>> = None;
    loop {
        let g = shared.lock();
        let (g, _) = shared
            .changed
            .wait_timeout_while(g, check.interval, |g| g.runs == runs)
            .unwrap_or_else(|e| e.into_inner());
        // A paused container is not probed (its probe could not run):
        // wait for it to go on, or to end.
        let g = shared
            .changed
            .wait_while(g, |g| g.runs == runs && g.paused)
            .unwrap_or_else(|e| e.into_inner());
        if g.runs != runs {
            return;
        }
        drop(g);
        if last.as_ref().is_some_and(|t| !t.is_finished()) {
            continue;
        }
        let (result, exec) = probe(&shared, &check);
        last = exec;
        if shared.lock().runs != runs {
            return;
        }
        let in_start_period = started.elapsed() < check.start_period;
        shared.set_state(|s| {
            s.health.get_or_insert_with(Health::starting).record(
                result,
                check.retries,
                in_start_period,
            );
        });
    }
}

/// Runs the check's command once; the thread serving its exec.
fn probe(shared: &Arc<Shared>, check: &Check) -> (Probe, Option<std::thread::JoinHandle<()>>) {
    let start = container::now_rfc3339();
    let mut exec = None;
    let (code, mut output) = match run(shared, check, &mut exec) {
        Ok(r) => r,
        Err(message) => (-1, message),
    };
    // What the guest says is kept only so far (a failure's message too).
    if output.len() > MAX_OUTPUT {
        let mut end = MAX_OUTPUT;
        while !output.is_char_boundary(end) {
            end -= 1;
        }
        output.truncate(end);
    }
    let probe = Probe {
        start,
        end: container::now_rfc3339(),
        exit_code: code,
        output,
    };
    (probe, exec)
}

fn run(
    shared: &Arc<Shared>,
    check: &Check,
    exec_thread: &mut Option<std::thread::JoinHandle<()>>,
) -> Result<(i32, String), String> {
    let (mut ours, theirs) =
        UnixStream::pair().map_err(|e| format!("socketpair for the health check: {e}"))?;
    let opts = exec::ExecOptions {
        args: check.args(),
        ..exec::ExecOptions::default()
    };
    {
        let shared = shared.clone();
        *exec_thread = Some(
            std::thread::Builder::new()
                .name("health-exec".into())
                .spawn(move || exec::serve(theirs, &shared, opts))
                .map_err(|e| format!("starting the health check: {e}"))?,
        );
    }
    let _ = ours.set_read_timeout(Some(Duration::from_secs(60)));
    let reply = read_reply(&mut ours)?;
    if let Some(e) = reply.error {
        return Err(e);
    }
    // (A timeout too long to add is as good as none.)
    let deadline = Instant::now()
        .checked_add(check.timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
    let mut output = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = write_frame(&mut ours, &Frame::Signal(libc::SIGKILL));
            return Err(format!(
                "Health check exceeded timeout ({})",
                humantime::format_duration(check.timeout)
            ));
        }
        let _ = ours.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match read_frame(&mut ours) {
            Ok(Some(Frame::Stdout(d) | Frame::Stderr(d))) => {
                let room = MAX_OUTPUT.saturating_sub(output.len());
                output.extend_from_slice(&d[..d.len().min(room)]);
            }
            Ok(Some(Frame::Exit(code))) => {
                return Ok((code, String::from_utf8_lossy(&output).into_owned()))
            }
            Ok(Some(Frame::Failed(f))) => {
                let f: Failure = serde_json::from_slice(&f)
                    .map_err(|e| format!("the health check failed: {e}"))?;
                return Ok((f.code, f.message));
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("the health check's exec ended without a status".into()),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(format!("reading the health check: {e}")),
        }
    }
}
