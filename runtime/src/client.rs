//! The caller's side of a container's life: start its monitor, attach to
//! it, follow it to its end. `vm run` is create + [`start`] + [`attached`]
//! (+ waiting for the monitor to remove it with `--rm`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use crate::container::{self, Container};
use crate::error::{Error, Kind, Result};
use crate::frames::{read_frame, write_frame, Failure, Frame};
use crate::monitor::{self, Launch, Request};

/// What a caller sends to a running container's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Signal(i32),
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Stop listening: close the connection (the monitor then kills a
    /// builtin it was running for us; see `monitor::exec`).
    Hangup,
}

/// How the starting caller stays connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Gets the output and the exit status; `stdin` sends input.
    Attached { stdin: bool },
    /// Hears only whether the container started.
    Detached,
}

/// Starts `c` under a new monitor. Call while the process has one thread
/// (the monitor is forked). Returns the connection to the monitor.
pub fn start(state: &Path, c: &Container, mode: Mode) -> Result<UnixStream> {
    let _lock = c.command_lock()?;
    let st = c.state();
    if st.status.is_live() || c.monitor_alive() {
        return Err(Error::in_use(format!(
            "container {} is already running",
            c.config.name
        )));
    }
    let (ours, theirs) = UnixStream::pair().map_err(|e| Error::host(format!("socketpair: {e}")))?;
    let (output, stdin) = match mode {
        Mode::Attached { stdin } => (true, stdin),
        Mode::Detached => (false, false),
    };
    monitor::spawn(
        state,
        c,
        Launch {
            client: theirs,
            output,
            stdin,
            keep_stderr: output,
        },
    )?;
    // Hold the command lock until the monitor holds the container: no
    // `rm` or prune may come in between.
    let _ = ours.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let mut conn = &ours;
    match read_frame(&mut conn) {
        Ok(Some(Frame::Ready)) => {}
        _ => {
            return Err(Error::host(format!(
                "the container's monitor did not start (see {})",
                c.monitor_log_path().display()
            )))
        }
    }
    let _ = ours.set_read_timeout(None);
    Ok(ours)
}

/// Connects to the monitor of a running container as `vm attach` does.
pub fn attach(state: &Path, c: &Container, stdin: bool) -> Result<UnixStream> {
    monitor::request(state, c, &Request::Attach { stdin }).map(|(_, conn)| conn)
}

/// Starts another process in the running container `c`; the connection
/// then carries its frames (as [`attached`] reads them).
pub fn exec(state: &Path, c: &Container, opts: monitor::ExecOptions) -> Result<UnixStream> {
    monitor::request(state, c, &Request::Exec(opts)).map(|(_, conn)| conn)
}

/// Waits for word that a detached start worked.
pub fn wait_started(mut conn: UnixStream) -> Result<()> {
    loop {
        match read_frame(&mut conn) {
            Ok(Some(Frame::Started)) => return Ok(()),
            Ok(Some(Frame::Failed(f))) => return Err(failure(&f)),
            Ok(Some(Frame::Exit(code))) => {
                // It ran and ended before we heard it start: it did start.
                let _ = code;
                return Ok(());
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Err(Error::host(
                "the container's monitor ended before the container started (see its monitor.log)",
            )),
        }
    }
}

/// The error a `Failed` frame carries; its `code` is the status the
/// caller should exit with (see [`exit_code`]).
fn failure(data: &[u8]) -> Error {
    match serde_json::from_slice::<Failure>(data) {
        Ok(f) => Error {
            kind: match f.code {
                126 | 127 => Kind::Guest,
                _ => match f.kind.as_str() {
                    "InvalidArgument" => Kind::InvalidArgument,
                    "NotFound" => Kind::NotFound,
                    "Image" => Kind::Image,
                    "Host" => Kind::Host,
                    _ => Kind::Guest,
                },
            },
            message: f.message,
            console: f.console,
            code: f.code,
        },
        Err(e) => Error::host(format!("the monitor reported a failure badly: {e}")),
    }
}

/// Moves the container's output to `out` and `err`, `input` (until its end
/// of file) and `controls` to the container, until it ends; returns its
/// exit status.
pub fn attached(
    conn: UnixStream,
    input: Option<Box<dyn Read + Send>>,
    out: &mut dyn Write,
    err: &mut dyn Write,
    controls: Receiver<Control>,
) -> Result<i32> {
    let writer = Arc::new(Mutex::new(
        conn.try_clone()
            .map_err(|e| Error::host(format!("socket: {e}")))?,
    ));
    if let Some(input) = input {
        let w = writer.clone();
        // Not joined: reading our stdin may block until we exit.
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || send_input(input, &w))
            .map_err(|e| Error::host(format!("starting the stdin thread: {e}")))?;
    }
    {
        let w = writer.clone();
        std::thread::Builder::new()
            .name("controls".into())
            .spawn(move || {
                for c in controls {
                    let f = match c {
                        Control::Signal(s) => Frame::Signal(s),
                        Control::Resize { rows, cols } => Frame::Resize { rows, cols },
                        Control::Hangup => {
                            let w = w.lock().unwrap_or_else(|e| e.into_inner());
                            let _ = w.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                    };
                    let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                    if write_frame(&mut *w, &f).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::host(format!("starting the controls thread: {e}")))?;
    }
    let mut conn = conn;
    // Once our reader is gone (a closed pipe), keep draining so the
    // container is not held up, and drop the bytes.
    let (mut out_ok, mut err_ok) = (true, true);
    loop {
        match read_frame(&mut conn) {
            Ok(Some(Frame::Stdout(d))) if out_ok => {
                out_ok = out.write_all(&d).and_then(|()| out.flush()).is_ok();
            }
            Ok(Some(Frame::Stderr(d))) if err_ok => {
                err_ok = err.write_all(&d).and_then(|()| err.flush()).is_ok();
            }
            Ok(Some(Frame::Exit(code))) => return Ok(code),
            Ok(Some(Frame::Failed(f))) => return Err(failure(&f)),
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(Error::host(
                    "the container's monitor went away before the container ended",
                ))
            }
            Err(e) => {
                return Err(Error::host(format!(
                    "reading from the container's monitor: {e}"
                )))
            }
        }
    }
}

fn send_input(mut input: Box<dyn Read + Send>, w: &Mutex<UnixStream>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
        if write_frame(&mut *w, &Frame::Stdin(buf[..n].to_vec())).is_err() {
            return;
        }
    }
    let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
    let _ = write_frame(&mut *w, &Frame::StdinEof);
}

/// Waits until the container's monitor has exited (it has finished with
/// the container: removed it with `--rm`, cleaned its sockets).
pub fn wait_monitor(c: &Container) {
    let _ = container::lock(&c.monitor_lock_path());
}
