//! Starting containers from a snapshot of a booted guest.
//!
//! The first start of each shape of VM (kernel, initramfs and `vm`
//! binary, command line, vCPUs, memory) boots a VM of that shape with only
//! our kernel and agent, and no devices (their slots left empty), and
//! saves it when the agent reaches its snapshot point, into
//! `<root>/snapshots/<key>/`. Every start of that shape then restores it,
//! with its own devices in the slots, instead of booting the kernel.
//!
//! The key is a hash of what the snapshot depends on; any change makes a
//! new key, so a stale snapshot is never used. A snapshot that is there
//! but refused (corrupt, or taken on another CPU) is removed and taken
//! again; if that fails too, the start boots cold. Nothing here fails a
//! start: at worst it boots as it would without snapshots.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use vmm::vm::SnapshotUse;
use vmm::{ExitReason, ExitSignal, VmConfig};

use crate::error::{Error, Result};

/// Virtio slots a snapshot leaves: scratch, image and layer disks, vsock,
/// rng and up to three network cards. A start with more devices boots
/// cold.
pub const SLOTS: usize = 8;
/// How long taking a snapshot may take (a boot to the agent).
const TAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// The snapshot layout; a change makes new keys.
const LAYOUT: &str = "vm-snapshot-1";

/// Whether starts use snapshots unless told otherwise.
const BY_DEFAULT: bool = false;

/// Whether this start may use a snapshot: not with `--no-snapshot` or
/// `VM_SNAPSHOT=0`; with `VM_SNAPSHOT=1`.
pub fn wanted(no_snapshot: bool) -> bool {
    !no_snapshot
        && match std::env::var("VM_SNAPSHOT").as_deref() {
            Ok("0") => false,
            Ok("1") => true,
            _ => BY_DEFAULT,
        }
}

/// Where the snapshots are.
pub fn root(state: &Path) -> PathBuf {
    state.join("snapshots")
}

/// Makes `config` start from the snapshot of its shape, taking it first
/// if there is none. Returns why it will boot cold instead, if it will.
pub fn prepare(
    state: &Path,
    config: &mut VmConfig,
    debug: bool,
) -> std::result::Result<(), String> {
    let cold = config.cmdline.clone();
    config.cmdline = format!("{cold} {}", agent_protocol::SNAPSHOT_PARAM);
    let result = prepare_inner(state, config, debug);
    if result.is_err() {
        config.cmdline = cold;
    }
    result
}

fn prepare_inner(
    state: &Path,
    config: &mut VmConfig,
    debug: bool,
) -> std::result::Result<(), String> {
    let key = key(config).map_err(|e| e.to_string())?;
    let dir = root(state).join(&key);
    let usable = || {
        vmm::vm::snapshot_usable(
            &dir,
            &key,
            &config.cmdline,
            config.cpus,
            config.memory_mib,
            SLOTS,
        )
    };
    match usable() {
        Ok(()) => {}
        Err(vmm::Error::Snapshot(vmm::snapshot::Error::Io { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            take(state, config, &key).map_err(|e| format!("taking a snapshot: {e}"))?;
            usable().map_err(|e| format!("the snapshot just taken: {e}"))?;
        }
        Err(why) => {
            if debug {
                note(&format!(
                    "snapshot {} refused ({why}); taking it again",
                    dir.display()
                ));
            }
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("removing the refused snapshot {}: {e}", dir.display()))?;
            take(state, config, &key).map_err(|e| format!("taking a snapshot: {e}"))?;
            usable().map_err(|e| format!("the snapshot just taken: {e}"))?;
        }
    }
    config.snapshot = Some(SnapshotUse::Restore {
        dir,
        key,
        slots: SLOTS,
        on_cold: debug.then(|| Box::new(|why: &str| note(why)) as vmm::vm::OnCold),
    });
    Ok(())
}

fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "vm: {msg}");
}

/// What a file is, as far as a snapshot of it goes: replaced or changed,
/// it is another file.
fn identity(path: &Path) -> Result<String> {
    let m = std::fs::metadata(path).map_err(|e| Error::host(format!("{}: {e}", path.display())))?;
    Ok(format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// The hash of everything the snapshot of `config`'s VM depends on: the
/// `vm` binary (the VMM and the state format), the kernel and the
/// initramfs (with the agent), the command line, the vCPUs, the memory
/// and the slots. The host's CPU is checked on each restore instead.
pub fn key(config: &VmConfig) -> Result<String> {
    let exe = std::fs::canonicalize("/proc/self/exe")
        .map_err(|e| Error::host(format!("the vm binary: {e}")))?;
    let initrd = config
        .initrd
        .as_deref()
        .ok_or_else(|| Error::host("a snapshot needs the agent's initramfs"))?;
    let mut h = Sha256::new();
    for part in [
        LAYOUT.to_string(),
        identity(&exe)?,
        identity(&config.kernel)?,
        identity(initrd)?,
        config.cmdline.clone(),
        config.cpus.to_string(),
        config.memory_mib.to_string(),
        SLOTS.to_string(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    Ok(h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Boots a VM of `config`'s shape with no devices and saves it at the
/// agent's snapshot point into a new directory, renamed to `key` when
/// complete (a snapshot another start completed first is kept).
fn take(state: &Path, config: &VmConfig, key: &str) -> Result<()> {
    let root = root(state);
    let host = |what: &str, p: &Path, e: std::io::Error| {
        Error::host(format!("{what} {}: {e}", p.display()))
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .map_err(|e| host("creating", &root, e))?;
    let tmp = root.join(format!(".{key}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(|e| host("creating", &tmp, e))?;
    let result = build(config, &tmp, key);
    let result = result.and_then(|()| match std::fs::rename(&tmp, root.join(key)) {
        Ok(()) => Ok(()),
        // Another start put it there first.
        Err(_) if root.join(key).join(vmm::snapshot::STATE_FILE).exists() => Ok(()),
        Err(e) => Err(host("renaming", &tmp, e)),
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// The VM that is snapshotted: `config`'s kernel, agent, command line,
/// vCPUs and memory; a host-side stop if it does not get there in time.
fn build(config: &VmConfig, dir: &Path, key: &str) -> Result<()> {
    let exit = Arc::new(ExitSignal::new().map_err(|e| Error::host(format!("eventfd: {e}")))?);
    let builder = VmConfig {
        kernel: config.kernel.clone(),
        initrd: config.initrd.clone(),
        cmdline: config.cmdline.clone(),
        cpus: config.cpus,
        memory_mib: config.memory_mib,
        on_boot: None,
        disks: Vec::new(),
        vsock: None,
        nets: Vec::new(),
        filesystems: Vec::new(),
        console: Box::new(std::io::sink()),
        console_input: false,
        exit: exit.clone(),
        vcpu_confine: None,
        confine: None,
        snapshot: Some(SnapshotUse::Take {
            dir: dir.to_path_buf(),
            key: key.to_string(),
            slots: SLOTS,
        }),
    };
    let vm = vmm::Vmm::start(builder).map_err(|e| Error::host(e.to_string()))?;
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::Builder::new()
        .name("snapshot-timeout".into())
        .spawn(move || {
            if wait.recv_timeout(TAKE_TIMEOUT).is_err() {
                exit.set(ExitReason::Stopped);
            }
        })
        .map_err(|e| Error::host(format!("a thread: {e}")))?;
    let outcome = vm.wait();
    drop(done);
    let _ = watchdog.join();
    let outcome = outcome.map_err(|e| Error::host(e.to_string()))?;
    match outcome.reason {
        ExitReason::SnapshotPoint => Ok(()),
        ExitReason::Stopped => Err(Error::host(format!(
            "the guest did not reach its snapshot point in {} s",
            TAKE_TIMEOUT.as_secs()
        ))),
        other => Err(Error::host(format!(
            "the guest ended before its snapshot point ({other:?}); its console ended with: {}",
            outcome.console_tail.join(" | ")
        ))),
    }
}
