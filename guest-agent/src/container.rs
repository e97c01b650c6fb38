//! The container's init: the agent binary started again as
//! `/init --container-init` in new PID, mount, UTS and IPC namespaces
//! (PID 1 there). It builds the container's view of the world (root,
//! /proc, /sys, /dev, /etc files, hostname), then forks the user's process
//! (PID 2) with its uid, gids, env and cwd, forwards signals to it, reaps
//! every zombie in the namespace, and exits with the process's status
//! (128+N when it was killed by signal N). Its stdio are the container's.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use agent_protocol::Process;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::rootfs;
pub use crate::init_spec::InitSpec;
use crate::users;

pub const INIT_ARG: &str = "--container-init";
/// The descriptor on which the init reads its [`InitSpec`].
const SPEC_FD: RawFd = 3;
/// With a terminal: the socket on which the init sends the pty's master.
const PTY_SOCK_FD: RawFd = 4;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
    let (spec_r, spec_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Fail::setup(format!("pipe: {e}")))?;
    let path = CString::new("/init").map_err(|e| Fail::setup(e.to_string()))?;
    let arg = CString::new(INIT_ARG).map_err(|e| Fail::setup(e.to_string()))?;
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
    let flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
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
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
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
    w.write_all(&json)
        .map_err(|e| Fail::setup(format!("passing the spec to the container's init: {e}")))?;
    Ok(Pid::from_raw(pid as i32))
}

/// Entry point of `/init --container-init`.
pub fn init_main() -> ! {
    let code = match init() {
        Ok(code) => code,
        Err(f) => {
            eprintln!("vm: {}", f.msg);
            f.code
        }
    };
    std::process::exit(code)
}

fn init() -> Result<i32, Fail> {
    // SAFETY: descriptor 3 was set up by `spawn` for us alone.
    let mut spec_file = unsafe { File::from_raw_fd(SPEC_FD) };
    let mut json = Vec::new();
    spec_file
        .read_to_end(&mut json)
        .map_err(|e| Fail::setup(format!("reading the spec: {e}")))?;
    drop(spec_file);
    let spec: InitSpec =
        serde_json::from_slice(&json).map_err(|e| Fail::setup(format!("bad spec: {e}")))?;

    rootfs::prepare(&spec).map_err(Fail::setup)?;
    if spec.process.terminal {
        attach_terminal(&spec.process)?;
    }
    drop_capabilities()?;
    nix::unistd::sethostname(&spec.hostname)
        .map_err(|e| Fail::setup(format!("sethostname: {e}")))?;

    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let user = users::resolve(&spec.process.user, &passwd, &group).map_err(Fail::setup)?;
    let env = environment(&spec.process.env, &spec.hostname, &user.home);
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let program = spec
        .process
        .args
        .first()
        .ok_or_else(|| Fail::setup("no command to run"))?;
    let exe = lookup(program, &path_var)?;
    let cwd = if spec.process.cwd.is_empty() {
        "/"
    } else {
        spec.process.cwd.as_str()
    };
    if !Path::new(cwd).is_dir() {
        // Docker creates a missing working directory.
        std::fs::create_dir_all(cwd).map_err(|e| Fail {
            code: 126,
            msg: format!("cannot create working directory {cwd}: {e}"),
        })?;
    }

    let cstr =
        |s: &str| CString::new(s).map_err(|_| Fail::setup(format!("{s:?} contains a NUL byte")));
    let exe_c = CString::new(exe.as_os_str().as_bytes()).map_err(|_| Fail::setup("bad path"))?;
    let args_c = spec
        .process
        .args
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env_c = env.iter().map(|a| cstr(a)).collect::<Result<Vec<_>, _>>()?;
    let cwd_c = cstr(cwd)?;

    let all = SigSet::all();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None)
        .map_err(|e| Fail::setup(format!("sigprocmask: {e}")))?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Fail::setup(format!("pipe: {e}")))?;
    let child = ChildExec {
        exe: &exe_c,
        args: &args_c,
        env: &env_c,
        cwd: &cwd_c,
        user: &user,
        terminal: spec.process.terminal,
    };
    // SAFETY: this process is single-threaded (a fresh exec), so the child
    // may run ordinary code before its execve.
    match unsafe { fork() }.map_err(|e| Fail::setup(format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(err_r);
            child.exec(err_w)
        }
        ForkResult::Parent { child } => {
            drop(err_w);
            if let Some(f) = exec_failure(err_r, program) {
                // The process never ran; reap it and report why.
                let _ = waitpid(child, None);
                return Err(f);
            }
            detach_stdio();
            Ok(supervise(child, &all))
        }
    }
}

/// Opens the container's pty (from its own devpts), makes the slave our
/// stdio and /dev/console, and sends the master to the agent.
fn attach_terminal(p: &Process) -> Result<(), Fail> {
    let pty =
        crate::pty::open(p.rows, p.cols).map_err(|e| Fail::setup(format!("opening a pty: {e}")))?;
    let dup = |r: nix::Result<()>| r.map_err(|e| Fail::setup(format!("dup2: {e}")));
    dup(nix::unistd::dup2_stdin(&pty.slave))?;
    dup(nix::unistd::dup2_stdout(&pty.slave))?;
    dup(nix::unistd::dup2_stderr(&pty.slave))?;
    let _ = nix::mount::mount(
        Some(pty.slave_path.as_str()),
        "/dev/console",
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    );
    // SAFETY: descriptor 4 was set up by `spawn` for us alone.
    let sock = unsafe { OwnedFd::from_raw_fd(PTY_SOCK_FD) };
    crate::pty::send_fd(sock.as_raw_fd(), pty.master.as_raw_fd())
        .map_err(|e| Fail::setup(format!("handing the pty to the agent: {e}")))?;
    Ok(())
}

/// Docker's default capabilities; every other one leaves the bounding
/// set, so neither root in the container nor a file capability can get it
/// (no CAP_SYS_ADMIN: no mounts; no CAP_SYS_MODULE, CAP_SYS_TIME, ...).
const DEFAULT_CAPS: &[u32] = &[
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
];

fn drop_capabilities() -> Result<(), Fail> {
    for cap in 0..64u32 {
        if DEFAULT_CAPS.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break; // past the last capability this kernel knows
            }
            return Err(Fail::setup(format!("dropping capability {cap}: {e}")));
        }
    }
    Ok(())
}

/// The image's env with what Docker adds: PATH, HOSTNAME, HOME.
fn environment(env: &[String], hostname: &str, home: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(env.len() + 3);
    let has = |out: &[String], k: &str| out.iter().any(|e| e.split('=').next() == Some(k));
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    out.push(format!("HOSTNAME={hostname}"));
    for e in env {
        let k = e.split('=').next().unwrap_or_default();
        out.retain(|o| o.split('=').next() != Some(k));
        out.push(e.clone());
    }
    if !has(&out, "HOME") {
        out.push(format!("HOME={home}"));
    }
    out
}

/// Finds the program as execvp(3) would, in the container's PATH.
fn lookup(program: &str, path: &str) -> Result<std::path::PathBuf, Fail> {
    if program.contains('/') {
        return Ok(program.into());
    }
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(program);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(Fail {
        code: 127,
        msg: format!("exec: {program:?}: executable file not found in $PATH"),
    })
}

struct ChildExec<'a> {
    exe: &'a CString,
    args: &'a [CString],
    env: &'a [CString],
    cwd: &'a CString,
    user: &'a users::User,
    terminal: bool,
}

/// Which step of starting the process failed, sent with its errno.
const STEP_EXEC: u8 = 0;
const STEP_CHDIR: u8 = 1;
const STEP_CREDS: u8 = 2;

impl ChildExec<'_> {
    fn exec(&self, err_w: OwnedFd) -> ! {
        let fail = |step: u8, e: nix::errno::Errno| -> ! {
            let mut msg = [0u8; 5];
            msg[0] = step;
            msg[1..].copy_from_slice(&(e as i32).to_ne_bytes());
            let _ = nix::unistd::write(&err_w, &msg);
            std::process::exit(127);
        };
        let _ = nix::unistd::setsid();
        if self.terminal {
            // SAFETY: TIOCSCTTY on our stdin (the pty's slave); no pointers.
            unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
        }
        let gids: Vec<nix::unistd::Gid> = self
            .user
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        if let Err(e) = nix::unistd::setgroups(&gids) {
            fail(STEP_CREDS, e);
        }
        if let Err(e) = nix::unistd::setgid(nix::unistd::Gid::from_raw(self.user.gid)) {
            fail(STEP_CREDS, e);
        }
        if let Err(e) = nix::unistd::setuid(nix::unistd::Uid::from_raw(self.user.uid)) {
            fail(STEP_CREDS, e);
        }
        if let Err(e) = nix::unistd::chdir(self.cwd.as_c_str()) {
            fail(STEP_CHDIR, e);
        }
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        // Rust ignores SIGPIPE; an ignored signal stays ignored across
        // exec, so put back the defaults, and the mask.
        for s in Signal::iterator() {
            if s != Signal::SIGKILL && s != Signal::SIGSTOP {
                // SAFETY: restoring the default disposition is always sound.
                let _ =
                    unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl) };
            }
        }
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        let e = nix::unistd::execve(self.exe, self.args, self.env)
            .err()
            .unwrap_or(nix::errno::Errno::EINVAL);
        fail(STEP_EXEC, e)
    }
}

fn exec_failure(err_r: OwnedFd, program: &str) -> Option<Fail> {
    let mut buf = [0u8; 5];
    let mut f = File::from(err_r);
    match f.read_exact(&mut buf) {
        Ok(()) => {}
        Err(_) => return None,
    }
    let errno = nix::errno::Errno::from_raw(i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]));
    let what = match buf[0] {
        STEP_CHDIR => "chdir to the working directory",
        STEP_CREDS => "switching to the user",
        _ => "exec",
    };
    let code = match (buf[0], errno) {
        (STEP_EXEC, nix::errno::Errno::ENOENT) => 127,
        _ => 126,
    };
    Some(Fail {
        code,
        msg: format!("{what} {program:?}: {}", errno.desc().to_lowercase()),
    })
}

/// The init keeps no stdio open, so the host sees end of file on the
/// container's output as soon as its processes are done with it.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors from an open file.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Forwards signals to the process and reaps zombies until it exits.
fn supervise(child: Pid, all: &SigSet) -> i32 {
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => return code,
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => return 128 + sig as i32,
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_follows_docker() {
        let env = environment(&["A=1".into(), "HOSTNAME=mine".into()], "c1", "/root");
        assert_eq!(
            env,
            vec![
                format!("PATH={DEFAULT_PATH}"),
                "A=1".to_string(),
                "HOSTNAME=mine".to_string(),
                "HOME=/root".to_string()
            ]
        );
        let env = environment(&["PATH=/x".into(), "HOME=/h".into()], "c1", "/root");
        assert_eq!(
            env,
            vec![
                "HOSTNAME=c1".to_string(),
                "PATH=/x".to_string(),
                "HOME=/h".to_string()
            ]
        );
    }

    #[test]
    fn lookup_searches_path_and_reports_127() {
        let dir = std::env::temp_dir().join(format!("vm-agent-lookup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let exe = dir.join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").expect("write");
        let plain = dir.join("plain");
        std::fs::write(&plain, "").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = format!("/nonexistent:{}", dir.display());
        assert_eq!(lookup("tool", &path).ok(), Some(exe));
        assert_eq!(lookup("plain", &path).err().map(|f| f.code), Some(127));
        assert_eq!(lookup("/bin/x", &path).ok(), Some("/bin/x".into()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
