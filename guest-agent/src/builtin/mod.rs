//! Work the agent does itself inside a running container (`vm cp`,
//! `vm export`, `vm top`, `vm stats`): run by `/init --container-exec`
//! in the container's namespaces and root, as root, in place of a user's
//! process. Output goes to stdout, a reason for failing to stderr; the
//! return value is the exit status.

mod stats;
mod top;

use std::io::Write;
use std::path::Path;

use agent_protocol::{Builtin, CopyPlace};
use image_unpack::copy::{self, CopyOptions, Place};

pub fn run(b: &Builtin) -> i32 {
    let r = match b {
        Builtin::TarOut { path } => tar_out(path),
        Builtin::Export => export(),
        Builtin::TarIn {
            dest,
            place,
            keep_owner,
        } => tar_in(dest, *place, *keep_owner),
        Builtin::Top => top::run(),
        Builtin::Stats { interval_ms, count } => stats::run(*interval_ms, *count),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// The name `docker cp` gives a path's entry: its last component (`root`
/// for `/`, whose contents the host takes).
fn entry_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into())
}

fn tar_out(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    // lstat, so a symlink is archived as itself, but a missing path is a
    // clear error rather than an empty archive.
    std::fs::symlink_metadata(p)
        .map_err(|e| format!("Could not find the file {path} in container: {e}"))?;
    let out = std::io::stdout().lock();
    let mut out = copy::pack(out, p, Path::new(&entry_name(path))).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())
}

fn export() -> Result<(), String> {
    let out = std::io::stdout().lock();
    let mut out = copy::pack_root(out, Path::new("/")).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())
}

fn tar_in(dest: &str, place: CopyPlace, keep_owner: bool) -> Result<(), String> {
    let opts = CopyOptions {
        place: match place {
            CopyPlace::Named => Place::Named,
            CopyPlace::Contents => Place::Contents,
            CopyPlace::Stream => Place::Stream,
        },
        top: None,
        set_owner: keep_owner,
        strip_setid: false,
        umask: 0,
        limits: image_unpack::Limits::default(),
    };
    let stdin = std::io::stdin().lock();
    copy::unpack_at(Path::new(dest), stdin, &opts).map_err(|e| e.to_string())
}

/// Writes one JSON value and a newline to stdout.
fn emit<T: serde::Serialize>(v: &T) -> Result<(), String> {
    let mut line = serde_json::to_vec(v).map_err(|e| e.to_string())?;
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line)
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing: {e}"))
}

/// The numeric entries of /proc: the processes this namespace sees,
/// without the builtin itself.
fn pids() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out: Vec<i32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|p| *p != me)
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}
