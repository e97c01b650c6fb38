//! Creating a container: the image resolved (pulled when the policy says
//! so) and its digests checked, the process worked out from the image's
//! config and the flags with Docker's rules, the name checked, and the
//! container's directory written. Nothing runs yet.

use std::path::{Path, PathBuf};

use agent_protocol::Process;
use vm_image::registry::Progress;

use crate::container::{self, Container, LogOptions, RestartPolicy};
use crate::error::{Error, Result};
use crate::pull::{self, PullPolicy};
use crate::spec;

/// Enough for most containers; the guest kernel's boot grows with it.
pub const DEFAULT_MEMORY_MIB: u64 = 256;

/// What to run and how: `vm run`'s and `vm create`'s flags, filled in by
/// the caller.
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
    /// `--cpuset-cpus`: the host CPUs the VM may run on.
    pub cpuset_cpus: Option<String>,
    /// `--memory-reservation` and `--memory-swap` (bytes; -1 for swap
    /// without limit), checked as Docker checks them and kept for
    /// `inspect`: the guest has no swap, and its memory is all its own.
    pub memory_reservation: Option<u64>,
    pub memory_swap: Option<i64>,
    pub read_only: bool,
    /// The size of the disk the container writes to (`--storage-opt
    /// size=`), in MiB; the default when None.
    pub scratch_mib: Option<u64>,
    /// Rate limits and the I/O weight.
    pub limits: crate::limits::Limits,
    /// The guest kernel's console on the monitor's stderr.
    pub debug: bool,
    /// Boot the guest cold, never from a snapshot (`--no-snapshot`).
    pub no_snapshot: bool,
    pub pull: PullPolicy,
    /// Remove the container when it ends.
    pub auto_remove: bool,
    pub restart: RestartPolicy,
    /// `vm stop`'s first signal (default SIGTERM) and its wait (default 10 s).
    pub stop_signal: Option<i32>,
    pub stop_timeout: Option<u64>,
    pub log: LogOptions,
    pub labels: Vec<(String, String)>,
    /// `--network`, `-p`, `-P`, `--dns`...
    pub network: crate::network::Request,
    /// `-v`, `--mount`, `--tmpfs`, parsed (see `volume::mounts`).
    pub mounts: Vec<crate::volume::Mount>,
    /// `--volumes-from CONTAINER[:ro|rw]`.
    pub volumes_from: Vec<String>,
    /// Capabilities, seccomp, limits, `--init`...
    pub security: crate::security::Request,
    /// `--health-cmd`, `--no-healthcheck`...
    pub health: crate::health::Flags,
}

/// Hears how creating goes.
pub trait Observer {
    /// A pull's progress.
    fn progress(&mut self, _p: Progress) {}
    /// The image is open (pulled if it had to be).
    fn image_opened(&mut self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Docker's checks of `--cpuset-cpus`, `--memory-reservation` and
/// `--memory-swap`; the CPU set, if one was given.
fn check_resources(opts: &RunOptions) -> Result<Option<Vec<usize>>> {
    const MIN_RESERVATION: u64 = 6 << 20;
    let memory = opts.memory_mib.map(|m| m << 20);
    if let Some(r) = opts.memory_reservation {
        if r < MIN_RESERVATION {
            return Err(Error::invalid("minimum memory reservation allowed is 6MB"));
        }
        if memory.is_some_and(|m| m < r) {
            return Err(Error::invalid(
                "minimum memory limit can not be less than memory reservation limit (--memory below --memory-reservation)",
            ));
        }
    }
    match (opts.memory_swap, memory) {
        (None | Some(-1), _) => {}
        (Some(_), None) => {
            return Err(Error::invalid(
                "you should always set the memory limit when using the memory-swap limit (add --memory)",
            ))
        }
        (Some(s), Some(m)) if s < 0 || (s as u64) < m => {
            return Err(Error::invalid(
                "minimum memory-swap limit should be larger than the memory limit (or -1 for no limit)",
            ))
        }
        _ => {}
    }
    let Some(text) = &opts.cpuset_cpus else {
        return Ok(None);
    };
    let cpus = crate::cpuset::parse(text).map_err(Error::invalid)?;
    crate::cpuset::check_available(&cpus).map_err(Error::invalid)?;
    Ok(Some(cpus))
}

/// Creates a container from `opts`; returns it in state `created`.
pub fn create(opts: &RunOptions, state: &Path, observer: &mut dyn Observer) -> Result<Container> {
    crate::timing::start();
    if let Some(n) = &opts.name {
        check_name(n)?;
    }
    if opts.auto_remove && opts.restart != RestartPolicy::No {
        return Err(Error::invalid(
            "conflicting options: cannot specify both --restart and --rm",
        ));
    }
    check_network_user(&opts.network)?;
    let cpuset = check_resources(opts)?;
    opts.health.resolve(b"{}").map_err(Error::invalid)?;
    let (security, options) = opts.security.resolve().map_err(Error::invalid)?;
    // The flags are checked before a pull; `-P` needs the image's EXPOSE.
    let early = opts.network.resolve(&[]).map_err(Error::invalid)?;
    crate::network::check(state, &early)?;
    let mut env_lines = Vec::new();
    for f in &opts.env_files {
        env_lines.extend(spec::read_env_file(f).map_err(Error::invalid)?);
    }
    // The VM's parts must be there before anything is made.
    crate::assets::kernel().map_err(Error::host)?;
    crate::assets::initrd().map_err(Error::host)?;
    let image = open_image(&opts.image, opts.pull, state, &mut |p| observer.progress(p))?;
    observer.image_opened().map_err(Error::host)?;
    crate::timing::mark("image-opened");
    let mut process = process_spec(opts, &image, &env_lines).map_err(Error::invalid)?;
    process.security = security;
    let network = opts
        .network
        .resolve(&image.config.exposed_ports)
        .map_err(Error::invalid)?;
    let network = crate::network::check(state, &network)?;
    let mut mounts = container_mounts(state, opts, &image.config.volumes)?;
    let id = random_id();
    let config = container::Config {
        name: opts.name.clone().unwrap_or_default(),
        created: container::now_rfc3339(),
        image: opts.image.clone(),
        image_digest: image.manifest_digest.to_string(),
        image_id: vm_image::Digest::of_bytes(&image.raw_config.data).to_string(),
        image_is_file: vm_image::is_transport(&opts.image),
        hostname: opts
            .hostname
            .clone()
            .unwrap_or_else(|| id[..12].to_string()),
        cpus: match (opts.cpus, &cpuset) {
            (0, Some(set)) => u8::try_from(set.len()).unwrap_or(u8::MAX),
            (n, _) => n.max(1),
        },
        cpuset_cpus: opts.cpuset_cpus.clone(),
        memory_reservation: opts.memory_reservation,
        memory_swap: opts.memory_swap,
        memory_mib: opts.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
        read_only: opts.read_only,
        scratch_mib: opts.scratch_mib,
        limits: opts.limits,
        debug: opts.debug,
        no_snapshot: opts.no_snapshot,
        restart: opts.restart,
        auto_remove: opts.auto_remove,
        stop_signal: opts.stop_signal.unwrap_or(libc::SIGTERM),
        stop_timeout: opts.stop_timeout.unwrap_or(10),
        log: opts.log,
        labels: opts.labels.iter().cloned().collect(),
        entrypoint: match &opts.entrypoint {
            Some(e) if e.is_empty() => Vec::new(),
            Some(e) => vec![e.clone()],
            None => image.config.entrypoint.clone(),
        },
        cmd: if opts.command.is_empty() && opts.entrypoint.is_none() {
            image.config.cmd.clone()
        } else {
            opts.command.clone()
        },
        process,
        id,
        network,
        mounts: Vec::new(),
        security: opts.security.clone(),
        options,
        healthcheck: opts
            .health
            .resolve(&image.raw_config.data)
            .map_err(Error::invalid)?,
    };
    vmm::vm::check_size(config.cpus, config.memory_mib)?;
    // What runs killed before they could clean up left behind goes now.
    container::sweep(state);
    let made = crate::volume::prepare(state, &mut mounts);
    let created = made.and_then(|()| {
        container::create(
            state,
            container::Config {
                mounts: mounts.clone(),
                ..config
            },
        )
    });
    if created.is_err() {
        // The anonymous volumes made for it are nobody's.
        for m in mounts
            .iter()
            .filter(|m| m.anonymous && !m.source.is_empty())
        {
            let _ = crate::volume::remove(state, &m.source);
        }
    }
    created
}

/// The container's mounts: its flags, those of `--volumes-from`
/// containers that the flags do not cover, and an anonymous volume for
/// each of the image's `VOLUME`s that nothing covers. Nothing is made yet.
fn container_mounts(
    state: &Path,
    opts: &RunOptions,
    image_volumes: &[String],
) -> Result<Vec<crate::volume::Mount>> {
    use crate::volume::{mounts, Kind};
    let mut all = opts.mounts.clone();
    mounts::check_duplicates(&all).map_err(Error::invalid)?;
    for from in &opts.volumes_from {
        let (key, read_only) = match from.rsplit_once(':') {
            Some((k, "ro")) => (k, Some(true)),
            Some((k, "rw")) => (k, Some(false)),
            Some((_, m)) => {
                return Err(Error::invalid(format!(
                    "invalid mode {m:?} in --volumes-from {from}: use ro or rw"
                )))
            }
            None => (from.as_str(), None),
        };
        let other = container::find(state, key)?;
        for m in &other.config.mounts {
            if m.kind == Kind::Tmpfs || all.iter().any(|x| x.target == m.target) {
                continue;
            }
            let mut m = m.clone();
            m.anonymous = false;
            m.create_source = false;
            if let Some(ro) = read_only {
                m.read_only = ro;
            }
            all.push(m);
        }
    }
    for v in image_volumes {
        let Ok(target) = mounts::check_target(v) else {
            continue; // "/" or a relative path: Docker ignores them too
        };
        if !all.iter().any(|m| m.target == target) {
            all.extend(mounts::parse_volume_flag(&target).ok());
        }
    }
    let shares = all.iter().filter(|m| m.kind != Kind::Tmpfs).count();
    let max = crate::volume::share::MAX_SHARES;
    if shares > max {
        return Err(Error::invalid(format!(
            "{shares} volumes and bind mounts (with the image's VOLUMEs and --volumes-from): a container can have at most {max}; mount a common parent directory instead"
        )));
    }
    Ok(all)
}

/// The network flags, checked for who runs them: a user who is not root
/// cannot make bridges and TAP devices, and gets passt (user-mode
/// networking) instead, which must be installed.
fn check_network_user(r: &crate::network::Request) -> Result<()> {
    let none = r.network.as_deref() == Some("none");
    if !none && !nix::unistd::geteuid().is_root() {
        crate::network::rootless_available().map_err(Error::invalid)?;
    }
    Ok(())
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
        security: Default::default(),
    })
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
    let mut fetch = || pull::pull(&store, &name, &pull::Connect::default(), progress);
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

/// A random 64-hex-digit id, as Docker's container and network ids.
pub(crate) fn random_id() -> String {
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
