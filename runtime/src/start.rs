//! One start of a container, in its monitor: the image opened again
//! (its blobs are the layer disks), the scratch disk, the root file
//! system cache, the VM's configuration and the agent's run spec.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent_protocol::{Layer, Rootfs, RunSpec};
use devices::virtio::block::{part_offsets, BlockConfig, Part};
use devices::virtio::vsock::VsockConfig;
use vmm::{ExitSignal, VmConfig};

use crate::container::Container;
use crate::error::{Error, Result};
use crate::{rootfs_cache, scratch, spec, timing};

const GUEST_CID: u64 = 3;
/// What one layer may unpack to (VM_MAX_LAYER_SIZE overrides, e.g. 1g),
/// and how many entries it may have.
const MAX_LAYER_BYTES: u64 = scratch::SIZE;
const MAX_LAYER_ENTRIES: u64 = 4 << 20;
/// How long the agent has to connect after the VM starts (VM_AGENT_TIMEOUT
/// overrides, in seconds).
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest has to power off after reporting the exit status.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct Prepared {
    pub vm: crate::vm_process::Plan,
    pub spec: RunSpec,
    pub cache: rootfs_cache::Entry,
    /// The VMM's cgroup (removed when dropped, after the VMM is reaped).
    pub cgroup: Option<crate::cgroup::Cgroup>,
    /// Held while the run may read layers copied into the store.
    pub blobs: Option<vm_image::store::WriteGuard>,
}

/// Everything one start needs; the agent's connections arrive at the
/// vsock path in `jail`'s root.
pub fn prepare(
    state: &Path,
    c: &Container,
    jail: crate::jail::Jail,
    net: Option<&crate::network::Attachment>,
) -> Result<Prepared> {
    let vsock_path = crate::jail::vsock_path(&jail.root);
    let kernel = crate::assets::kernel().map_err(Error::host)?;
    let initrd = crate::assets::initrd().map_err(Error::host)?;
    let image = reopen_image(state, c)?;
    timing::mark("image-opened");
    let scratch_path = c.scratch_path();
    if !scratch_path.exists() {
        let size = c.config.scratch_mib.map_or(scratch::SIZE, |mib| mib << 20);
        scratch::create_sized(state, &scratch_path, size).map_err(Error::host)?;
    }
    let cache = rootfs_cache::lookup(state, &rootfs_cache::key(&image), &c.config.id)
        .map_err(Error::host)?;
    // Layers are read only when unpacking. Those in our own store are used
    // as they are: it is private, and it checked every blob before it took
    // it. Those of an image file (an `oci:` directory or an archive, which
    // others may be able to change) are first copied into the store,
    // checked on the way, and the guest reads the private copies: a blob
    // swapped or rewritten after the check is never read.
    let (image, blobs) = if matches!(cache, rootfs_cache::Entry::Miss(_)) && c.config.image_is_file
    {
        let (image, guard) = private_layers(state, image)
            .map_err(|e| Error::image(format!("image {}: {e}", c.config.image)))?;
        (image, Some(guard))
    } else {
        (image, None)
    };
    let mut disks = vec![BlockConfig {
        path: scratch_path,
        read_only: false,
        id: "scratch".into(),
        window: None,
        seal: None,
        parts: Vec::new(),
        rate_limit: Default::default(),
    }];
    let rootfs = image_disks(&image, &cache, &mut disks);
    for d in &mut disks {
        d.rate_limit = c.config.limits.disk();
    }
    timing::mark(if matches!(cache, rootfs_cache::Entry::Hit(_)) {
        "disks-ready-cached"
    } else {
        "disks-ready"
    });
    let spec = RunSpec {
        rootfs,
        scratch_disk: "scratch".into(),
        process: c.config.process.clone(),
        hostname: c.config.hostname.clone(),
        read_only: c.config.read_only,
        max_layer_bytes: max_layer_bytes().map_err(Error::invalid)?,
        max_layer_entries: MAX_LAYER_ENTRIES,
        network: net.map_or_else(
            || crate::network::loopback_only(&c.config.network),
            crate::network::Attachment::guest,
        ),
        mounts: Vec::new(),
        options: c.config.options.clone(),
        // Set when the spec is sent.
        seed: Vec::new(),
        host_time_ns: 0,
        timings: false,
    };
    let seal = match &cache {
        rootfs_cache::Entry::Miss(p) => Some(p.seal.clone()),
        rootfs_cache::Entry::Hit(_) => None,
    };
    let exit = Arc::new(ExitSignal::new().map_err(|e| Error::host(format!("eventfd: {e}")))?);
    let mut config = vm_config(c, kernel, initrd, disks, vsock_path, exit);
    config
        .nets
        .extend(net.map(|n| n.net_configs()).unwrap_or_default());
    let cgroup = crate::cgroup::Cgroup::create(
        &c.config.id,
        c.config.memory_mib,
        c.config.cpus,
        c.config.limits.io_weight(),
    )
    .map_err(|e| Error::host(format!("the container's cgroup: {e}")))?;
    vmm::vm::validate(&config)?;
    Ok(Prepared {
        vm: crate::vm_process::Plan {
            id: c.config.id.clone(),
            config,
            cpuset: match &c.config.cpuset_cpus {
                Some(text) => Some(crate::cpuset::parse(text).map_err(Error::invalid)?),
                None => None,
            },
            seal,
            cgroup: cgroup.as_ref().map(crate::cgroup::Cgroup::procs),
            jail,
        },
        cgroup,
        spec,
        cache,
        blobs,
    })
}

/// Copies the layers of an image file into the store's blob directory
/// (a blob already there is taken as it is), checking each on the way,
/// and returns the image with its layers read from there. The guard keeps
/// the store's garbage collection from removing the copies, which no
/// image names, while it is held.
fn private_layers(
    state: &Path,
    mut image: vm_image::Image,
) -> std::result::Result<(vm_image::Image, vm_image::store::WriteGuard), vm_image::Error> {
    let store = vm_image::store::Store::open(state)?;
    let guard = store.writing()?;
    for l in &mut image.layers {
        if !store.has_blob(&l.digest) {
            store.put_blob(&mut l.source.reader()?, &l.digest, l.source.size, "layer")?;
        }
        l.source = vm_image::BlobSource {
            path: store.blob_path(&l.digest),
            offset: 0,
            size: l.source.size,
        };
    }
    Ok((image, guard))
}

/// The image the container was created from, by its manifest digest: from
/// the store, or from its file again (which must not have changed).
fn reopen_image(state: &Path, c: &Container) -> Result<vm_image::Image> {
    let want = &c.config.image_digest;
    let image = if c.config.image_is_file {
        vm_image::open(&c.config.image)
            .map_err(|e| Error::image(format!("image {}: {e}", c.config.image)))?
    } else {
        let store = vm_image::store::Store::open(state).map_err(|e| Error::host(e.to_string()))?;
        let entries = store.list().map_err(|e| Error::image(e.to_string()))?;
        let entry = entries
            .iter()
            .find(|e| &e.manifest.to_string() == want)
            .ok_or_else(|| {
                Error::image(format!(
                    "the container's image {} ({want}) is no longer in the store; pull or load it again",
                    c.config.image
                ))
            })?;
        store
            .entry_image(entry)
            .map_err(|e| Error::image(format!("image {}: {e}", c.config.image)))?
    };
    if &image.manifest_digest.to_string() != want {
        return Err(Error::image(format!(
            "image {} changed since the container was created (now {}, was {want})",
            c.config.image, image.manifest_digest
        )));
    }
    Ok(image)
}

/// The microVM: our kernel and agent, the disks, vsock to the agent; the
/// kernel's console only with --debug.
fn vm_config(
    c: &Container,
    kernel: PathBuf,
    initrd: PathBuf,
    disks: Vec<BlockConfig>,
    vsock_path: PathBuf,
    exit: Arc<ExitSignal>,
) -> VmConfig {
    let console: Box<dyn std::io::Write + Send> = if c.config.debug {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::sink())
    };
    let quiet = if c.config.debug { "" } else { " quiet" };
    VmConfig {
        kernel,
        initrd: Some(initrd),
        // kvm-clock, not the TSC: after a restore from a snapshot the
        // kernel's watchdog marks the TSC unstable (the --debug console
        // says so) and switches clocksources, while the container starts;
        // measured in the nested host, `true` took 0.62 s from the agent's
        // start to its exit, 0.21 s with this.
        cmdline: format!(
            "console=ttyS0 clocksource=kvm-clock{quiet} {}={}",
            agent_protocol::CMDLINE_PARAM,
            agent_protocol::port::CONTROL
        ),
        cpus: c.config.cpus,
        memory_mib: c.config.memory_mib,
        on_boot: (c.config.debug || timing::enabled()).then(|| {
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
            rate_limit: c.config.limits.vsock(),
        }),
        nets: Vec::new(),
        filesystems: Vec::new(),
        console,
        console_input: false,
        exit,
        vcpu_confine: Some(Arc::new(crate::seccomp::install_vcpu)),
        // Set by the VMM child (see `vm_process`).
        confine: None,
        snapshot: None,
    }
}

/// The disks that carry the image: its cached root file system, or an
/// empty one to unpack onto plus one read-only disk that holds every
/// layer blob, each from a sector boundary (one device, however many
/// layers: interrupts are kept for other devices).
fn image_disks(
    image: &vm_image::Image,
    cache: &rootfs_cache::Entry,
    disks: &mut Vec<BlockConfig>,
) -> Rootfs {
    const DISK: &str = "image";
    const LAYERS: &str = "layers";
    let (path, read_only, seal) = match cache {
        rootfs_cache::Entry::Hit(path) => (path.clone(), true, None),
        rootfs_cache::Entry::Miss(p) => (p.tmp.clone(), false, Some(p.seal.clone())),
    };
    disks.push(BlockConfig {
        path,
        read_only,
        id: DISK.into(),
        window: None,
        seal,
        parts: Vec::new(),
        rate_limit: Default::default(),
    });
    if read_only {
        return Rootfs::Cached { disk: DISK.into() };
    }
    let parts: Vec<Part> = image
        .layers
        .iter()
        .map(|l| Part {
            path: l.source.path.clone(),
            offset: l.source.offset,
            len: l.source.size,
        })
        .collect();
    let offsets = part_offsets(parts.iter().map(|p| p.len));
    let layers = image
        .layers
        .iter()
        .zip(offsets)
        .map(|(l, offset)| Layer {
            disk: LAYERS.into(),
            offset,
            size: l.source.size,
            compression: l.compression,
            digest: l.digest.to_string(),
        })
        .collect();
    if !parts.is_empty() {
        disks.push(BlockConfig {
            read_only: true,
            id: LAYERS.into(),
            parts,
            ..BlockConfig::default()
        });
    }
    Rootfs::Unpack {
        disk: DISK.into(),
        layers,
    }
}

pub fn agent_timeout() -> Duration {
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
