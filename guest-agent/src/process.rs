//! Starting a user's process in a container: the environment Docker
//! gives it, finding the program in its PATH, its credentials, working
//! directory and signals, and the execve itself; and, for `vm exec`,
//! relaying signals to it and reaping it.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::container::Fail;
use crate::users;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The image's env with what Docker adds: PATH, HOSTNAME, HOME.
pub fn environment(env: &[String], hostname: &str, home: &str) -> Vec<String> {
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
pub fn lookup(program: &str, path: &str) -> Result<std::path::PathBuf, Fail> {
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

/// Everything the execve needs, made before anything changes.
pub struct ChildExec {
    /// The command as given (for messages).
    program: String,
    exe: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    user: users::User,
    terminal: bool,
    security: agent_protocol::Security,
}

impl ChildExec {
    /// `p` as it will run in this root: its user from the container's
    /// /etc/passwd and /etc/group, Docker's environment, its program found
    /// in its PATH, in `cwd`.
    pub fn resolve(p: &agent_protocol::Process, hostname: &str, cwd: &str) -> Result<Self, Fail> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        let mut user = users::resolve(&p.user, &passwd, &group).map_err(Fail::setup)?;
        users::add_groups(&mut user, &p.security.groups, &group).map_err(Fail::setup)?;
        let env = environment(&p.env, hostname, &user.home);
        let path_var = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
            .to_string();
        let program = p
            .args
            .first()
            .ok_or_else(|| Fail::setup("no command to run"))?;
        let exe = lookup(program, &path_var)?;
        let mut c = Self::new(program, &exe, &p.args, &env, cwd, &user, p.terminal)?;
        c.security = p.security.clone();
        Ok(c)
    }

    fn new(
        program: &str,
        exe: &Path,
        args: &[String],
        env: &[String],
        cwd: &str,
        user: &users::User,
        terminal: bool,
    ) -> Result<Self, Fail> {
        let cstr = |s: &str| {
            CString::new(s).map_err(|_| Fail::setup(format!("{s:?} contains a NUL byte")))
        };
        Ok(Self {
            program: program.to_string(),
            exe: CString::new(exe.as_os_str().as_bytes())
                .map_err(|_| Fail::setup("bad path"))?,
            args: args.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
            env: env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
            cwd: cstr(cwd)?,
            user: user.clone(),
            terminal,
            security: agent_protocol::Security::default(),
        })
    }

    /// A session of its own (with the terminal as its controlling one),
    /// the confinement, the user, then the process itself. Returns only
    /// when a step failed: 127 when the program is not there, 126
    /// otherwise.
    pub fn exec(&self) -> Result<std::convert::Infallible, Fail> {
        self.session();
        self.confine()?;
        self.execve()
    }

    /// `--init`: confined and switched to the user like the process, we
    /// stay PID 1 and fork it; we then reap every orphan and pass signals
    /// on to it, and end with its exit status.
    pub fn exec_under_init(&self) -> Result<i32, Fail> {
        self.confine()?;
        let all = SigSet::all();
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None)
            .map_err(|e| Fail::setup(format!("sigprocmask: {e}")))?;
        // SAFETY: the container's init is single-threaded, so the child
        // may run ordinary code before its execve.
        match unsafe { nix::unistd::fork() }.map_err(|e| Fail::setup(format!("fork: {e}")))? {
            nix::unistd::ForkResult::Child => {
                self.session();
                let f = match self.execve() {
                    Err(f) => f,
                    Ok(never) => match never {},
                };
                eprintln!("vm: {}", f.msg);
                std::process::exit(f.code)
            }
            nix::unistd::ForkResult::Parent { child } => Ok(supervise(child, &all)),
        }
    }

    fn session(&self) {
        let _ = nix::unistd::setsid();
        if self.terminal {
            // SAFETY: TIOCSCTTY on our stdin (the pty's slave); no pointers.
            unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
        }
    }

    /// Bounding set, limits, seccomp, the user's groups and ids, and the
    /// capabilities it keeps.
    fn confine(&self) -> Result<(), Fail> {
        crate::security::before_user(&self.security)?;
        let creds = |e: nix::errno::Errno| Fail {
            code: 126,
            msg: format!("switching to the user: {}", e.desc().to_lowercase()),
        };
        let gids: Vec<nix::unistd::Gid> = self
            .user
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&gids).map_err(creds)?;
        nix::unistd::setgid(nix::unistd::Gid::from_raw(self.user.gid)).map_err(creds)?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(self.user.uid)).map_err(creds)?;
        crate::security::after_user(&self.security, self.user.uid)
    }

    /// The working directory, umask, default signal dispositions and an
    /// empty mask, then execve.
    ///
    /// As runc does for Docker, the program is checked first: not there
    /// is 127, not an executable file (or not reachable) 126; an execve
    /// that fails past that check (no ELF interpreter, a file capability
    /// beyond the bounding set, a bad format) is the process failing, 1.
    fn execve(&self) -> Result<std::convert::Infallible, Fail> {
        let program = &self.program;
        let fail = |what: &str, code: i32, e: nix::errno::Errno| Fail {
            code,
            msg: format!("{what} {program:?}: {}", e.desc().to_lowercase()),
        };
        nix::unistd::chdir(self.cwd.as_c_str())
            .map_err(|e| fail("chdir to the working directory", 126, e))?;
        match nix::sys::stat::stat(self.exe.as_c_str()) {
            Err(e @ (nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR)) => {
                return Err(fail("exec", 127, e))
            }
            Err(e) => return Err(fail("exec", 126, e)),
            Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_mode & 0o111 == 0 => {
                return Err(fail("exec", 126, nix::errno::Errno::EACCES))
            }
            Ok(_) => {}
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
        let e = nix::unistd::execve(&self.exe, &self.args, &self.env)
            .err()
            .unwrap_or(nix::errno::Errno::EINVAL);
        // Signals go back to blocked for whoever reports this.
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None);
        Err(fail("exec", 1, e))
    }
}

/// The exec helper keeps no stdio open, so the host sees end of file on
/// the process's output as soon as it is done with it.
pub fn detach_stdio(null: &std::fs::File) {
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors from an open file.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
}

/// Forwards signals to the process and reaps zombies until it exits.
pub fn supervise(child: Pid, all: &SigSet) -> i32 {
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
