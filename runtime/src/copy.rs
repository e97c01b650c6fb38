//! `vm cp` and `vm export`: files between the host and a running
//! container, as `docker cp` moves them. The guest archives and unpacks
//! on its side; an archive that comes from the guest is untrusted and is
//! unpacked on the host only under image-unpack's rules (nothing outside
//! the destination, no device nodes, no setuid or setgid bits, owned by
//! the caller).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use agent_protocol::{Builtin, CopyPlace};
use image_unpack::copy::{self, CopyOptions, Place};

use crate::builtin;
use crate::container::Container;
use crate::error::{Error, Result};

/// Whether a `docker cp` source means "the directory's contents": it
/// ends in `/.`, or it is the root.
fn wants_contents(src: &str) -> bool {
    src.ends_with("/.") || src.trim_end_matches('/').is_empty()
}

/// Where a copy out of a container goes.
pub enum Dest<'a> {
    /// A path on the host.
    Path(&'a Path),
    /// A tar stream, as the guest wrote it.
    Stream(&'a mut dyn Write),
}

/// Copies `src` (a path in the container) out to `dest`.
pub fn copy_out(state: &Path, c: &Container, src: &str, dest: Dest<'_>) -> Result<()> {
    if src.is_empty() {
        return Err(Error::invalid("no path given inside the container"));
    }
    let b = Builtin::TarOut {
        path: src.to_string(),
    };
    let dest = match dest {
        Dest::Stream(w) => return builtin::run(state, c, b, None, w, None),
        Dest::Path(p) => p,
    };
    builtin::check_running(c)?;
    let top = Path::new(src)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    if top.is_none() && !wants_contents(src) {
        return Err(Error::invalid(format!(
            "{src}: name a file or directory in the container (or DIR/. for a directory's contents)"
        )));
    }
    let opts = CopyOptions {
        place: if wants_contents(src) {
            Place::Contents
        } else {
            Place::Named
        },
        // The guest names its entry after the path's last component, as
        // the host does here; nothing else may arrive.
        top,
        set_owner: false,
        strip_setid: true,
        umask: umask(),
        limits: image_unpack::Limits::default(),
    };
    let (reader, mut writer) = std::io::pipe().map_err(|e| Error::host(format!("pipe: {e}")))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = tx.clone();
    let dest_owned = dest.to_path_buf();
    let unpacker = std::thread::Builder::new()
        .name("cp-unpack".into())
        .spawn(move || unpack_draining(&dest_owned, reader, &opts, &stop))
        .map_err(|e| Error::host(format!("starting the unpacking thread: {e}")))?;
    let guest = builtin::run(state, c, b, None, &mut writer, Some((tx, rx)));
    drop(writer);
    let (unpacked, hung_up) = unpacker
        .join()
        .unwrap_or_else(|_| (Err("the unpacking thread panicked".into()), false));
    let copying = |e: String| {
        Error::new(
            crate::Kind::Guest,
            format!("copying to {}: {e}", dest.display()),
        )
    };
    match (guest, unpacked) {
        // We hung up: the guest's status says only that.
        (_, Err(e)) if hung_up => Err(copying(e)),
        (_, Ok(())) if hung_up => Err(Error::new(
            crate::Kind::Guest,
            "the guest kept sending after the end of the archive; it was stopped",
        )),
        // The guest's own failure (a missing path) explains a broken or
        // empty archive.
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(copying(e)),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// Bytes a well-formed archive may still send after its end (tar pads to
/// its blocking factor; 10 KiB for GNU tar's default).
const MAX_TRAILER: u64 = 1 << 20;

/// Unpacks; then reads what follows the archive's end (a little, so the
/// writer is not stopped by a closed pipe), and hangs up on a guest that
/// keeps sending (the second value says so).
fn unpack_draining(
    dest: &Path,
    mut r: impl Read,
    o: &CopyOptions,
    stop: &std::sync::mpsc::Sender<crate::Control>,
) -> (std::result::Result<(), String>, bool) {
    let res = copy::unpack_at(dest, &mut r, o).map_err(|e| e.to_string());
    let trailer = std::io::copy(&mut (&mut r).take(MAX_TRAILER), &mut std::io::sink()).unwrap_or(0);
    if trailer >= MAX_TRAILER {
        // Whatever the guest does, our side ends; the monitor kills the
        // builtin. Read on until the writer has stopped.
        let _ = stop.send(crate::Control::Hangup);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
        return (res, true);
    }
    (res, false)
}

/// This process's umask, which files from a guest get, as tar gives them
/// for an ordinary user.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let v = s
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))?
                .trim()
                .to_string();
            u32::from_str_radix(&v, 8).ok()
        })
        .unwrap_or(0o022)
}

/// Where a copy into a container comes from.
pub enum Source<'a> {
    /// A path on the host.
    Path(&'a Path),
    /// A tar stream, unpacked as it is into the directory `dest`.
    Stream(Box<dyn Read + Send>),
}

/// Copies `src` into the container at `dest`. `keep_owner` keeps the
/// files' owners (`-a`); otherwise root owns them in the container.
pub fn copy_in(
    state: &Path,
    c: &Container,
    src: Source<'_>,
    dest: &str,
    keep_owner: bool,
) -> Result<()> {
    if dest.is_empty() {
        return Err(Error::invalid("no path given inside the container"));
    }
    builtin::check_running(c)?;
    let (input, place, packer): (Box<dyn Read + Send>, _, _) = match src {
        Source::Stream(r) => (r, CopyPlace::Stream, None),
        Source::Path(p) => {
            std::fs::symlink_metadata(p)
                .map_err(|e| Error::not_found(format!("lstat {}: {e}", p.display())))?;
            let text = p.to_string_lossy();
            let place = if wants_contents(&text) {
                CopyPlace::Contents
            } else {
                CopyPlace::Named
            };
            let name = p
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("top"));
            let (reader, writer) =
                std::io::pipe().map_err(|e| Error::host(format!("pipe: {e}")))?;
            let path = p.to_path_buf();
            let t = std::thread::Builder::new()
                .name("cp-pack".into())
                .spawn(move || {
                    copy::pack(writer, &path, &name)
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| Error::host(format!("starting the packing thread: {e}")))?;
            (Box::new(reader) as Box<dyn Read + Send>, place, Some(t))
        }
    };
    let b = Builtin::TarIn {
        dest: dest.to_string(),
        place,
        keep_owner,
    };
    let mut sink = std::io::sink();
    let guest = builtin::run(state, c, b, Some(input), &mut sink, None);
    // A failure to read the host's files explains a broken archive. A
    // guest that ended before it read the whole archive leaves the packer
    // writing into a pipe nobody reads: it is left to end with the process.
    if let Some(t) = packer {
        if guest.is_err() && !t.is_finished() {
            return guest;
        }
        for _ in 0..50 {
            if t.is_finished() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if !t.is_finished() {
            guest?;
            return Err(Error::new(
                crate::Kind::Guest,
                "the guest stopped reading the archive before its end",
            ));
        }
        let packed = t
            .join()
            .unwrap_or_else(|_| Err("the packing thread panicked".into()));
        packed.map_err(|e| Error::host(format!("archiving: {e}")))?;
    }
    guest
}

/// Writes a tar archive of the container's whole file system to `out`.
pub fn export(state: &Path, c: &Container, out: &mut dyn Write) -> Result<()> {
    builtin::run(state, c, Builtin::Export, None, out, None)
}
