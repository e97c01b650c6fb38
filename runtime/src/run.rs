//! `vm run IMAGE [COMMAND] [ARG...]`: a container in its own microVM.
//!
//! The host opens and verifies the image, makes a sparse scratch disk
//! with an empty ext4, and boots the guest with the layer blobs as
//! read-only disks. The agent (PID 1) connects over vsock, gets the run
//! spec, unpacks the layers inside the VM, runs the process, and streams
//! its stdio back; `vm run` exits with the process's status.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use agent_protocol::{HostMessage, Layer, Process, Rootfs, RunSpec};
use devices::virtio::block::BlockConfig;
use devices::virtio::vsock::VsockConfig;
use vm_image::registry::Progress;
use vmm::{ExitReason, ExitSignal, VmConfig, Vmm};

use crate::error::{Error, Kind, Result};
use crate::pull::{self, PullPolicy};
use crate::{rootfs_cache, scratch, session, spec, timing};

const GUEST_CID: u64 = 3;
/// Enough for most containers; the guest kernel's boot grows with it.
const DEFAULT_MEMORY_MIB: u64 = 256;
/// What one layer may unpack to (VM_MAX_LAYER_SIZE overrides, e.g. 1g),
/// and how many entries it may have.
const MAX_LAYER_BYTES: u64 = scratch::SIZE;
const MAX_LAYER_ENTRIES: u64 = 4 << 20;
/// How long the agent has to connect after the VM starts (VM_AGENT_TIMEOUT
/// overrides, in seconds).
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest has to power off after reporting the exit status.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What to run and how: `vm run`'s flags, filled in by the caller.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE`, or
    /// a name in the store.
    pub image: String,
    /// Replaces the image's Cmd (and, with `entrypoint`, all of it).
    pub command: Vec<String>,
    /// `NAME=VALUE`, or `NAME` to take the host's value.
    pub env: Vec<String>,
    pub env_files: Vec<PathBuf>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Option<String>,
    pub interactive: bool,
    pub tty: bool,
    /// The terminal's size to start with (with `tty`).
    pub tty_size: Option<(u16, u16)>,
    pub name: Option<String>,
    pub hostname: Option<String>,
    /// vCPUs (0 means the default, 1).
    pub cpus: u8,
    pub memory_mib: Option<u64>,
    pub read_only: bool,
    /// The guest kernel's console on stderr.
    pub debug: bool,
    pub pull: PullPolicy,
}

/// What a caller sends to a running container's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Signal(i32),
    Resize { rows: u16, cols: u16 },
}

/// Hears how a run is going.
pub trait Observer {
    /// A pull's progress.
    fn progress(&mut self, _p: Progress) {}
    /// The image is open (pulled if needed); the VM is about to be made.
    fn image_opened(&mut self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Runs a container in the foreground: its stdio are ours, `controls`
/// reach its process (one sent while the guest boots waits for it), and
/// the result is its exit status (Docker's: 128+N for signal N, 126/127
/// when the command cannot run).
pub fn run(
    args: &RunOptions,
    state: &Path,
    controls: Receiver<Control>,
    observer: &mut dyn Observer,
) -> Result<i32> {
    timing::start();
    if let Some(n) = &args.name {
        check_name(n)?;
    }
    let mut env_lines = Vec::new();
    for f in &args.env_files {
        env_lines.extend(spec::read_env_file(f).map_err(Error::invalid)?);
    }
    let kernel = crate::assets::kernel().map_err(Error::host)?;
    let initrd = crate::assets::initrd().map_err(Error::host)?;
    let image = open_image(&args.image, args.pull, state, &mut |p| observer.progress(p))?;
    observer.image_opened().map_err(Error::host)?;

    timing::mark("image-opened");
    let id = container_id();
    let hostname = args
        .hostname
        .clone()
        .unwrap_or_else(|| id[..12].to_string());
    let process = process_spec(args, &image, &env_lines).map_err(Error::invalid)?;
    // Sockets want a short path (TMPDIR); the scratch disk wants a real
    // disk and the same file system as its template (the state root).
    let dir = RunDir::create(std::env::temp_dir(), &id).map_err(Error::host)?;
    let disk_dir = RunDir::create(state.join("run"), &id).map_err(Error::host)?;
    // `vm rmi` and `vm image prune` leave the image alone while this runs.
    let _in_use = crate::in_use::mark(&disk_dir.path, &image.manifest_digest).map_err(Error::host)?;
    let scratch_path = disk_dir.path.join("scratch.img");
    let vsock_path = dir.path.join("vsock");
    let listeners = session::Listeners::bind(&vsock_path)
        .map_err(|e| Error::host(format!("vsock sockets in {}: {e}", dir.path.display())))?;

    let digests: Vec<String> = image.layers.iter().map(|l| l.digest.to_string()).collect();
    scratch::create(state, &scratch_path).map_err(Error::host)?;
    let mut cache =
        rootfs_cache::lookup(state, &rootfs_cache::key(&digests), &id).map_err(Error::host)?;
    if matches!(cache, rootfs_cache::Entry::Miss(_)) {
        // Layers are read only when unpacking; check them first.
        for l in &image.layers {
            l.verify()
                .map_err(|e| Error::image(format!("image {}: {e}", args.image)))?;
        }
    }
    let mut disks = vec![BlockConfig {
        path: scratch_path,
        read_only: false,
        id: "scratch".into(),
        window: None,
        seal: None,
    }];
    let rootfs = image_disks(&image, &cache, &mut disks);
    timing::mark(if matches!(cache, rootfs_cache::Entry::Hit(_)) {
        "disks-ready-cached"
    } else {
        "disks-ready"
    });
    let run_spec = RunSpec {
        rootfs,
        scratch_disk: "scratch".into(),
        process,
        hostname,
        read_only: args.read_only,
        max_layer_bytes: max_layer_bytes().map_err(Error::invalid)?,
        max_layer_entries: MAX_LAYER_ENTRIES,
    };

    let exit = Arc::new(
        ExitSignal::new().map_err(|e| Error::host(format!("eventfd: {e}")))?,
    );
    let cfg = vm_config(args, kernel, initrd, disks, vsock_path, exit.clone());
    timing::mark("vm-starting");
    let vmm = Vmm::start(cfg)?;

    let result = session::Session::start(&listeners, run_spec, agent_timeout(), &exit)
        .and_then(|s| {
            forward_controls(controls, s.sender())?;
            s.wait(|| match &mut cache {
                rootfs_cache::Entry::Miss(p) => p.seal(),
                rootfs_cache::Entry::Hit(_) => {
                    Err("the agent sealed a disk that was already sealed".into())
                }
            })
        });

    // The agent powers the guest off after its report; make sure it ends.
    // When the agent went away without a report, the guest is likely
    // panicking: give it a moment to say so.
    let grace = match &result {
        Ok(_) => SHUTDOWN_GRACE,
        Err(session::Error::VmEnded) => Duration::from_secs(3),
        Err(_) => Duration::ZERO,
    };
    let deadline = std::time::Instant::now() + grace;
    while vmm.ended().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    vmm.stop();
    timing::mark("vm-stopping");
    let outcome = vmm.wait()?;
    timing::mark("vm-ended");
    result.map_err(|e| Error {
        kind: Kind::Guest,
        message: failure_message(e, &outcome.reason),
        console: outcome.console_tail,
    })
}

/// A container name as Docker takes them.
pub fn check_name(n: &str) -> Result<()> {
    let ok = n
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && n.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        return Err(Error::invalid(format!("invalid container name {n:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit")));
    }
    Ok(())
}

/// The container's process: the image's config with the flags over it.
fn process_spec(
    args: &RunOptions,
    image: &vm_image::Image,
    env_lines: &[String],
) -> std::result::Result<Process, String> {
    let argv = spec::process_args(&image.config, args.entrypoint.as_deref(), &args.command)?;
    let mut env = spec::environment(&image.config.env, env_lines, &args.env, |k| {
        std::env::var(k).ok()
    })?;
    if args.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let (rows, cols) = if args.tty {
        args.tty_size.unwrap_or((24, 80))
    } else {
        (0, 0)
    };
    let workdir = args
        .workdir
        .clone()
        .unwrap_or(image.config.working_dir.clone());
    if !workdir.is_empty() && !workdir.starts_with('/') {
        return Err(format!(
            "the working directory {workdir:?} must be an absolute path"
        ));
    }
    Ok(Process {
        args: argv,
        env,
        cwd: if workdir.is_empty() {
            "/".into()
        } else {
            workdir
        },
        user: args.user.clone().unwrap_or(image.config.user.clone()),
        terminal: args.tty,
        stdin: args.interactive,
        rows,
        cols,
    })
}

/// The microVM: our kernel and agent, the disks, vsock to the agent; the
/// kernel's console only with --debug.
fn vm_config(
    args: &RunOptions,
    kernel: PathBuf,
    initrd: PathBuf,
    disks: Vec<BlockConfig>,
    vsock_path: PathBuf,
    exit: Arc<ExitSignal>,
) -> VmConfig {
    let console: Box<dyn std::io::Write + Send> = if args.debug {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::sink())
    };
    let quiet = if args.debug { "" } else { " quiet" };
    VmConfig {
        kernel,
        initrd: Some(initrd),
        cmdline: format!(
            "console=ttyS0{quiet} {}={}",
            agent_protocol::CMDLINE_PARAM,
            agent_protocol::port::CONTROL
        ),
        cpus: args.cpus.max(1),
        memory_mib: args.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
        on_boot: (args.debug || timing::enabled()).then(|| {
            Box::new(|d: Duration| {
                eprintln!(
                    "vm: guest userspace started after {:.1} ms",
                    d.as_secs_f64() * 1e3
                );
            }) as Box<dyn Fn(Duration) + Send>
        }),
        disks,
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: vsock_path,
        }),
        console,
        console_input: false,
        exit,
    }
}

/// What to tell the user when the session failed: how the VM ended says
/// more than how the session noticed.
fn failure_message(e: session::Error, reason: &ExitReason) -> String {
    match (e, reason) {
        (_, ExitReason::Panic(p)) => format!("the guest kernel panicked: {p}"),
        (_, ExitReason::TripleFault { cpu, .. }) => {
            format!("the guest triple-faulted on vCPU {cpu}")
        }
        (_, ExitReason::InternalError { cpu, detail }) => {
            format!("KVM could not run the guest on vCPU {cpu}: {detail}")
        }
        (_, ExitReason::VmmError(m)) => m.clone(),
        (session::Error::Timeout(what), _) => format!(
            "the guest agent did not open its {what} connection within {} s",
            agent_timeout().as_secs()
        ),
        (session::Error::Protocol(m), _) => m,
        (session::Error::VmEnded, _) => {
            "the guest ended before the container reported an exit status".into()
        }
    }
}

/// The disks that carry the image: its cached root file system, or an
/// empty one to unpack onto plus one read-only disk per layer blob.
fn image_disks(
    image: &vm_image::Image,
    cache: &rootfs_cache::Entry,
    disks: &mut Vec<BlockConfig>,
) -> Rootfs {
    const DISK: &str = "image";
    let (path, read_only, seal) = match cache {
        rootfs_cache::Entry::Hit(path) => (path.clone(), true, None),
        rootfs_cache::Entry::Miss(p) => (p.tmp.clone(), false, Some(p.flag.clone())),
    };
    disks.push(BlockConfig {
        path,
        read_only,
        id: DISK.into(),
        window: None,
        seal,
    });
    if read_only {
        return Rootfs::Cached { disk: DISK.into() };
    }
    let mut layers = Vec::with_capacity(image.layers.len());
    for (i, l) in image.layers.iter().enumerate() {
        let serial = format!("layer{i}");
        disks.push(BlockConfig {
            path: l.source.path.clone(),
            read_only: true,
            id: serial.clone(),
            window: Some((l.source.offset, l.source.size)),
            seal: None,
        });
        layers.push(Layer {
            disk: serial,
            size: l.source.size,
            compression: l.compression,
            digest: l.digest.to_string(),
        });
    }
    Rootfs::Unpack {
        disk: DISK.into(),
        layers,
    }
}

/// A transport reference (`oci:...`) opens the file; anything else is a
/// name in the local store (`vm load`).
fn open_image(
    reference: &str,
    policy: PullPolicy,
    state: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<vm_image::Image> {
    if vm_image::is_transport(reference) {
        return vm_image::open(reference)
            .map_err(|e| Error::image(format!("image {reference}: {e}")));
    }
    // skopeo's other transports, and URLs, are not names.
    const OTHER: &[&str] = &[
        "dir:",
        "containers-storage:",
        "docker-daemon:",
        "ostree:",
        "sif:",
    ];
    if let Some(t) = reference.split_once("://").map(|(t, _)| t).or_else(|| {
        OTHER
            .iter()
            .find(|t| reference.starts_with(**t))
            .map(|t| t.trim_end_matches(':'))
    }) {
        return Err(Error::invalid(format!(
            "unknown image transport {t:?} in {reference:?}; use oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE, or an image name (busybox, host:port/repo:tag)"
        )));
    }
    let name = vm_image::name::Name::parse(reference).map_err(|e| {
        Error::invalid(format!(
            "{e}; or use oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE"
        ))
    })?;
    let store = vm_image::store::Store::open(state).map_err(|e| Error::host(e.to_string()))?;
    let mut fetch = || pull::pull(&store, &name, &pull::Connect::default(), progress).map_err(Error::image);
    if policy == PullPolicy::Always {
        fetch()?;
    }
    match store.image(&name) {
        Err(vm_image::Error::NotFound(_)) if policy == PullPolicy::Missing => {
            fetch()?;
            store
                .image(&name)
                .map_err(|e| Error::image(format!("image {reference}: {e}")))
        }
        Err(vm_image::Error::NotFound(_)) => Err(Error::not_found(format!(
            "no image {name} in the local store (--pull never); load one with `vm load -i FILE` or `vm pull` it"
        ))),
        r => r.map_err(|e| Error::image(format!("image {reference}: {e}"))),
    }
}

fn agent_timeout() -> Duration {
    std::env::var("VM_AGENT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(AGENT_TIMEOUT, Duration::from_secs)
}

fn max_layer_bytes() -> std::result::Result<u64, String> {
    match std::env::var("VM_MAX_LAYER_SIZE") {
        Ok(v) => spec::parse_memory(&v)
            .map(|mib| mib << 20)
            .map_err(|e| format!("VM_MAX_LAYER_SIZE: {e}")),
        Err(_) => Ok(MAX_LAYER_BYTES),
    }
}

/// Sends what the caller sends (signals, resizes) to the agent, on a
/// thread that ends when the caller drops its sender.
fn forward_controls(
    controls: Receiver<Control>,
    sender: session::Sender,
) -> std::result::Result<(), session::Error> {
    let run = move || {
        for c in controls {
            sender.send(&match c {
                Control::Signal(sig) => HostMessage::Signal(sig),
                Control::Resize { rows, cols } => HostMessage::Resize { rows, cols },
            });
        }
    };
    std::thread::Builder::new()
        .name("controls".into())
        .spawn(run)
        .map(drop)
        .map_err(|e| session::Error::Protocol(format!("starting a thread: {e}")))
}

/// A random 64-hex-digit id, as Docker's container ids.
fn container_id() -> String {
    let mut b = [0u8; 32];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Uniqueness, not secrecy: time and pid will do.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        b[..16].copy_from_slice(&t.to_le_bytes());
        b[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The run's private directory (scratch disk, vsock sockets), removed
/// when the run ends, however it ends.
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    fn create(parent: PathBuf, id: &str) -> std::result::Result<Self, String> {
        std::fs::create_dir_all(&parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        let path = parent.join(format!("vm-run-{}", &id[..16]));
        std::fs::create_dir(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
