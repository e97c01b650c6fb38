//! Which stored images containers use. Each container's monitor writes
//! the manifest digest of its image to `<state>/run/<id prefix>/image` and
//! holds a shared lock on that file while it runs; a file nobody holds
//! locked was left by a monitor that was killed, and means nothing. A
//! container that exists but does not run uses its image too (its
//! config says which).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use vm_image::Digest;

/// Held by a running `vm run`; the lock goes with the descriptor.
pub struct Mark {
    _file: File,
}

fn flock(f: &File, op: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

/// Marks `manifest` as used by the run whose directory is `run_dir`.
pub fn mark(run_dir: &Path, manifest: &Digest) -> Result<Mark, String> {
    let path = run_dir.join("image");
    let mut f = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !flock(&f, libc::LOCK_SH) {
        return Err(format!(
            "locking {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    f.write_all(manifest.to_string().as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Mark { _file: f })
}

/// The running containers and the manifest digest each uses:
/// (container id, digest).
pub fn running(state: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(state.join("run")) else {
        return out;
    };
    for d in dirs.flatten() {
        let path = d.path().join("image");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(f) = File::open(&path) else {
            continue;
        };
        if flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            // Nobody holds it: a run that was killed left it.
            flock(&f, libc::LOCK_UN);
            continue;
        }
        let name = d.file_name().to_string_lossy().into_owned();
        let id = name.strip_prefix("vm-run-").unwrap_or(&name).to_string();
        out.push((id, text.trim().to_string()));
    }
    out
}

/// Every container, running or not, and the manifest digest each uses:
/// (container id, digest), running ones first.
pub fn all(state: &Path) -> Vec<(String, String)> {
    let mut out = running(state);
    for c in crate::container::list(state) {
        if !out
            .iter()
            .any(|(id, _)| c.config.id.starts_with(id.as_str()))
        {
            out.push((c.config.id[..16].to_string(), c.config.image_digest.clone()));
        }
    }
    out
}

/// The ids of the containers that use `manifest` (running ones first).
pub fn users(state: &Path, manifest: &Digest) -> Vec<String> {
    let want = manifest.to_string();
    all(state)
        .into_iter()
        .filter(|(_, d)| *d == want)
        .map(|(id, _)| id)
        .collect()
}
