//! Containers in microVMs, for the `vm` CLI and any other caller: the
//! state root, running a container (image, disks, the VM, the host side
//! of the agent protocol), the root file system cache, which images are in
//! use, and pulling. Errors carry a [`Kind`] a caller can match on.

mod assets;
pub mod error;
pub mod in_use;
pub mod pull;
pub mod rootfs_cache;
pub mod run;
mod scratch;
mod session;
pub mod spec;
pub mod timing;

pub use error::{Error, Kind, Result};
pub use rootfs_cache::state_root;
pub use run::{run, Control, Observer, RunOptions};
