//! One microVM: build it from a [`VmConfig`], run it until the guest ends,
//! tear it down.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::legacy::{
    BootTimer, Serial, BOOT_TIMER_PORT, COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN, I8042,
    I8042_PORT_BASE, I8042_PORT_LEN,
};
use devices::{Bus, EventFdTrigger};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::cpuid::HostCaps;
use crate::arch::layout::KVM_TSS_ADDRESS;
use crate::console::ConsoleOut;
use crate::device_manager::{DeviceManager, Subscriber};
use crate::exit::{ExitReason, ExitSignal};
use crate::loader::{self, BootSpec};
use crate::{device_manager, host, memory, snapshot, vcpu};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::fs::{Fs, FsConfig};
use devices::virtio::net::{Net, NetConfig};
use devices::virtio::rng::Rng;
use devices::virtio::vsock::{Vsock, VsockConfig};
use std::os::unix::fs::OpenOptionsExt;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// The smallest guest that can boot our kernel with an initramfs.
pub const MIN_MEMORY_MIB: u64 = 16;
pub const MAX_CPUS: u8 = 64;
/// How long a panicked guest gets to print the rest of its message.
const PANIC_GRACE: Duration = Duration::from_secs(2);

pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The kernel command line; the VMM adds what it needs.
    pub cmdline: String,
    pub cpus: u8,
    pub memory_mib: u64,
    /// Called once with the time from the start of [`run`] to the
    /// guest's userspace (its write to the boot-timer port).
    pub on_boot: Option<Box<dyn Fn(Duration) + Send>>,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<BlockConfig>,
    /// A virtio-vsock device with its host side on Unix sockets.
    pub vsock: Option<VsockConfig>,
    /// virtio-net devices (eth0, eth1, ...), each on a TAP device.
    pub nets: Vec<NetConfig>,
    /// virtio-fs devices, each served by a vhost-user daemon. With any,
    /// guest memory is a shared memfd the daemons map.
    pub filesystems: Vec<FsConfig>,
    /// Where the guest's serial console goes (its last lines are kept for
    /// diagnostics either way).
    pub console: Box<dyn Write + Send>,
    /// Feed our stdin to the serial console (`vm boot`).
    pub console_input: bool,
    /// Lets another thread stop the VM (`ExitReason::Stopped`).
    pub exit: Arc<ExitSignal>,
    /// Called first thing on each vCPU thread, before it runs guest code
    /// (the container runtime narrows the thread's system calls there); a
    /// failure ends the VM.
    pub vcpu_confine: Option<VcpuConfine>,
    /// Called once on the VMM's thread when everything the VM needs is
    /// open (KVM, guest memory, the kernel loaded, the disks, the vsock
    /// listener, the vCPUs made) and before any other thread starts or
    /// any guest code runs: the container runtime jails the process
    /// there. A failure ends the VM before it starts.
    pub confine: Option<Confine>,
    /// Take a snapshot of this VM, or start from one.
    pub snapshot: Option<SnapshotUse>,
}

/// What a VM does with a snapshot (see [`crate::snapshot`]).
pub enum SnapshotUse {
    /// Boot with no devices, `slots` empty virtio-mmio slots in their
    /// place, and save the VM into `dir` (which must be empty) when the
    /// guest reaches its snapshot point; the VM then ends with
    /// [`ExitReason::SnapshotPoint`].
    Take {
        dir: PathBuf,
        key: String,
        slots: usize,
    },
    /// Start from the snapshot in `dir`, taken with `key` and `slots`,
    /// with this VM's devices in its slots. When it cannot be used (it
    /// does not match, it is corrupt, this VM needs shared memory or more
    /// slots), the VM boots cold and `on_cold` is told why.
    Restore {
        dir: PathBuf,
        key: String,
        slots: usize,
        on_cold: Option<OnCold>,
    },
}

/// See [`SnapshotUse::Restore`].
pub type OnCold = Box<dyn Fn(&str) + Send>;

/// See [`VmConfig::confine`].
pub type Confine = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// See [`VmConfig::vcpu_confine`].
pub type VcpuConfine = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the vCPU count must be between 1 and {max}, got {got}")]
    Cpus { got: u8, max: u8 },
    #[error("guest memory must be at least {MIN_MEMORY_MIB} MiB, got {0} MiB")]
    MemoryTooSmall(u64),
    #[error("guest memory of {0} MiB is more than this host can address")]
    MemoryTooLarge(u64),
    #[error(transparent)]
    Host(#[from] host::Error),
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] memory::Error),
    #[error(transparent)]
    Loader(#[from] loader::Error),
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    #[error("setting up devices: {0}")]
    Devices(String),
    #[error("confining the VMM: {0}")]
    Confine(String),
    #[error(transparent)]
    DeviceManager(#[from] device_manager::Error),
    #[error(transparent)]
    Disk(#[from] devices::virtio::block::Error),
    #[error("vsock: {0}")]
    Vsock(#[from] devices::virtio::vsock::Error),
    #[error(transparent)]
    Fs(#[from] devices::virtio::fs::Error),
    #[error("network device: {0}")]
    Net(#[from] devices::virtio::net::Error),
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::snapshot::Error),
    #[error("event loop: {0}")]
    EventLoop(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// How a guest ended, with the console's last lines for diagnostics.
pub struct Outcome {
    pub reason: ExitReason,
    pub console_tail: Vec<String>,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// What every guest of ours gets ahead of the user's own parameters:
/// - `reboot=k,f`: reset through the i8042, forced, i.e. without the
///   kernel's machine shutdown first (it masks every IO-APIC pin, one
///   trapped access after another: about 200 VM exits, for a machine
///   that is about to disappear); devices are still shut down and
///   file systems synced;
/// - `panic=-1`: reboot at once on a panic;
/// - `no_timer_check`: skip the check that the PIT ticks through the
///   IO-APIC, which waits ten timer ticks (40 ms at HZ=250) to learn
///   what KVM's in-kernel PIT and IO-APIC always do;
/// - the devices.
pub const BASE_CMDLINE: &str = "reboot=k,f panic=-1 no_timer_check";

pub fn full_cmdline(devices: &str, user: &str) -> String {
    [BASE_CMDLINE, devices.trim(), user.trim()]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn validate(cfg: &VmConfig) -> Result<(), Error> {
    check_size(cfg.cpus, cfg.memory_mib)
}

/// Whether a VM of this many vCPUs and MiB can be built at all.
pub fn check_size(cpus: u8, memory_mib: u64) -> Result<(), Error> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::Cpus {
            got: cpus,
            max: MAX_CPUS,
        });
    }
    if memory_mib < MIN_MEMORY_MIB {
        return Err(Error::MemoryTooSmall(memory_mib));
    }
    // 1 TiB is far beyond this project's hosts; it keeps the arithmetic safe.
    if memory_mib > (1 << 20) {
        return Err(Error::MemoryTooLarge(memory_mib));
    }
    Ok(())
}

type Console = ConsoleOut<Box<dyn Write + Send>>;

pub fn run(mut cfg: VmConfig) -> Result<Outcome, Error> {
    let start = Instant::now();
    validate(&cfg)?;
    // Check the files before touching KVM, so a typo is reported as such.
    loader::check_files(&cfg.kernel, cfg.initrd.as_deref())?;
    let kvm = host::open_kvm()?;
    let max = kvm.get_max_vcpus().min(usize::from(MAX_CPUS));
    if usize::from(cfg.cpus) > max {
        return Err(Error::Cpus {
            got: cfg.cpus,
            max: max as u8,
        });
    }
    let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("set TSS address"))?;
    vm.create_irq_chip().map_err(kvm_err("create IRQ chip"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(kvm_err("create PIT"))?;

    let mem_bytes = cfg.memory_mib << 20;
    let caps = HostCaps {
        tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
    };
    let base_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("get supported CPUID"))?;
    let (take, restore) = snapshot_plan(&mut cfg, mem_bytes, &base_cpuid, caps);
    // Declared before everything that uses guest memory, so dropped after.
    let (mem, mappings) = match &restore {
        Some(r) => memory::from_snapshot(mem_bytes, &r.memory)?,
        None => memory::create(mem_bytes, !cfg.filesystems.is_empty())?,
    };
    memory::register(&vm, &mem)?;

    // virtio devices (none in a VM being snapshotted: its slots are empty).
    let mut dm = DeviceManager::new();
    if take.is_some() {
        cfg.disks.clear();
        cfg.nets.clear();
        cfg.filesystems.clear();
        cfg.vsock = None;
    }
    for disk in &cfg.disks {
        dm.add_virtio(&vm, &mem, |irq| {
            Block::new(disk, mem.clone(), irq).map_err(Error::Disk)
        })?;
    }
    for n in &cfg.nets {
        dm.add_virtio(&vm, &mem, |irq| {
            Net::new(n, mem.clone(), irq).map_err(Error::Net)
        })?;
    }
    for fs in std::mem::take(&mut cfg.filesystems) {
        dm.add_virtio(&vm, &mem, |irq| {
            Fs::new(fs, mem.clone(), irq).map_err(Error::Fs)
        })?;
    }
    if let Some(v) = &cfg.vsock {
        dm.add_virtio(&vm, &mem, |irq| {
            Vsock::new(v, mem.clone(), irq).map_err(Error::Vsock)
        })?;
    }
    if take.is_none() {
        dm.add_virtio(&vm, &mem, |irq| {
            Rng::new(mem.clone(), irq).map_err(Error::Io)
        })?;
    }
    let slots = take
        .as_ref()
        .map(|t| t.slots)
        .or(restore.as_ref().map(|r| r.slots));
    if let Some(slots) = slots {
        while dm.slots() < slots {
            dm.add_placeholder()?;
        }
    }

    let cmdline = full_cmdline(&dm.cmdline.join(" "), &cfg.cmdline);
    // A restored guest has its kernel, and its command line, in memory.
    let entry = match &restore {
        Some(_) => None,
        None => Some(
            loader::load(
                &mem,
                &BootSpec {
                    kernel: &cfg.kernel,
                    initrd: cfg.initrd.as_deref(),
                    cmdline: &cmdline,
                    mem_bytes,
                    cpus: cfg.cpus,
                },
            )?
            .entry,
        ),
    };

    // Devices.
    let exit = cfg.exit.clone();
    let serial_irq = EventFd::new(EFD_NONBLOCK)?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(kvm_err("register serial irqfd"))?;
    let console = ConsoleOut::new(
        std::mem::replace(&mut cfg.console, Box::new(io::sink())),
        exit.clone(),
    );
    let serial = match &restore {
        Some(r) => Serial::with_state(EventFdTrigger::new(serial_irq), console, r.state.serial)
            .map_err(Error::Devices)?,
        None => Serial::new(EventFdTrigger::new(serial_irq), console),
    };
    let serial = Arc::new(Mutex::new(serial));
    let reset_evt = EventFd::new(EFD_NONBLOCK)?;
    let i8042 = Arc::new(Mutex::new(I8042::new(EventFdTrigger::new(
        reset_evt.try_clone()?,
    ))));
    let on_boot = cfg.on_boot.take();
    let boot_timer = Arc::new(Mutex::new(BootTimer::new(
        start,
        Box::new(move |d| {
            if let Some(f) = &on_boot {
                f(d);
            }
        }),
    )));
    let mut pio = Bus::new();
    let dev_err = |e: devices::BusError| Error::Devices(e.to_string());
    pio.insert(serial.clone(), COM1_PORT_BASE, COM1_PORT_LEN)
        .map_err(dev_err)?;
    pio.insert(i8042, I8042_PORT_BASE, I8042_PORT_LEN)
        .map_err(dev_err)?;
    pio.insert(boot_timer, BOOT_TIMER_PORT, 1)
        .map_err(dev_err)?;

    // vCPUs.
    if let Some(r) = &restore {
        snapshot::restore_vm(&vm, &r.state.vm)?;
    }
    let mut fds = Vec::with_capacity(usize::from(cfg.cpus));
    for id in 0..cfg.cpus {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| vcpu::Error::Create { id, source })?;
        match (&restore, entry) {
            (Some(r), _) => {
                let saved = r
                    .state
                    .vcpus
                    .get(usize::from(id))
                    .ok_or_else(|| snapshot::Error::Mismatch(format!("it has no vCPU {id}")))?;
                snapshot::restore_vcpu(&fd, saved)?;
            }
            (None, Some(entry)) => {
                vcpu::configure(&fd, id, cfg.cpus, &base_cpuid, caps, &mem, entry)?
            }
            (None, None) => {
                return Err(Error::EventLoop(
                    "neither a kernel nor a snapshot to start".into(),
                ))
            }
        }
        fds.push(fd);
    }
    drop(restore);
    if let Some(confine) = cfg.confine.take() {
        confine().map_err(Error::Confine)?;
    }
    vcpu::install_kick_handler()?;
    // The devices' log writer starts here, not on the first vCPU thread
    // that logs (whose system calls may be narrowed).
    devices::log::start();
    let ctx = vcpu::VcpuContext {
        pio: Arc::new(pio),
        mmio: Arc::new(std::mem::take(&mut dm.mmio)),
        exit: exit.clone(),
        confine: cfg.vcpu_confine.clone(),
        snapshot_point: take.is_some(),
    };
    let mut handles = Vec::with_capacity(fds.len());
    for (id, fd) in fds.into_iter().enumerate() {
        match vcpu::spawn(fd, id as u8, ctx.clone()) {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The ones already running must not outlive guest memory.
                if !vcpu::stop_all(&mut handles, Duration::from_secs(2)) {
                    mappings.leak();
                }
                return Err(e.into());
            }
        }
    }

    let result = event_loop(
        cfg.console_input,
        &exit,
        &reset_evt,
        &serial,
        std::mem::take(&mut dm.subscribers),
    );
    let stopped = vcpu::stop_all(&mut handles, Duration::from_secs(2));
    if !stopped {
        // A vCPU that did not stop may still reach guest memory through
        // a device: keep it mapped until the process ends.
        mappings.leak();
    }
    let snapshot_result = match &take {
        Some(t) if stopped && exit.get() == Some(ExitReason::SnapshotPoint) => {
            let state = serial.lock().unwrap_or_else(|e| e.into_inner()).state();
            let fds = vcpu::collect(&mut handles)
                .ok_or_else(|| Error::EventLoop("a vCPU thread ended without its vCPU".into()));
            fds.and_then(|mut fds| save_snapshot(t, &cmdline, &kvm, &vm, &mut fds, &mem, state))
        }
        _ => Ok(()),
    };
    let mut serial = serial.lock().unwrap_or_else(|e| e.into_inner());
    let console = serial.writer_mut();
    let _ = console.flush();
    // What the devices logged, before the process ends.
    devices::log::flush();
    let console_tail = console.recent_lines();
    let panic = console.panic_message().map(str::to_string);
    drop(serial);
    result?;
    snapshot_result?;
    let mut reason = exit
        .get()
        .unwrap_or_else(|| ExitReason::VmmError("the VM stopped without a reason".into()));
    // A panic is followed by the reset that panic=-1 asks for; report the panic.
    if let Some(msg) = panic {
        if matches!(reason, ExitReason::Reset | ExitReason::PowerOff) {
            reason = ExitReason::Panic(msg);
        }
    }
    drop(vm);
    Ok(Outcome {
        reason,
        console_tail,
    })
}

/// What a VM about to be snapshotted needs.
struct Take {
    dir: PathBuf,
    key: String,
    slots: usize,
    /// The CPUID each vCPU was given.
    cpuids: Vec<Vec<kvm_bindings::kvm_cpuid_entry2>>,
}

/// A snapshot that was checked and will be restored.
struct Restore {
    state: snapshot::State,
    memory: std::fs::File,
    slots: usize,
}

/// The CPUID each vCPU gets on this host.
fn host_cpuids(
    base: &kvm_bindings::CpuId,
    cpus: u8,
    caps: HostCaps,
) -> Vec<Vec<kvm_bindings::kvm_cpuid_entry2>> {
    (0..cpus)
        .map(|id| {
            let mut c = base.clone();
            crate::arch::cpuid::normalize(c.as_mut_slice(), id, cpus, caps);
            c.as_slice().to_vec()
        })
        .collect()
}

/// Whether this VM takes a snapshot, restores one, or boots cold (also
/// when the snapshot it was given cannot be used: `on_cold` hears why).
fn snapshot_plan(
    cfg: &mut VmConfig,
    mem_bytes: u64,
    base_cpuid: &kvm_bindings::CpuId,
    caps: HostCaps,
) -> (Option<Take>, Option<Restore>) {
    match cfg.snapshot.take() {
        None => (None, None),
        Some(SnapshotUse::Take { dir, key, slots }) => {
            let cpuids = host_cpuids(base_cpuid, cfg.cpus, caps);
            (
                Some(Take {
                    dir,
                    key,
                    slots,
                    cpuids,
                }),
                None,
            )
        }
        Some(SnapshotUse::Restore {
            dir,
            key,
            slots,
            on_cold,
        }) => {
            let devices = cfg.disks.len() + cfg.nets.len() + usize::from(cfg.vsock.is_some()) + 1;
            let usable = if !cfg.filesystems.is_empty() {
                Err("virtio-fs needs guest memory shared with its daemon".to_string())
            } else if devices > slots {
                Err(format!("{devices} devices do not fit its {slots} slots"))
            } else {
                let cmdline = full_cmdline(&device_manager::slots_cmdline(slots), &cfg.cmdline);
                let cpuids = host_cpuids(base_cpuid, cfg.cpus, caps);
                snapshot::load(
                    &dir,
                    &snapshot::Expect {
                        key: &key,
                        cmdline: &cmdline,
                        memory_bytes: mem_bytes,
                        cpuids: &cpuids,
                    },
                )
                .map_err(|e| e.to_string())
            };
            match usable {
                Ok((state, memory)) => (
                    None,
                    Some(Restore {
                        state,
                        memory,
                        slots,
                    }),
                ),
                Err(why) => {
                    if let Some(f) = on_cold {
                        f(&format!(
                            "not starting from snapshot {}: {why}",
                            dir.display()
                        ));
                    }
                    (None, None)
                }
            }
        }
    }
}

/// Whether the snapshot in `dir` can start a VM of this shape on this
/// host (what a restore checks first, without building the VM).
pub fn snapshot_usable(
    dir: &std::path::Path,
    key: &str,
    cmdline: &str,
    cpus: u8,
    memory_mib: u64,
    slots: usize,
) -> Result<(), Error> {
    let kvm = host::open_kvm()?;
    let base = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("get supported CPUID"))?;
    let caps = HostCaps {
        tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
    };
    let cpuids = host_cpuids(&base, cpus, caps);
    let cmdline = full_cmdline(&device_manager::slots_cmdline(slots), cmdline);
    snapshot::load(
        dir,
        &snapshot::Expect {
            key,
            cmdline: &cmdline,
            memory_bytes: memory_mib << 20,
            cpuids: &cpuids,
        },
    )?;
    Ok(())
}

/// Saves a VM stopped at its snapshot point into `t.dir`.
fn save_snapshot(
    t: &Take,
    cmdline: &str,
    kvm: &kvm_ioctls::Kvm,
    vm: &kvm_ioctls::VmFd,
    fds: &mut [kvm_ioctls::VcpuFd],
    mem: &memory::GuestMem,
    serial: [u8; 9],
) -> Result<(), Error> {
    let msrs = snapshot::msr_list(kvm)?;
    let vcpus = fds
        .iter_mut()
        .zip(&t.cpuids)
        .map(|(fd, cpuid)| snapshot::save_vcpu(fd, &msrs, cpuid.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let vm_state = snapshot::save_vm(vm)?;
    let path = t.dir.join(snapshot::MEMORY_FILE);
    let io = |source| snapshot::Error::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&path)
        .map_err(io)?;
    memory::save(mem, &file).map_err(io)?;
    file.sync_all().map_err(io)?;
    snapshot::write_state(
        &t.dir,
        &snapshot::State {
            format: snapshot::FORMAT,
            key: t.key.clone(),
            cmdline: cmdline.to_string(),
            memory_bytes: mem.iter().map(|r| r.len()).sum(),
            vcpus,
            vm: vm_state,
            serial,
        },
    )?;
    Ok(())
}

/// Wait for the guest to end, feeding stdin to the serial console and
/// flushing console output that has no newline yet.
fn event_loop(
    console_input: bool,
    exit: &Arc<ExitSignal>,
    reset_evt: &EventFd,
    serial: &Arc<Mutex<Serial<Console>>>,
    devices: Vec<Subscriber>,
) -> Result<(), Error> {
    let mut em: EventManager<Subscriber> =
        EventManager::new().map_err(|e| Error::EventLoop(format!("{e:?}")))?;
    for d in devices {
        em.add_subscriber(d);
    }
    let watcher = Arc::new(Mutex::new(ExitWatcher {
        exit: exit.clone(),
        reset: reset_evt.try_clone()?,
    }));
    em.add_subscriber(watcher);
    if console_input && stdin_is_usable() {
        em.add_subscriber(Arc::new(Mutex::new(StdinInput {
            serial: serial.clone(),
        })));
    }
    let mut panic_seen: Option<Instant> = None;
    loop {
        em.run_with_timeout(50)
            .map_err(|e| Error::EventLoop(format!("{e:?}")))?;
        if exit.get().is_some() {
            return Ok(());
        }
        let mut s = serial.lock().unwrap_or_else(|e| e.into_inner());
        let _ = s.writer_mut().flush();
        let panicked = s.writer_mut().panic_message().map(str::to_string);
        drop(s);
        if let Some(msg) = panicked {
            let since = *panic_seen.get_or_insert_with(Instant::now);
            if since.elapsed() >= PANIC_GRACE {
                exit.set(ExitReason::Panic(msg));
            }
        }
    }
}

/// Stdin is forwarded to the serial console when descriptor 0 is open.
fn stdin_is_usable() -> bool {
    let fd = io::stdin().as_raw_fd();
    // SAFETY: fstat on a file descriptor number with a valid out pointer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` lives for the call.
    unsafe { libc::fstat(fd, &mut st) == 0 }
}

struct ExitWatcher {
    exit: Arc<ExitSignal>,
    reset: EventFd,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            self.exit.set(ExitReason::Reset);
        } else {
            let _ = self.exit.evt.read();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.reset.as_raw_fd(), self.exit.evt.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                eprintln!("vm: cannot watch exit events: {e:?}");
            }
        }
    }
}

struct StdinInput {
    serial: Arc<Mutex<Serial<Console>>>,
}

impl MutEventSubscriber for StdinInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let n = match io::stdin().lock().read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => 0,
        };
        if n == 0 {
            let _ = ops.remove(events);
            return;
        }
        // Like a real UART, input that arrives while the receive FIFO is
        // full is lost (an overrun) rather than buffered without bound.
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(&buf[..n]);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let fd = io::stdin().as_raw_fd();
        // Regular files and /dev/null cannot be polled with epoll; such a
        // stdin is simply not forwarded.
        let _ = ops.add(Events::new_raw(fd, EventSet::IN));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cpus: u8, memory_mib: u64) -> VmConfig {
        VmConfig {
            kernel: PathBuf::from("k"),
            initrd: None,
            cmdline: String::new(),
            cpus,
            memory_mib,
            on_boot: None,
            disks: Vec::new(),
            vsock: None,
            nets: Vec::new(),
            filesystems: Vec::new(),
            console: Box::new(io::sink()),
            console_input: false,
            exit: Arc::new(ExitSignal::new().expect("eventfd")),
            vcpu_confine: None,
            confine: None,
            snapshot: None,
        }
    }

    #[test]
    fn required_parameters_come_first() {
        assert_eq!(full_cmdline("", ""), BASE_CMDLINE);
        assert_eq!(
            full_cmdline("", "  console=ttyS0 quiet "),
            format!("{BASE_CMDLINE} console=ttyS0 quiet")
        );
        // Devices come before the user's part, which may end in "-- args".
        assert_eq!(
            full_cmdline("virtio_mmio.device=4K@0xd0000000:5", "quiet -- x"),
            format!("{BASE_CMDLINE} virtio_mmio.device=4K@0xd0000000:5 quiet -- x")
        );
        // The user's own value comes later and so wins in the kernel.
        assert!(full_cmdline("", "reboot=t").ends_with("reboot=t"));
    }

    #[test]
    fn validates_sizes() {
        assert!(validate(&cfg(1, 128)).is_ok());
        assert!(matches!(
            validate(&cfg(0, 128)),
            Err(Error::Cpus { got: 0, .. })
        ));
        assert!(matches!(
            validate(&cfg(65, 128)),
            Err(Error::Cpus { got: 65, .. })
        ));
        assert!(matches!(
            validate(&cfg(1, 0)),
            Err(Error::MemoryTooSmall(0))
        ));
        assert!(matches!(
            validate(&cfg(1, 1 << 21)),
            Err(Error::MemoryTooLarge(_))
        ));
    }
}
