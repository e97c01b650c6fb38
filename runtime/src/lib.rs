//! Containers in microVMs, for the `vm` CLI and any other caller: the
//! state root and each container's directory, creating a container,
//! its monitor (one process per container that owns its VM and outlives
//! the command that started it), attaching to it, the root file system
//! cache, which images are in use, and pulling. Errors carry a [`Kind`] a
//! caller can match on.

mod assets;
pub mod builtin;
mod cgroup;
pub mod client;
pub mod container;
pub mod copy;
pub mod cpuset;
pub mod create;
pub mod error;
pub mod frames;
pub mod health;
pub mod in_use;
mod jail;
pub mod limits;
pub mod logfile;
pub mod monitor;
pub mod network;
mod proctitle;
pub mod pull;
pub mod rootfs_cache;
mod scratch;
mod seccomp;
pub mod security;
mod session;
mod snapshot;
pub mod spec;
mod start;
pub mod timing;
mod vm_process;
pub mod volume;

/// The guest's reports that callers read (`vm top`, `vm stats`).
pub mod agent {
    pub use agent_protocol::{StatsSample, TopRow};
}

pub use client::Control;
pub use create::{create, Observer, RunOptions};
pub use error::{Error, Kind, Result};
pub use rootfs_cache::state_root;
pub use scratch::MIN_SIZE_MIB as MIN_SCRATCH_MIB;

/// A container name as Docker takes them.
pub fn check_name(n: &str) -> Result<()> {
    create::check_name(n)
}
