//! `vm run IMAGE [COMMAND] [ARG...]`: a container in its own microVM.
//!
//! The host opens and verifies the image, makes a sparse scratch disk
//! with an empty ext4, and boots the guest with the layer blobs as
//! read-only disks. The agent (PID 1) connects over vsock, gets the run
//! spec, unpacks the layers inside the VM, runs the process, and streams
//! its stdio back; `vm run` exits with the process's status.

mod assets;
mod rootfs_cache;
pub use rootfs_cache::{key as rootfs_key, prune as prune_rootfs_cache, state_root};
mod scratch;
mod session;
pub mod spec;
mod timing;
mod tty;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent_protocol::{HostMessage, Layer, Process, Rootfs, RunSpec};
use devices::virtio::block::BlockConfig;
use devices::virtio::vsock::VsockConfig;

use crate::exit::{ExitReason, ExitSignal};
use crate::vm::{self, VmConfig};

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

#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Set an environment variable (NAME=VALUE, or NAME to pass the host's).
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from a file (NAME=VALUE lines).
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// User to run as: name, uid, name:group or uid:gid.
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Override the image's entrypoint (and drop its default command).
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Keep stdin open and pass it to the container.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the container a pseudo-terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Remove the container when it exits (nothing is kept anyway).
    #[arg(long)]
    rm: bool,
    /// A name for the container.
    #[arg(long)]
    name: Option<String>,
    /// The container's host name.
    #[arg(short = 'h', long)]
    hostname: Option<String>,
    /// vCPUs (a fraction rounds up).
    #[arg(long, value_parser = spec::parse_cpus, default_value = "1")]
    cpus: u8,
    /// Guest memory, e.g. 512m or 1g.
    #[arg(short = 'm', long, value_parser = spec::parse_memory)]
    memory: Option<u64>,
    /// Mount the container's root file system read-only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// Show the guest kernel's console on stderr.
    #[arg(long)]
    debug: bool,
    /// Pull the image: `missing` (default), `always` or `never`.
    #[arg(long, default_value = "missing", value_parser = ["missing", "always", "never"])]
    pull: String,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// The image: oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE.
    image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Why `vm run` itself failed (exit status 125).
struct Failure {
    msg: String,
    console: Vec<String>,
}

impl<T: Into<String>> From<T> for Failure {
    fn from(msg: T) -> Self {
        Self {
            msg: msg.into(),
            console: Vec::new(),
        }
    }
}

pub fn main(args: RunArgs, root: Option<PathBuf>) -> ExitCode {
    match run(args, root) {
        Ok(code) => ExitCode::from((code & 0xff) as u8),
        Err(f) => {
            eprintln!("vm: error: {}", f.msg);
            if !f.console.is_empty() {
                eprintln!("vm: last lines of the guest console:");
                for l in f.console.iter().rev().take(20).rev() {
                    eprintln!("  {l}");
                }
            }
            ExitCode::from(crate::EXIT_VM_FAILED)
        }
    }
}

fn run(args: RunArgs, root: Option<PathBuf>) -> Result<i32, Failure> {
    timing::start();
    if let Some(n) = &args.name {
        check_name(n)?;
    }
    let mut env_lines = Vec::new();
    for f in &args.env_file {
        env_lines.extend(spec::read_env_file(f)?);
    }
    let kernel = assets::kernel()?;
    let initrd = assets::initrd()?;
    let state = rootfs_cache::state_root(root.as_deref())?;
    let image = open_image(&args.image, &args.pull, &state)?;

    timing::mark("image-opened");
    let id = container_id();
    let hostname = args
        .hostname
        .clone()
        .unwrap_or_else(|| id[..12].to_string());
    let process = process_spec(&args, &image, &env_lines)?;

    // From here on the forwarded signals are caught: one that comes while
    // the guest boots waits and reaches the container once it runs (and
    // does not kill us before we clean up). Before, while the image is
    // read or pulled, Ctrl-C simply ends `vm run` (the store's writes are
    // atomic).
    let signals = catch_signals()?;
    // Sockets want a short path (TMPDIR); the scratch disk wants a real
    // disk and the same file system as its template (the state root).
    let dir = RunDir::create(std::env::temp_dir(), &id)?;
    let disk_dir = RunDir::create(state.join("run"), &id)?;
    // `vm rmi` and `vm image prune` leave the image alone while this runs.
    let _in_use = crate::in_use::mark(&disk_dir.path, &image.manifest_digest)?;
    let scratch_path = disk_dir.path.join("scratch.img");
    let vsock_path = dir.path.join("vsock");
    let listeners = session::Listeners::bind(&vsock_path)
        .map_err(|e| format!("vsock sockets in {}: {e}", dir.path.display()))?;

    let digests: Vec<String> = image.layers.iter().map(|l| l.digest.to_string()).collect();
    scratch::create(&state, &scratch_path)?;
    let mut cache = rootfs_cache::lookup(&state, &rootfs_cache::key(&digests), &id)?;
    if matches!(cache, rootfs_cache::Entry::Miss(_)) {
        // Layers are read only when unpacking; check them first.
        for l in &image.layers {
            l.verify()
                .map_err(|e| format!("image {}: {e}", args.image))?;
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
        max_layer_bytes: max_layer_bytes()?,
        max_layer_entries: MAX_LAYER_ENTRIES,
    };

    let exit = Arc::new(ExitSignal::new().map_err(|e| format!("eventfd: {e}"))?);
    let cfg = vm_config(&args, kernel, initrd, disks, vsock_path, exit.clone());
    vm::validate(&cfg).map_err(|e| e.to_string())?;
    timing::mark("vm-starting");
    let vm_thread = std::thread::Builder::new()
        .name("vmm".into())
        .spawn(move || vm::run(cfg))
        .map_err(|e| format!("starting the VMM thread: {e}"))?;

    let raw = if args.tty && args.interactive && tty::is_terminal() {
        tty::RawMode::enter()
    } else {
        None
    };
    let result =
        session::Session::start(&listeners, run_spec, agent_timeout(), &exit).and_then(|s| {
            let handle = signals.handle();
            forward_signals(signals, s.sender());
            let r = s.wait(|| match &mut cache {
                rootfs_cache::Entry::Miss(p) => p.seal(),
                rootfs_cache::Entry::Hit(_) => {
                    Err("the agent sealed a disk that was already sealed".into())
                }
            });
            handle.close();
            r
        });
    drop(raw);

    // The agent powers the guest off after its report; make sure it ends.
    // When the agent went away without a report, the guest is likely
    // panicking: give it a moment to say so.
    let grace = match &result {
        Ok(_) => SHUTDOWN_GRACE,
        Err(session::Error::VmEnded) => Duration::from_secs(3),
        Err(_) => Duration::ZERO,
    };
    let deadline = std::time::Instant::now() + grace;
    while exit.get().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    exit.set(ExitReason::Stopped);
    timing::mark("vm-stopping");
    let outcome = vm_thread
        .join()
        .map_err(|_| Failure::from("the VMM thread panicked"))?
        .map_err(|e| Failure::from(e.to_string()))?;
    timing::mark("vm-ended");
    result.map_err(|e| Failure {
        msg: failure_message(e, &outcome.reason),
        console: outcome.console_tail,
    })
}

/// A container name as Docker takes them.
fn check_name(n: &str) -> Result<(), String> {
    let ok = n
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && n.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        return Err(format!("invalid container name {n:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"));
    }
    Ok(())
}

/// The container's process: the image's config with the flags over it.
fn process_spec(
    args: &RunArgs,
    image: &vm_image::Image,
    env_lines: &[String],
) -> Result<Process, String> {
    let argv = spec::process_args(&image.config, args.entrypoint.as_deref(), &args.command)?;
    let mut env = spec::environment(&image.config.env, env_lines, &args.env, |k| {
        std::env::var(k).ok()
    })?;
    if args.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let (rows, cols) = if args.tty {
        tty::size().unwrap_or((24, 80))
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
    args: &RunArgs,
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
        cpus: args.cpus,
        memory_mib: args.memory.unwrap_or(DEFAULT_MEMORY_MIB),
        report_boot_time: args.debug || timing::enabled(),
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
    pull: &str,
    state: &std::path::Path,
) -> Result<vm_image::Image, String> {
    if vm_image::is_transport(reference) {
        return vm_image::open(reference).map_err(|e| format!("image {reference}: {e}"));
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
        return Err(format!(
            "unknown image transport {t:?} in {reference:?}; use oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE, or an image name (busybox, host:port/repo:tag)"
        ));
    }
    let name = vm_image::name::Name::parse(reference).map_err(|e| {
        format!("{e}; or use oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE")
    })?;
    let store = vm_image::store::Store::open(state).map_err(|e| e.to_string())?;
    if pull == "always" {
        crate::registry::pull_into(&store, &name, &Default::default())?;
    }
    match store.image(&name) {
        Err(vm_image::Error::NotFound(_)) if pull == "missing" => {
            crate::registry::pull_into(&store, &name, &Default::default())?;
            store
                .image(&name)
                .map_err(|e| format!("image {reference}: {e}"))
        }
        Err(vm_image::Error::NotFound(_)) => Err(format!(
            "no image {name} in the local store (--pull never); load one with `vm load -i FILE` or `vm pull` it"
        )),
        r => r.map_err(|e| format!("image {reference}: {e}")),
    }
}

fn agent_timeout() -> Duration {
    std::env::var("VM_AGENT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(AGENT_TIMEOUT, Duration::from_secs)
}

fn max_layer_bytes() -> Result<u64, String> {
    match std::env::var("VM_MAX_LAYER_SIZE") {
        Ok(v) => spec::parse_memory(&v)
            .map(|mib| mib << 20)
            .map_err(|e| format!("VM_MAX_LAYER_SIZE: {e}")),
        Err(_) => Ok(MAX_LAYER_BYTES),
    }
}

/// SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 go to the
/// container's process; SIGWINCH sends the terminal's new size.
fn catch_signals() -> Result<signal_hook::iterator::Signals, String> {
    use signal_hook::consts::*;
    signal_hook::iterator::Signals::new([
        SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH,
    ])
    .map_err(|e| format!("installing signal handlers: {e}"))
}

fn forward_signals(mut signals: signal_hook::iterator::Signals, sender: session::Sender) {
    let run = move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGWINCH {
                if let Some((rows, cols)) = tty::size() {
                    sender.send(&HostMessage::Resize { rows, cols });
                }
            } else {
                sender.send(&HostMessage::Signal(sig));
            }
        }
    };
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(run);
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
    fn create(parent: PathBuf, id: &str) -> Result<Self, String> {
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
