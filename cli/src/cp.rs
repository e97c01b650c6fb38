//! `vm cp` and `vm export`: files between the host and a running
//! container, and a container's whole file system as a tar archive.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use runtime::copy::{self, Dest, Source};

use crate::containers::one;

#[derive(clap::Args)]
pub struct CpArgs {
    /// Keep the files' owners (UID:GID) when copying into a container;
    /// otherwise root owns them there.
    #[arg(short = 'a', long)]
    archive: bool,
    /// SRC: CONTAINER:PATH, a host path, or - for a tar stream on stdin.
    src: String,
    /// DEST: CONTAINER:PATH, a host path, or - for a tar stream on stdout.
    dest: String,
}

/// `CONTAINER:PATH` split as Docker does: a path that is absolute or
/// starts with `.` is the host's, as is one without a colon.
fn container_path(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    arg.split_once(':')
}

pub fn cp(args: CpArgs, root: Option<PathBuf>) -> ExitCode {
    match (container_path(&args.src), container_path(&args.dest)) {
        (Some(_), Some(_)) => crate::fail(&"copying between containers is not supported"),
        (None, None) => crate::fail(&"must specify at least one container source (CONTAINER:PATH)"),
        (Some((name, path)), None) => {
            let (state, c) = match one(root, name) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let r = if args.dest == "-" {
                if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    return crate::fail(&"cowardly refusing to write a tar archive to a terminal; redirect it or name a destination");
                }
                let mut out = std::io::stdout().lock();
                copy::copy_out(&state, &c, path, Dest::Stream(&mut out))
            } else {
                // The pipe between the guest's stream and the unpacker must
                // not end us if the unpacker stops early.
                // SAFETY: ignoring a signal is sound.
                unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
                copy::copy_out(&state, &c, path, Dest::Path(Path::new(&args.dest)))
            };
            done(r)
        }
        (None, Some((name, path))) => {
            let (state, c) = match one(root, name) {
                Ok(x) => x,
                Err(code) => return code,
            };
            // SAFETY: ignoring a signal is sound.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
            let src = if args.src == "-" {
                Source::Stream(Box::new(std::io::stdin()))
            } else {
                Source::Path(Path::new(&args.src))
            };
            done(copy::copy_in(&state, &c, src, path, args.archive))
        }
    }
}

fn done(r: runtime::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::runtime_error(&e),
    }
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Write to a file instead of stdout.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    container: String,
}

/// `vm export`: the container's file system as a tar archive. A file
/// given with `-o` appears whole or not at all.
pub fn export(args: ExportArgs, root: Option<PathBuf>) -> ExitCode {
    let (state, c) = match one(root, &args.container) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let Some(path) = args.output else {
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            return crate::fail(
                &"cowardly refusing to write a tar archive to a terminal; use -o FILE or redirect",
            );
        }
        let mut out = std::io::stdout().lock();
        return done(copy::export(&state, &c, &mut out));
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some(name) = name else {
        return crate::fail(&format!("{}: not a file name", path.display()));
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = path.with_file_name(format!(".{name}.tmp-{}-{nanos:x}", std::process::id()));
    let r = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        // A new file of ours (never one someone put there), private until
        // it is renamed into place.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| runtime::Error::host(format!("{}: {e}", tmp.display())))?;
        copy::export(&state, &c, &mut f)?;
        f.flush()
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| runtime::Error::host(format!("{}: {e}", path.display())))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done(r)
}

#[cfg(test)]
mod tests {
    use super::container_path;

    #[test]
    fn splits_container_paths_as_docker() {
        assert_eq!(container_path("web:/etc/hosts"), Some(("web", "/etc/hosts")));
        assert_eq!(container_path("/tmp/a:b"), None);
        assert_eq!(container_path("./a:b"), None);
        assert_eq!(container_path("file"), None);
        assert_eq!(container_path("-"), None);
    }
}
