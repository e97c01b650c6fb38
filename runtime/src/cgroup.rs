//! Per-container cgroup v2 limits on the VMM process, so that what it
//! costs the host (guest memory as the guest touches it, plus its own)
//! has a ceiling the kernel enforces: memory (guest RAM + a margin for
//! the VMM itself), CPU time (`--cpus` worth), and tasks.
//!
//! The group is `/sys/fs/cgroup/vm/<container id>`. Where cgroup v2 is
//! not mounted, or not writable (a non-root caller without a delegated
//! subtree), there is none and the VMM runs without these limits.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
/// What the VMM may use beyond guest RAM: its own heap and threads, the
/// vsock buffers (at most 32 MiB), page tables; and the file system
/// daemons of the container's volumes (a few MiB each).
const MARGIN_MIB: u64 = 128;
/// Tasks beyond one per vCPU: the event loop, the command and log
/// threads, with room to spare; and up to 8 for each file system daemon
/// (virtiofsd is two processes, with a thread per queue).
const EXTRA_TASKS: u64 = 32 + 8 * crate::volume::share::MAX_SHARES as u64;

pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Makes the container's group with its limits; None when cgroup v2
    /// is not available to this process.
    pub fn create(
        id: &str,
        memory_mib: u64,
        cpus: u8,
        io_weight: Option<u64>,
    ) -> Result<Option<Self>, String> {
        let root = Path::new(ROOT);
        if !root.join("cgroup.controllers").is_file() {
            return Ok(None);
        }
        let parent = root.join("vm");
        if let Err(e) = std::fs::create_dir(&parent) {
            if e.kind() == std::io::ErrorKind::PermissionDenied
                || e.raw_os_error() == Some(libc::EROFS)
            {
                return Ok(None);
            }
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(format!("{}: {e}", parent.display()));
            }
        }
        // The controllers, handed down to our groups, one at a time: a
        // write naming one this host lacks changes nothing.
        for dir in [root, parent.as_path()] {
            let io = io_weight.map(|_| "+io");
            for c in ["+memory", "+pids", "+cpu"].into_iter().chain(io) {
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), c);
            }
        }
        sweep(&parent);
        let path = parent.join(id);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            // Another user's tree (root made `vm` before).
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        let group = Self { path };
        let memory = (memory_mib + MARGIN_MIB) << 20;
        let limits = group
            .set("memory.max", &memory.to_string())
            .and_then(|()| group.set("pids.max", &(u64::from(cpus) + EXTRA_TASKS).to_string()))
            .and_then(|()| group.set("cpu.max", &format!("{} 100000", u64::from(cpus) * 100_000)));
        if let Err(e) = limits {
            // A controller this host does not hand down: the VMM runs
            // without the group rather than not at all, and says so.
            eprintln!("vm: the VMM runs without cgroup limits ({e})");
            return Ok(None);
        }
        let _ = group.set("memory.swap.max", "0");
        if let Some(w) = io_weight {
            // Only where the io controller is handed down (and a
            // proportional I/O scheduler honours it).
            if let Err(e) = group.set("io.weight", &format!("default {w}")) {
                eprintln!("vm: --blkio-weight not applied ({e})");
            }
        }
        Ok(Some(group))
    }

    fn set(&self, file: &str, value: &str) -> Result<(), String> {
        let p = self.path.join(file);
        std::fs::write(&p, value).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// Where a process writes "0" to join the group.
    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once the VMM has been reaped; a moment later at most.
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                // (Swept already by another container's start.)
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => {}
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Removes the groups of VMMs whose monitor was killed before it could
/// (the VMM dies with its monitor, leaving its group empty). A group with
/// a process in it cannot be removed, and one made in the last minute
/// may belong to a VMM about to join it: both stay.
fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(60));
        if old && e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// Moves the calling process into the group whose `cgroup.procs` is
/// `procs`.
pub fn join(procs: &Path) -> Result<(), String> {
    std::fs::write(procs, "0").map_err(|e| format!("joining {}: {e}", procs.display()))
}
