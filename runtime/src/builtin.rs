//! Pieces of the guest agent run inside a running container, through
//! the container's monitor as an exec: the guest side of `vm cp`,
//! `vm export`, `vm top` and `vm stats`. What they write comes from the
//! guest and is treated as untrusted: sizes are capped, text is parsed,
//! never passed on as is to a terminal.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc::{self, Sender};

use agent_protocol::{Builtin, StatsSample, TopRow};

use crate::client::{self, Control};
use crate::container::{Container, Status};
use crate::error::{Error, Kind, Result};
use crate::monitor::ExecOptions;

/// At most this much of a builtin's stderr is kept for its message.
const MAX_MESSAGE: usize = 4096;
/// `vm top` output past this is refused.
const MAX_TOP: usize = 16 << 20;

/// Keeps the first `cap` bytes written to it and drops the rest.
struct Head {
    buf: Vec<u8>,
    cap: usize,
}

impl Write for Head {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let room = self.cap.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&b[..b.len().min(room)]);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fails unless `c` is running (not paused, not stopped).
pub fn check_running(c: &Container) -> Result<()> {
    match c.state().status {
        Status::Running => Ok(()),
        Status::Paused => Err(Error::in_use(format!(
            "container {} is paused, unpause the container first",
            c.config.name
        ))),
        _ => Err(Error::in_use(format!(
            "container {} is not running",
            c.config.name
        ))),
    }
}

/// Runs `b` in `c` with `input` as its stdin, its output to `out`; an
/// error carries what it wrote to stderr. `controls` may signal it.
pub fn run(
    state: &Path,
    c: &Container,
    b: Builtin,
    input: Option<Box<dyn Read + Send>>,
    out: &mut dyn Write,
    controls: Option<(Sender<Control>, mpsc::Receiver<Control>)>,
) -> Result<()> {
    check_running(c)?;
    let name = match &b {
        Builtin::TarOut { .. } | Builtin::TarIn { .. } => "cp",
        Builtin::Export => "export",
        Builtin::Top => "top",
        Builtin::Stats { .. } => "stats",
    };
    let opts = ExecOptions {
        args: vec![format!("[vm {name}]")],
        stdin: input.is_some(),
        builtin: Some(b),
        ..ExecOptions::default()
    };
    let conn = client::exec(state, c, opts)?;
    let (tx, rx) = controls.unwrap_or_else(mpsc::channel);
    let mut err = Head {
        buf: Vec::new(),
        cap: MAX_MESSAGE,
    };
    let code = client::attached(conn, input, out, &mut err, rx)?;
    drop(tx);
    if code == 0 {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&err.buf).trim().to_string();
    Err(Error::new(
        Kind::Guest,
        if said.is_empty() {
            format!("vm {name} failed in the container (status {code})")
        } else {
            said
        },
    ))
}

/// The container's processes.
pub fn top(state: &Path, c: &Container) -> Result<Vec<TopRow>> {
    let mut out = Head {
        buf: Vec::new(),
        cap: MAX_TOP + 1,
    };
    run(state, c, Builtin::Top, None, &mut out, None)?;
    if out.buf.len() > MAX_TOP {
        return Err(Error::new(
            Kind::Guest,
            "the guest sent too long a process list",
        ));
    }
    out.buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l).map_err(|e| {
                Error::new(
                    Kind::Guest,
                    format!("the guest sent a bad process entry: {e}"),
                )
            })
        })
        .collect()
}

/// Splits a builtin's output into lines and hands each sample on.
struct Samples<'a> {
    /// Samples still wanted (None: until `each` says stop).
    left: Option<u32>,
    line: Vec<u8>,
    each: &'a mut dyn FnMut(StatsSample) -> bool,
    stop: Sender<Control>,
    stopped: bool,
}

impl Write for Samples<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        for &byte in b {
            if self.stopped {
                break;
            }
            if byte != b'\n' {
                if self.line.len() < 64 * 1024 {
                    self.line.push(byte);
                }
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let go_on = match serde_json::from_slice::<StatsSample>(&line) {
                Ok(s) => (self.each)(s),
                Err(_) => false,
            };
            // A guest that sends more than was asked for is stopped.
            if let Some(left) = &mut self.left {
                *left = left.saturating_sub(1);
            }
            let go_on = go_on && self.left != Some(0);
            if !go_on {
                // Hanging up ends our side whatever the guest does; the
                // monitor then kills the builtin.
                self.stopped = true;
                let _ = self.stop.send(Control::Hangup);
            }
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Samples the guest's counters every `interval_ms`, `count` times (0:
/// until `each` returns false), handing each to `each`.
pub fn stats(
    state: &Path,
    c: &Container,
    interval_ms: u32,
    count: u32,
    each: &mut dyn FnMut(StatsSample) -> bool,
) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    let mut out = Samples {
        left: (count > 0).then_some(count),
        line: Vec::new(),
        each,
        stop: tx.clone(),
        stopped: false,
    };
    let r = run(
        state,
        c,
        Builtin::Stats { interval_ms, count },
        None,
        &mut out,
        Some((tx, rx)),
    );
    match r {
        // Killed because we asked it to stop.
        Err(_) if out.stopped => Ok(()),
        r => r,
    }
}
