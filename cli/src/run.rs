//! `vm run` and `vm create`: the flags, the terminal, signals, and the
//! exit status. A container's life itself is the runtime's: `vm run` is
//! create, start (a monitor process), attach and wait.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, Sender};

use runtime::client::{self, Mode};
use runtime::container::{LogOptions, RestartPolicy};
use runtime::pull::PullPolicy;
use runtime::spec;
use runtime::{Control, RunOptions};

use crate::tty;

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
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Run in the background and print the container's ID.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Restart policy: no, on-failure[:N], always or unless-stopped.
    #[arg(long, default_value = "no", value_parser = parse_restart)]
    restart: RestartPolicy,
    /// The signal `vm stop` sends first (default SIGTERM).
    #[arg(long = "stop-signal", value_parser = crate::containers::parse_signal)]
    stop_signal: Option<i32>,
    /// Seconds `vm stop` waits before it kills (default 10).
    #[arg(long = "stop-timeout")]
    stop_timeout: Option<u64>,
    /// Log options: max-size=SIZE, max-file=N.
    #[arg(long = "log-opt", value_name = "OPT=VALUE")]
    log_opt: Vec<String>,
    /// Set a label (KEY=VALUE).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    label: Vec<String>,
    /// Read labels from a file of KEY=VALUE lines (`#` comments).
    #[arg(long = "label-file", value_name = "FILE")]
    label_file: Vec<PathBuf>,
    /// Write the container's ID to FILE (which must not exist).
    #[arg(long = "cidfile", value_name = "FILE")]
    cidfile: Option<PathBuf>,
    /// The image's platform: only linux/amd64 runs here.
    #[arg(long, value_name = "PLATFORM", value_parser = parse_platform)]
    platform: Option<String>,
    /// Add a Linux capability (a name with or without CAP_, or ALL).
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a Linux capability (a name with or without CAP_, or ALL).
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// Give the container every capability, no seccomp filter, and
    /// writable /sys, /proc/sys and cgroups (inside its own VM).
    #[arg(long)]
    privileged: bool,
    /// no-new-privileges[=true|false], seccomp=unconfined|PROFILE.json.
    #[arg(long = "security-opt", value_name = "OPTION")]
    security_opt: Vec<String>,
    /// A resource limit: NAME=SOFT[:HARD] (e.g. nofile=1024:4096).
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimit: Vec<String>,
    /// An additional group for the process (name or number).
    #[arg(long = "group-add", value_name = "GROUP")]
    group_add: Vec<String>,
    /// A namespaced kernel parameter: NAME=VALUE (kernel.shm*, net.*...).
    #[arg(long = "sysctl", value_name = "NAME=VALUE")]
    sysctl: Vec<String>,
    /// The size of /dev/shm (e.g. 256m; default 64m).
    #[arg(long = "shm-size", value_name = "SIZE", value_parser = runtime::volume::mounts::parse_size)]
    shm_size: Option<u64>,
    /// The most processes the container may have (-1: no limit).
    #[arg(long = "pids-limit", value_name = "N", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// Run a small init as PID 1 that reaps zombies and forwards signals.
    #[arg(long)]
    init: bool,
    /// Refused: the guest kernel's OOM killer acts inside the VM.
    #[arg(long = "oom-kill-disable", hide = true)]
    oom_kill_disable: bool,
    /// A command (run by /bin/sh -c in the container) that says whether
    /// it is healthy: `vm ps` shows (healthy) or (unhealthy).
    #[arg(long = "health-cmd", value_name = "CMD")]
    health_cmd: Option<String>,
    /// Time between checks (default 30s).
    #[arg(
        long = "health-interval",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    health_interval: Option<String>,
    /// Time one check may take (default 30s).
    #[arg(
        long = "health-timeout",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    health_timeout: Option<String>,
    /// Time after the start when failures do not count (default 0s).
    #[arg(
        long = "health-start-period",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    health_start_period: Option<String>,
    /// Failures in a row that make it unhealthy (default 3).
    #[arg(long = "health-retries", value_name = "N", allow_hyphen_values = true)]
    health_retries: Option<i64>,
    /// Run no health check, not even the image's.
    #[arg(long = "no-healthcheck")]
    no_healthcheck: bool,
    /// A name for the container.
    #[arg(long)]
    name: Option<String>,
    /// The container's host name.
    #[arg(short = 'h', long)]
    hostname: Option<String>,
    /// vCPUs (a fraction rounds up; default 1, or one per --cpuset-cpus
    /// CPU).
    #[arg(long, value_parser = spec::parse_cpus)]
    cpus: Option<u8>,
    /// The host CPUs the VM may run on (`0-3`, `0,2`).
    #[arg(long = "cpuset-cpus", value_name = "CPUS")]
    cpuset_cpus: Option<String>,
    /// Guest memory, e.g. 512m or 1g.
    #[arg(short = 'm', long, value_parser = spec::parse_memory)]
    memory: Option<u64>,
    /// Accepted with Docker's checks (at least 6m, at most --memory).
    #[arg(long = "memory-reservation", value_name = "SIZE", value_parser = parse_bytes)]
    memory_reservation: Option<u64>,
    /// Accepted with Docker's checks (needs --memory, at least as much,
    /// or -1); the guest has no swap.
    #[arg(long = "memory-swap", value_name = "SIZE", allow_hyphen_values = true, value_parser = parse_swap)]
    memory_swap: Option<i64>,
    /// Mount the container's root file system read-only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// Storage driver options: `size=SIZE` caps what the container can
    /// write (its scratch disk; default 16g).
    #[arg(long = "storage-opt", value_name = "OPT")]
    storage_opt: Vec<String>,
    /// Cap each of the container's disks at RATE bytes per second, reads
    /// and writes together, with an optional one-time BURST (e.g. 20m or
    /// 20m:200m).
    #[arg(long = "disk-bps", value_name = "RATE[:BURST]", value_parser = parse_bytes_rate)]
    disk_bps: Option<runtime::limits::Rate>,
    /// Cap each disk at RATE requests per second (e.g. 500 or 500:10k).
    #[arg(long = "disk-iops", value_name = "RATE[:BURST]", value_parser = parse_count_rate)]
    disk_iops: Option<runtime::limits::Rate>,
    /// Cap what the guest sends the host over vsock (output, logs,
    /// copies) at RATE bytes per second.
    #[arg(long = "vsock-bps", value_name = "RATE[:BURST]", value_parser = parse_bytes_rate)]
    vsock_bps: Option<runtime::limits::Rate>,
    /// Cap the vsock packets the guest sends at RATE per second.
    #[arg(long = "vsock-ops", value_name = "RATE[:BURST]", value_parser = parse_count_rate)]
    vsock_ops: Option<runtime::limits::Rate>,
    /// The container's share of the host's disk time, 10 to 1000
    /// (cgroup v2 io.weight; 0: the default).
    #[arg(long = "blkio-weight", value_name = "WEIGHT", value_parser = runtime::limits::parse_blkio_weight)]
    blkio_weight: Option<u16>,
    /// Connect to a network: `bridge` (the default for root) or `none`
    /// (only `lo`).
    #[arg(long = "network", alias = "net", value_name = "NETWORK")]
    network: Option<String>,
    /// Publish a container port on the host:
    /// [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp].
    #[arg(short = 'p', long = "publish", value_name = "PORT")]
    publish: Vec<String>,
    /// Publish every port the image exposes, each on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// An IPv4 address for the container (user-defined networks).
    #[arg(long = "ip", value_name = "ADDRESS")]
    ip: Option<String>,
    /// Another name for the container on its network (user-defined networks).
    #[arg(long = "network-alias", value_name = "NAME")]
    network_alias: Vec<String>,
    /// The container's MAC address.
    #[arg(long = "mac-address", value_name = "MAC")]
    mac_address: Option<String>,
    /// A DNS server for the container (instead of the host's).
    #[arg(long = "dns", value_name = "ADDRESS")]
    dns: Vec<String>,
    /// A DNS search domain.
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    dns_search: Vec<String>,
    /// A resolv.conf option (e.g. ndots:2).
    #[arg(long = "dns-option", value_name = "OPTION")]
    dns_option: Vec<String>,
    /// Add a line to /etc/hosts: NAME:ADDRESS (host-gateway: the gateway).
    #[arg(long = "add-host", value_name = "NAME:ADDRESS")]
    add_host: Vec<String>,
    /// Bind mount or volume: [SOURCE:]TARGET[:ro|rw|nocopy]. SOURCE is a
    /// host directory (absolute; made if missing) or a volume name;
    /// without it, an anonymous volume.
    #[arg(short = 'v', long = "volume", value_name = "[SOURCE:]TARGET[:OPTIONS]", value_parser = runtime::volume::mounts::parse_volume_flag)]
    volume: Vec<runtime::volume::Mount>,
    /// A mount: type=bind|volume|tmpfs,source=,target=,readonly,
    /// volume-nocopy,volume-label=,tmpfs-size=,tmpfs-mode=.
    #[arg(long = "mount", value_name = "OPTIONS", value_parser = runtime::volume::mounts::parse_mount_flag)]
    mount: Vec<runtime::volume::Mount>,
    /// A tmpfs: TARGET[:size=SIZE,mode=MODE,ro,exec].
    #[arg(long = "tmpfs", value_name = "TARGET[:OPTIONS]", value_parser = runtime::volume::mounts::parse_tmpfs_flag)]
    tmpfs: Vec<runtime::volume::Mount>,
    /// Mount the volumes and bind mounts of another container:
    /// CONTAINER[:ro|rw].
    #[arg(long = "volumes-from", value_name = "CONTAINER[:ro|rw]")]
    volumes_from: Vec<String>,
    /// Show the guest kernel's console on stderr.
    #[arg(long)]
    debug: bool,
    /// Boot the guest kernel cold instead of starting from a snapshot of
    /// a booted guest (VM_SNAPSHOT=0 does the same for every run).
    #[arg(long = "no-snapshot")]
    no_snapshot: bool,
    /// Pull the image: `missing` (default), `always` or `never`.
    #[arg(long, default_value = "missing", value_parser = parse_pull)]
    pull: PullPolicy,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// The image: oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE.
    image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    RestartPolicy::parse(s).map_err(|e| e.message)
}

/// `--log-opt max-size=10m`, `--log-opt max-file=3`.
fn log_options(opts: &[String]) -> Result<LogOptions, String> {
    let mut out = LogOptions::default();
    for o in opts {
        match o.split_once('=') {
            Some(("max-size", v)) => {
                let mib_or_bytes = v.trim().to_ascii_lowercase();
                let bytes = match mib_or_bytes.chars().last() {
                    Some(c) if c.is_ascii_digit() => mib_or_bytes
                        .parse::<u64>()
                        .map_err(|_| format!("invalid max-size {v:?}"))?,
                    _ => spec::parse_memory(v).map(|m| m << 20).or_else(|_| {
                        // Smaller than a MiB: k or b.
                        let n = mib_or_bytes.trim_end_matches(['k', 'b']);
                        n.parse::<u64>()
                            .map(|n| {
                                if mib_or_bytes.ends_with('k') {
                                    n << 10
                                } else {
                                    n
                                }
                            })
                            .map_err(|_| format!("invalid max-size {v:?}; use e.g. 10m"))
                    })?,
                };
                if bytes == 0 {
                    return Err(format!("invalid max-size {v:?}: must be more than 0"));
                }
                out.max_size = bytes;
            }
            Some(("max-file", v)) => {
                out.max_files =
                    v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        format!("invalid max-file {v:?}: use a number of 1 or more")
                    })?;
            }
            _ => {
                return Err(format!(
                    "unknown log option {o:?}: the json-file log takes max-size=SIZE and max-file=N"
                ))
            }
        }
    }
    Ok(out)
}

fn parse_bytes_rate(s: &str) -> Result<runtime::limits::Rate, String> {
    runtime::limits::parse_rate(s, true)
}

fn parse_count_rate(s: &str) -> Result<runtime::limits::Rate, String> {
    runtime::limits::parse_rate(s, false)
}

/// `--storage-opt size=SIZE`: the scratch disk's size in MiB.
fn storage_options(opts: &[String]) -> Result<Option<u64>, String> {
    let mut size = None;
    for o in opts {
        match o.split_once('=') {
            Some(("size", v)) => {
                let mib = spec::parse_memory(v).map_err(|e| format!("--storage-opt size: {e}"))?;
                if mib < runtime::MIN_SCRATCH_MIB {
                    return Err(format!(
                        "--storage-opt size={v} is too small: the container's disk needs at least {}m",
                        runtime::MIN_SCRATCH_MIB
                    ));
                }
                size = Some(mib);
            }
            _ => {
                return Err(format!(
                    "unknown storage option {o:?}: the only one is size=SIZE (e.g. size=10g)"
                ))
            }
        }
    }
    Ok(size)
}

fn parse_pull(s: &str) -> Result<PullPolicy, String> {
    match s {
        "missing" => Ok(PullPolicy::Missing),
        "always" => Ok(PullPolicy::Always),
        "never" => Ok(PullPolicy::Never),
        _ => Err(format!("{s:?}: expected missing, always or never")),
    }
}

/// `--platform`: linux/amd64 in any of Docker's spellings.
fn parse_platform(s: &str) -> Result<String, String> {
    let p = s.to_ascii_lowercase();
    let mut parts = p.split('/');
    let (os, arch) = match (parts.next(), parts.next(), parts.next()) {
        (Some("linux"), None, None) => ("linux", "amd64"),
        (Some(arch), None, None) => ("linux", arch),
        (Some(os), Some(arch), None) => (os, arch),
        _ => ("", ""),
    };
    if os == "linux" && (arch == "amd64" || arch == "x86_64") {
        Ok("linux/amd64".into())
    } else {
        Err(format!(
            "platform {s:?} is not supported: the guests here are linux/amd64"
        ))
    }
}

/// `--label-file`: KEY=VALUE lines; blank lines and `#` comments skipped.
fn read_label_file(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading label file {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// A size in bytes, as `--memory` takes it (`64m`).
fn parse_bytes(s: &str) -> Result<u64, String> {
    runtime::volume::mounts::parse_size(s)
}

/// `--memory-swap`: a size, or -1 for no limit.
fn parse_swap(s: &str) -> Result<i64, String> {
    if s.trim() == "-1" {
        return Ok(-1);
    }
    let n = parse_bytes(s)?;
    i64::try_from(n).map_err(|_| format!("--memory-swap {s:?} is too large"))
}

impl RunArgs {
    fn options(self) -> Result<RunOptions, String> {
        if self.oom_kill_disable {
            return Err("--oom-kill-disable is not supported: a container's memory is its VM's, and the guest kernel's OOM killer acts inside it (raise --memory instead)".into());
        }
        let mut labels = Vec::new();
        let mut from_files = Vec::new();
        for f in &self.label_file {
            from_files.extend(read_label_file(f)?);
        }
        // Files first: a --label given on the command line wins.
        for l in from_files.iter().chain(&self.label) {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            if k.is_empty() {
                return Err(format!("invalid label {l:?}: use KEY=VALUE"));
            }
            labels.push((k.to_string(), v.to_string()));
        }
        Ok(RunOptions {
            tty_size: if self.tty { tty::size() } else { None },
            log: log_options(&self.log_opt)?,
            labels,
            image: self.image,
            command: self.command,
            env: self.env,
            env_files: self.env_file,
            workdir: self.workdir,
            user: self.user,
            entrypoint: self.entrypoint,
            interactive: self.interactive,
            tty: self.tty,
            name: self.name,
            hostname: self.hostname,
            cpus: self.cpus.unwrap_or(0),
            cpuset_cpus: self.cpuset_cpus,
            memory_mib: self.memory,
            memory_reservation: self.memory_reservation,
            memory_swap: self.memory_swap,
            read_only: self.read_only,
            scratch_mib: storage_options(&self.storage_opt)?,
            limits: runtime::limits::Limits {
                disk_bps: self.disk_bps,
                disk_iops: self.disk_iops,
                vsock_bps: self.vsock_bps,
                vsock_ops: self.vsock_ops,
                blkio_weight: self.blkio_weight.filter(|w| *w != 0),
            },
            debug: self.debug,
            no_snapshot: self.no_snapshot,
            pull: self.pull,
            auto_remove: self.rm,
            restart: self.restart,
            stop_signal: self.stop_signal,
            stop_timeout: self.stop_timeout,
            network: runtime::network::Request {
                network: self.network,
                publish: self.publish,
                publish_all: self.publish_all,
                ip: self.ip,
                aliases: self.network_alias,
                mac: self.mac_address,
                dns: self.dns,
                dns_search: self.dns_search,
                dns_options: self.dns_option,
                add_hosts: self.add_host,
            },
            mounts: self
                .volume
                .into_iter()
                .chain(self.mount)
                .chain(self.tmpfs)
                .collect(),
            volumes_from: self.volumes_from,
            health: runtime::health::Flags {
                cmd: self.health_cmd,
                interval: self.health_interval,
                timeout: self.health_timeout,
                start_period: self.health_start_period,
                retries: self.health_retries,
                none: self.no_healthcheck,
            },
            security: runtime::security::Request {
                cap_add: self.cap_add,
                cap_drop: self.cap_drop,
                privileged: self.privileged,
                security_opt: self.security_opt,
                ulimits: self.ulimit,
                group_add: self.group_add,
                sysctls: self.sysctl,
                shm_size: self.shm_size,
                pids_limit: self.pids_limit,
                init: self.init,
            },
        })
    }
}

/// Progress of a pull on the terminal; with `catcher`, the signals for
/// the container are caught from the moment the image is open (before,
/// while it is read or pulled, Ctrl-C simply ends `vm`: the store's
/// writes are atomic).
struct Watch {
    meter: crate::registry::Meter,
    catcher: Option<Catcher>,
}

impl runtime::Observer for Watch {
    fn progress(&mut self, p: vm_image::registry::Progress) {
        self.meter.report(p);
    }

    fn image_opened(&mut self) -> Result<(), String> {
        match &mut self.catcher {
            Some(c) => c.catch(),
            None => Ok(()),
        }
    }
}

fn create_container(
    args: RunArgs,
    state: &std::path::Path,
    catcher: Option<Catcher>,
) -> Result<(runtime::container::Container, RunOptions, Option<Catcher>), ExitCode> {
    let cidfile = args.cidfile.clone();
    if let Some(f) = &cidfile {
        if f.exists() {
            return Err(crate::fail(&format!(
                "container ID file found, make sure the other container isn't running or delete {}",
                f.display()
            )));
        }
    }
    let opts = args.options().map_err(|e| crate::fail(&e))?;
    let mut watch = Watch {
        meter: crate::registry::Meter::new(),
        catcher,
    };
    let c = runtime::create(&opts, state, &mut watch).map_err(|e| crate::runtime_error(&e))?;
    if let Some(f) = &cidfile {
        if let Err(e) = write_new(f, c.config.id.as_bytes()) {
            return Err(crate::fail(&format!(
                "writing the container ID file {}: {e}",
                f.display()
            )));
        }
    }
    Ok((c, opts, watch.catcher))
}

/// Writes `data` to a file that must not exist yet.
fn write_new(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?
        .write_all(data)
}

/// `vm create`: prints the new container's ID.
pub fn create(args: RunArgs, root: Option<PathBuf>) -> ExitCode {
    let state = match runtime::state_root(root.as_deref()) {
        Ok(s) => s,
        Err(e) => return crate::fail(&e),
    };
    match create_container(args, &state, None) {
        Ok((c, _, _)) => {
            println!("{}", c.config.id);
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub fn main(args: RunArgs, root: Option<PathBuf>) -> ExitCode {
    let detach = args.detach;
    let raw_wanted = args.tty && args.interactive && tty::is_terminal();
    let state = match runtime::state_root(root.as_deref()) {
        Ok(s) => s,
        Err(e) => return crate::fail(&e),
    };
    let (tx, rx) = mpsc::channel();
    let catcher = (!detach).then(|| Catcher::new(tx));
    let (c, opts, catcher) = match create_container(args, &state, catcher) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if detach {
        let started = client::start(&state, &c, Mode::Detached).and_then(client::wait_started);
        return match started {
            Ok(()) => {
                println!("{}", c.config.id);
                ExitCode::SUCCESS
            }
            Err(e) => crate::runtime_error(&e),
        };
    }
    // The terminal goes raw before the guest starts: what is typed while
    // it boots (an EOF, a ^C) then reaches the container as typed, not
    // after the line discipline has turned it into something else.
    let raw = raw_wanted.then(tty::RawMode::enter).flatten();
    let conn = match client::start(
        &state,
        &c,
        Mode::Attached {
            stdin: opts.interactive,
        },
    ) {
        Ok(conn) => conn,
        Err(e) => {
            drop(raw);
            return crate::runtime_error(&e);
        }
    };
    let Some(catcher) = catcher else {
        drop(raw);
        return crate::fail(&"no signal catcher for an attached run");
    };
    attach_with(
        conn,
        &c,
        opts.interactive,
        raw,
        opts.restart == RestartPolicy::No,
        catcher,
        rx,
    )
}

/// Runs an attached container to its end: our terminal, stdin and
/// signals are its; returns its exit status.
pub fn attach_foreground(
    conn: std::os::unix::net::UnixStream,
    c: &runtime::container::Container,
    stdin: bool,
    raw_wanted: bool,
    wait_monitor: bool,
) -> ExitCode {
    let (tx, rx) = mpsc::channel();
    let mut catcher = Catcher::new(tx);
    if let Err(e) = catcher.catch() {
        return crate::fail(&e);
    }
    let raw = raw_wanted.then(tty::RawMode::enter).flatten();
    attach_with(conn, c, stdin, raw, wait_monitor, catcher, rx)
}

/// `attach_foreground` with signals already caught by `catcher` (their
/// thread starts here: after the monitor was forked).
fn attach_with(
    conn: std::os::unix::net::UnixStream,
    c: &runtime::container::Container,
    stdin: bool,
    raw: Option<tty::RawMode>,
    wait_monitor: bool,
    mut catcher: Catcher,
    rx: mpsc::Receiver<Control>,
) -> ExitCode {
    // The container's output keeps flowing (and is dropped) when our
    // reader goes away; its end still gives our exit status.
    // SAFETY: ignoring a signal is sound.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // A signal that came while the guest boots waits for the container.
    if let Err(e) = catcher.arm() {
        drop(raw);
        return crate::fail(&e);
    }
    let input: Option<Box<dyn std::io::Read + Send>> = if stdin {
        Some(Box::new(std::io::stdin()))
    } else {
        None
    };
    let result = client::attached(
        conn,
        input,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
        rx,
    );
    drop(raw);
    catcher.close();
    // The monitor finishes with the container (removes it with --rm)
    // right after; wait for that, so that what follows sees it done.
    if wait_monitor {
        client::wait_monitor(c);
    }
    match result {
        Ok(code) => ExitCode::from((code & 0xff) as u8),
        Err(e) => crate::runtime_error(&e),
    }
}

/// SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 go to the
/// container's process; SIGWINCH sends the terminal's new size.
pub struct Catcher {
    tx: Option<Sender<Control>>,
    signals: Option<signal_hook::iterator::Signals>,
    handle: Option<signal_hook::iterator::Handle>,
}

impl Catcher {
    fn new(tx: Sender<Control>) -> Self {
        Self {
            tx: Some(tx),
            signals: None,
            handle: None,
        }
    }

    /// Catches the signals (no thread yet: the process may still fork).
    fn catch(&mut self) -> Result<(), String> {
        use signal_hook::consts::*;
        if self.signals.is_none() {
            let signals = signal_hook::iterator::Signals::new([
                SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH,
            ])
            .map_err(|e| format!("installing signal handlers: {e}"))?;
            self.handle = Some(signals.handle());
            self.signals = Some(signals);
        }
        Ok(())
    }

    /// Forwards what was caught, and what comes, on a thread.
    fn arm(&mut self) -> Result<(), String> {
        use signal_hook::consts::*;
        self.catch()?;
        let (Some(tx), Some(mut signals)) = (self.tx.take(), self.signals.take()) else {
            return Ok(());
        };
        let run = move || {
            for sig in signals.forever() {
                let c = if sig == SIGWINCH {
                    match tty::size() {
                        Some((rows, cols)) => Control::Resize { rows, cols },
                        None => continue,
                    }
                } else {
                    Control::Signal(sig)
                };
                if tx.send(c).is_err() {
                    break;
                }
            }
        };
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(run)
            .map(drop)
            .map_err(|e| format!("starting the signal thread: {e}"))
    }

    fn close(&mut self) {
        if let Some(h) = self.handle.take() {
            h.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        for ok in [
            "linux/amd64",
            "linux/x86_64",
            "amd64",
            "LINUX/AMD64",
            "linux",
        ] {
            assert_eq!(parse_platform(ok).as_deref(), Ok("linux/amd64"), "{ok}");
        }
        for bad in [
            "linux/arm64",
            "windows/amd64",
            "arm64",
            "linux/amd64/v2/x",
            "",
        ] {
            assert!(parse_platform(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_files() {
        let dir = std::env::temp_dir().join(format!("vm-label-test-{}", std::process::id()));
        std::fs::write(&dir, "# a comment\n\na=1\n  b=two words \nc\n").expect("write");
        let got = read_label_file(&dir).expect("read");
        let _ = std::fs::remove_file(&dir);
        assert_eq!(got, ["a=1", "b=two words", "c"]);
        assert!(read_label_file(std::path::Path::new("/no/such/file")).is_err());
    }
}
