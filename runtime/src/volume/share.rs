//! The virtiofsd daemons of one run: one per volume or bind mount, each
//! sharing exactly that directory, read-only when the mount is (the
//! daemon refuses writes: a guest that remounts read-write still cannot
//! write), started by the monitor before the VMM and ended after it.
//!
//! Each daemon is sandboxed by virtiofsd itself (`--sandbox=namespace`:
//! its own mount, PID and network namespaces, the shared directory as its
//! root, so a symlink in it that points at `/etc` resolves inside it;
//! `--seccomp=kill`), may not make device nodes (`--modcaps=-mknod`) and
//! sets no extended attributes (file capabilities and ACLs stay the
//! host's business). Its cache mode is `auto`: what one VM wrote is seen
//! by the next to open the file (close-to-open, as NFS), and attributes
//! at most a second late, as Kata Containers configures it; `never`
//! would make `mmap(MAP_SHARED)` of shared files fail, which databases
//! need.
//!
//! The daemon gets a listening socket as descriptor 3 (`--fd=3`); the
//! monitor connects to it and removes its name at once, and the VMM gets
//! the connected end. A daemon ends when its VMM's connection closes,
//! when the monitor ends (parent-death signal), or when this is dropped.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_protocol::MountSource;
use devices::virtio::fs::FsConfig;

use super::{Kind, Mount};
use crate::container::Container;
use crate::error::{Error, Result};

/// The most volumes and bind mounts of one container: each takes a
/// virtio-fs device, hence one of the VM's interrupts.
pub const MAX_SHARES: usize = 8;

/// The daemons of one run; dropping this ends them.
#[derive(Default)]
pub struct Shares {
    daemons: Vec<Child>,
}

impl Drop for Shares {
    fn drop(&mut self) {
        for d in &self.daemons {
            // SAFETY: kill(2) on a child this process has not reaped yet.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for d in &mut self.daemons {
            loop {
                match d.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = d.kill();
                        let _ = d.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}

/// What one run's mounts need: the daemons, the VM's devices, and the
/// agent's mounts.
pub struct Served {
    pub shares: Shares,
    pub devices: Vec<FsConfig>,
    pub mounts: Vec<agent_protocol::Mount>,
}

/// Starts a daemon for each volume and bind mount of `c`, in `run_dir`;
/// each joins the container's cgroup (`cgroup_procs`), so what a guest
/// makes it do counts against the container's limits.
pub fn serve(
    state: &Path,
    c: &Container,
    run_dir: &Path,
    cgroup_procs: Option<&Path>,
) -> Result<Served> {
    let procs = cgroup_procs
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .transpose()
        .map_err(|_| Error::host("a cgroup path with a NUL byte"))?;
    let mut served = Served {
        shares: Shares::default(),
        devices: Vec::new(),
        mounts: Vec::new(),
    };
    let mut mounts: Vec<&Mount> = c.config.mounts.iter().collect();
    // Parents before what is mounted inside them.
    mounts.sort_by_key(|m| m.target.matches('/').count());
    let binary = if mounts.iter().any(|m| m.kind != Kind::Tmpfs) {
        Some(crate::assets::virtiofsd().map_err(Error::host)?)
    } else {
        None
    };
    for m in mounts {
        let (source, dir) = match m.kind {
            Kind::Tmpfs => {
                served.mounts.push(agent_protocol::Mount {
                    target: m.target.clone(),
                    read_only: m.read_only,
                    source: MountSource::Tmpfs {
                        size: m.tmpfs_size,
                        mode: m.tmpfs_mode,
                        exec: m.tmpfs_exec,
                    },
                });
                continue;
            }
            Kind::Bind => {
                let source = PathBuf::from(&m.source);
                let dir = super::path::open_dir(&source);
                (source, dir)
            }
            Kind::Volume => {
                let source = super::get(state, &m.source)?.mountpoint;
                (
                    source,
                    super::path::open_beneath(state, &super::data_rel(&m.source)),
                )
            }
        };
        let dir = dir.map_err(|e| Error::invalid(format!("mount source for {}: {e}", m.target)))?;
        let copy_up = m.kind == Kind::Volume && !m.no_copy && !m.read_only && is_empty(&source);
        let tag = format!("vmfs{}", served.devices.len());
        let (child, socket) = spawn(
            binary.as_deref().unwrap_or(Path::new("virtiofsd")),
            &dir,
            m.read_only,
            &run_dir.join(format!("{tag}.sock")),
            procs.as_ref(),
        )
        .map_err(|e| Error::host(format!("sharing {} with the VM: {e}", source.display())))?;
        served.shares.daemons.push(child);
        served.devices.push(FsConfig {
            tag: tag.clone(),
            socket,
        });
        served.mounts.push(agent_protocol::Mount {
            target: m.target.clone(),
            read_only: m.read_only,
            source: MountSource::Virtiofs { tag, copy_up },
        });
    }
    Ok(served)
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// The most of a daemon's error output kept in the monitor's log; the
/// rest is read and dropped (a guest can make a daemon log an error for
/// every request).
const MAX_LOG: u64 = 64 << 10;

/// Starts virtiofsd on the directory `dir` (its working directory, shared
/// as `.`: the daemon resolves no path of ours) with a listening socket
/// bound at `path`, connects to it and removes the name.
fn spawn(
    binary: &Path,
    dir: &OwnedFd,
    read_only: bool,
    path: &Path,
    cgroup_procs: Option<&CString>,
) -> std::io::Result<(Child, UnixStream)> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    let fd = listener.as_raw_fd();
    let dir_fd = dir.as_raw_fd();
    let mut cmd = Command::new(binary);
    cmd.args([
        "--fd=3",
        "--shared-dir=.",
        "--sandbox=namespace",
        "--seccomp=kill",
        "--inode-file-handles=never",
        "--cache=auto",
        "--announce-submounts",
        "--log-level=error",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if read_only {
        cmd.arg("--readonly");
    }
    if nix::unistd::geteuid().is_root() {
        cmd.arg("--modcaps=-mknod:-setfcap");
    }
    let procs = cgroup_procs.cloned();
    // SAFETY: the closure runs between fork and exec and makes only
    // async-signal-safe system calls (fchdir, open, write, close, dup2,
    // fcntl, prctl, getppid) on memory prepared before the fork.
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::fchdir(dir_fd) < 0 {
                return fail();
            }
            if let Some(procs) = &procs {
                let f = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if f < 0 || libc::write(f, b"0".as_ptr().cast(), 1) != 1 {
                    return fail();
                }
                libc::close(f);
            }
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return fail();
                }
            } else if libc::dup2(fd, 3) < 0 {
                return fail();
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the monitor ended"));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        std::io::Error::new(e.kind(), format!("starting {}: {e}", binary.display()))
    })?;
    if let Some(err) = child.stderr.take() {
        let _ = std::thread::Builder::new()
            .name("virtiofsd-log".into())
            .spawn(move || {
                let mut err = err;
                let _ = std::io::copy(&mut (&mut err).take(MAX_LOG), &mut std::io::stderr());
                let _ = std::io::copy(&mut err, &mut std::io::sink());
            });
    }
    let stream = UnixStream::connect(path);
    let _ = std::fs::remove_file(path);
    drop(listener);
    match stream {
        Ok(s) => Ok((child, s)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}
