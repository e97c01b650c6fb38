//! virtio-fs: a host directory shared with the guest, served by a
//! vhost-user backend (virtiofsd) in its own process. The VMM only
//! negotiates the device and hands the backend the guest's memory and the
//! queues' eventfds; the backend reads and writes the queues itself.

mod backend;
mod device;

pub use device::{Fs, FsConfig, TAG_LEN};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("virtio-fs tag {0:?} must be 1 to {TAG_LEN} bytes")]
    Tag(String),
    #[error("virtio-fs {tag}: the backend (virtiofsd) {what}: {source}")]
    Backend {
        tag: String,
        what: &'static str,
        source: vhost::Error,
    },
    #[error("virtio-fs {tag}: the backend (virtiofsd) {0}", .what)]
    Refused { tag: String, what: String },
    #[error("virtio-fs: {0}")]
    Io(#[from] std::io::Error),
}
