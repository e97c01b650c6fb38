//! The virtio-blk device: features, config space, and the queue loop.

use std::fs::{File, OpenOptions};

use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::request::{self, DiskInfo, Piece, ID_BYTES, SECTOR_SIZE};
use super::Seal;
use crate::virtio::{
    DeviceCore, GuestMem, Interrupt, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

const QUEUE_SIZE: u16 = 256;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;

/// At most this many files make one disk.
pub const MAX_PARTS: usize = 1024;

#[derive(Clone, Debug, Default)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Serial number reported by GET_ID (at most 20 bytes).
    pub id: String,
    /// The disk is `size` bytes of the file starting at `offset` (a blob
    /// inside an archive); `None` means the whole file.
    pub window: Option<(u64, u64)>,
    /// Once this is set, the device refuses writes as if attached
    /// read-only (the host seals a disk the guest has finished writing).
    pub seal: Option<Arc<Seal>>,
    /// A read-only disk made of several files instead of `path`: each
    /// part starts at the next sector boundary (see [`part_offsets`]) and
    /// the gaps read as zeros. Image layers travel this way, many on one
    /// device.
    pub parts: Vec<Part>,
    /// How fast the guest may use the disk (bytes and requests).
    pub rate_limit: RateLimiterConfig,
}

/// `len` bytes of the file `path` from `offset`.
#[derive(Clone, Debug)]
pub struct Part {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// Where each part of a multi-file disk starts: every part begins on a
/// sector boundary after the previous one.
pub fn part_offsets(lens: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut at = 0u64;
    lens.into_iter()
        .map(|len| {
            let start = at;
            at = at.saturating_add(len.div_ceil(SECTOR_SIZE).saturating_mul(SECTOR_SIZE));
            start
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "disk image {path} is {size} bytes, not a multiple of 512 (only a read-only disk may be)"
    )]
    Size { path: PathBuf, size: u64 },
    #[error("{path} is {size} bytes; it has no {len} bytes at offset {offset}")]
    Window {
        path: PathBuf,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("disk id {0:?} is longer than 20 bytes")]
    Id(String),
    #[error("a disk of parts must be read-only and have 1 to {MAX_PARTS} parts, not {0}")]
    Parts(usize),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub struct Block {
    pub(super) core: DeviceCore,
    pub(super) file: File,
    /// Where reads come from: the file's window, or every part.
    pieces: Vec<Piece>,
    capacity_sectors: u64,
    read_only: bool,
    seal: Option<Arc<Seal>>,
    /// Written since the last host sync.
    unsynced: AtomicBool,
    offset: u64,
    size: u64,
    id: [u8; ID_BYTES],
    config_space: Vec<u8>,
    avail_features: u64,
    pub(super) limiter: Option<RateLimiter>,
}

impl Block {
    pub fn new(cfg: &BlockConfig, mem: GuestMem, interrupt: Arc<Interrupt>) -> Result<Self, Error> {
        let (file, pieces) = if cfg.parts.is_empty() {
            let (file, offset, len) = open_window(&cfg.path, cfg.window, !cfg.read_only)?;
            let piece = Piece {
                file: file.try_clone()?,
                file_offset: offset,
                len,
                start: 0,
            };
            (file, vec![piece])
        } else {
            if !cfg.read_only || cfg.parts.len() > MAX_PARTS {
                return Err(Error::Parts(cfg.parts.len()));
            }
            let starts = part_offsets(cfg.parts.iter().map(|p| p.len));
            let mut pieces = Vec::with_capacity(cfg.parts.len());
            for (p, start) in cfg.parts.iter().zip(starts) {
                let (file, file_offset, len) =
                    open_window(&p.path, Some((p.offset, p.len)), false)?;
                pieces.push(Piece {
                    file,
                    file_offset,
                    len,
                    start,
                });
            }
            let first = pieces[0].file.try_clone()?;
            (first, pieces)
        };
        let (offset, size) = match pieces.as_slice() {
            [one] => (one.file_offset, one.len),
            many => (0, many.last().map_or(0, |p| p.start + p.len)),
        };
        // A read-only disk may end mid-sector (an image layer blob handed
        // in as is); the rest of its last sector reads as zeros.
        if size % SECTOR_SIZE != 0 && !cfg.read_only {
            return Err(Error::Size {
                path: cfg.path.clone(),
                size,
            });
        }
        if cfg.id.len() > ID_BYTES {
            return Err(Error::Id(cfg.id.clone()));
        }
        let mut id = [0u8; ID_BYTES];
        id[..cfg.id.len()].copy_from_slice(cfg.id.as_bytes());
        let capacity_sectors = size.div_ceil(SECTOR_SIZE);
        // virtio_blk_config: capacity (u64), size_max (u32), seg_max (u32),
        // geometry (4 bytes), blk_size (u32).
        let mut config_space = Vec::with_capacity(24);
        config_space.extend_from_slice(&capacity_sectors.to_le_bytes());
        config_space.extend_from_slice(&0u32.to_le_bytes());
        config_space.extend_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        config_space.extend_from_slice(&[0u8; 4]);
        config_space.extend_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        let mut avail_features =
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH;
        if cfg.read_only {
            avail_features |= F_RO;
        }
        let core = DeviceCore::new(mem, interrupt, 1)?;
        let limiter = if cfg.rate_limit.is_unlimited() {
            None
        } else {
            Some(RateLimiter::new(&cfg.rate_limit)?)
        };
        if let (Some(seal), true) = (&cfg.seal, cfg.parts.is_empty()) {
            // Last, once nothing can fail: from here on the device's Drop
            // detaches before its descriptors close. What the seal puts in
            // their place is the same file, reopened read-only through the
            // descriptor (not the path, which could name another file by
            // now).
            let fd = file.as_raw_fd();
            let read_only =
                File::open(format!("/proc/self/fd/{fd}")).map_err(|source| Error::Open {
                    path: cfg.path.clone(),
                    source,
                })?;
            let mut fds = vec![fd];
            fds.extend(pieces.iter().map(|p| p.file.as_raw_fd()));
            seal.attach(fds, read_only);
        }
        Ok(Self {
            core,
            file,
            pieces,
            capacity_sectors,
            read_only: cfg.read_only,
            seal: cfg.seal.clone(),
            unsynced: AtomicBool::new(false),
            offset,
            size,
            id,
            config_space,
            avail_features,
            limiter,
        })
    }

    /// Serve every request the driver has made available, with the
    /// disable-notification / drain / re-enable loop.
    pub fn process_queue(&mut self) {
        let info = DiskInfo {
            capacity_sectors: self.capacity_sectors,
            read_only: self.read_only,
            seal: self.seal.as_deref(),
            unsynced: &self.unsynced,
            offset: self.offset,
            size: self.size,
            id: &self.id,
        };
        let file = &self.file;
        let pieces = &self.pieces;
        let limiter = &mut self.limiter;
        if limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
            return; // its timer calls again
        }
        self.core.drain_queue(0, "block", |chain, mem| {
            let req = request::Request::parse(chain);
            if let Some(l) = limiter.as_mut() {
                if !l.consume(req.bytes()) {
                    return None;
                }
            }
            let out = request::execute(req, mem, file, pieces, &info);
            if let Some(why) = &out.error {
                crate::guest_log!("virtio-blk: {why}");
            }
            Some(out.used_len)
        });
    }
}

/// Opens `path` and checks that it has the window's bytes; returns the
/// file, where the window starts and its length.
fn open_window(
    path: &std::path::Path,
    window: Option<(u64, u64)>,
    write: bool,
) -> Result<(File, u64, u64), Error> {
    let open_err = |source| Error::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    match window {
        None => Ok((file, 0, size)),
        Some((offset, len)) if offset.checked_add(len).is_some_and(|end| end <= size) => {
            Ok((file, offset, len))
        }
        Some((offset, len)) => Err(Error::Window {
            path: path.to_path_buf(),
            offset,
            len,
            size,
        }),
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // Before the descriptors the seal would replace are closed.
        if let Some(seal) = &self.seal {
            seal.detach();
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_space, offset, data);
    }

    fn core(&self) -> &DeviceCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }
}
