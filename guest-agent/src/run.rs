//! Running one container for `vm run`: talk to the host, unpack the image
//! onto its disk (or mount the cached one), put the scratch disk over it,
//! start the container's init, move stdio between it and the host, report
//! how it ended.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use agent_protocol::{
    port, read_frame, write_frame, AgentMessage, HostMessage, Layer, Rootfs, RunSpec, StreamPorts,
};
use nix::mount::MsFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::container::{self, Fail, InitSpec};
use crate::{disks, host_link};

const SCRATCH: &str = "/run/vm/scratch";
/// Where the disk with the image's root file system is mounted.
const IMAGE: &str = "/run/vm/image";

pub fn main(port: u32) {
    if let Err(e) = run(port) {
        eprintln!("vm-agent: {e}");
    }
}

fn run(control_port: u32) -> io::Result<()> {
    let mut control = host_link::connect_host(control_port)?;
    send(
        &mut control,
        &AgentMessage::Hello {
            version: agent_protocol::VERSION,
        },
    )?;
    crate::timings::mark("hello");
    let spec = match read_frame::<_, HostMessage>(&mut control).map_err(io::Error::other)? {
        Some(HostMessage::Run(spec)) => spec,
        Some(other) => {
            return Err(io::Error::other(format!(
                "expected a run spec, got {other:?}"
            )))
        }
        None => return Err(io::Error::other("the host closed the connection")),
    };
    crate::timings::mark("spec");
    let p = &spec.process;
    let streams = Streams::connect(
        StreamPorts {
            stdin: port::STDIN,
            stdout: port::STDOUT,
            stderr: port::STDERR,
        },
        p.terminal,
        p.stdin,
    )?;
    // Signals the host sent while we waited for it to seal the image disk
    // are for the process: delivered once it runs.
    let mut early = Vec::new();
    let started = crate::snapshot::fresh_start(&spec.seed, spec.host_time_ns)
        .map_err(|e| Fail::setup(format!("making the VM its own: {e}")))
        .and_then(|()| {
            crate::timings::mark("fresh");
            prepare(&spec, &mut || seal_handshake(&mut control, &mut early))
        })
        .and_then(|init| {
            crate::timings::mark("prepared");
            start(spec.process.terminal, streams, |stdio, pty| {
                container::spawn(&init, stdio, pty)
            })
        });
    let running = match started {
        Ok(r) => r,
        Err(f) => {
            let msg = AgentMessage::Failed {
                code: f.code,
                message: f.msg,
            };
            return send(&mut control, &msg).map(|()| await_hangup(&control));
        }
    };
    crate::timings::mark("started");
    send(&mut control, &AgentMessage::Started)?;
    for sig in early {
        if let Ok(sig) = Signal::try_from(sig) {
            let _ = kill(running.init, sig);
        }
    }
    let writer = std::sync::Arc::new(std::sync::Mutex::new(control.try_clone()?));
    let code = running.wait(&control, &writer);
    crate::timings::mark("exited");
    let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
    if spec.timings {
        send(
            &mut w,
            &AgentMessage::Timings {
                marks: crate::timings::take(),
            },
        )?;
    }
    send(&mut w, &AgentMessage::Exited { code })?;
    drop(w);
    await_hangup(&control);
    Ok(())
}

/// Waits (a bounded time) for the host to close the control connection:
/// our last report must leave the guest before we power it off, or the
/// reset can beat the vsock queue.
fn await_hangup(control: &File) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    let mut reader = control;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(control.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn send(control: &mut File, msg: &AgentMessage) -> io::Result<()> {
    write_frame(control, msg).map_err(io::Error::other)
}

/// The host ends of a process's stdio.
pub struct Streams {
    stdout: File,
    stderr: Option<File>,
    stdin: Option<File>,
}

impl Streams {
    pub fn connect(ports: StreamPorts, terminal: bool, stdin: bool) -> io::Result<Self> {
        Self::connect_with_token(ports, terminal, stdin, "")
    }

    /// Connects, and writes `token` and a newline first on each
    /// connection when it is not empty.
    pub fn connect_with_token(
        ports: StreamPorts,
        terminal: bool,
        stdin: bool,
        token: &str,
    ) -> io::Result<Self> {
        let open = |port: u32| -> io::Result<File> {
            let mut f = host_link::connect_host(port)?;
            if !token.is_empty() {
                f.write_all(format!("{token}\n").as_bytes())?;
            }
            Ok(f)
        };
        Ok(Self {
            stdout: open(ports.stdout)?,
            stderr: if terminal {
                None
            } else {
                Some(open(ports.stderr)?)
            },
            stdin: if stdin {
                Some(open(ports.stdin)?)
            } else {
                None
            },
        })
    }
}

/// Unpacks the layers onto the scratch disk, mounts the overlay and
/// writes the /etc files; returns the spec for the container's init.
fn prepare(spec: &RunSpec, seal: &mut dyn FnMut() -> Result<(), Fail>) -> Result<InitSpec, Fail> {
    let setup = |what: &str, e: &dyn std::fmt::Display| Fail::setup(format!("{what}: {e}"));
    let scratch_dev =
        disks::by_serial(&spec.scratch_disk).map_err(|e| setup("scratch disk", &e))?;
    std::fs::create_dir_all(SCRATCH).map_err(|e| setup("mkdir", &e))?;
    nix::mount::mount(
        Some(&scratch_dev),
        SCRATCH,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        Some("noinit_itable"),
    )
    .map_err(|e| setup("mounting the scratch disk", &e))?;
    crate::timings::mark("scratch-mounted");
    let dir = Path::new(SCRATCH);
    for d in ["upper", "work", "root", "etc"] {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| setup("mkdir", &e))?;
    }
    let lower = image_root(spec, seal)?;
    crate::timings::mark("image-mounted");
    let root = dir.join("root");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    nix::mount::mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| setup("mounting the container root (overlay)", &e))?;
    crate::timings::mark("overlay-mounted");
    let etc = dir.join("etc");
    let write = |name: &str, body: String| {
        std::fs::write(etc.join(name), body).map_err(|e| setup(&format!("writing {name}"), &e))
    };
    write("hostname", format!("{}\n", spec.hostname))?;
    write(
        "hosts",
        crate::network::hosts(&spec.network, &spec.hostname),
    )?;
    write("resolv.conf", crate::network::resolv_conf(&spec.network))?;
    crate::network::configure(&spec.network).map_err(|e| setup("the network", &e))?;
    crate::timings::mark("network-configured");
    crate::cgroup::setup(spec.options.pids_limit)
        .map_err(|e| setup("the container's cgroup", &e))?;
    Ok(InitSpec {
        root: root.display().to_string(),
        etc_dir: etc.display().to_string(),
        hostname: spec.hostname.clone(),
        read_only: spec.read_only,
        process: spec.process.clone(),
        mounts: spec.mounts.clone(),
        options: spec.options.clone(),
    })
}

/// Mounts the image's root file system (unpacking it first when asked)
/// and returns the directory that holds it.
fn image_root(spec: &RunSpec, seal: &mut dyn FnMut() -> Result<(), Fail>) -> Result<PathBuf, Fail> {
    let setup = |what: &str, e: &dyn std::fmt::Display| Fail::setup(format!("{what}: {e}"));
    let (disk, layers) = match &spec.rootfs {
        Rootfs::Unpack { disk, layers } => (disk, Some(layers)),
        Rootfs::Cached { disk } => (disk, None),
    };
    let dev = disks::by_serial(disk).map_err(|e| setup("image disk", &e))?;
    std::fs::create_dir_all(IMAGE).map_err(|e| setup("mkdir", &e))?;
    let ro = if layers.is_some() {
        MsFlags::empty()
    } else {
        MsFlags::MS_RDONLY
    };
    nix::mount::mount(Some(&dev), IMAGE, Some("ext4"), ro, Some("noinit_itable"))
        .map_err(|e| setup("mounting the image disk", &e))?;
    let root = Path::new(IMAGE).join("rootfs");
    let Some(layers) = layers else {
        return Ok(root);
    };
    std::fs::create_dir_all(&root).map_err(|e| setup("mkdir", &e))?;
    let root_fd: OwnedFd = File::open(&root)
        .map_err(|e| setup("open rootfs", &e))?
        .into();
    for layer in layers {
        unpack(spec, &root_fd, layer)?;
    }
    drop(root_fd);
    // Sealed: everything on the disk, and no more writes from us.
    nix::unistd::sync();
    nix::mount::mount(
        None::<&str>,
        IMAGE,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| setup("remounting the image disk read-only", &e))?;
    nix::unistd::sync();
    seal()?;
    Ok(root)
}

fn unpack(spec: &RunSpec, root: &OwnedFd, layer: &Layer) -> Result<(), Fail> {
    let setup = |e: &dyn std::fmt::Display| Fail::setup(format!("layer {}: {e}", layer.digest));
    let dev = disks::by_serial(&layer.disk).map_err(|e| setup(&e))?;
    let mut f = File::open(&dev).map_err(|e| setup(&e))?;
    io::Seek::seek(&mut f, io::SeekFrom::Start(layer.offset)).map_err(|e| setup(&e))?;
    image_unpack::apply_layer(
        root,
        io::BufReader::with_capacity(256 * 1024, f.take(layer.size)),
        layer.compression,
        image_unpack::Limits {
            max_bytes: spec.max_layer_bytes,
            max_entries: spec.max_layer_entries,
        },
        image_unpack::Options {
            set_owner: true,
            ..image_unpack::Options::default()
        },
    )
    .map_err(|e| Fail::setup(format!("unpacking layer {}: {e}", layer.digest)))?;
    Ok(())
}

/// Tells the host the image disk is sealed and waits until it has made
/// the disk read-only on its side.
/// Signals that arrive meanwhile are kept in `early`.
fn seal_handshake(control: &mut File, early: &mut Vec<i32>) -> Result<(), Fail> {
    let fail = |e: &dyn std::fmt::Display| Fail::setup(format!("sealing the image disk: {e}"));
    send(control, &AgentMessage::Sealed).map_err(|e| fail(&e))?;
    loop {
        match read_frame::<_, HostMessage>(control) {
            Ok(Some(HostMessage::Continue)) => return Ok(()),
            Ok(Some(HostMessage::Signal(n))) => early.push(n),
            Ok(Some(_)) => {}
            Ok(None) => return Err(fail(&"the host closed the connection")),
            Err(e) => return Err(fail(&e)),
        }
    }
}

/// A started process: its pid, the threads moving its output, its pty.
pub struct Running {
    pub init: Pid,
    pub pumps: Vec<JoinHandle<()>>,
    /// The pty's master, for resizes.
    pub pty: Option<File>,
}

/// Wires a process's stdio to `streams` (pipes, or a pty with
/// `terminal`) and starts it with `spawn(stdio, pty socket)`.
pub fn start(
    terminal: bool,
    streams: Streams,
    spawn: impl FnOnce([i32; 3], Option<i32>) -> Result<Pid, Fail>,
) -> Result<Running, Fail> {
    let io_err = |what: &str, e: nix::errno::Errno| Fail::setup(format!("{what}: {e}"));
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let mut pumps = Vec::new();
    let mut keep_for_child: Vec<OwnedFd> = Vec::new();
    let stdio: [i32; 3];
    let Streams {
        stdout,
        stderr,
        mut stdin,
    } = streams;
    let mut stdout = Some(stdout);
    let mut pty: Option<(OwnedFd, File)> = None;
    let mut pty_sock = None;
    if terminal {
        // The init opens the pty in the container's devpts and sends us
        // the master; until then (and for its early errors) its output
        // goes through a pipe to the same stream.
        let (out_r, out_w) = nix::unistd::pipe2(cloexec).map_err(|e| io_err("pipe", e))?;
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| io_err("socketpair", e))?;
        let null: OwnedFd = File::open("/dev/null")
            .map_err(|e| Fail::setup(format!("/dev/null: {e}")))?
            .into();
        stdio = [null.as_raw_fd(), out_w.as_raw_fd(), out_w.as_raw_fd()];
        pty_sock = Some(theirs.as_raw_fd());
        keep_for_child.extend([null, out_w, theirs]);
        pty = Some((ours, File::from(out_r)));
    } else {
        let (out_r, out_w) = nix::unistd::pipe2(cloexec).map_err(|e| io_err("pipe", e))?;
        let (err_r, err_w) = nix::unistd::pipe2(cloexec).map_err(|e| io_err("pipe", e))?;
        let stdin_fd: OwnedFd = match stdin.take() {
            Some(input) => {
                let (in_r, in_w) = nix::unistd::pipe2(cloexec).map_err(|e| io_err("pipe", e))?;
                // Not joined: stdin may stay open after the process ends.
                std::mem::drop(
                    std::thread::Builder::new()
                        .name("stdin".into())
                        .spawn(move || copy_stream(input, File::from(in_w))),
                );
                in_r
            }
            None => File::open("/dev/null")
                .map_err(|e| Fail::setup(format!("/dev/null: {e}")))?
                .into(),
        };
        stdio = [stdin_fd.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        keep_for_child.extend([stdin_fd, out_w, err_w]);
        if let Some(out) = stdout.take() {
            pumps.push(pump("stdout", File::from(out_r), out));
        }
        if let Some(err) = stderr {
            pumps.push(pump("stderr", File::from(err_r), err));
        }
    }
    let pid = spawn(stdio, pty_sock)?;
    // The child has its copies; ours would keep the streams open.
    drop(keep_for_child);
    let mut master = None;
    if let (Some((sock, early)), Some(out)) = (pty, stdout.take()) {
        let m = crate::pty::recv_fd(&sock).map(File::from);
        let later = m.as_ref().and_then(|m| m.try_clone().ok());
        pumps.push(spawn_named("stdout", move || {
            copy_until_eof(early, &out);
            if let Some(m) = later {
                copy_until_eof(m, &out);
            }
            close_write(&out);
        }));
        if let (Some(input), Some(m)) = (stdin, m.as_ref().and_then(|m| m.try_clone().ok())) {
            // Not joined: stdin may stay open after the process ends.
            std::mem::drop(spawn_named("stdin", move || copy_stream(input, m)));
        }
        master = m;
    }
    Ok(Running {
        init: pid,
        pumps,
        pty: master,
    })
}

fn pump(name: &str, from: File, to: File) -> JoinHandle<()> {
    spawn_named(name, move || copy_stream(from, to))
}

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .unwrap_or_else(|_| std::thread::spawn(|| {}))
}

/// Copies until end of file, then closes `to` so the peer sees it too.
fn copy_stream(from: File, to: File) {
    copy_until_eof(from, &to);
    close_write(&to);
}

/// Copies until end of file (or EIO from a pty whose other side is gone).
fn copy_until_eof(mut from: File, mut to: &File) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// End of file for the peer of a socket (a pipe is simply closed on drop).
fn close_write(to: &File) {
    let _ = nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write);
}

impl Running {
    /// Forwards the host's signals and resizes until the init exits;
    /// returns the exit status once the output is drained.
    fn wait(self, control: &File, reports: &crate::exec::Reports) -> i32 {
        let execs = std::sync::Arc::new(crate::exec::Execs::default());
        if let Ok(reader) = control.try_clone() {
            let init = self.init;
            let pty = self.pty.as_ref().and_then(|p| p.try_clone().ok());
            let (execs, reports) = (execs.clone(), reports.clone());
            let run = move || control_loop(reader, init, pty, &execs, &reports);
            if let Err(e) = std::thread::Builder::new()
                .name("control".into())
                .spawn(run)
            {
                eprintln!("vm-agent: cannot start the control thread: {e}");
            }
        }
        let code = loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break 125,
            };
            if pid == self.init {
                break code;
            }
            execs.ended(pid, code, reports);
        };
        drop(self.pty);
        for p in self.pumps {
            let _ = p.join();
        }
        code
    }
}

fn control_loop(
    mut reader: File,
    init: Pid,
    pty: Option<File>,
    execs: &crate::exec::Execs,
    reports: &crate::exec::Reports,
) {
    loop {
        match read_frame::<_, HostMessage>(&mut reader) {
            Ok(Some(HostMessage::Signal(n))) => {
                if let Ok(sig) = Signal::try_from(n) {
                    let _ = kill(init, sig);
                }
            }
            Ok(Some(HostMessage::Resize { rows, cols })) => {
                if let Some(p) = &pty {
                    crate::pty::set_size(p.as_raw_fd(), rows, cols);
                }
            }
            Ok(Some(HostMessage::Exec(spec))) => execs.start(*spec, init, reports),
            Ok(Some(HostMessage::ExecSignal { id, signal })) => execs.signal(id, signal),
            Ok(Some(HostMessage::ExecResize { id, rows, cols })) => execs.resize(id, rows, cols),
            Ok(Some(HostMessage::Forward {
                port,
                address,
                target,
                token,
            })) => crate::forward::start(port, SocketAddr::from((address, target)), token),
            Ok(Some(HostMessage::Run(_) | HostMessage::Continue)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}
