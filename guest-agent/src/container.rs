//! The container's init: the agent binary started again as
//! `/init --container-init` in new PID, mount, UTS and IPC namespaces
//! (PID 1 there). It builds the container's view of the world (root,
//! /proc, /sys, /dev, /etc files, hostname), then becomes the user's
//! process (execve with its uid, gids, env and cwd), so the container's
//! process is PID 1 of its namespace, as under Docker: the agent outside
//! reaps it and relays signals to it. Its stdio are the container's.
//!
//! `vm exec` starts the binary as `/init --container-exec`: it enters the
//! namespaces and root of the running container, forks the process (in
//! the container's PID namespace), relays signals to it and exits with
//! its status.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use agent_protocol::Process;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::unistd::{fork, ForkResult, Pid};

pub use crate::init_spec::{ExecInit, InitSpec};
use crate::process::{self, ChildExec};
use crate::rootfs;

pub const INIT_ARG: &str = "--container-init";
pub const EXEC_ARG: &str = "--container-exec";
/// The descriptor on which the init reads its [`InitSpec`].
const SPEC_FD: RawFd = 3;
/// With a terminal: the socket on which the init sends the pty's master.
const PTY_SOCK_FD: RawFd = 4;

/// A failure with the exit status Docker gives it.
pub struct Fail {
    pub code: i32,
    pub msg: String,
}

impl Fail {
    pub fn setup(msg: impl Into<String>) -> Self {
        Self {
            code: 125,
            msg: msg.into(),
        }
    }
}

/// Starts the container's init in its own namespaces with the given
/// stdio (and, for a terminal, the socket on which it hands back the
/// pty's master as descriptor 4); returns its pid in the agent's namespace.
pub fn spawn(spec: &InitSpec, stdio: [RawFd; 3], pty_sock: Option<RawFd>) -> Result<Pid, Fail> {
    let json = serde_json::to_vec(spec).map_err(|e| Fail::setup(e.to_string()))?;
    let flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    start_self(INIT_ARG, flags, &json, stdio, pty_sock)
}

/// Starts `/init --container-exec` for another process in the container
/// (it joins the container's namespaces itself).
pub fn spawn_exec(
    spec: &ExecInit,
    stdio: [RawFd; 3],
    pty_sock: Option<RawFd>,
) -> Result<Pid, Fail> {
    let json = serde_json::to_vec(spec).map_err(|e| Fail::setup(e.to_string()))?;
    start_self(EXEC_ARG, 0, &json, stdio, pty_sock)
}

/// Clones this process with `flags` and runs `/init MODE` in the child
/// with `json` to read on descriptor 3, the given stdio and pty socket.
fn start_self(
    mode: &str,
    flags: libc::c_int,
    json: &[u8],
    stdio: [RawFd; 3],
    pty_sock: Option<RawFd>,
) -> Result<Pid, Fail> {
    let (spec_r, spec_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Fail::setup(format!("pipe: {e}")))?;
    let path = CString::new("/init").map_err(|e| Fail::setup(e.to_string()))?;
    // Our own binary by descriptor, not by path: a container that got
    // at the initramfs cannot put something else in its place.
    let exe = File::open("/proc/self/exe")
        .map_err(|e| Fail::setup(format!("opening the agent's binary: {e}")))?;
    let empty = CString::default();
    let arg = CString::new(mode).map_err(|e| Fail::setup(e.to_string()))?;
    let argv = [path.as_ptr(), arg.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // (source, target) pairs for the child's descriptor table.
    let mut fds = [(-1, -1); 5];
    for (i, fd) in stdio.iter().enumerate() {
        fds[i] = (*fd, i as RawFd);
    }
    fds[3] = (spec_r.as_raw_fd(), SPEC_FD);
    if let Some(sock) = pty_sock {
        fds[4] = (sock, PTY_SOCK_FD);
    }
    // The init starts with every signal blocked (a mask survives execve):
    // one the host forwards before the init is ready stays pending instead
    // of being dropped, as signals to a namespace's init without a handler
    // are. It takes them with sigwait once the process runs.
    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is a valid sigset_t.
    unsafe { libc::sigfillset(&mut all) };
    // SAFETY: clone without CLONE_VM and without a new stack behaves like
    // fork(2). In the child only async-signal-safe calls follow (fcntl,
    // dup2, sigprocmask, execve, _exit) on data prepared before the call.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // SAFETY: see above; every pointer refers to memory that the fork
        // copied and that stays valid until execve or _exit.
        unsafe {
            // Move every source out of the way first, so no dup2 below can
            // overwrite a source that a later one needs.
            let exe_fd = libc::fcntl(exe.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100);
            let mut high = [-1; 5];
            for (i, (src, _)) in fds.iter().enumerate() {
                if *src >= 0 {
                    high[i] = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 100);
                }
            }
            for (i, (_, target)) in fds.iter().enumerate() {
                if high[i] >= 0 {
                    libc::dup2(high[i], *target);
                }
            }
            libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
            libc::syscall(
                libc::SYS_execveat,
                exe_fd,
                empty.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            libc::_exit(125);
        }
    }
    if pid < 0 {
        return Err(Fail::setup(format!(
            "cannot create the container's namespaces: {}",
            std::io::Error::last_os_error()
        )));
    }
    drop(spec_r);
    let mut w = File::from(spec_w);
    w.write_all(json)
        .map_err(|e| Fail::setup(format!("passing the spec to the container's init: {e}")))?;
    Ok(Pid::from_raw(pid as i32))
}

/// Entry point of `/init --container-init`.
pub fn init_main() -> ! {
    exit_with(init())
}

/// Exits with the status, or says why on stderr (the process's own) and
/// exits with the failure's status.
fn exit_with(r: Result<i32, Fail>) -> ! {
    let code = match r {
        Ok(code) => code,
        Err(f) => {
            eprintln!("vm: {}", f.msg);
            f.code
        }
    };
    std::process::exit(code)
}

/// The spec the agent wrote on descriptor 3.
fn read_spec<T: serde::de::DeserializeOwned>() -> Result<T, Fail> {
    // SAFETY: descriptor 3 was set up by `start_self` for us alone.
    let mut spec_file = unsafe { File::from_raw_fd(SPEC_FD) };
    let mut json = Vec::new();
    spec_file
        .read_to_end(&mut json)
        .map_err(|e| Fail::setup(format!("reading the spec: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| Fail::setup(format!("bad spec: {e}")))
}

fn init() -> Result<i32, Fail> {
    // Signals stay blocked (as the agent started us) until the process's
    // own mask is set right before its execve: one the host forwards
    // early waits for it.
    let spec: InitSpec = read_spec()?;

    // Its own cgroup, seen as the root of a cgroup namespace.
    crate::cgroup::join().map_err(Fail::setup)?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| Fail::setup(format!("a cgroup namespace: {e}")))?;
    rootfs::prepare(&spec).map_err(Fail::setup)?;
    if spec.process.terminal {
        attach_terminal(&spec.process, true)?;
    }
    nix::unistd::sethostname(&spec.hostname)
        .map_err(|e| Fail::setup(format!("sethostname: {e}")))?;

    let cwd = if spec.process.cwd.is_empty() {
        "/"
    } else {
        spec.process.cwd.as_str()
    };
    if !Path::new(cwd).is_dir() {
        // Docker creates a missing working directory, and refuses the
        // container (125) when it cannot.
        std::fs::create_dir_all(cwd).map_err(|e| {
            Fail::setup(format!("cannot create the working directory {cwd}: {e}"))
        })?;
    }

    let child = ChildExec::resolve(&spec.process, &spec.hostname, cwd)?;
    if spec.options.init {
        return child.exec_under_init();
    }
    // Becomes the process: it is PID 1 of the container.
    match child.exec()? {}
}

/// Entry point of `/init --container-exec`.
pub fn exec_main() -> ! {
    exit_with(exec())
}

/// Joins the container of the process `spec.target` (its cgroup; its
/// cgroup, IPC, UTS, PID and mount namespaces; its root), then forks the process there and
/// relays signals to it until it exits.
fn exec() -> Result<i32, Fail> {
    let spec: ExecInit = read_spec()?;
    // Not dumpable while it is still the agent's (root, every capability,
    // no filter) inside the container's namespaces: the container's
    // processes may not ptrace it or read its memory. The process's own
    // execve makes it dumpable again.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let proc_dir = format!("/proc/{}", spec.target);
    let open = |p: String| {
        File::open(&p).map_err(|e| Fail::setup(format!("the container is gone ({p}: {e})")))
    };
    let root = open(format!("{proc_dir}/root"))?;
    // The agent's /dev/null, opened before joining: the container's may be
    // anything (a FIFO that never opens).
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Fail::setup(format!("/dev/null: {e}")))?;
    crate::cgroup::join().map_err(Fail::setup)?;
    let namespaces = [
        ("cgroup", nix::sched::CloneFlags::CLONE_NEWCGROUP),
        ("ipc", nix::sched::CloneFlags::CLONE_NEWIPC),
        ("uts", nix::sched::CloneFlags::CLONE_NEWUTS),
        ("pid", nix::sched::CloneFlags::CLONE_NEWPID),
        ("mnt", nix::sched::CloneFlags::CLONE_NEWNS),
    ];
    let mut ns_files = Vec::new();
    for (name, flag) in namespaces {
        ns_files.push((open(format!("{proc_dir}/ns/{name}"))?, flag));
    }
    for (f, flag) in &ns_files {
        nix::sched::setns(f, *flag).map_err(|e| Fail::setup(format!("setns: {e}")))?;
    }
    nix::unistd::fchdir(&root).map_err(|e| Fail::setup(format!("fchdir: {e}")))?;
    nix::unistd::chroot(".").map_err(|e| Fail::setup(format!("chroot: {e}")))?;
    nix::unistd::chdir("/").map_err(|e| Fail::setup(format!("chdir: {e}")))?;
    drop((root, ns_files));

    let all = SigSet::all();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None)
        .map_err(|e| Fail::setup(format!("sigprocmask: {e}")))?;
    // SAFETY: this process is single-threaded (a fresh exec), so the child
    // may run ordinary code before its execve.
    match unsafe { fork() }.map_err(|e| Fail::setup(format!("fork: {e}")))? {
        ForkResult::Child => {
            let r = exec_child(&spec);
            let f = r.err().unwrap_or_else(|| Fail::setup("exec returned"));
            eprintln!("vm: {}", f.msg);
            std::process::exit(f.code)
        }
        ForkResult::Parent { child } => {
            process::detach_stdio(&null);
            Ok(process::supervise(child, &all))
        }
    }
}

/// In the container's PID namespace: the terminal, the capabilities, the
/// user, then the process itself.
fn exec_child(spec: &ExecInit) -> Result<std::convert::Infallible, Fail> {
    let p = &spec.process;
    if p.terminal {
        attach_terminal(p, false)?;
    }
    if let Some(b) = &spec.builtin {
        // As root, with Docker's default capabilities whatever the
        // container's are (its files are copied as `docker cp` would):
        // bounding, permitted and effective sets alike.
        crate::security::drop_bounding(agent_protocol::DEFAULT_CAPABILITIES)?;
        crate::security::after_user(&agent_protocol::Security::default(), 0)?;
        // It ends with the helper that relays to it (the monitor kills
        // that when the builtin's client goes away), and takes signals.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        // The helper lives outside the container's PID namespace, so its
        // pid reads 0 here; once it is gone we belong to the container's
        // init (1). It may have gone before the line above took effect.
        if nix::unistd::getppid().as_raw() != 0 {
            std::process::exit(137);
        }
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        std::process::exit(crate::builtin::run(b));
    }
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let cwd = if p.cwd.is_empty() { "/" } else { p.cwd.as_str() };
    if !Path::new(cwd).is_dir() {
        return Err(Fail {
            code: 126,
            msg: format!("the working directory {cwd} does not exist"),
        });
    }
    ChildExec::resolve(p, &hostname, cwd)?.exec()
}

/// Opens the container's pty (from its own devpts), makes the slave our
/// stdio and /dev/console, and sends the master to the agent.
fn attach_terminal(p: &Process, console: bool) -> Result<(), Fail> {
    let pty =
        crate::pty::open(p.rows, p.cols).map_err(|e| Fail::setup(format!("opening a pty: {e}")))?;
    let dup = |r: nix::Result<()>| r.map_err(|e| Fail::setup(format!("dup2: {e}")));
    dup(nix::unistd::dup2_stdin(&pty.slave))?;
    dup(nix::unistd::dup2_stdout(&pty.slave))?;
    dup(nix::unistd::dup2_stderr(&pty.slave))?;
    // Only the container's own init binds its terminal as /dev/console;
    // an exec'd process does not touch the container's mounts.
    if console {
        let _ = nix::mount::mount(
            Some(pty.slave_path.as_str()),
            "/dev/console",
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        );
    }
    // SAFETY: descriptor 4 was set up by `spawn` for us alone.
    let sock = unsafe { OwnedFd::from_raw_fd(PTY_SOCK_FD) };
    crate::pty::send_fd(sock.as_raw_fd(), pty.master.as_raw_fd())
        .map_err(|e| Fail::setup(format!("handing the pty to the agent: {e}")))?;
    Ok(())
}
