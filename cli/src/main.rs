//! `vm`: run container images in KVM microVMs.

mod containers;
mod cp;
mod images;
mod logs;
mod network;
mod ps;
mod registry;
mod run;
mod system;
mod template;
mod top;
mod tty;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use vmm::exit::ExitReason;
use vmm::host;

/// Exit status when `vm` itself fails (Docker's convention).
pub const EXIT_VM_FAILED: u8 = 125;
/// Exit status when the guest crashed (panic, triple fault).
const EXIT_GUEST_CRASHED: u8 = 1;

#[derive(Parser)]
#[command(name = "vm", version, about = "Run container images in KVM microVMs")]
struct Cli {
    /// State directory (images, cached root file systems). Default:
    /// $VM_ROOT, else /var/lib/vm for root, else $XDG_DATA_HOME/vm.
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel (and initrd) in a microVM with the serial console on
    /// stdout. Exits 0 when the guest powers off or reboots.
    Boot(BootArgs),
    /// Run a command in a new container, in its own microVM.
    Run(run::RunArgs),
    /// Create a container without starting it; prints its ID.
    Create(run::RunArgs),
    /// Start stopped containers.
    Start(containers::StartArgs),
    /// Stop running containers: the stop signal, then SIGKILL after the
    /// timeout.
    Stop(containers::StopArgs),
    /// Stop and start containers again.
    Restart(containers::StopArgs),
    /// Send a signal to running containers (default SIGKILL).
    Kill(containers::KillArgs),
    /// Remove containers.
    Rm(containers::RmArgs),
    /// Wait for containers to stop; prints their exit statuses.
    Wait(containers::NamesArgs),
    /// Rename a container.
    Rename(containers::RenameArgs),
    /// Stop every vCPU of containers' VMs.
    Pause(containers::NamesArgs),
    /// Let paused containers run again.
    Unpause(containers::NamesArgs),
    /// Attach to a running container's output (and stdin).
    Attach(containers::AttachArgs),
    /// Run another command in a running container.
    Exec(containers::ExecArgs),
    /// List containers.
    Ps(ps::PsArgs),
    /// A running container's published ports.
    Port(ps::PortArgs),
    /// A container's output.
    Logs(logs::LogsArgs),
    /// Show containers or images as JSON.
    Inspect(ps::InspectArgs),
    /// Copy files between a running container and the host.
    Cp(cp::CpArgs),
    /// Write a running container's file system as a tar archive.
    Export(cp::ExportArgs),
    /// The processes of a running container.
    Top(top::TopArgs),
    /// What running containers use: CPU, memory, I/O, processes.
    Stats(top::StatsArgs),
    /// Disk use, and removing everything unused.
    #[command(subcommand)]
    System(system::SystemCommand),
    /// Container commands (`vm container ls|inspect|rm|prune|...`).
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Load an image from a docker-archive or oci-archive file or an OCI
    /// layout into the local store.
    Load(images::LoadArgs),
    /// List the images in the local store.
    #[command(alias = "ls")]
    Images(images::ImagesArgs),
    /// Give a stored image another name.
    Tag(images::TagArgs),
    /// Pull an image from a registry into the local store.
    Pull(registry::PullArgs),
    /// Upload a stored image to a registry.
    Push(registry::PushArgs),
    /// Check and store credentials for a registry.
    Login(registry::LoginArgs),
    /// Forget the stored credentials for a registry.
    Logout(registry::LogoutArgs),
    /// Remove images from the local store (and blobs nothing else uses).
    Rmi(images::RmiArgs),
    /// Write a stored image to a docker-archive or oci-archive file.
    Save(images::SaveArgs),
    /// Image commands (`vm image inspect|rm|ls|prune`).
    #[command(subcommand)]
    Image(ImageCommand),
    /// Network commands (`vm network create|ls|inspect|rm|prune|connect|disconnect`).
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Volume commands (`vm volume create|ls|inspect|rm|prune`).
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Show stored images as JSON.
    Inspect(images::InspectArgs),
    /// Remove an image (as `vm rmi`).
    Rm(images::RmiArgs),
    /// List images (as `vm images`).
    Ls(images::ImagesArgs),
    /// Remove untagged images and unused cached root file systems.
    Prune(images::PruneArgs),
}

#[derive(Subcommand)]
enum ContainerCommand {
    #[command(alias = "list", alias = "ps")]
    Ls(ps::PsArgs),
    Port(ps::PortArgs),
    Run(run::RunArgs),
    Create(run::RunArgs),
    Start(containers::StartArgs),
    Stop(containers::StopArgs),
    Restart(containers::StopArgs),
    Kill(containers::KillArgs),
    #[command(alias = "remove")]
    Rm(containers::RmArgs),
    Wait(containers::NamesArgs),
    Rename(containers::RenameArgs),
    Pause(containers::NamesArgs),
    Unpause(containers::NamesArgs),
    Attach(containers::AttachArgs),
    Exec(containers::ExecArgs),
    Logs(logs::LogsArgs),
    Inspect(ps::InspectArgs),
    Cp(cp::CpArgs),
    Export(cp::ExportArgs),
    Top(top::TopArgs),
    Stats(top::StatsArgs),
    /// Remove all stopped containers.
    Prune(containers::PruneArgs),
}

#[derive(clap::Args)]
struct BootArgs {
    /// Guest kernel: an uncompressed ELF vmlinux or a bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initial ramdisk (a cpio archive, optionally compressed).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line. The VMM adds `reboot=k,f panic=-1 no_timer_check`
    /// and its devices in front.
    #[arg(long, default_value = "console=ttyS0 quiet")]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Print how long the guest took to reach userspace (boot-timer port).
    #[arg(long)]
    boot_time: bool,
    /// Attach a raw disk image as virtio-blk: PATH[,ro][,id=SERIAL].
    /// Repeat for more disks (vda, vdb, ...).
    #[arg(long = "disk", value_name = "PATH[,ro][,id=SERIAL]", value_parser = parse_disk)]
    disks: Vec<devices::virtio::block::BlockConfig>,
    /// Attach virtio-vsock: guest CID (3 or more) and the host Unix socket
    /// path. Guests reach host listeners at PATH_PORT; host clients
    /// connect to PATH and send "CONNECT PORT\n".
    #[arg(long, value_name = "CID,PATH", value_parser = parse_vsock)]
    vsock: Option<devices::virtio::vsock::VsockConfig>,
    /// Attach virtio-net on an existing TAP device (made with `ip tuntap
    /// add NAME mode tap`), with a MAC address (default 02:00:00:00:00:01).
    /// Repeat for more (eth0, eth1, ...).
    #[arg(long = "net", value_name = "TAP[,mac=XX:XX:XX:XX:XX:XX]", value_parser = parse_net)]
    nets: Vec<devices::virtio::net::NetConfig>,
    /// Attach virtio-fs served by a vhost-user daemon (virtiofsd) that
    /// listens on SOCKET; the guest mounts it with `mount -t virtiofs TAG
    /// DIR`. Repeat for more.
    #[arg(long = "fs", value_name = "TAG,SOCKET", value_parser = parse_fs)]
    filesystems: Vec<(String, PathBuf)>,
}

fn parse_fs(spec: &str) -> Result<(String, PathBuf), String> {
    let (tag, path) = spec.split_once(',').ok_or("expected TAG,SOCKET")?;
    if tag.is_empty() || tag.len() > devices::virtio::fs::TAG_LEN {
        return Err(format!(
            "tag {tag:?} must be 1 to {} bytes",
            devices::virtio::fs::TAG_LEN
        ));
    }
    if path.is_empty() {
        return Err("missing socket path".into());
    }
    Ok((tag.to_string(), PathBuf::from(path)))
}

fn parse_net(spec: &str) -> Result<devices::virtio::net::NetConfig, String> {
    let mut parts = spec.split(',');
    let tap = parts
        .next()
        .filter(|t| !t.is_empty() && t.len() < 16)
        .ok_or("expected a TAP device name of 1 to 15 bytes")?;
    let mut mac = [0x02, 0, 0, 0, 0, 1];
    for p in parts {
        let v = p
            .strip_prefix("mac=")
            .ok_or_else(|| format!("unknown option {p:?}; use mac=XX:XX:XX:XX:XX:XX"))?;
        let bytes: Vec<u8> = v
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| format!("bad MAC address {v:?}"))?;
        mac = bytes
            .try_into()
            .map_err(|_| format!("bad MAC address {v:?}: six bytes"))?;
    }
    Ok(devices::virtio::net::NetConfig {
        tap: tap.to_string(),
        tap_fd: None,
        stream_fd: None,
        mac,
        rx_rate_limit: Default::default(),
        tx_rate_limit: Default::default(),
    })
}

fn parse_vsock(spec: &str) -> Result<devices::virtio::vsock::VsockConfig, String> {
    let (cid, path) = spec.split_once(',').ok_or("expected CID,PATH")?;
    let guest_cid: u64 = cid.parse().map_err(|_| format!("bad CID {cid:?}"))?;
    if guest_cid < 3 || guest_cid > u64::from(u32::MAX) {
        return Err(format!(
            "CID {guest_cid} is reserved or too large; use 3 to 4294967295"
        ));
    }
    if path.is_empty() {
        return Err("missing socket path".into());
    }
    Ok(devices::virtio::vsock::VsockConfig {
        guest_cid,
        uds_path: PathBuf::from(path),
        rate_limit: Default::default(),
    })
}

fn parse_disk(spec: &str) -> Result<devices::virtio::block::BlockConfig, String> {
    let mut parts = spec.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("missing disk image path")?;
    let mut cfg = devices::virtio::block::BlockConfig {
        path: PathBuf::from(path),
        read_only: false,
        id: String::new(),
        window: None,
        seal: None,
        parts: Vec::new(),
        rate_limit: Default::default(),
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => cfg.read_only = true,
            None if opt == "rw" => cfg.read_only = false,
            Some(("id", v)) if v.len() <= 20 => cfg.id = v.to_string(),
            Some(("id", v)) => return Err(format!("id {v:?} is longer than 20 bytes")),
            _ => {
                return Err(format!(
                    "unknown disk option {opt:?} (expected ro, rw or id=SERIAL)"
                ))
            }
        }
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    // Like any Unix tool, end quietly when our reader goes away (`vm ps |
    // head`): Rust ignores SIGPIPE and would fail on the write instead.
    // SAFETY: setting a signal's disposition to the default is sound.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    runtime::timing::start();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_VM_FAILED } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    runtime::timing::mark("cli-parsed");
    let code = match cli.command {
        Command::Boot(args) => boot(args),
        Command::Run(args) => run::main(args, cli.root),
        Command::Create(args) => run::create(args, cli.root),
        Command::Start(args) => containers::start(args, cli.root),
        Command::Stop(args) => containers::stop(args, cli.root),
        Command::Restart(args) => containers::restart(args, cli.root),
        Command::Kill(args) => containers::kill(args, cli.root),
        Command::Rm(args) => containers::rm(args, cli.root),
        Command::Wait(args) => containers::wait(args, cli.root),
        Command::Rename(args) => containers::rename(args, cli.root),
        Command::Pause(args) => containers::pause(args, cli.root),
        Command::Unpause(args) => containers::unpause(args, cli.root),
        Command::Attach(args) => containers::attach(args, cli.root),
        Command::Exec(args) => containers::exec(args, cli.root),
        Command::Ps(args) => ps::ps(args, cli.root),
        Command::Port(args) => ps::port(args, cli.root),
        Command::Logs(args) => logs::logs(args, cli.root),
        Command::Inspect(args) => ps::inspect(args, cli.root),
        Command::Cp(args) => cp::cp(args, cli.root),
        Command::Export(args) => cp::export(args, cli.root),
        Command::Top(args) => top::top(args, cli.root),
        Command::Stats(args) => top::stats(args, cli.root),
        Command::System(c) => system::main(c, cli.root),
        Command::Container(c) => container_command(c, cli.root),
        Command::Load(args) => images::load(args, cli.root),
        Command::Images(args) => images::images(args, cli.root),
        Command::Tag(args) => images::tag(args, cli.root),
        Command::Pull(args) => registry::pull(args, cli.root),
        Command::Push(args) => registry::push(args, cli.root),
        Command::Login(args) => registry::login(args),
        Command::Logout(args) => registry::logout(args),
        Command::Rmi(args) => images::rmi(args, cli.root),
        Command::Save(args) => images::save(args, cli.root),
        Command::Image(ImageCommand::Inspect(args)) => images::inspect(args, cli.root),
        Command::Image(ImageCommand::Rm(args)) => images::rmi(args, cli.root),
        Command::Image(ImageCommand::Ls(args)) => images::images(args, cli.root),
        Command::Image(ImageCommand::Prune(args)) => images::prune(args, cli.root),
        Command::Network(c) => network::main(c, cli.root),
        Command::Volume(c) => volume::main(c, cli.root),
    };
    runtime::timing::mark("cli-done");
    code
}

fn container_command(c: ContainerCommand, root: Option<PathBuf>) -> ExitCode {
    match c {
        ContainerCommand::Ls(args) => ps::ps(args, root),
        ContainerCommand::Port(args) => ps::port(args, root),
        ContainerCommand::Run(args) => run::main(args, root),
        ContainerCommand::Create(args) => run::create(args, root),
        ContainerCommand::Start(args) => containers::start(args, root),
        ContainerCommand::Stop(args) => containers::stop(args, root),
        ContainerCommand::Restart(args) => containers::restart(args, root),
        ContainerCommand::Kill(args) => containers::kill(args, root),
        ContainerCommand::Rm(args) => containers::rm(args, root),
        ContainerCommand::Wait(args) => containers::wait(args, root),
        ContainerCommand::Rename(args) => containers::rename(args, root),
        ContainerCommand::Pause(args) => containers::pause(args, root),
        ContainerCommand::Unpause(args) => containers::unpause(args, root),
        ContainerCommand::Attach(args) => containers::attach(args, root),
        ContainerCommand::Exec(args) => containers::exec(args, root),
        ContainerCommand::Logs(args) => logs::logs(args, root),
        ContainerCommand::Inspect(args) => ps::inspect(args, root),
        ContainerCommand::Cp(args) => cp::cp(args, root),
        ContainerCommand::Export(args) => cp::export(args, root),
        ContainerCommand::Top(args) => top::top(args, root),
        ContainerCommand::Stats(args) => top::stats(args, root),
        ContainerCommand::Prune(args) => containers::prune(args, root),
    }
}

fn boot(args: BootArgs) -> ExitCode {
    let mut filesystems = Vec::new();
    for (tag, path) in &args.filesystems {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(socket) => filesystems.push(devices::virtio::fs::FsConfig {
                tag: tag.clone(),
                socket,
            }),
            Err(e) => {
                eprintln!(
                    "vm: cannot connect to the virtio-fs daemon at {}: {e}; start virtiofsd with --socket-path={} first",
                    path.display(),
                    path.display()
                );
                return ExitCode::from(125);
            }
        }
    }
    let cfg = vmm::VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        cpus: args.cpus,
        memory_mib: args.memory,
        on_boot: args.boot_time.then(|| {
            Box::new(|d: std::time::Duration| {
                eprintln!(
                    "vm: guest userspace started after {:.1} ms",
                    d.as_secs_f64() * 1e3
                );
            }) as Box<dyn Fn(std::time::Duration) + Send>
        }),
        disks: args.disks,
        vsock: args.vsock,
        nets: args.nets,
        filesystems,
        console: Box::new(std::io::stdout()),
        console_input: true,
        vcpu_confine: None,
        confine: None,
        snapshot: None,
        exit: match vmm::ExitSignal::new() {
            Ok(e) => std::sync::Arc::new(e),
            Err(e) => {
                eprintln!("vm: error: {e}");
                return ExitCode::from(EXIT_VM_FAILED);
            }
        },
    };
    let outcome = match vmm::vm::run(cfg) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vm: error: {}", in_flag_terms(&e));
            return ExitCode::from(EXIT_VM_FAILED);
        }
    };
    match &outcome.reason {
        r if r.is_clean() => ExitCode::SUCCESS,
        ExitReason::Panic(msg) => {
            eprintln!("vm: the guest kernel panicked: {}", escape(msg));
            ExitCode::from(EXIT_GUEST_CRASHED)
        }
        ExitReason::TripleFault { cpu, state } => {
            eprintln!("vm: the guest triple-faulted on vCPU {cpu} (a CPU reset it did not ask for); the VM was stopped ({state})");
            print_tail(&outcome.console_tail);
            ExitCode::from(EXIT_GUEST_CRASHED)
        }
        ExitReason::InternalError { cpu, detail } => {
            eprintln!("vm: error: KVM could not run the guest on vCPU {cpu}: {detail}");
            if host::is_pvm() {
                eprintln!("vm: {}", host::Error::Pvm);
            }
            print_tail(&outcome.console_tail);
            ExitCode::from(EXIT_VM_FAILED)
        }
        ExitReason::VmmError(msg) => {
            eprintln!("vm: error: {msg}");
            ExitCode::from(EXIT_VM_FAILED)
        }
        ExitReason::Reset
        | ExitReason::PowerOff
        | ExitReason::Stopped
        | ExitReason::SnapshotPoint => ExitCode::SUCCESS,
    }
}

/// A VM that cannot be built, said in terms of `vm boot`'s flags.
fn in_flag_terms(e: &vmm::Error) -> String {
    match e {
        vmm::Error::Cpus { got, max } => format!("--cpus must be between 1 and {max}, got {got}"),
        vmm::Error::MemoryTooSmall(m) => format!(
            "--memory must be at least {} MiB, got {m} MiB",
            vmm::vm::MIN_MEMORY_MIB
        ),
        vmm::Error::MemoryTooLarge(m) => {
            format!("--memory {m} MiB is more than this host can address")
        }
        e => e.to_string(),
    }
}

/// `vm: error: MSG` and the status for `vm` itself failing.
pub fn fail(msg: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("vm: error: {msg}");
    ExitCode::from(EXIT_VM_FAILED)
}

/// A runtime error as the user sees it: the message, the guest console's
/// last lines when the guest failed, and status 125.
pub fn runtime_error(e: &runtime::Error) -> ExitCode {
    // The message may quote the guest (the agent's words, a panic line):
    // no control characters reach the terminal.
    let message = escape(&e.message);
    if e.code == 126 || e.code == 127 {
        // The container's command could not run: the agent's words.
        eprintln!("vm: {message}");
        return ExitCode::from(e.code as u8);
    }
    eprintln!("vm: error: {message}");
    if !e.console.is_empty() {
        eprintln!("vm: last lines of the guest console:");
        for l in e.console.iter().rev().take(20).rev() {
            eprintln!("  {}", escape(l));
        }
    }
    ExitCode::from(EXIT_VM_FAILED)
}

/// Text from a guest or an image, safe for a terminal: control
/// characters (escape sequences, carriage returns, ...) are shown escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn print_tail(lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    eprintln!("vm: last lines of the guest console:");
    for l in lines.iter().rev().take(10).rev() {
        eprintln!("  {}", escape(l));
    }
}
