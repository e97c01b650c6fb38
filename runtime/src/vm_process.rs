//! The VMM child: the one process of a container that opens `/dev/kvm`
//! and runs guest-facing code. Its monitor forks it for each start of the
//! container; it dies with its monitor (`PR_SET_PDEATHSIG`), keeps no
//! descriptor of the monitor's but its channel, and talks to the monitor
//! in lines over that channel: `seal` (answered `sealed`) makes the image
//! disk refuse writes, `stop` ends the VM; at the end it sends
//! `end <JSON>` with how the VM ended and exits.
//!
//! Stopping does not depend on it: the monitor kills it with SIGKILL when
//! it does not end in time. Pausing is SIGSTOP/SIGCONT of the whole
//! process, so the vCPUs really stop.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};
use vmm::{ExitReason, ExitSignal, VmConfig};

use crate::error::{Error, Result};

/// How the VM ended, as the child reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct End {
    /// Why the guest failed (panic, triple fault, KVM error), if it did.
    pub guest_failure: Option<String>,
    /// Why the VMM could not run the VM at all, if so.
    pub error: Option<String>,
    /// The guest console's last lines.
    pub console: Vec<String>,
}

/// What the child needs to build its VM: made before the fork.
pub struct Plan {
    /// The container's ID, for the VMM's command line.
    pub id: String,
    pub config: VmConfig,
    /// The `cgroup.procs` of the group the VMM joins first, if any.
    pub cgroup: Option<std::path::PathBuf>,
    /// The host CPUs the VMM is bound to (`--cpuset-cpus`), if any.
    pub cpuset: Option<Vec<usize>>,
    /// The image disk's seal, when it is to be sealed.
    pub seal: Option<Arc<devices::virtio::block::Seal>>,
    /// Where the VMM is jailed (its vsock socket is in the jail's root).
    pub jail: crate::jail::Jail,
}

pub struct VmProcess {
    pid: Pid,
    writer: Arc<Mutex<UnixStream>>,
    reader: BufReader<UnixStream>,
    end: Option<End>,
}

/// A handle other threads use to stop, kill, pause or resume the VM.
#[derive(Clone)]
pub struct Handle {
    pid: Pid,
    writer: Arc<Mutex<UnixStream>>,
}

impl Handle {
    /// Asks the VMM to stop the VM now (it reports how it ended).
    pub fn stop(&self) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let _ = w.write_all(b"stop\n");
        drop(w);
        let _ = kill(self.pid, Signal::SIGCONT);
    }

    /// Ends the VMM at once, whatever the guest is doing.
    pub fn kill(&self) {
        let _ = kill(self.pid, Signal::SIGKILL);
    }

    pub fn pause(&self) -> Result<()> {
        kill(self.pid, Signal::SIGSTOP).map_err(|e| Error::host(format!("pausing the VM: {e}")))
    }

    pub fn resume(&self) -> Result<()> {
        kill(self.pid, Signal::SIGCONT).map_err(|e| Error::host(format!("resuming the VM: {e}")))
    }
}

/// Forks the VMM child and starts `plan` in it. Call from the thread that
/// will reap it.
pub fn spawn(plan: Plan) -> Result<VmProcess> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| Error::host(format!("socketpair: {e}")))?;
    let monitor = nix::unistd::getpid();
    // SAFETY: the child only runs the VMM and exits with `_exit`; it
    // shares no lock with the monitor's other threads: they never hold
    // the environment's or stderr's lock (they do not log), and the
    // allocator is fork-safe.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(ours);
            child(plan, theirs, monitor)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(theirs);
            drop(plan);
            let reader = ours
                .try_clone()
                .map_err(|e| Error::host(format!("socket: {e}")))?;
            Ok(VmProcess {
                pid: child,
                writer: Arc::new(Mutex::new(ours)),
                reader: BufReader::new(reader),
                end: None,
            })
        }
        Err(e) => Err(Error::host(format!("starting the VMM process: {e}"))),
    }
}

fn child(plan: Plan, channel: UnixStream, monitor: Pid) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    crate::proctitle::set(&["vm-vmm", &plan.id]);
    if nix::unistd::getppid() != monitor {
        // SAFETY: _exit ends the process without running anything else.
        unsafe { libc::_exit(1) };
    }
    // Keep stdio, the channel, the TAPs and the file system daemons'
    // connections the monitor opened; close everything else the monitor
    // had open (its sockets, its lock, clients).
    let fd = channel.into_raw_fd();
    let mut keep: Vec<RawFd> = plan
        .config
        .nets
        .iter()
        .flat_map(|n| [&n.tap_fd, &n.stream_fd])
        .filter_map(|f| f.as_ref().map(|f| f.as_raw_fd()))
        .chain(plan.config.filesystems.iter().map(|f| f.socket.as_raw_fd()))
        .chain([fd])
        .collect();
    keep.sort_unstable();
    let mut from = 3;
    for k in keep.into_iter().chain([RawFd::MAX]) {
        if k > from {
            // SAFETY: close_range on descriptor numbers none of which this
            // process still uses (the fork left one thread).
            unsafe { libc::syscall(libc::SYS_close_range, from as u32, (k - 1) as u32, 0) };
        }
        from = from.max(k.saturating_add(1));
    }
    // SAFETY: `fd` is the channel, ours from here on.
    let channel = unsafe { UnixStream::from_raw_fd(fd) };
    // Read while the host's files are in view.
    let pvm = vmm::host::is_pvm();
    let end = match run_vm(plan, &channel, monitor) {
        Ok(end) => end,
        Err(e) => End {
            error: Some(e),
            ..End::default()
        },
    };
    let end = End {
        guest_failure: end.guest_failure.map(|f| {
            if pvm && f.starts_with("KVM could not run the guest") {
                format!("{f}; {}", vmm::host::Error::Pvm)
            } else {
                f
            }
        }),
        ..end
    };
    let mut line = b"end ".to_vec();
    line.extend(serde_json::to_vec(&end).unwrap_or_default());
    line.push(b'\n');
    let mut w = &channel;
    let _ = w.write_all(&line);
    // SAFETY: _exit skips destructors and atexit handlers the monitor's
    // copy of the program registered.
    unsafe { libc::_exit(0) }
}

/// The size of the largest disk the VMM writes (at least 1 GiB): the
/// most it may write into any file.
fn largest_writable_disk(config: &VmConfig) -> u64 {
    config
        .disks
        .iter()
        .filter(|d| !d.read_only)
        .filter_map(|d| std::fs::metadata(&d.path).ok())
        .map(|m| m.len())
        .fold(1 << 30, u64::max)
}

/// Builds the VM and runs it: the VMM joins its cgroup first (guest
/// memory is charged to it), opens what it needs from where the monitor
/// runs, then enters its jail and filter (see `jail`, `seccomp`) before
/// any guest code runs, and only then starts serving the monitor's
/// commands.
fn run_vm(mut plan: Plan, channel: &UnixStream, monitor: Pid) -> std::result::Result<End, String> {
    if let Some(procs) = &plan.cgroup {
        crate::cgroup::join(procs).map_err(|e| e.to_string())?;
    }
    if let Some(cpus) = &plan.cpuset {
        crate::cpuset::bind(cpus)?;
    }
    // Relative paths stay right after the move into the jail's root,
    // which is where the vsock device's sockets are named from.
    let config = &mut plan.config;
    let absolute = |p: &mut std::path::PathBuf| -> std::result::Result<(), String> {
        if p.as_os_str().is_empty() {
            return Ok(()); // (a disk made only of parts)
        }
        *p = std::path::absolute(&*p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(())
    };
    absolute(&mut config.kernel)?;
    if let Some(i) = &mut config.initrd {
        absolute(i)?;
    }
    if let Some(vmm::vm::SnapshotUse::Restore { dir, .. }) = &mut config.snapshot {
        absolute(dir)?;
    }
    for d in &mut config.disks {
        absolute(&mut d.path)?;
        for p in &mut d.parts {
            absolute(&mut p.path)?;
        }
    }
    let root = plan.jail.root.clone();
    nix::unistd::chdir(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    if let Some(v) = &mut config.vsock {
        if let Ok(rel) = v.uds_path.strip_prefix(&root) {
            v.uds_path = rel.to_path_buf();
        }
    }
    let max_file_size = largest_writable_disk(config);
    let exit = Arc::new(ExitSignal::new().map_err(|e| format!("eventfd: {e}"))?);
    config.exit = exit.clone();
    let reader = channel.try_clone().map_err(|e| format!("channel: {e}"))?;
    let writer = channel.try_clone().ok();
    let seal = plan.seal.clone();
    let jail = plan.jail.clone();
    config.confine = Some(Box::new(move || {
        crate::jail::enter(&jail, max_file_size).map_err(|e| e.to_string())?;
        // A change of uid clears the parent-death signal.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        if nix::unistd::getppid() != monitor {
            return Err("the monitor ended".into());
        }
        crate::seccomp::install()?;
        let commands = move || serve(reader, writer, seal, &exit);
        std::thread::Builder::new()
            .name("commands".into())
            .spawn(commands)
            .map_err(|e| format!("the VMM's command thread: {e}"))?;
        Ok(())
    }));
    Ok(match vmm::vm::run(plan.config) {
        Ok(outcome) => End {
            guest_failure: guest_failure(&outcome.reason),
            error: None,
            console: outcome.console_tail,
        },
        Err(e) => End {
            error: Some(e.to_string()),
            ..End::default()
        },
    })
}

/// The monitor's commands; its end of file stops the VM.
fn serve(
    reader: UnixStream,
    mut writer: Option<UnixStream>,
    seal: Option<Arc<devices::virtio::block::Seal>>,
    exit: &ExitSignal,
) {
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        match line.as_str() {
            "seal" => {
                let answer = match seal.as_ref().map(|s| s.seal()) {
                    Some(Err(e)) => format!("seal-failed {e}\n"),
                    _ => "sealed\n".to_string(),
                };
                if let Some(w) = &mut writer {
                    let _ = w.write_all(answer.as_bytes());
                }
            }
            "stop" => exit.set(ExitReason::Stopped),
            _ => {}
        }
    }
    exit.set(ExitReason::Stopped);
}

fn guest_failure(reason: &ExitReason) -> Option<String> {
    match reason {
        ExitReason::Panic(p) => Some(format!("the guest kernel panicked: {p}")),
        ExitReason::TripleFault { cpu, .. } => {
            Some(format!("the guest triple-faulted on vCPU {cpu}"))
        }
        ExitReason::InternalError { cpu, detail } => Some(format!(
            "KVM could not run the guest on vCPU {cpu}: {detail}"
        )),
        ExitReason::VmmError(m) => Some(m.clone()),
        ExitReason::SnapshotPoint => {
            Some("the guest stopped at a snapshot point in a VM not being snapshotted".into())
        }
        ExitReason::Reset | ExitReason::PowerOff | ExitReason::Stopped => None,
    }
}

impl VmProcess {
    pub fn handle(&self) -> Handle {
        Handle {
            pid: self.pid,
            writer: self.writer.clone(),
        }
    }

    /// Whether the VMM process has ended (without reaping it).
    pub fn ended(&self) -> bool {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.pid), flags) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => false,
            Ok(_) => true,
            Err(_) => true,
        }
    }

    /// Makes the image disk refuse writes; returns once the VMM has.
    pub fn seal(&mut self) -> std::result::Result<(), String> {
        {
            let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            w.write_all(b"seal\n")
                .map_err(|e| format!("asking the VMM to seal the image disk: {e}"))?;
        }
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return Err("the VMM ended while sealing the image disk".into()),
                Ok(_) if line.trim_end() == "sealed" => return Ok(()),
                Ok(_) if line.starts_with("seal-failed ") => {
                    return Err(format!(
                        "the VMM could not seal the image disk: {}",
                        line["seal-failed ".len()..].trim_end()
                    ))
                }
                Ok(_) => self.take_end(&line),
            }
        }
    }

    fn take_end(&mut self, line: &str) {
        if let Some(json) = line.trim_end().strip_prefix("end ") {
            self.end = serde_json::from_str(json).ok();
        }
    }

    /// Waits up to `grace` for the VM to end by itself, then stops it,
    /// then kills it; reaps the process and returns how the VM ended.
    pub fn finish(mut self, grace: Duration) -> End {
        let deadline = Instant::now() + grace;
        while !self.ended() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.ended() {
            self.handle().stop();
        }
        // Its report, or its end of file; a VMM that does neither in time
        // is killed.
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(3)));
        while self.end.is_none() {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => self.take_end(&line),
            }
        }
        if self.end.is_none() && !self.ended() {
            self.handle().kill();
        }
        let status = waitpid(self.pid, None);
        self.end.take().unwrap_or_else(|| End {
            error: Some(match status {
                Ok(nix::sys::wait::WaitStatus::Signaled(_, Signal::SIGSYS, _)) => {
                    "the VMM process was killed by its seccomp filter (SIGSYS): it made a system call outside its allow-list; this is a bug in vm, please report it with the output of `vm run --debug`".into()
                }
                Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                    format!("the VMM process was killed by {sig}")
                }
                _ => "the VMM process ended without saying how the VM ended".into(),
            }),
            ..End::default()
        })
    }
}
