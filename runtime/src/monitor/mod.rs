//! A container's monitor: a process of its own (forked from the command
//! that starts the container, then detached from its session) that owns
//! the container while it runs. For each start it forks the VMM child,
//! speaks the agent protocol, writes the container's output to its log
//! and to attached clients, records state transitions in `state.json`,
//! keeps the exit status, restarts the container when its policy says so,
//! and serves a control socket (attach, signals, stop, kill, pause, wait).
//! It exits when the container is done, removing it first with `--rm`.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agent_protocol::HostMessage;
use nix::unistd::ForkResult;
use serde::{Deserialize, Serialize};

mod exec;
mod forward;
mod health;

pub use exec::ExecOptions;

use crate::container::{self, Container, Status};
use crate::error::{Error, Result};
use crate::frames::{read_frame, write_frame, Failure, Frame};
use crate::logfile::{self, Stream};
use crate::session::{self, Ended};
use crate::start::{self, Prepared};
use crate::vm_process::{self, VmProcess};
use crate::{rootfs_cache, timing};

/// How long a client may hold up the container's output before it is
/// dropped.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests on the control socket: one JSON line, then a JSON line in
/// answer ([`Reply`]); `attach` then carries frames.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Attach {
        stdin: bool,
    },
    Stop {
        timeout: u64,
        signal: i32,
    },
    Kill {
        signal: i32,
    },
    Pause,
    Unpause,
    /// Answers when the running process ends, with its status.
    Wait,
    /// Another process in the container; frames follow the answer.
    Exec(ExecOptions),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub code: Option<i32>,
}

/// How the starting command stays connected to the new monitor.
pub struct Launch {
    /// The monitor's end of a socket pair: the first client.
    pub client: UnixStream,
    /// The client gets the container's output and exit (foreground), or
    /// only word that it started or failed (detached).
    pub output: bool,
    /// The client's stdin frames go to the container.
    pub stdin: bool,
    /// Keep the caller's stderr for the first run's diagnostics
    /// (foreground); otherwise it goes to the container's monitor.log.
    pub keep_stderr: bool,
}

/// Forks the monitor of `c` (twice, so that it is nobody's child and in a
/// session of its own). Call while the process has one thread.
pub fn spawn(state: &Path, c: &Container, launch: Launch) -> Result<()> {
    // SAFETY: the caller has a single thread, so the child may run
    // anything; the intermediate child only forks again and exits.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let _ = nix::unistd::setsid();
            // SAFETY: as above.
            match unsafe { nix::unistd::fork() } {
                Ok(ForkResult::Child) => {
                    let code = main(state, c, launch);
                    // SAFETY: ends the monitor without running the
                    // caller's atexit handlers or destructors.
                    unsafe { libc::_exit(code) }
                }
                // SAFETY: as above.
                _ => unsafe { libc::_exit(0) },
            }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(launch);
            let _ = nix::sys::wait::waitpid(child, None);
            Ok(())
        }
        Err(e) => Err(Error::host(format!(
            "starting the container's monitor: {e}"
        ))),
    }
}

/// Points descriptors 0 and 1 at /dev/null, and 2 at `stderr` when given.
/// monitor.log is rotated (one old file kept) when it is past this, at
/// each run of the container.
const MONITOR_LOG_MAX: u64 = 1 << 20;

fn redirect_stdio(stderr: Option<&Path>) {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null");
    if let Ok(null) = &null {
        // SAFETY: dup2 onto the standard descriptors of this process.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
    if let Some(path) = stderr {
        use std::os::unix::fs::OpenOptionsExt;
        // The log of the monitor's own notes (and, with --debug, the
        // guest's console) keeps at most two files of MONITOR_LOG_MAX.
        if std::fs::metadata(path).is_ok_and(|m| m.len() > MONITOR_LOG_MAX) {
            let _ = std::fs::rename(path, path.with_extension("log.1"));
        }
        if let Ok(f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
        {
            // SAFETY: as above.
            unsafe { libc::dup2(f.as_raw_fd(), 2) };
        }
    }
}

/// A line on the monitor's stderr that never fails the monitor.
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "vm: monitor: {msg}");
}

struct Client {
    writer: UnixStream,
    output: bool,
    /// Dropped once the container runs (a detached start's caller).
    until_started: bool,
}

#[derive(Default)]
struct Inner {
    /// The current run's stdin connection, when the container has one.
    stdin: Option<UnixStream>,
    agent: Option<session::Sender>,
    vm: Option<vm_process::Handle>,
    /// Signals that came before the agent was there.
    pending: Vec<i32>,
    /// Counts ended runs; waiters watch it change.
    runs: u64,
    last_exit: i32,
    stop_requested: bool,
    killed: bool,
    paused: bool,
    /// No more runs: the monitor is finishing.
    done: bool,
    execs: exec::Execs,
    /// The current run's vsock path (for exec sockets).
    vsock: Option<PathBuf>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
    /// Attached clients, apart from `inner`: a slow one holds up output,
    /// never stop, kill or exec.
    clients: Mutex<Vec<Client>>,
    /// One state.json update at a time.
    state_lock: Mutex<()>,
    log: Mutex<Option<logfile::Writer>>,
    container: Container,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn clients(&self) -> MutexGuard<'_, Vec<Client>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `frame` to the clients `pick` selects; drops (and shuts down)
    /// those that fail.
    fn broadcast(&self, frame: &Frame, pick: impl Fn(&Client) -> bool) {
        self.clients().retain_mut(|c| {
            let ok = !pick(c) || write_frame(&mut c.writer, frame).is_ok();
            if !ok {
                let _ = c.writer.shutdown(std::net::Shutdown::Both);
            }
            ok
        });
    }

    /// The agent's sender, taken out of the lock: sending may wait for the
    /// guest, and nothing else may wait behind that.
    fn agent(&self) -> Option<session::Sender> {
        self.lock().agent.clone()
    }

    fn signal(&self, sig: i32) {
        let agent = {
            let mut g = self.lock();
            if g.agent.is_none() {
                g.pending.push(sig);
            }
            g.agent.clone()
        };
        if let Some(a) = agent {
            a.send(&HostMessage::Signal(sig));
        }
    }

    /// Waits until the run counter passes `runs`, or `timeout` passes;
    /// returns whether it did.
    fn wait_run_end(&self, runs: u64, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = self.lock();
        while g.runs == runs && !g.done {
            match deadline {
                None => {
                    g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                Some(d) => {
                    let Some(left) = d.checked_duration_since(Instant::now()) else {
                        return false;
                    };
                    g = self
                        .changed
                        .wait_timeout(g, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        true
    }

    fn set_state(&self, f: impl FnOnce(&mut container::State)) {
        let _one = self.state_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.container.update_state(f) {
            note(&e.to_string());
        }
    }
}

impl session::Output for Shared {
    fn write(&self, stream: Stream, data: &[u8]) {
        if let Some(log) = self.log.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            log.write(stream, data);
        }
        let frame = match stream {
            Stream::Stdout => Frame::Stdout(data.to_vec()),
            Stream::Stderr => Frame::Stderr(data.to_vec()),
        };
        self.broadcast(&frame, |c| c.output);
    }

    fn end(&self, stream: Stream) {
        if let Some(log) = self.log.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            log.flush_partial(stream);
        }
    }
}

fn main(state: &Path, c: &Container, launch: Launch) -> i32 {
    // A client or guest socket that closes must fail a write, never kill
    // the monitor (the command that forked us may have wanted SIGPIPE).
    // SAFETY: ignoring a signal is sound.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // The starting command may have caught these to forward them; the
    // monitor (in a session of its own) takes them as any daemon does.
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ] {
        // SAFETY: restoring a signal's default disposition is sound.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    crate::proctitle::set(&["vm-monitor", &c.config.id]);
    let log_path = c.monitor_log_path();
    redirect_stdio((!launch.keep_stderr).then_some(log_path.as_path()));
    // (Waits out a command that only looks whether a monitor lives; the
    // command that started us holds the container's command lock, so no
    // second monitor is on its way.)
    let _alive = match container::lock(&c.monitor_lock_path()) {
        Ok(l) => l,
        Err(e) => {
            note(&e.to_string());
            return 1;
        }
    };
    if write_frame(&mut &launch.client, &Frame::Ready).is_err() {
        note("the starting command went away");
    }
    match serve(state, c, launch) {
        Ok(()) => 0,
        Err(e) => {
            note(&e.to_string());
            1
        }
    }
}

fn serve(state: &Path, c: &Container, launch: Launch) -> Result<()> {
    let run_dir = c.run_dir(state);
    container::private_dir(&run_dir)?;
    let control_path = c.control_socket(state);
    let _ = std::fs::remove_file(&control_path);
    let listener = UnixListener::bind(&control_path)
        .map_err(|e| Error::host(format!("binding {}: {e}", control_path.display())))?;
    let digest = vm_image::Digest::parse(&c.config.image_digest)
        .map_err(|e| Error::host(format!("the container's image digest: {e}")))?;
    let _in_use = crate::in_use::mark(&run_dir, &digest).map_err(Error::host)?;
    let log = logfile::Writer::open(&c.log_path(), c.config.log)
        .map_err(|e| Error::host(format!("opening the log: {e}")))?;
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner::default()),
        changed: Condvar::new(),
        clients: Mutex::new(Vec::new()),
        state_lock: Mutex::new(()),
        log: Mutex::new(Some(log)),
        container: c.clone(),
    });
    shared.set_state(|s| {
        s.pid = std::process::id() as i32;
        s.stopped_by_user = false;
    });
    add_client(
        &shared,
        launch.client,
        launch.output,
        launch.stdin,
        !launch.output,
    )?;
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&listener, &shared))
            .map_err(|e| Error::host(format!("starting the control thread: {e}")))?;
    }
    let mut keep_stderr = launch.keep_stderr;
    let mut backoff = Duration::from_millis(100);
    loop {
        if !keep_stderr {
            redirect_stdio(Some(&c.monitor_log_path()));
        }
        let started = Instant::now();
        let end = run_once(state, &shared);
        let (stop_requested, restarts) = {
            let g = shared.lock();
            (
                g.stop_requested,
                shared.container.read_state().restart_count,
            )
        };
        let restart = !stop_requested
            && end.failure.is_none()
            && c.config.restart.restarts(end.code, restarts);
        let now = container::now_rfc3339();
        shared.set_state(|s| {
            s.network = None;
            s.exit_code = end.code;
            s.finished_at = now.clone();
            s.error = end
                .failure
                .as_ref()
                .map(|f| f.message.clone())
                .unwrap_or_default();
            s.stopped_by_user = stop_requested;
            if restart {
                s.status = Status::Restarting;
                s.restart_count += 1;
            } else {
                s.status = Status::Exited;
                s.pid = 0;
            }
        });
        let frame = match &end.failure {
            Some(f) => Frame::failed(f),
            None => Frame::Exit(end.code),
        };
        shared.broadcast(&frame, |_| true);
        for c in shared.clients().drain(..) {
            let _ = c.writer.shutdown(std::net::Shutdown::Both);
        }
        {
            let mut g = shared.lock();
            g.runs += 1;
            g.last_exit = end.code;
            g.done = !restart;
            g.killed = false;
            g.paused = false;
            shared.changed.notify_all();
        }
        if keep_stderr {
            redirect_stdio(Some(&c.monitor_log_path()));
            keep_stderr = false;
        }
        if !restart {
            break;
        }
        // Docker's back-off: doubling from 100 ms, reset after a run of
        // ten seconds or more; a stop cuts it short.
        if started.elapsed() >= Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        let g = shared.lock();
        let (g, _) = shared
            .changed
            .wait_timeout_while(g, backoff, |g| !g.stop_requested)
            .unwrap_or_else(|e| e.into_inner());
        let stop = g.stop_requested;
        drop(g);
        backoff = (backoff * 2).min(Duration::from_secs(60));
        if stop {
            shared.set_state(|s| {
                s.status = Status::Exited;
                s.pid = 0;
                s.stopped_by_user = true;
            });
            break;
        }
    }
    let _ = std::fs::remove_file(&control_path);
    if c.config.auto_remove {
        let _lock = c.command_lock();
        // As Docker's --rm: anonymous volumes go with the container.
        crate::volume::remove_anonymous(state, c);
        if let Err(e) = container::remove_files(state, c) {
            note(&e.to_string());
        }
    } else {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(())
}

/// How one run ended.
struct RunEnd {
    code: i32,
    failure: Option<Failure>,
}

impl RunEnd {
    fn failed(e: &Error) -> Self {
        Self {
            code: 125,
            failure: Some(Failure {
                code: 125,
                kind: format!("{:?}", e.kind),
                message: e.message.clone(),
                console: e.console.clone(),
            }),
        }
    }
}

/// The session's events: seal the image disk through the VMM, mark the
/// container running.
struct Events<'a> {
    vm: &'a mut VmProcess,
    cache: &'a mut rootfs_cache::Entry,
    shared: &'a Arc<Shared>,
    /// Each happens once a run; a guest that says it again is ignored.
    sealed: bool,
    started: bool,
}

impl session::Events for Events<'_> {
    fn sealed(&mut self) -> std::result::Result<(), String> {
        if std::mem::replace(&mut self.sealed, true) {
            return Err("the agent sealed the image disk twice".into());
        }
        match self.cache {
            rootfs_cache::Entry::Miss(p) => {
                self.vm.seal()?;
                p.publish()
            }
            rootfs_cache::Entry::Hit(_) => {
                Err("the agent sealed a disk that was already sealed".into())
            }
        }
    }

    fn started(&mut self) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let now = container::now_rfc3339();
        let checked = self.shared.container.config.healthcheck.is_some();
        self.shared.set_state(|s| {
            s.status = Status::Running;
            s.started_at = now;
            s.exit_code = 0;
            s.error.clear();
            s.health = checked.then(crate::health::Health::starting);
        });
        self.shared.broadcast(&Frame::Started, |_| true);
        if let Some(check) = &self.shared.container.config.healthcheck {
            let (shared, check) = (self.shared.clone(), check.clone());
            let runs = shared.lock().runs;
            let _ = std::thread::Builder::new()
                .name("health".into())
                .spawn(move || health::watch(shared, check, runs));
        }
        self.shared.clients().retain(|c| {
            if c.until_started {
                let _ = c.writer.shutdown(std::net::Shutdown::Both);
            }
            !c.until_started
        });
    }

    fn exec(&mut self, msg: agent_protocol::AgentMessage) {
        self.shared.lock().execs.news(msg);
        self.shared.changed.notify_all();
    }
}

fn run_once(state: &Path, shared: &Arc<Shared>) -> RunEnd {
    let c = &shared.container;
    let run_dir = c.run_dir(state);
    let uid = match crate::jail::vmm_uid() {
        Ok(uid) => uid,
        Err(e) => return RunEnd::failed(&Error::host(format!("the VMM's uid: {e}"))),
    };
    let jail = crate::jail::Jail {
        root: exec::jail_root(&run_dir),
        uid,
    };
    if let Err(e) = crate::jail::make_root(&jail.root) {
        return RunEnd::failed(&Error::host(format!(
            "the VMM's jail {}: {e}",
            jail.root.display()
        )));
    }
    let vsock = exec::vsock_path(&run_dir);
    let mut listeners = match session::Listeners::bind(&vsock) {
        Ok(l) => l,
        Err(e) => {
            return RunEnd::failed(&Error::host(format!(
                "vsock sockets in {}: {e}",
                c.run_dir(state).display()
            )))
        }
    };
    // Ports are bound here: one already taken fails the start before the
    // VM is made.
    let net = match crate::network::attach(state, c) {
        Ok(n) => n,
        Err(e) => return RunEnd::failed(&e),
    };
    if let Some(n) = &net {
        let address = n.settings().ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST);
        n.set_dialer(forward::dialer(shared.clone(), address));
    }
    let settings = net.as_ref().map(crate::network::Attachment::settings);
    shared.set_state(|s| s.network = settings);
    let Prepared {
        vm: mut plan,
        mut spec,
        mut cache,
        blobs,
        cgroup,
    } = match start::prepare(state, c, jail, net.as_ref()) {
        Ok(p) => p,
        Err(e) => return RunEnd::failed(&e),
    };
    // Volumes and bind mounts: a file system daemon for each.
    let procs = cgroup.as_ref().map(crate::cgroup::Cgroup::procs);
    let shares = match crate::volume::share::serve(state, c, &run_dir, procs.as_deref()) {
        Ok(served) => {
            plan.config.filesystems = served.devices;
            spec.mounts = served.mounts;
            served.shares
        }
        Err(e) => return RunEnd::failed(&e),
    };
    use_snapshot(state, c, &mut plan.config);
    let restoring = match &plan.config.snapshot {
        Some(vmm::vm::SnapshotUse::Restore { dir, .. }) => Some(dir.clone()),
        _ => None,
    };
    timing::mark("vm-starting");
    let mut vm = match vm_process::spawn(plan) {
        Ok(v) => v,
        Err(e) => return RunEnd::failed(&e),
    };
    {
        let mut g = shared.lock();
        g.vm = Some(vm.handle());
        if g.stop_requested {
            g.killed = true;
            vm.handle().kill();
        }
    }
    let output: Arc<dyn session::Output> = shared.clone();
    let vm_ref = &vm;
    let session = session::Session::start(
        &mut listeners,
        spec,
        start::agent_timeout(),
        &|| vm_ref.ended(),
        output,
    );
    // The agent connected: the VMM has opened its disks, and the layer
    // copies it reads may go once no image names them.
    drop(blobs);
    let result = session.and_then(|mut s| {
        {
            let mut g = shared.lock();
            let sender = s.sender();
            let early = std::mem::take(&mut g.pending);
            g.agent = Some(sender.clone());
            g.vsock = Some(exec::vsock_path(&c.run_dir(state)));
            g.stdin = s.take_stdin();
            shared.changed.notify_all();
            drop(g);
            for sig in early {
                sender.send(&HostMessage::Signal(sig));
            }
        }
        s.wait(&mut Events {
            vm: &mut vm,
            cache: &mut cache,
            shared,
            sealed: false,
            started: false,
        })
    });
    let grace = match &result {
        Ok(_) => start::SHUTDOWN_GRACE,
        Err(session::Error::VmEnded) => Duration::from_secs(3),
        Err(_) => Duration::ZERO,
    };
    {
        let mut g = shared.lock();
        g.agent = None;
        g.vsock = None;
        g.execs.run_ended();
        shared.changed.notify_all();
        if let Some(s) = g.stdin.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
    timing::mark("vm-stopping");
    let mut end = vm.finish(grace);
    if let (Some(dir), Some(error)) = (&restoring, &mut end.error) {
        // KVM refused a snapshot that read well (a host changed under
        // it): gone, so the next start takes a new one.
        if error.starts_with("snapshot:") && std::fs::remove_dir_all(dir).is_ok() {
            error.push_str("; the snapshot was removed, and the next start takes a new one (or run with --no-snapshot)");
        }
    }
    drop(shares);
    // Empty now: the VMM has been reaped.
    drop(cgroup);
    drop(net);
    timing::mark("vm-ended");
    let killed = {
        let mut g = shared.lock();
        g.vm = None;
        g.killed
    };
    match result {
        Ok(Ended::Exited(code)) => RunEnd {
            code,
            failure: None,
        },
        Ok(Ended::Failed(code, message)) => RunEnd {
            code,
            failure: Some(Failure {
                code,
                kind: "Guest".into(),
                message,
                console: Vec::new(),
            }),
        },
        Err(_) if killed => RunEnd {
            code: 137,
            failure: None,
        },
        Err(e) => {
            let message = end
                .guest_failure
                .clone()
                .or(end.error.clone())
                .unwrap_or_else(|| session_failure(e));
            RunEnd {
                code: 125,
                failure: Some(Failure {
                    code: 125,
                    kind: "Guest".into(),
                    message,
                    console: end.console,
                }),
            }
        }
    }
}

/// Starts the VM from a snapshot when it can (see `snapshot`); says why
/// not under `--debug`.
fn use_snapshot(state: &Path, c: &Container, config: &mut vmm::VmConfig) {
    if !crate::snapshot::wanted(c.config.no_snapshot) {
        return;
    }
    let cold = if config.filesystems.is_empty() {
        crate::snapshot::prepare(state, config, c.config.debug).err()
    } else {
        Some("volumes over virtio-fs need guest memory shared with their daemon, which a snapshot's copy-on-write memory is not".to_string())
    };
    timing::mark("snapshot-ready");
    if let (Some(why), true) = (cold, c.config.debug) {
        note(&format!("booting cold: {why}"));
    }
}

fn session_failure(e: session::Error) -> String {
    match e {
        session::Error::Timeout(what) => format!(
            "the guest agent did not open its {what} connection within {} s",
            start::agent_timeout().as_secs()
        ),
        session::Error::Protocol(m) => m,
        session::Error::VmEnded => {
            "the guest ended before the container reported an exit status".into()
        }
    }
}

/// Registers a client; a thread reads what it sends (stdin, signals,
/// resizes) until it goes away.
fn add_client(
    shared: &Arc<Shared>,
    stream: UnixStream,
    output: bool,
    stdin: bool,
    until_started: bool,
) -> Result<()> {
    let writer = stream
        .try_clone()
        .map_err(|e| Error::host(format!("client socket: {e}")))?;
    let _ = writer.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
    shared.clients().push(Client {
        writer,
        output,
        until_started,
    });
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("client".into())
        .spawn(move || client_input(stream, stdin, &shared))
        .map(drop)
        .map_err(|e| Error::host(format!("starting a client thread: {e}")))
}

fn client_input(mut stream: UnixStream, stdin: bool, shared: &Shared) {
    while let Ok(Some(frame)) = read_frame(&mut stream) {
        match frame {
            Frame::Stdin(data) if stdin => {
                let Some(mut conn) = container_stdin(shared) else {
                    continue;
                };
                if conn.write_all(&data).is_err() {
                    continue;
                }
            }
            Frame::StdinEof if stdin => {
                if let Some(conn) = container_stdin(shared) {
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                }
            }
            Frame::Signal(sig) => shared.signal(sig),
            Frame::Resize { rows, cols } => {
                if let Some(a) = shared.agent() {
                    a.send(&HostMessage::Resize { rows, cols });
                }
            }
            _ => {}
        }
    }
}

/// The container's stdin connection, once the agent has opened it (none
/// when the run ends first or the container has no stdin).
fn container_stdin(shared: &Shared) -> Option<UnixStream> {
    let mut g = shared.lock();
    loop {
        if let Some(s) = &g.stdin {
            return s.try_clone().ok();
        }
        if g.done || g.agent.is_some() {
            return None;
        }
        g = shared.changed.wait(g).unwrap_or_else(|e| e.into_inner());
    }
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("request".into())
            .spawn(move || handle(conn, &shared));
    }
}

fn handle(conn: UnixStream, shared: &Arc<Shared>) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => Reply {
            error: Some(format!("bad request: {e}")),
            code: None,
        },
        Ok(Request::Attach { stdin }) => {
            if shared.lock().done {
                Reply {
                    error: Some("the container is not running".into()),
                    code: None,
                }
            } else {
                if answer(&conn, &Reply::default()).is_ok() {
                    let _ = add_client(shared, conn, true, stdin, false);
                }
                return;
            }
        }
        Ok(Request::Exec(opts)) => return exec::serve(conn, shared, opts),
        Ok(Request::Stop { timeout, signal }) => stop(shared, timeout, signal),
        Ok(Request::Kill { signal }) => kill(shared, signal),
        Ok(Request::Pause) => pause(shared, true),
        Ok(Request::Unpause) => pause(shared, false),
        Ok(Request::Wait) => {
            let runs = shared.lock().runs;
            shared.wait_run_end(runs, None);
            Reply {
                error: None,
                code: Some(shared.lock().last_exit),
            }
        }
    };
    let _ = answer(&conn, &reply);
}

fn answer(mut conn: &UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(reply).unwrap_or_default();
    text.push(b'\n');
    conn.write_all(&text)
}

/// `vm stop`: the stop signal, then after `timeout` seconds the VM is
/// killed (no guest cooperation needed); answers once the run ended.
fn stop(shared: &Shared, timeout: u64, signal: i32) -> Reply {
    let (runs, vm, agent) = {
        let mut g = shared.lock();
        g.stop_requested = true;
        shared.changed.notify_all();
        (g.runs, g.vm.clone(), g.agent.is_some())
    };
    let Some(vm) = vm else {
        return Reply::default();
    };
    let _ = vm.resume();
    shared.lock().paused = false;
    if agent {
        shared.signal(signal);
    }
    let timeout = if agent {
        // (a year is as good as forever, and cannot overflow a clock)
        Duration::from_secs(timeout.min(365 * 24 * 3600))
    } else {
        Duration::ZERO
    };
    if !shared.wait_run_end(runs, Some(timeout)) {
        shared.lock().killed = true;
        vm.kill();
        shared.wait_run_end(runs, Some(Duration::from_secs(30)));
    }
    Reply::default()
}

/// `vm kill`: SIGKILL ends the VM at once; other signals go to the
/// container's process.
fn kill(shared: &Shared, signal: i32) -> Reply {
    let (runs, vm) = {
        let g = shared.lock();
        (g.runs, g.vm.clone())
    };
    if signal == libc::SIGKILL {
        // Between two runs of a restart policy there is no VM: end the
        // restarts.
        let mut g = shared.lock();
        g.stop_requested = true;
        g.killed = vm.is_some();
        shared.changed.notify_all();
    }
    let Some(vm) = vm else {
        return if signal == libc::SIGKILL {
            Reply::default()
        } else {
            Reply {
                error: Some("the container is not running".into()),
                code: None,
            }
        };
    };
    if signal == libc::SIGKILL {
        vm.kill();
        shared.wait_run_end(runs, Some(Duration::from_secs(30)));
    } else {
        shared.signal(signal);
    }
    Reply::default()
}

fn pause(shared: &Shared, on: bool) -> Reply {
    let vm = shared.lock().vm.clone();
    let Some(vm) = vm else {
        return Reply {
            error: Some("the container is not running".into()),
            code: None,
        };
    };
    let r = if on { vm.pause() } else { vm.resume() };
    if let Err(e) = r {
        return Reply {
            error: Some(e.message),
            code: None,
        };
    }
    shared.lock().paused = on;
    shared.changed.notify_all();
    shared.set_state(|s| {
        s.status = if on { Status::Paused } else { Status::Running };
    });
    Reply::default()
}

/// The answer line a request gets, read byte by byte: frames may follow
/// it (on `attach`, `exec`).
fn read_reply(conn: &mut UnixStream) -> std::result::Result<Reply, String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match std::io::Read::read(conn, &mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            Ok(_) => {
                return Err(
                    "the container's monitor closed the connection without an answer".into(),
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the container's monitor: {e}")),
        }
    }
    serde_json::from_slice(&line)
        .map_err(|e| format!("the container's monitor answered badly: {e}"))
}

/// Sends `req` to the monitor of `c` and returns its answer (and the
/// connection, for `attach`).
pub fn request(state: &Path, c: &Container, req: &Request) -> Result<(Reply, UnixStream)> {
    let path: PathBuf = c.control_socket(state);
    let mut conn = UnixStream::connect(&path).map_err(|e| {
        Error::in_use(format!(
            "Container {} is not running (its control socket {}: {e})",
            c.short_id(),
            path.display()
        ))
    })?;
    let mut text = serde_json::to_vec(req).unwrap_or_default();
    text.push(b'\n');
    conn.write_all(&text)
        .map_err(|e| Error::host(format!("talking to the container's monitor: {e}")))?;
    let reply = read_reply(&mut conn).map_err(Error::host)?;
    if let Some(e) = &reply.error {
        return Err(Error::in_use(e.clone()));
    }
    Ok((reply, conn))
}
