//! `vm logs`: a container's json-file log, stdout and stderr kept apart;
//! `-f` follows it (woken by inotify) until the container stops.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use runtime::container::{self, Container};
use runtime::logfile::{self, Entry, Stream};

#[derive(clap::Args)]
pub struct LogsArgs {
    /// Follow the log until the container stops.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines (or `all`).
    #[arg(short = 'n', long, default_value = "all")]
    tail: String,
    /// Only lines since this time: RFC 3339, or a duration back from now
    /// (10m, 1h30m).
    #[arg(long)]
    since: Option<String>,
    /// Only lines before this time (same forms).
    #[arg(long)]
    until: Option<String>,
    /// Show each line's time.
    #[arg(short = 't', long)]
    timestamps: bool,
    container: String,
}

/// A time as `--since` takes it: RFC 3339, Unix seconds, or a duration
/// before now.
fn parse_time(s: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s.trim_end_matches('Z')) {
        return Ok(t);
    }
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs));
        }
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(SystemTime::now() - d);
    }
    Err(format!(
        "invalid time {s:?}: use RFC 3339 (2026-11-30T15:00:00Z), Unix seconds, or a duration (10m)"
    ))
}

struct Printer {
    timestamps: bool,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
}

impl Printer {
    fn keep(&self, e: &Entry) -> bool {
        let Ok(t) = humantime::parse_rfc3339_weak(e.time.trim_end_matches('Z')) else {
            return true;
        };
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }

    /// Writes the entries; false once our stdout is gone.
    fn print(&self, entries: &[Entry]) -> bool {
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        for e in entries.iter().filter(|e| self.keep(e)) {
            let w: &mut dyn Write = match e.stream {
                Stream::Stdout => &mut out,
                Stream::Stderr => &mut err,
            };
            let r = if self.timestamps {
                write!(w, "{} {}", e.time, e.log)
            } else {
                write!(w, "{}", e.log)
            };
            if r.is_err() {
                return false;
            }
        }
        out.flush().is_ok()
    }
}

pub fn logs(args: LogsArgs, root: Option<PathBuf>) -> ExitCode {
    let run = || -> Result<(), String> {
        let state = runtime::state_root(root.as_deref())?;
        let c = container::find(&state, &args.container).map_err(|e| e.message)?;
        let printer = Printer {
            timestamps: args.timestamps,
            since: args.since.as_deref().map(parse_time).transpose()?,
            until: args.until.as_deref().map(parse_time).transpose()?,
        };
        let tail = match args.tail.as_str() {
            "all" | "-1" => None,
            n => Some(
                n.parse::<usize>()
                    .map_err(|_| format!("invalid --tail {n:?}: use a number of lines or all"))?,
            ),
        };
        let path = c.log_path();
        // Watch before reading, so nothing written in between is missed.
        let watch = if args.follow {
            Some(Watch::new(&c)?)
        } else {
            None
        };
        let (mut entries, current) = logfile::read_all_open(&path);
        if let Some(n) = tail {
            let skip = entries.len().saturating_sub(n);
            entries.drain(..skip);
        }
        if !printer.print(&entries) {
            return Ok(());
        }
        if let Some(w) = watch {
            follow(&c, &path, current, w, &printer);
        }
        Ok(())
    };
    crate::images::finish(run())
}

struct Watch {
    inotify: Inotify,
}

impl Watch {
    fn new(c: &Container) -> Result<Self, String> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| format!("inotify: {e}"))?;
        inotify
            .add_watch(
                &c.dir,
                AddWatchFlags::IN_MODIFY
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_DELETE_SELF,
            )
            .map_err(|e| format!("watching {}: {e}", c.dir.display()))?;
        Ok(Self { inotify })
    }

    /// Waits for a change in the container's directory (or a second: a
    /// monitor that was killed changes nothing).
    fn wait(&self) {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            self.inotify.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16));
        let _ = self.inotify.read_events();
    }
}

/// Prints what is appended to the log (following rotation) until the
/// container is no longer running, from `current`: the log file as it was
/// read, and how far.
fn follow(
    c: &Container,
    path: &std::path::Path,
    current: Option<(File, u64)>,
    watch: Watch,
    printer: &Printer,
) {
    let open = || {
        let f = File::open(path).ok()?;
        let ino = f.metadata().ok()?.ino();
        Some((f, ino))
    };
    let mut current = current.and_then(|(f, read)| {
        let ino = f.metadata().ok()?.ino();
        Some((f, ino, read))
    });
    loop {
        let live = c.state().status.is_live();
        // Read what is new in the file we have, then switch to a new one
        // if the log was rotated.
        if let Some((f, _, pos)) = &mut current {
            if f.seek(SeekFrom::Start(*pos)).is_ok() {
                let mut entries = Vec::new();
                *pos += logfile::read_entries(BufReader::new(&*f), &mut entries);
                if !printer.print(&entries) {
                    return;
                }
            }
        }
        let rotated = match (&current, std::fs::metadata(path)) {
            (Some((_, ino, _)), Ok(m)) => m.ino() != *ino,
            (None, Ok(_)) => true,
            _ => false,
        };
        if rotated {
            current = open().map(|(f, ino)| (f, ino, 0));
            continue;
        }
        if !live {
            return;
        }
        watch.wait();
    }
}
