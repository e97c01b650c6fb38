//! Sealing a disk: the moment after which it takes no more writes. The
//! host seals the disk a guest unpacked an image onto before that disk is
//! published for other runs, and before any container code runs.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Once [`seal`](Seal::seal) is called the device refuses every write
/// request (each request looks, not each batch), and the descriptors the
/// device holds on its file are replaced by read-only ones, so that not
/// even a compromised VMM can change the file through them.
#[derive(Default)]
pub struct Seal {
    sealed: AtomicBool,
    /// The device's descriptors on the file and a read-only descriptor of
    /// the same file to put in their place; set while the device lives.
    held: Mutex<Option<(Vec<RawFd>, File)>>,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal")
            .field("sealed", &self.is_sealed())
            .finish()
    }
}

impl Seal {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// Refuse writes from now on and take the device's write access to
    /// its file away.
    pub fn seal(&self) -> io::Result<()> {
        self.sealed.store(true, Ordering::Release);
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((fds, read_only)) = held.as_ref() {
            for &fd in fds {
                // SAFETY: `fd` is open and owned by the device, which
                // detaches (under this lock) before it closes it; dup3
                // atomically makes that number refer to the read-only
                // description, and the device goes on reading through it.
                if unsafe { libc::dup3(read_only.as_raw_fd(), fd, libc::O_CLOEXEC) } < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// The device's descriptors `fds` on the file `read_only` also reads.
    pub(super) fn attach(&self, fds: Vec<RawFd>, read_only: File) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some((fds, read_only));
    }

    /// The device is about to close its descriptors.
    pub(super) fn detach(&self) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
