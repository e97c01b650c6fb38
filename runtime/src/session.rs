//! The host side of the agent protocol: the vsock listeners (Unix
//! sockets at `<vsock path>_<port>`), the handshake, stdio pumps, signal
//! and resize forwarding, and the container's exit status.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_protocol::{port, read_frame, write_frame, AgentMessage, HostMessage, RunSpec};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use vmm::ExitSignal;

pub struct Listeners {
    control: UnixListener,
    stdin: UnixListener,
    stdout: UnixListener,
    stderr: UnixListener,
}

impl Listeners {
    pub fn bind(vsock_path: &Path) -> io::Result<Self> {
        let bind = |p: u32| {
            let mut name = vsock_path.as_os_str().to_owned();
            name.push(format!("_{p}"));
            let l = UnixListener::bind(&name)?;
            l.set_nonblocking(true)?;
            Ok::<_, io::Error>(l)
        };
        Ok(Self {
            control: bind(port::CONTROL)?,
            stdin: bind(port::STDIN)?,
            stdout: bind(port::STDOUT)?,
            stderr: bind(port::STDERR)?,
        })
    }
}

/// Why the session did not produce an exit status.
pub enum Error {
    /// The VM ended first (its reason is in the VM's outcome).
    VmEnded,
    /// Nothing came from the agent in time.
    Timeout(&'static str),
    /// The agent said something we cannot accept, or the channel broke.
    Protocol(String),
}

/// Waits for the agent to connect to `listener`, while the VM lives.
fn accept(
    listener: &UnixListener,
    what: &'static str,
    deadline: Instant,
    exit: &ExitSignal,
) -> Result<UnixStream, Error> {
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(|e| Error::Protocol(e.to_string()))?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                return Err(Error::Protocol(format!(
                    "accepting the agent's {what} connection: {e}"
                )))
            }
        }
        if exit.get().is_some() {
            return Err(Error::VmEnded);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(what));
        }
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(50u16));
    }
}

pub struct Session {
    control: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
    pumps: Vec<JoinHandle<()>>,
}

impl Session {
    /// Handshake: the agent's hello, our run spec, its stdio connections.
    pub fn start(
        l: &Listeners,
        spec: RunSpec,
        timeout: Duration,
        exit: &ExitSignal,
    ) -> Result<Self, Error> {
        let deadline = Instant::now() + timeout;
        let mut control = accept(&l.control, "control", deadline, exit)?;
        // A silent agent must not hold us past the deadline.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let _ = control.set_read_timeout(Some(left));
        match read_frame::<_, AgentMessage>(&mut control) {
            Ok(Some(AgentMessage::Hello { version })) if version == agent_protocol::VERSION => {}
            Ok(Some(AgentMessage::Hello { version })) => {
                return Err(Error::Protocol(format!(
                    "the guest agent speaks protocol version {version}, this vm speaks {}; rebuild the initramfs (resources/initramfs/build)",
                    agent_protocol::VERSION
                )))
            }
            Ok(Some(other)) => {
                return Err(Error::Protocol(format!(
                    "expected the agent's hello, got {other:?}"
                )))
            }
            Ok(None) => return Err(Error::VmEnded),
            Err(e) => {
                return Err(Error::Protocol(format!(
                    "reading the agent's hello: {e}"
                )))
            }
        }
        let _ = control.set_read_timeout(None);
        crate::timing::mark("agent-hello");
        let (terminal, stdin) = (spec.process.terminal, spec.process.stdin);
        write_frame(&mut control, &HostMessage::Run(Box::new(spec)))
            .map_err(|e| Error::Protocol(format!("sending the run spec: {e}")))?;
        let mut pumps = Vec::new();
        let out = accept(&l.stdout, "stdout", deadline, exit)?;
        pumps.push(spawn_copy("stdout", out, io::stdout()));
        if !terminal {
            let err = accept(&l.stderr, "stderr", deadline, exit)?;
            pumps.push(spawn_copy("stderr", err, io::stderr()));
        }
        if stdin {
            let conn = accept(&l.stdin, "stdin", deadline, exit)?;
            // Never joined: reading our stdin may block until we exit.
            let _ = std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || forward_stdin(conn));
        }
        let writer = control
            .try_clone()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(Self {
            control,
            writer: Arc::new(Mutex::new(writer)),
            pumps,
        })
    }

    /// A handle that sends signals and resizes to the agent.
    pub fn sender(&self) -> Sender {
        Sender(self.writer.clone())
    }

    /// Reads the agent's reports until the process has exited; returns
    /// its status once all of its output has been written out.
    /// `seal` runs when the agent reports the image disk sealed; the
    /// agent goes on once it returns.
    pub fn wait(mut self, mut seal: impl FnMut() -> Result<(), String>) -> Result<i32, Error> {
        let code = loop {
            match read_frame::<_, AgentMessage>(&mut self.control) {
                Ok(Some(AgentMessage::Started)) => crate::timing::mark("process-started"),
                Ok(Some(AgentMessage::Sealed)) => {
                    crate::timing::mark("image-unpacked");
                    seal().map_err(Error::Protocol)?;
                    self.sender().send(&HostMessage::Continue);
                }
                Ok(Some(AgentMessage::Exited { code })) => {
                    crate::timing::mark("process-exited");
                    break code;
                }
                Ok(Some(AgentMessage::Failed { code, message })) => {
                    // Output the agent already sent comes first.
                    self.drain();
                    eprintln!("vm: {message}");
                    return Ok(code);
                }
                Ok(Some(AgentMessage::Hello { .. })) => {
                    return Err(Error::Protocol("the agent said hello twice".into()))
                }
                Ok(None) => return Err(Error::VmEnded),
                Err(e) => return Err(Error::Protocol(format!("reading from the agent: {e}"))),
            }
        };
        self.drain();
        Ok(code)
    }

    fn drain(&mut self) {
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
    }
}

#[derive(Clone)]
pub struct Sender(Arc<Mutex<UnixStream>>);

impl Sender {
    pub fn send(&self, msg: &HostMessage) {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = write_frame(&mut *w, msg);
    }
}

fn spawn_copy<W: Write + Send + 'static>(name: &str, from: UnixStream, to: W) -> JoinHandle<()> {
    let run = move || copy_out(from, to);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .unwrap_or_else(|_| std::thread::spawn(|| {}))
}

/// Container output to ours, as it comes (no buffering beyond one read).
fn copy_out<W: Write>(mut from: UnixStream, mut to: W) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut broken = false;
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            // Once our reader is gone (a closed pipe), keep draining so the
            // guest is not blocked, and drop the bytes.
            Ok(n) if !broken => broken = to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Our stdin to the container; its end of file becomes the container's.
fn forward_stdin(mut conn: UnixStream) {
    let mut stdin = io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}
