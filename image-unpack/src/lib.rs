//! Applying OCI image layers to a root directory.
//!
//! Layers are tar streams (plain, gzip or zstd), applied in order, with
//! OCI whiteouts (`.wh.NAME` and the opaque `.wh..wh..opq`). This runs on
//! untrusted data (inside the guest), so every path is resolved inside the
//! root with `openat2(RESOLVE_IN_ROOT)`: no `..`, no absolute path, no
//! symlink or hardlink leads out, the last component of a path is never
//! followed, and caps on size and entry count stop decompression bombs.

pub mod copy;
mod guard;
mod layer;
mod meta;
mod path;
mod tree;

pub use layer::{apply_layer, Compression, Limits, Options, Stats};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsafe path {path:?} in layer: {why}")]
    UnsafePath { path: String, why: &'static str },
    #[error("layer exceeds the limit of {limit} {what}")]
    Limit { what: &'static str, limit: u64 },
    #[error("corrupt layer: {0}")]
    Corrupt(String),
    #[error("{op} {path:?}: {source}")]
    Fs {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod copy_tests;
#[cfg(test)]
mod tests;
