//! The messages.

use serde::{Deserialize, Serialize};

/// Host to agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMessage {
    Run(Box<RunSpec>),
    /// Deliver this signal to the container's process.
    Signal(i32),
    /// The terminal's new size (with `-t`).
    Resize {
        rows: u16,
        cols: u16,
    },
    /// The host has made the sealed image disk read-only; go on.
    Continue,
    /// Start another process in the running container.
    Exec(Box<ExecSpec>),
    /// Deliver a signal to an exec'd process.
    ExecSignal {
        id: u32,
        signal: i32,
    },
    /// An exec'd process's terminal has a new size.
    ExecResize {
        id: u32,
        rows: u16,
        cols: u16,
    },
    /// A connection to a published port: connect to the host's vsock
    /// `port`, write `token` and a newline, connect to TCP
    /// `address:target` (the guest's own address), and carry bytes both
    /// ways.
    Forward {
        port: u32,
        address: std::net::Ipv4Addr,
        target: u16,
        token: String,
    },
}

/// Agent to host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMessage {
    Hello {
        version: u32,
    },
    /// The image is unpacked onto the `Rootfs::Unpack` disk, synced, and
    /// no longer written; the agent waits for `Continue` before any
    /// container code runs, so the host can seal the disk first.
    Sealed,
    /// The image is unpacked and the process started.
    Started,
    /// The process ended; `code` follows Docker (128+N for signal N).
    Exited {
        code: i32,
    },
    /// The container could not be run. `code` is the exit status `vm run`
    /// should give: 125 (setting up failed), 126 (not executable) or 127
    /// (not found).
    Failed {
        code: i32,
        message: String,
    },
    /// An exec'd process runs.
    ExecStarted {
        id: u32,
    },
    /// An exec'd process ended (after its output reached end of file);
    /// `code` as for `Exited` (126/127 when it could not be run).
    ExecExited {
        id: u32,
        code: i32,
    },
    /// An exec'd process could not be started at all.
    ExecFailed {
        id: u32,
        code: i32,
        message: String,
    },
    /// Where the guest's time went (`RunSpec::timings`): marks in
    /// milliseconds since the agent said hello, sent once, before
    /// `Exited`.
    Timings {
        marks: Vec<(String, f64)>,
    },
}

/// Another process in the running container (`vm exec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Chosen by the host, unique for the container's run.
    pub id: u32,
    /// Its env is complete (the container's plus the exec's own); `user`
    /// and `cwd` are resolved inside the container as for the container.
    pub process: Process,
    /// Host ports the agent connects to for the process's stdio (stdout
    /// always, stderr without a terminal, stdin when `process.stdin`).
    pub ports: StreamPorts,
    /// The agent writes this and a newline first on each of the
    /// process's stream connections, so the host can tell them from
    /// connections a container's own processes make to the same ports.
    #[serde(default)]
    pub token: String,
    /// Instead of `process.args`, run this piece of the agent in the
    /// container (as root, in its namespaces and root), with the same
    /// streams and exit status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<Builtin>,
}

/// Work the agent does itself inside a running container, for `vm cp`,
/// `vm export`, `vm top` and `vm stats`. Output goes to the exec's
/// stdout, errors to its stderr; exit status 0 means it worked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// Write a tar archive of `path` to stdout: its entry is named after
    /// the path's last component, its descendants below that name.
    /// Symlinks are archived, not followed.
    TarOut { path: String },
    /// Write a tar archive of the whole root file system to stdout,
    /// names relative to `/`, without descending into other mounts
    /// (`/proc`, `/sys`, `/dev`).
    Export,
    /// Read a tar archive on stdin (as `TarOut` writes one) and put it at
    /// `dest` as `docker cp` does (see [`CopyPlace`]). `keep_owner` keeps
    /// the archive's owners (else root owns all).
    TarIn {
        dest: String,
        place: CopyPlace,
        keep_owner: bool,
    },
    /// Write the container's processes as JSON ([`TopRow`] per line).
    Top,
    /// Write `count` samples of the guest's counters ([`StatsSample`],
    /// one JSON object a line), `interval_ms` apart; 0 means until the
    /// stream closes.
    Stats { interval_ms: u32, count: u32 },
}

/// Where `vm cp` puts an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyPlace {
    /// Its one top entry goes into `dest` when that is a directory, and
    /// becomes `dest` otherwise.
    Named,
    /// The top directory's children go into the directory `dest` (a
    /// source that ends in `/.`).
    Contents,
    /// As it is, into the existing directory `dest` (a tar stream).
    Stream,
}

/// One process of the container, as `vm top` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopRow {
    pub uid: u32,
    /// The user's name in the container's /etc/passwd, else the number.
    pub user: String,
    /// As the container sees it (its own PID namespace).
    pub pid: i32,
    pub ppid: i32,
    /// CPU use over the process's life, percent.
    pub cpu: u32,
    /// Seconds since the epoch.
    pub started: u64,
    pub tty: String,
    /// user + system CPU seconds.
    pub cpu_secs: u64,
    pub cmd: String,
}

/// The guest's counters at one moment, for `vm stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSample {
    /// Clock ticks (USER_HZ) the CPUs were busy, and in all.
    pub cpu_busy: u64,
    pub cpu_total: u64,
    pub cpus: u32,
    pub mem_total: u64,
    pub mem_available: u64,
    pub block_read: u64,
    pub block_write: u64,
    pub net_rx: u64,
    pub net_tx: u64,
    /// Processes in the container.
    pub pids: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPorts {
    pub stdin: u32,
    pub stdout: u32,
    pub stderr: u32,
}

/// Everything the agent needs to run one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Where the image's root file system comes from.
    pub rootfs: Rootfs,
    /// Serial of the writable scratch disk (an empty ext4 file system)
    /// that holds the container's writes (the overlay's upper layer).
    pub scratch_disk: String,
    pub process: Process,
    pub hostname: String,
    /// Mount the container's root file system read-only.
    pub read_only: bool,
    /// Caps on what one layer may unpack to.
    pub max_layer_bytes: u64,
    pub max_layer_entries: u64,
    /// Interfaces, DNS and hosts entries; `lo` alone when empty.
    #[serde(default)]
    pub network: Network,
    /// Volumes, bind mounts and tmpfs mounts, in the order to mount them.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// What the container's namespaces get beyond the process.
    #[serde(default)]
    pub options: ContainerOptions,
    /// Fresh bytes from the host's generator, mixed into the guest's
    /// (a VM restored from a snapshot starts with the snapshot's state).
    #[serde(default)]
    pub seed: Vec<u8>,
    /// The host's time (nanoseconds since the epoch), for the guest's
    /// clock; 0 leaves it.
    #[serde(default)]
    pub host_time_ns: u64,
    /// Report where the guest's time went (`AgentMessage::Timings`).
    #[serde(default)]
    pub timings: bool,
}

/// The container as a whole (its namespaces, not one process).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerOptions {
    /// PID 1 is a small init of the agent's that reaps orphans and
    /// forwards signals to the process (`--init`).
    pub init: bool,
    /// `--privileged`: /sys and /proc/sys writable, the guest's devices
    /// in /dev, cgroups writable.
    pub privileged: bool,
    /// Namespaced sysctls (`kernel.shm*`, `kernel.msg*`, `kernel.sem`,
    /// `fs.mqueue.*`, `net.*`), set inside the container.
    pub sysctls: Vec<(String, String)>,
    /// Bytes of /dev/shm (0: 64 MiB).
    pub shm_size: u64,
    /// The most processes the container may have (its cgroup's
    /// pids.max); none: no cap.
    pub pids_limit: Option<u64>,
}

/// One mount in the container, made after its root is in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute, in the container.
    pub target: String,
    pub read_only: bool,
    pub source: MountSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountSource {
    /// A virtio-fs device, by its tag. With `copy_up`, the directory is a
    /// new, empty volume: the image's files at the target are copied in
    /// first (owners, modes and times kept), as Docker does.
    Virtiofs { tag: String, copy_up: bool },
    /// A tmpfs of `size` bytes (0: the kernel's default) and `mode`;
    /// nosuid and nodev, and noexec unless `exec`.
    Tmpfs {
        size: u64,
        mode: Option<u32>,
        exec: bool,
    },
}

/// The container's network as the guest sets it up: `lo` always, then
/// each interface found by its MAC address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub interfaces: Vec<Interface>,
    /// `nameserver` lines of resolv.conf (none: a resolv.conf that says so).
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    /// Extra hosts lines: an address and its names (`--add-host`).
    pub hosts: Vec<HostEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    /// `aa:bb:cc:dd:ee:ff`, as the host gave the virtio-net device.
    pub mac: String,
    /// The IPv4 address and prefix length.
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    /// The default route goes through it.
    pub gateway: Option<std::net::Ipv4Addr>,
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostEntry {
    pub address: String,
    pub names: Vec<String>,
}

/// The image's root file system, the overlay's lower layer. It lives in
/// the directory `rootfs` of an ext4 file system on a disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rootfs {
    /// Unpack `layers` (bottom first, each a read-only disk) onto `disk`
    /// (an empty ext4), then sync, stop writing it and report `Sealed`.
    Unpack { disk: String, layers: Vec<Layer> },
    /// `disk` already holds the unpacked image (read-only).
    Cached { disk: String },
}

/// One layer blob, on a read-only virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    /// Serial of the disk (virtio-blk GET_ID) that holds the blob.
    pub disk: String,
    /// Where the blob starts on that disk (several layers share one).
    #[serde(default)]
    pub offset: u64,
    /// Bytes of the blob (the disk is rounded up to whole sectors).
    pub size: u64,
    pub compression: Compression,
    /// The blob's digest, for messages.
    pub digest: String,
}

/// How a layer blob is compressed. The one definition, shared by the
/// image code on the host (`vm-image`), this protocol and the unpacker in
/// the guest (`image-unpack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The container's process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    /// argv; `args[0]` is looked up in the container's PATH.
    pub args: Vec<String>,
    /// NAME=VALUE pairs.
    pub env: Vec<String>,
    /// Working directory (absolute); created when missing, as Docker does.
    pub cwd: String,
    /// `user`, `uid`, `user:group` or `uid:gid`, resolved through the
    /// image's /etc/passwd and /etc/group; empty means root.
    pub user: String,
    /// Give the process a pseudo-terminal (stdout and stderr merge).
    pub terminal: bool,
    /// Connect the host's stdin.
    pub stdin: bool,
    /// The terminal size to start with (with `terminal`).
    pub rows: u16,
    pub cols: u16,
    /// Capabilities, seccomp, limits and extra groups; `vm exec`'s
    /// processes get the container's.
    #[serde(default)]
    pub security: Security,
}

/// How a container's processes are confined inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// The capabilities (by number) the processes may have: every other
    /// one leaves the bounding set. Root starts with these permitted and
    /// effective, any other user with none; the inheritable and ambient
    /// sets are empty.
    pub capabilities: Vec<u32>,
    /// `no_new_privs`: execve never grants privileges (setuid bits and
    /// file capabilities have no effect).
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Seccomp filters (classic BPF programs for x86-64), installed in
    /// this order; none: unconfined.
    #[serde(default)]
    pub seccomp: Vec<Vec<BpfInsn>>,
    /// Resource limits set before the process starts.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// More supplementary groups: names in the container's /etc/group or
    /// numbers.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// The capabilities a container has unless told otherwise (Docker's
/// default set).
pub const DEFAULT_CAPABILITIES: &[u32] = &[
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

impl Default for Security {
    fn default() -> Self {
        Self {
            capabilities: DEFAULT_CAPABILITIES.to_vec(),
            no_new_privileges: false,
            seccomp: Vec::new(),
            rlimits: Vec::new(),
            groups: Vec::new(),
        }
    }
}

/// One classic BPF instruction (`struct sock_filter`): code, jt, jf, k.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfInsn(pub u16, pub u8, pub u8, pub u32);

/// One resource limit: `resource` is an RLIMIT_* number; `u64::MAX` is
/// unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}
