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
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
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
/// The most snapshots kept; past it, the least recently used go.
const KEEP: usize = 16;
/// How long taking a snapshot may take (a boot to the agent).
const TAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// The snapshot layout; a change makes new keys.
const LAYOUT: &str = "vm-snapshot-1";

/// Whether starts use snapshots unless told otherwise.
const BY_DEFAULT: bool = true;

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
    if let Err(first) = usable() {
        // One start takes it; others of the same shape wait for it and
        // then look again.
        let _lock = lock(state, &key).map_err(|e| format!("taking a snapshot: {e}"))?;
        match usable().err() {
            None => {}
            Some(vmm::Error::Snapshot(vmm::snapshot::Error::Io { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                take(state, config, &key).map_err(|e| format!("taking a snapshot: {e}"))?;
                usable().map_err(|e| format!("the snapshot just taken: {e}"))?;
            }
            Some(
                why @ vmm::Error::Snapshot(
                    vmm::snapshot::Error::Corrupt(_) | vmm::snapshot::Error::Mismatch(_),
                ),
            ) => {
                if debug {
                    note(&format!("snapshot {} refused ({why}); taking it again", dir.display()));
                }
                std::fs::remove_dir_all(&dir).map_err(|e| {
                    format!("removing the refused snapshot {}: {e}", dir.display())
                })?;
                take(state, config, &key).map_err(|e| format!("taking a snapshot: {e}"))?;
                usable().map_err(|e| format!("the snapshot just taken: {e}"))?;
            }
            // Not refused, just not readable now (KVM, descriptors, I/O):
            // it stays for later starts.
            Some(e) => return Err(format!("{e} (before: {first})")),
        }
    }
    // Its time marks it used, for `prune`.
    let _ = std::fs::File::open(&dir).and_then(|d| d.set_modified(std::time::SystemTime::now()));
    config.snapshot = Some(SnapshotUse::Restore {
        dir,
        key,
        slots: SLOTS,
        on_cold: debug.then(|| Box::new(|why: &str| note(why)) as vmm::vm::OnCold),
    });
    Ok(())
}

/// The lock of the snapshot `key` (held while it is taken), released
/// when the file is dropped.
fn lock(state: &Path, key: &str) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let root = root(state);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .map_err(|e| Error::host(format!("creating {}: {e}", root.display())))?;
    let path = root.join(format!(".{key}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::host(format!("{}: {e}", path.display())))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::host(format!("locking {}: {e}", path.display())))
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
/// initramfs (with the agent), the host's kernel, the command line, the
/// vCPUs, the memory and the slots. The host's CPUID is checked on each
/// restore instead.
pub fn key(config: &VmConfig) -> Result<String> {
    let exe = std::fs::canonicalize("/proc/self/exe")
        .map_err(|e| Error::host(format!("the vm binary: {e}")))?;
    let initrd = config
        .initrd
        .as_deref()
        .ok_or_else(|| Error::host("a snapshot needs the agent's initramfs"))?;
    // The host's kernel (KVM) too: what it accepts of a saved state may
    // change with it while the CPUID stays the same.
    let host = ["osrelease", "version"]
        .map(|f| std::fs::read_to_string(format!("/proc/sys/kernel/{f}")).unwrap_or_default())
        .join(" ");
    let mut h = Sha256::new();
    for part in [
        LAYOUT.to_string(),
        host,
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
    let target = root.join(key);
    let result = result.and_then(|()| match std::fs::rename(&tmp, &target) {
        Ok(()) => Ok(()),
        // Another start put it there first.
        Err(_) if target.join(vmm::snapshot::STATE_FILE).exists() => Ok(()),
        // What an interrupted removal left: replaced.
        Err(_) if target.is_dir() => std::fs::remove_dir_all(&target)
            .and_then(|()| std::fs::rename(&tmp, &target))
            .map_err(|e| host("renaming", &tmp, e)),
        Err(e) => Err(host("renaming", &tmp, e)),
    });
    let _ = std::fs::remove_dir_all(&tmp);
    if result.is_ok() {
        prune(&root, KEEP);
    }
    result
}

/// Removes the least recently used snapshots past the `keep` newest (old
/// kernels' and binaries' snapshots are never used again), and temporary
/// directories of takes that died over an hour ago.
fn prune(root: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut snapshots = Vec::new();
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        let Ok(modified) = m.modified() else { continue };
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            let stale = modified
                .elapsed()
                .is_ok_and(|age| age > Duration::from_secs(3600));
            if stale && m.is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            } else if stale {
                let _ = std::fs::remove_file(e.path());
            }
        } else if m.is_dir() {
            snapshots.push((modified, e.path()));
        }
    }
    snapshots.sort_by_key(|s| std::cmp::Reverse(s.0));
    for (_, path) in snapshots.into_iter().skip(keep) {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Runs [`build_here`] in a child process: the VM and its threads, and
/// what the VMM sets up once per process (its log writer, signal
/// handlers), stay out of the monitor, whose later VMM children are
/// forked from it. The child dies with the monitor and is killed when it
/// overruns.
fn build(config: &VmConfig, dir: &Path, key: &str) -> Result<()> {
    use std::io::Read;
    use std::os::fd::{FromRawFd, IntoRawFd};
    use std::os::unix::net::UnixStream;
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| Error::host(format!("socketpair: {e}")))?;
    // SAFETY: the child only builds the VM and leaves with `_exit`; it
    // shares no lock with the monitor's other threads (they do not log
    // or touch the environment), and the allocator is fork-safe.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(ours);
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            // Only the result channel stays open of the monitor's files.
            let fd = theirs.into_raw_fd();
            let keep = if fd == 3 {
                3
            } else {
                // SAFETY: dup2 onto descriptor 3, which is closed below
                // anyway; `fd` stays valid until then.
                unsafe { libc::dup2(fd, 3) }
            };
            // SAFETY: close_range on descriptors this process no longer
            // uses (the fork left one thread, and it keeps only 3).
            unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0) };
            let message = if keep == 3 {
                match build_here(config, dir, key) {
                    Ok(()) => String::from("ok"),
                    Err(e) => e.message,
                }
            } else {
                String::from("cannot keep the result channel")
            };
            // SAFETY: descriptor 3 is the channel, owned here.
            let mut channel = unsafe { UnixStream::from_raw_fd(3) };
            let _ = std::io::Write::write_all(&mut channel, message.as_bytes());
            drop(channel);
            // SAFETY: _exit skips the monitor's destructors and handlers.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(theirs);
            let mut ours = ours;
            let _ = ours.set_read_timeout(Some(TAKE_TIMEOUT + Duration::from_secs(10)));
            let mut message = String::new();
            let read = ours.read_to_string(&mut message);
            if read.is_err() {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            }
            let status = nix::sys::wait::waitpid(child, None);
            match (read, message.as_str()) {
                (Ok(_), "ok") => Ok(()),
                (Ok(_), "") => Err(Error::host(format!(
                    "the process taking the snapshot ended without a word ({status:?})"
                ))),
                (Ok(_), why) => Err(Error::host(why.to_string())),
                (Err(e), _) => Err(Error::host(format!(
                    "the process taking the snapshot did not answer: {e}"
                ))),
            }
        }
        Err(e) => Err(Error::host(format!("starting the snapshot's VM: {e}"))),
    }
}

/// The VM that is snapshotted: `config`'s kernel, agent, command line,
/// vCPUs and memory; a host-side stop if it does not get there in time.
fn build_here(config: &VmConfig, dir: &Path, key: &str) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn prune_keeps_the_most_recently_used() {
        let root = std::env::temp_dir().join(format!("vm-snapshot-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let now = SystemTime::now();
        for (name, age) in [("a", 30), ("b", 10), ("c", 20), (".x.tmp", 7200), (".y.tmp", 5)] {
            let d = root.join(name);
            std::fs::create_dir_all(&d).expect("dir");
            std::fs::File::open(&d)
                .and_then(|f| f.set_modified(now - Duration::from_secs(age)))
                .expect("time");
        }
        prune(&root, 2);
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".y.tmp", "b", "c"]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_env_and_the_flag_choose() {
        // (The variable is read each time; only this test sets it.)
        std::env::set_var("VM_SNAPSHOT", "0");
        assert!(!wanted(false));
        std::env::set_var("VM_SNAPSHOT", "1");
        assert!(wanted(false));
        assert!(!wanted(true));
        std::env::remove_var("VM_SNAPSHOT");
        assert_eq!(wanted(false), BY_DEFAULT);
    }
}
