//! The container's cgroup inside the guest: cgroup v2 mounted in the
//! agent's namespace, one child group for the container's processes
//! (its init, everything it starts, and `vm exec`'s), with the pids
//! limit. The container gets a cgroup namespace rooted there, so it sees
//! `0::/` and its own limits, as under Docker.

use std::path::Path;

/// Where the agent mounts cgroup2.
const ROOT: &str = "/run/vm/cgroup";
/// The container's group.
const CONTAINER: &str = "/run/vm/cgroup/container";

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

/// Mounts cgroup2 and makes the container's group (with `pids_limit`).
pub fn setup(pids_limit: Option<u64>) -> Result<(), String> {
    let root = Path::new(ROOT);
    std::fs::create_dir_all(root).map_err(|e| format!("mkdir {ROOT}: {e}"))?;
    let flags = nix::mount::MsFlags::MS_NOSUID
        | nix::mount::MsFlags::MS_NODEV
        | nix::mount::MsFlags::MS_NOEXEC;
    nix::mount::mount(Some("cgroup2"), root, Some("cgroup2"), flags, None::<&str>)
        .map_err(|e| format!("mounting cgroup2: {e}"))?;
    // The controllers the kernel has, for the container's group.
    let have = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let enable: Vec<String> = have.split_whitespace().map(|c| format!("+{c}")).collect();
    if !enable.is_empty() {
        write(&root.join("cgroup.subtree_control"), &enable.join(" "))?;
    }
    let dir = Path::new(CONTAINER);
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {CONTAINER}: {e}"))?;
    if let Some(n) = pids_limit {
        write(&dir.join("pids.max"), &n.to_string())?;
    }
    Ok(())
}

/// Moves the calling process into the container's group.
pub fn join() -> Result<(), String> {
    write(&Path::new(CONTAINER).join("cgroup.procs"), "0")
}
