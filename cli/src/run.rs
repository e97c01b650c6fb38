//! `vm run`: the flags, the terminal, signals, and the exit status. The
//! container's life itself is the runtime's.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, Sender};

use runtime::pull::PullPolicy;
use runtime::spec;
use runtime::{Control, RunOptions};

use crate::tty;

#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Set an environment variable (NAME=VALUE, or NAME to pass the host's).
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from a file (NAME=VALUE lines).
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// User to run as: name, uid, name:group or uid:gid.
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Override the image's entrypoint (and drop its default command).
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Keep stdin open and pass it to the container.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the container a pseudo-terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Remove the container when it exits (nothing is kept anyway).
    #[arg(long)]
    rm: bool,
    /// A name for the container.
    #[arg(long)]
    name: Option<String>,
    /// The container's host name.
    #[arg(short = 'h', long)]
    hostname: Option<String>,
    /// vCPUs (a fraction rounds up).
    #[arg(long, value_parser = spec::parse_cpus, default_value = "1")]
    cpus: u8,
    /// Guest memory, e.g. 512m or 1g.
    #[arg(short = 'm', long, value_parser = spec::parse_memory)]
    memory: Option<u64>,
    /// Mount the container's root file system read-only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// Show the guest kernel's console on stderr.
    #[arg(long)]
    debug: bool,
    /// Pull the image: `missing` (default), `always` or `never`.
    #[arg(long, default_value = "missing", value_parser = parse_pull)]
    pull: PullPolicy,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// The image: oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE.
    image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_pull(s: &str) -> Result<PullPolicy, String> {
    match s {
        "missing" => Ok(PullPolicy::Missing),
        "always" => Ok(PullPolicy::Always),
        "never" => Ok(PullPolicy::Never),
        _ => Err(format!("{s:?}: expected missing, always or never")),
    }
}

impl RunArgs {
    fn options(self) -> RunOptions {
        RunOptions {
            tty_size: if self.tty { tty::size() } else { None },
            image: self.image,
            command: self.command,
            env: self.env,
            env_files: self.env_file,
            workdir: self.workdir,
            user: self.user,
            entrypoint: self.entrypoint,
            interactive: self.interactive,
            tty: self.tty,
            name: self.name,
            hostname: self.hostname,
            cpus: self.cpus,
            memory_mib: self.memory,
            read_only: self.read_only,
            debug: self.debug,
            pull: self.pull,
        }
    }
}

pub fn main(args: RunArgs, root: Option<PathBuf>) -> ExitCode {
    let raw_wanted = args.tty && args.interactive && tty::is_terminal();
    let opts = args.options();
    let state = match runtime::state_root(root.as_deref()) {
        Ok(s) => s,
        Err(e) => return crate::fail(&e),
    };
    let (tx, rx) = mpsc::channel();
    let mut observer = Watch {
        meter: crate::registry::Meter::new(),
        catcher: Catcher::new(tx),
    };
    let raw = raw_wanted.then(tty::RawMode::enter).flatten();
    let result = runtime::run(&opts, &state, rx, &mut observer);
    drop(raw);
    observer.catcher.close();
    drop(observer);
    match result {
        Ok(code) => ExitCode::from((code & 0xff) as u8),
        Err(e) => crate::runtime_error(&e),
    }
}

/// Progress of a pull on the terminal; signals caught once the image is
/// open (before, while it is read or pulled, Ctrl-C simply ends `vm run`:
/// the store's writes are atomic).
struct Watch {
    meter: crate::registry::Meter,
    catcher: Catcher,
}

impl runtime::Observer for Watch {
    fn progress(&mut self, p: vm_image::registry::Progress) {
        self.meter.report(p);
    }

    fn image_opened(&mut self) -> Result<(), String> {
        self.catcher.arm()
    }
}

/// SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 go to the
/// container's process; SIGWINCH sends the terminal's new size. A signal
/// that comes while the guest boots waits and reaches the container once
/// it runs (and does not kill us before we clean up).
struct Catcher {
    tx: Option<Sender<Control>>,
    handle: Option<signal_hook::iterator::Handle>,
}

impl Catcher {
    fn new(tx: Sender<Control>) -> Self {
        Self {
            tx: Some(tx),
            handle: None,
        }
    }

    fn arm(&mut self) -> Result<(), String> {
        use signal_hook::consts::*;
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        let mut signals = signal_hook::iterator::Signals::new([
            SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH,
        ])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
        self.handle = Some(signals.handle());
        let run = move || {
            for sig in signals.forever() {
                let c = if sig == SIGWINCH {
                    match tty::size() {
                        Some((rows, cols)) => Control::Resize { rows, cols },
                        None => continue,
                    }
                } else {
                    Control::Signal(sig)
                };
                if tx.send(c).is_err() {
                    break;
                }
            }
        };
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(run)
            .map(drop)
            .map_err(|e| format!("starting the signal thread: {e}"))
    }

    fn close(&mut self) {
        if let Some(h) = self.handle.take() {
            h.close();
        }
    }
}
