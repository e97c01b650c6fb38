//! What the agent hands the container's init: shared by the agent side
//! (`run`), the init (`container`) and the root it builds (`rootfs`).

use agent_protocol::Process;
use serde::{Deserialize, Serialize};

/// What the agent tells the container's init.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitSpec {
    /// The container's root file system, already mounted.
    pub root: String,
    /// Files to bind over /etc/hosts, /etc/hostname, /etc/resolv.conf.
    pub etc_dir: String,
    pub hostname: String,
    pub read_only: bool,
    pub process: Process,
    /// Volumes, bind mounts and tmpfs mounts.
    #[serde(default)]
    pub mounts: Vec<agent_protocol::Mount>,
    /// `--init`, `--privileged`, sysctls, /dev/shm's size.
    #[serde(default)]
    pub options: agent_protocol::ContainerOptions,
}

/// What the agent tells `/init --container-exec`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecInit {
    /// The container's process (PID 1 of its namespace), in the agent's
    /// PID namespace: whose namespaces and root to join.
    pub target: i32,
    pub process: Process,
    /// Run this piece of the agent instead of `process.args`.
    #[serde(default)]
    pub builtin: Option<agent_protocol::Builtin>,
}
