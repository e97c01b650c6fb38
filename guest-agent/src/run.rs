//! Running one container for `vm run`: talk to the host, unpack the image
//! onto the scratch disk, start the container's init, move stdio between
//! it and the host, report how it ended.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::thread::JoinHandle;

use agent_protocol::{
    port, read_frame, write_frame, AgentMessage, Compression, HostMessage, RunSpec,
};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::container::{self, Fail, InitSpec};
use crate::{disks, host_link};

const SCRATCH: &str = "/run/vm/scratch";

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
    let spec = match read_frame::<_, HostMessage>(&mut control).map_err(io::Error::other)? {
        Some(HostMessage::Run(spec)) => spec,
        Some(other) => {
            return Err(io::Error::other(format!(
                "expected a run spec, got {other:?}"
            )))
        }
        None => return Err(io::Error::other("the host closed the connection")),
    };
    let streams = Streams::connect(&spec)?;
    let started = prepare(&spec).and_then(|init| start(&spec, &init, streams));
    let running = match started {
        Ok(r) => r,
        Err(f) => {
            return send(
                &mut control,
                &AgentMessage::Failed {
                    code: f.code,
                    message: f.msg,
                },
            );
        }
    };
    send(&mut control, &AgentMessage::Started)?;
    let code = running.wait(&control);
    send(&mut control, &AgentMessage::Exited { code })
}

fn send(control: &mut File, msg: &AgentMessage) -> io::Result<()> {
    write_frame(control, msg).map_err(io::Error::other)
}

/// The host ends of the container's stdio.
struct Streams {
    stdout: File,
    stderr: Option<File>,
    stdin: Option<File>,
}

impl Streams {
    fn connect(spec: &RunSpec) -> io::Result<Self> {
        Ok(Self {
            stdout: host_link::connect_host(port::STDOUT)?,
            stderr: if spec.process.terminal {
                None
            } else {
                Some(host_link::connect_host(port::STDERR)?)
            },
            stdin: if spec.process.stdin {
                Some(host_link::connect_host(port::STDIN)?)
            } else {
                None
            },
        })
    }
}

/// Unpacks the layers onto the scratch disk, mounts the overlay and
/// writes the /etc files; returns the spec for the container's init.
fn prepare(spec: &RunSpec) -> Result<InitSpec, Fail> {
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
    let dir = Path::new(SCRATCH);
    for d in ["lower", "upper", "work", "root", "etc"] {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| setup("mkdir", &e))?;
    }
    let lower = dir.join("lower");
    let lower_fd: OwnedFd = File::open(&lower)
        .map_err(|e| setup("open lower", &e))?
        .into();
    for layer in &spec.layers {
        let dev = disks::by_serial(&layer.disk)
            .map_err(|e| setup(&format!("layer {}", layer.digest), &e))?;
        let f = File::open(&dev).map_err(|e| setup(&format!("layer {}", layer.digest), &e))?;
        let compression = match layer.compression {
            Compression::None => image_unpack::Compression::None,
            Compression::Gzip => image_unpack::Compression::Gzip,
            Compression::Zstd => image_unpack::Compression::Zstd,
        };
        image_unpack::apply_layer(
            &lower_fd,
            io::BufReader::with_capacity(256 * 1024, f.take(layer.size)),
            compression,
            image_unpack::Limits {
                max_bytes: spec.max_layer_bytes,
                max_entries: spec.max_layer_entries,
            },
            image_unpack::Options {
                set_owner: true,
                allow_devices: false,
            },
        )
        .map_err(|e| Fail::setup(format!("unpacking layer {}: {e}", layer.digest)))?;
    }
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
    let etc = dir.join("etc");
    let write = |name: &str, body: String| {
        std::fs::write(etc.join(name), body).map_err(|e| setup(&format!("writing {name}"), &e))
    };
    write("hostname", format!("{}\n", spec.hostname))?;
    write(
        "hosts",
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            spec.hostname
        ),
    )?;
    write("resolv.conf", "# this VM has no network yet\n".into())?;
    Ok(InitSpec {
        root: root.display().to_string(),
        etc_dir: etc.display().to_string(),
        hostname: spec.hostname.clone(),
        read_only: spec.read_only,
        process: spec.process.clone(),
    })
}

struct Running {
    init: Pid,
    pumps: Vec<JoinHandle<()>>,
    /// The pty's master, for resizes.
    pty: Option<File>,
}

fn start(spec: &RunSpec, init: &InitSpec, streams: Streams) -> Result<Running, Fail> {
    let io_err = |what: &str, e: nix::errno::Errno| Fail::setup(format!("{what}: {e}"));
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let mut pumps = Vec::new();
    let mut keep_for_child: Vec<OwnedFd> = Vec::new();
    let stdio: [i32; 3];
    let mut pty = None;
    if spec.process.terminal {
        let ws = nix::pty::Winsize {
            ws_row: spec.process.rows,
            ws_col: spec.process.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let p = nix::pty::openpty(Some(&ws), None).map_err(|e| io_err("openpty", e))?;
        let _ = nix::fcntl::fcntl(
            &p.master,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        let _ = nix::fcntl::fcntl(
            &p.slave,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        let master = File::from(p.master);
        let s = p.slave.as_raw_fd();
        stdio = [s, s, s];
        keep_for_child.push(p.slave);
        let out = master
            .try_clone()
            .map_err(|e| Fail::setup(format!("dup: {e}")))?;
        pumps.push(pump("stdout", out, streams.stdout));
        if let Some(input) = streams.stdin {
            let to = master
                .try_clone()
                .map_err(|e| Fail::setup(format!("dup: {e}")))?;
            std::mem::drop(
                std::thread::Builder::new()
                    .name("stdin".into())
                    .spawn(move || copy_stream(input, to)),
            );
        }
        pty = Some(master);
    } else {
        let (out_r, out_w) = nix::unistd::pipe2(cloexec).map_err(|e| io_err("pipe", e))?;
        let (err_r, err_w) = nix::unistd::pipe2(cloexec).map_err(|e| io_err("pipe", e))?;
        let stdin_fd: OwnedFd = match streams.stdin {
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
        pumps.push(pump("stdout", File::from(out_r), streams.stdout));
        if let Some(err) = streams.stderr {
            pumps.push(pump("stderr", File::from(err_r), err));
        }
    }
    let pid = container::spawn(init, stdio)?;
    // The child has its copies; ours would keep the streams open.
    drop(keep_for_child);
    Ok(Running {
        init: pid,
        pumps,
        pty,
    })
}

fn pump(name: &str, from: File, to: File) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || copy_stream(from, to))
        .unwrap_or_else(|_| std::thread::spawn(|| {}))
}

/// Copies until end of file (or EIO from a pty whose other side is gone),
/// then closes `to` so the peer sees end of file too.
fn copy_stream(mut from: File, mut to: File) {
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
    let _ = nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write);
}

impl Running {
    /// Forwards the host's signals and resizes until the init exits;
    /// returns the exit status once the output is drained.
    fn wait(self, control: &File) -> i32 {
        if let Ok(reader) = control.try_clone() {
            let init = self.init;
            let pty = self.pty.as_ref().and_then(|p| p.try_clone().ok());
            std::mem::drop(
                std::thread::Builder::new()
                    .name("control".into())
                    .spawn(move || control_loop(reader, init, pty)),
            );
        }
        let code = loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(pid, code)) if pid == self.init => break code,
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == self.init => {
                    break 128 + sig as i32
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break 125,
            }
        };
        drop(self.pty);
        for p in self.pumps {
            let _ = p.join();
        }
        code
    }
}

fn control_loop(mut reader: File, init: Pid, pty: Option<File>) {
    loop {
        match read_frame::<_, HostMessage>(&mut reader) {
            Ok(Some(HostMessage::Signal(n))) => {
                if let Ok(sig) = Signal::try_from(n) {
                    let _ = kill(init, sig);
                }
            }
            Ok(Some(HostMessage::Resize { rows, cols })) => {
                if let Some(p) = &pty {
                    let ws = libc::winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
                    unsafe { libc::ioctl(p.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
            }
            Ok(Some(HostMessage::Run(_))) => {}
            Ok(None) | Err(_) => return,
        }
    }
}
