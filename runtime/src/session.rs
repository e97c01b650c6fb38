//! The host side of the agent protocol: the vsock listeners (Unix
//! sockets at `<vsock path>_<port>`), the handshake, the output pumps
//! into an [`Output`], signal and resize forwarding, and the container's
//! exit status.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_protocol::{port, read_frame, write_frame, AgentMessage, HostMessage, RunSpec};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::logfile::Stream;

/// How long a message to the agent may wait for the guest to take it.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the container's output goes (the monitor's log and clients).
pub trait Output: Send + Sync {
    fn write(&self, stream: Stream, data: &[u8]);
    /// The stream ended (all its output was written).
    fn end(&self, stream: Stream);
}

/// What the session tells its owner while it waits.
pub trait Events {
    /// The agent unpacked the image and stopped writing its disk: make
    /// the disk read-only before the agent goes on.
    fn sealed(&mut self) -> Result<(), String>;
    /// The container's process runs.
    fn started(&mut self);
    /// News of an exec'd process (`ExecStarted`, `ExecExited`,
    /// `ExecFailed`).
    fn exec(&mut self, msg: AgentMessage);
}

/// How the process ended.
pub enum Ended {
    Exited(i32),
    /// The agent could not run it: status (125, 126, 127) and why.
    Failed(i32, String),
}

/// A listener for one vsock port, used for exactly one connection: once
/// that is accepted (or the listener is dropped) its socket file is gone,
/// so a guest cannot fill its backlog and nothing stays bound that no one
/// accepts on.
pub struct PortListener {
    listener: UnixListener,
    path: PathBuf,
}

impl PortListener {
    /// Waits for the guest's connection (until `deadline`, or until
    /// `gone` says nothing will come), then unbinds.
    pub fn accept_once(
        self,
        what: &'static str,
        deadline: Instant,
        gone: &dyn Fn() -> bool,
    ) -> Result<UnixStream, Error> {
        self.accept_verified(what, deadline, gone, &|_| true)
    }

    /// Like [`accept_once`](Self::accept_once), but takes connections
    /// until `verify` accepts one; the others are dropped.
    pub fn accept_verified(
        self,
        what: &'static str,
        deadline: Instant,
        gone: &dyn Fn() -> bool,
        verify: &dyn Fn(&mut UnixStream) -> bool,
    ) -> Result<UnixStream, Error> {
        loop {
            // (the deadline holds however many strangers connect first)
            if Instant::now() >= deadline {
                return Err(Error::Timeout(what));
            }
            let mut s = accept(&self.listener, what, deadline, gone)?;
            if verify(&mut s) {
                return Ok(s);
            }
        }
    }
}

impl Drop for PortListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The session's four ports, each taken by its one connection.
pub struct Listeners {
    control: Option<PortListener>,
    stdin: Option<PortListener>,
    stdout: Option<PortListener>,
    stderr: Option<PortListener>,
}

impl Listeners {
    pub fn bind(vsock_path: &Path) -> io::Result<Self> {
        // (A socket left by the previous run of the same container is
        // replaced.)
        let bind = |p: u32| bind_port(vsock_path, p).map(Some);
        Ok(Self {
            control: bind(port::CONTROL)?,
            stdin: bind(port::STDIN)?,
            stdout: bind(port::STDOUT)?,
            stderr: bind(port::STDERR)?,
        })
    }
}

/// Accepts the one connection of a port whose listener is still there.
fn accept_slot(
    slot: &mut Option<PortListener>,
    what: &'static str,
    deadline: Instant,
    gone: &dyn Fn() -> bool,
) -> Result<UnixStream, Error> {
    match slot.take() {
        Some(l) => l.accept_once(what, deadline, gone),
        None => Err(Error::Protocol(format!(
            "the {what} connection was already taken"
        ))),
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
    vm_ended: &dyn Fn() -> bool,
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
        if vm_ended() {
            return Err(Error::VmEnded);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(what));
        }
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(50u16));
    }
}

/// Listens where the guest's connections to `port` arrive.
pub fn bind_port(vsock_path: &Path, port: u32) -> io::Result<PortListener> {
    let path = devices::virtio::vsock::port_path(vsock_path, port);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let l = PortListener { listener, path };
    // For the jailed VMM, which connects as a uid of its own.
    crate::jail::give_socket(&l.path)?;
    l.listener.set_nonblocking(true)?;
    Ok(l)
}

pub struct Session {
    control: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
    pumps: Vec<JoinHandle<()>>,
    stdin: Option<UnixStream>,
    /// When the agent said hello (`VM_TIMINGS`), the origin of its marks.
    hello_ms: Option<f64>,
}

impl Session {
    /// Handshake: the agent's hello, our run spec, its stdio connections.
    pub fn start(
        l: &mut Listeners,
        spec: RunSpec,
        timeout: Duration,
        vm_ended: &dyn Fn() -> bool,
        output: Arc<dyn Output>,
    ) -> Result<Self, Error> {
        let deadline = Instant::now() + timeout;
        let mut control = accept_slot(&mut l.control, "control", deadline, vm_ended)?;
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
        let hello_ms = crate::timing::elapsed_ms();
        let (terminal, stdin) = (spec.process.terminal, spec.process.stdin);
        let mut spec = spec;
        spec.timings = hello_ms.is_some();
        spec.seed = fresh_seed()?;
        spec.host_time_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        write_frame(&mut control, &HostMessage::Run(Box::new(spec)))
            .map_err(|e| Error::Protocol(format!("sending the run spec: {e}")))?;
        let mut pumps = Vec::new();
        let out = accept_slot(&mut l.stdout, "stdout", deadline, vm_ended)?;
        pumps.push(spawn_copy(Stream::Stdout, out, output.clone())?);
        if !terminal {
            let err = accept_slot(&mut l.stderr, "stderr", deadline, vm_ended)?;
            pumps.push(spawn_copy(Stream::Stderr, err, output)?);
        }
        let stdin = if stdin {
            Some(accept_slot(&mut l.stdin, "stdin", deadline, vm_ended)?)
        } else {
            None
        };
        // Ports this run does not use (stdin, stderr under a terminal)
        // are unbound too.
        *l = Listeners {
            control: None,
            stdin: None,
            stdout: None,
            stderr: None,
        };
        let writer = control
            .try_clone()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        // A guest that stops reading fails our sends instead of holding
        // up whoever sends.
        let _ = writer.set_write_timeout(Some(SEND_TIMEOUT));
        Ok(Self {
            control,
            writer: Arc::new(Mutex::new(writer)),
            pumps,
            stdin,
            hello_ms,
        })
    }

    /// The container's stdin (when it has one): write to it, shut it
    /// down for end of file.
    pub fn take_stdin(&mut self) -> Option<UnixStream> {
        self.stdin.take()
    }

    /// A handle that sends signals and resizes to the agent.
    pub fn sender(&self) -> Sender {
        Sender(self.writer.clone())
    }

    /// Reads the agent's reports until the process has exited; returns
    /// how it ended once all of its output has been written out.
    pub fn wait(mut self, events: &mut dyn Events) -> Result<Ended, Error> {
        let code = loop {
            match read_frame::<_, AgentMessage>(&mut self.control) {
                Ok(Some(AgentMessage::Started)) => {
                    crate::timing::mark("process-started");
                    events.started();
                }
                Ok(Some(AgentMessage::Sealed)) => {
                    crate::timing::mark("image-unpacked");
                    events.sealed().map_err(Error::Protocol)?;
                    self.sender().send(&HostMessage::Continue);
                }
                Ok(Some(AgentMessage::Exited { code })) => {
                    crate::timing::mark("process-exited");
                    break code;
                }
                Ok(Some(AgentMessage::Failed { code, message })) => {
                    // Output the agent already sent comes first.
                    self.drain();
                    return Ok(Ended::Failed(code, message));
                }
                Ok(Some(
                    m @ (AgentMessage::ExecStarted { .. }
                    | AgentMessage::ExecExited { .. }
                    | AgentMessage::ExecFailed { .. }),
                )) => events.exec(m),
                Ok(Some(AgentMessage::Hello { .. })) => {
                    return Err(Error::Protocol("the agent said hello twice".into()))
                }
                Ok(Some(AgentMessage::Timings { marks })) => {
                    if let Some(hello) = self.hello_ms.take() {
                        crate::timing::guest_marks(hello, &marks);
                    }
                }
                Ok(None) => return Err(Error::VmEnded),
                Err(e) => return Err(Error::Protocol(format!("reading from the agent: {e}"))),
            }
        };
        self.drain();
        Ok(Ended::Exited(code))
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

    /// Whether both send to the same agent (one run's).
    pub fn same(&self, other: &Sender) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Sends `msg` only if no other send is under way (one that waits on
    /// a guest that does not read is not queued behind); whether it went.
    pub fn try_send(&self, msg: &HostMessage) -> bool {
        let mut w = match self.0.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        write_frame(&mut *w, msg).is_ok()
    }
}

fn spawn_copy(
    stream: Stream,
    from: UnixStream,
    to: Arc<dyn Output>,
) -> Result<JoinHandle<()>, Error> {
    let name = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || copy_out(stream, from, &*to))
        .map_err(|e| Error::Protocol(format!("starting the {name} thread: {e}")))
}

/// Container output to its destination, as it comes (no buffering
/// beyond one read).
fn copy_out(stream: Stream, mut from: UnixStream, to: &dyn Output) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => to.write(stream, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    to.end(stream);
}

/// 64 bytes from the host's generator for the guest's (see
/// `RunSpec::seed`). Failing to get them fails the start: a guest
/// restored from a snapshot must not run on the snapshot's seed alone.
fn fresh_seed() -> Result<Vec<u8>, Error> {
    let mut b = vec![0u8; 64];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(Error::Protocol(format!(
            "no random bytes from the host for the guest: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    //! A fake agent on the guest's side of the sockets: what a hostile
    //! guest can send the host, and what the host makes of it.

    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use agent_protocol::{Process, Rootfs};

    use super::*;

    struct Sink;
    impl Output for Sink {
        fn write(&self, _: Stream, _: &[u8]) {}
        fn end(&self, _: Stream) {}
    }

    #[derive(Default)]
    struct Count {
        sealed: usize,
        started: usize,
        execs: Vec<AgentMessage>,
    }
    impl Events for Count {
        fn sealed(&mut self) -> Result<(), String> {
            self.sealed += 1;
            Ok(())
        }
        fn started(&mut self) {
            self.started += 1;
        }
        fn exec(&mut self, msg: AgentMessage) {
            self.execs.push(msg);
        }
    }

    fn spec() -> RunSpec {
        RunSpec {
            rootfs: Rootfs::Cached { disk: "r".into() },
            scratch_disk: "s".into(),
            process: Process {
                args: vec!["true".into()],
                env: Vec::new(),
                cwd: "/".into(),
                user: String::new(),
                terminal: true,
                stdin: false,
                rows: 24,
                cols: 80,
                security: Default::default(),
            },
            hostname: "h".into(),
            read_only: false,
            max_layer_bytes: 1,
            max_layer_entries: 1,
            network: Default::default(),
            mounts: Vec::new(),
            options: Default::default(),
            seed: Vec::new(),
            host_time_ns: 0,
            timings: false,
        }
    }

    static N: AtomicUsize = AtomicUsize::new(0);

    /// Listeners in a fresh directory: (the directory, them, the path of
    /// a socket for `port`).
    fn listeners() -> (std::path::PathBuf, Listeners, impl Fn(u32) -> String) {
        let dir = std::env::temp_dir().join(format!(
            "vm-session-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let vsock = dir.join("v");
        let l = Listeners::bind(&vsock).expect("bind");
        (dir, l, move |p: u32| format!("{}_{p}", vsock.display()))
    }

    /// Runs a session against `agent` (given the control and stdout
    /// connections once the handshake is done) and returns how `wait`
    /// ended, with the events.
    fn against(
        agent: impl FnOnce(UnixStream, UnixStream) + Send + 'static,
    ) -> (Result<Ended, Error>, Count) {
        let (dir, mut l, path) = listeners();
        let (control, stdout) = (path(port::CONTROL), path(port::STDOUT));
        let t = std::thread::spawn(move || {
            let (c, o) = handshake(&control, &stdout);
            agent(c, o);
        });
        let mut events = Count::default();
        let r = start(&mut l, Duration::from_secs(10)).and_then(|s| s.wait(&mut events));
        let _ = t.join();
        let _ = std::fs::remove_dir_all(&dir);
        (r, events)
    }

    /// A session over `l` with the test's run spec, output thrown away.
    fn start(l: &mut Listeners, timeout: Duration) -> Result<Session, Error> {
        Session::start(l, spec(), timeout, &|| false, Arc::new(Sink))
    }

    /// The agent's side of the handshake: hello, the run spec, stdout.
    fn handshake(control: &str, stdout: &str) -> (UnixStream, UnixStream) {
        let mut c = UnixStream::connect(control).expect("connect control");
        hello(&mut c);
        let run = read_frame::<_, HostMessage>(&mut c);
        assert!(matches!(run, Ok(Some(HostMessage::Run(_)))), "{run:?}");
        let o = UnixStream::connect(stdout).expect("connect stdout");
        (c, o)
    }

    fn hello(c: &mut UnixStream) {
        write_frame(
            c,
            &AgentMessage::Hello {
                version: agent_protocol::VERSION,
            },
        )
        .expect("hello");
    }

    fn protocol_error(r: &Result<Ended, Error>) -> Option<&str> {
        match r {
            Err(Error::Protocol(m)) => Some(m),
            _ => None,
        }
    }

    #[test]
    fn every_port_is_unbound_once_the_handshake_is_done() {
        let (dir, mut l, path) = listeners();
        let (control, stdout) = (path(port::CONTROL), path(port::STDOUT));
        let t = std::thread::spawn(move || handshake(&control, &stdout));
        let s = start(&mut l, Duration::from_secs(10));
        assert!(s.is_ok(), "handshake failed");
        for p in [port::CONTROL, port::STDOUT, port::STDERR, port::STDIN] {
            let p = path(p);
            assert!(!std::path::Path::new(&p).exists(), "{p} still bound");
            assert!(UnixStream::connect(&p).is_err(), "{p} still accepts");
        }
        drop(t.join());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_well_behaved_agent_ends_with_its_status() {
        let (r, ev) = against(|mut c, mut o| {
            o.write_all(b"hi").expect("out");
            drop(o);
            write_frame(&mut c, &AgentMessage::Started).expect("w");
            write_frame(&mut c, &AgentMessage::Exited { code: 3 }).expect("w");
        });
        assert!(matches!(r, Ok(Ended::Exited(3))));
        assert_eq!(ev.started, 1);
    }

    #[test]
    fn an_oversized_frame_is_an_error_not_an_allocation() {
        let (r, _) = against(|mut c, _o| {
            let _ = c.write_all(&u32::MAX.to_be_bytes());
            let _ = c.write_all(&[0u8; 64]);
        });
        let m = protocol_error(&r).expect("a protocol error");
        assert!(m.contains("limit"), "{m}");
    }

    #[test]
    fn garbage_a_second_hello_and_a_wrong_version_are_refused() {
        let (r, _) = against(|mut c, _o| {
            let body = b"{not json";
            let _ = c.write_all(&(body.len() as u32).to_be_bytes());
            let _ = c.write_all(body);
        });
        assert!(protocol_error(&r).is_some_and(|m| m.contains("malformed")));

        let (r, _) = against(|mut c, _o| {
            hello(&mut c);
        });
        assert!(protocol_error(&r).is_some_and(|m| m.contains("hello twice")));

        let (dir, mut l, path) = listeners();
        let control = path(port::CONTROL);
        let t = std::thread::spawn(move || {
            let mut c = UnixStream::connect(control).expect("connect");
            let _ = write_frame(&mut c, &AgentMessage::Hello { version: 1 });
            // Keep the connection open until the host has read it.
            let mut b = [0u8; 1];
            let _ = c.read(&mut b);
        });
        let r = start(&mut l, Duration::from_secs(10));
        let m = match r {
            Err(Error::Protocol(m)) => m,
            _ => String::from("no protocol error"),
        };
        assert!(m.contains("version 1"), "{m}");
        drop(l);
        let _ = t.join();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_silent_agent_times_out_and_a_vanished_one_ends_the_run() {
        let (dir, mut l, path) = listeners();
        let control = path(port::CONTROL);
        // Connects and says nothing.
        let c = UnixStream::connect(control).expect("connect");
        let r = start(&mut l, Duration::from_millis(300));
        assert!(matches!(
            r,
            Err(Error::Protocol(_)) | Err(Error::Timeout(_))
        ));
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);

        let (r, _) = against(|mut c, _o| {
            write_frame(&mut c, &AgentMessage::Started).expect("w");
        });
        assert!(matches!(r, Err(Error::VmEnded)));
    }

    #[test]
    fn exec_news_for_unknown_ids_is_passed_on_untouched() {
        let (r, ev) = against(|mut c, o| {
            drop(o);
            for id in [7, u32::MAX] {
                write_frame(&mut c, &AgentMessage::ExecExited { id, code: 0 }).expect("w");
                write_frame(&mut c, &AgentMessage::ExecStarted { id }).expect("w");
            }
            write_frame(&mut c, &AgentMessage::Exited { code: 0 }).expect("w");
        });
        assert!(matches!(r, Ok(Ended::Exited(0))));
        assert_eq!(ev.execs.len(), 4);
    }
}
