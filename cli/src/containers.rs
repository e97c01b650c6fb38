//! The container lifecycle commands: `vm start`, `stop`, `restart`,
//! `kill`, `rm`, `wait`, `rename`, `pause`, `unpause`, `attach`,
//! `container prune`. `ps`, `inspect` and `logs` have modules of their own.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use runtime::client::{self, Mode};
use runtime::container::{self, Container};
use runtime::monitor::{self, Request};

/// A signal by name (`TERM`, `SIGTERM`) or number.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|s| s as i32)
            .map_err(|_| format!("invalid signal {s:?}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| format!("invalid signal {s:?}: use a name such as TERM or KILL, or a number"))
}

pub fn state(root: Option<PathBuf>) -> Result<PathBuf, ExitCode> {
    runtime::state_root(root.as_deref()).map_err(|e| crate::fail(&e))
}

/// The state root and the container `name` names, or the exit status
/// that says why not.
pub fn one(root: Option<PathBuf>, name: &str) -> Result<(PathBuf, Container), ExitCode> {
    let state = state(root)?;
    let c = container::find(&state, name).map_err(|e| crate::runtime_error(&e))?;
    Ok((state, c))
}

/// Runs `f` on each named container; prints what it returns (Docker
/// echoes the name as given) or the error; status 125 when any failed.
fn each(
    root: Option<PathBuf>,
    names: &[String],
    mut f: impl FnMut(&Path, &Container) -> runtime::Result<Option<String>>,
) -> ExitCode {
    let state = match state(root) {
        Ok(s) => s,
        Err(code) => return code,
    };
    each_name(names, |n| container::find(&state, n).and_then(|c| f(&state, &c)))
}

/// Runs `f` on each name; prints what it returns (or the name as given)
/// or the error; status 125 when any failed.
pub fn each_name(
    names: &[String],
    mut f: impl FnMut(&str) -> runtime::Result<Option<String>>,
) -> ExitCode {
    let mut failed = false;
    for n in names {
        match f(n) {
            Ok(Some(line)) => println!("{line}"),
            Ok(None) => println!("{n}"),
            Err(e) => {
                eprintln!("vm: error: {}", e.message);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(crate::EXIT_VM_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(clap::Args)]
pub struct StartArgs {
    /// Attach the container's output (and follow it to its end).
    #[arg(short = 'a', long)]
    attach: bool,
    /// Attach stdin too.
    #[arg(short = 'i', long)]
    interactive: bool,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn start(args: StartArgs, root: Option<PathBuf>) -> ExitCode {
    if args.attach || args.interactive {
        let [name] = args.containers.as_slice() else {
            return crate::fail(&"you cannot start and attach multiple containers at once");
        };
        let (state, c) = match one(root, name) {
            Ok(x) => x,
            Err(code) => return code,
        };
        let stdin = args.interactive && c.config.process.stdin;
        let conn = match client::start(&state, &c, Mode::Attached { stdin }) {
            Ok(conn) => conn,
            Err(e) => return crate::runtime_error(&e),
        };
        let raw = c.config.process.terminal && stdin && crate::tty::is_terminal();
        return crate::run::attach_foreground(
            conn,
            &c,
            stdin,
            raw,
            c.config.restart == container::RestartPolicy::No,
        );
    }
    each(root, &args.containers, |state, c| {
        if c.state().status.is_live() {
            return Ok(None);
        }
        client::start(state, c, Mode::Detached).and_then(client::wait_started)?;
        Ok(None)
    })
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// Seconds to wait before killing (default: the container's, 10).
    #[arg(short = 't', long = "time", alias = "timeout")]
    time: Option<u64>,
    /// The signal to send first (default: the container's, SIGTERM).
    #[arg(short = 's', long, value_parser = parse_signal)]
    signal: Option<i32>,
    #[arg(required = true)]
    containers: Vec<String>,
}

fn stop_one(state: &Path, c: &Container, time: Option<u64>, signal: Option<i32>) -> runtime::Result<()> {
    if !c.monitor_alive() {
        return Ok(());
    }
    let req = Request::Stop {
        timeout: time.unwrap_or(c.config.stop_timeout),
        signal: signal.unwrap_or(c.config.stop_signal),
    };
    match monitor::request(state, c, &req) {
        Ok(_) => Ok(()),
        // It ended meanwhile.
        Err(_) if !c.monitor_alive() => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn stop(args: StopArgs, root: Option<PathBuf>) -> ExitCode {
    each(root, &args.containers, |state, c| {
        let _lock = c.command_lock()?;
        stop_one(state, c, args.time, args.signal).map(|()| None)
    })
}

pub fn restart(args: StopArgs, root: Option<PathBuf>) -> ExitCode {
    each(root, &args.containers, |state, c| {
        let lock = c.command_lock()?;
        stop_one(state, c, args.time, args.signal)?;
        // (The monitor may want the lock to finish: wait without it.)
        drop(lock);
        client::wait_monitor(c);
        client::start(state, c, Mode::Detached).and_then(client::wait_started)?;
        Ok(None)
    })
}

#[derive(clap::Args)]
pub struct KillArgs {
    /// The signal (default KILL).
    #[arg(short = 's', long, default_value = "KILL", value_parser = parse_signal)]
    signal: i32,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn kill(args: KillArgs, root: Option<PathBuf>) -> ExitCode {
    each(root, &args.containers, |state, c| {
        let _lock = c.command_lock()?;
        if !c.state().status.is_live() || !c.monitor_alive() {
            return Err(runtime::Error::in_use(format!(
                "Cannot kill container: {}: Container {} is not running",
                c.config.name, c.config.id
            )));
        }
        monitor::request(state, c, &Request::Kill { signal: args.signal })?;
        Ok(None)
    })
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// Kill and remove a running container.
    #[arg(short = 'f', long)]
    force: bool,
    /// Remove the container's anonymous volumes too.
    #[arg(short = 'v', long)]
    volumes: bool,
    #[arg(required = true)]
    containers: Vec<String>,
}

/// Removes a container that has no monitor (killing it first with
/// `force`).
fn remove(state: &Path, c: &Container, force: bool, volumes: bool) -> runtime::Result<()> {
    let lock = c.command_lock()?;
    if c.monitor_alive() {
        if !force {
            return Err(runtime::Error::in_use(format!(
                "You cannot remove a {} container {}. Stop the container before attempting removal or force remove",
                c.state().status.as_str(),
                c.config.id
            )));
        }
        let _ = monitor::request(state, c, &Request::Kill {
            signal: libc::SIGKILL,
        });
        drop(lock);
        client::wait_monitor(c);
    } else {
        drop(lock);
    }
    let _lock = c.command_lock();
    if c.dir.exists() {
        if volumes {
            runtime::volume::remove_anonymous(state, c);
        }
        container::remove_files(state, c)?;
    }
    Ok(())
}

pub fn rm(args: RmArgs, root: Option<PathBuf>) -> ExitCode {
    each(root, &args.containers, |state, c| {
        remove(state, c, args.force, args.volumes).map(|()| None)
    })
}

#[derive(clap::Args)]
pub struct NamesArgs {
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `vm wait`: each container's exit status, once it has one.
pub fn wait(args: NamesArgs, root: Option<PathBuf>) -> ExitCode {
    each(root, &args.containers, |state, c| {
        if c.monitor_alive() {
            if let Ok((reply, _)) = monitor::request(state, c, &Request::Wait) {
                if let Some(code) = reply.code {
                    return Ok(Some(code.to_string()));
                }
            }
        }
        Ok(Some(c.state().exit_code.to_string()))
    })
}

pub fn pause(args: NamesArgs, root: Option<PathBuf>) -> ExitCode {
    set_paused(args, root, true)
}

pub fn unpause(args: NamesArgs, root: Option<PathBuf>) -> ExitCode {
    set_paused(args, root, false)
}

/// `vm pause` (`on`) and `vm unpause`: the whole VMM stops or goes on.
fn set_paused(args: NamesArgs, root: Option<PathBuf>, on: bool) -> ExitCode {
    let (from, req, what) = if on {
        (container::Status::Running, Request::Pause, "running")
    } else {
        (container::Status::Paused, Request::Unpause, "paused")
    };
    each(root, &args.containers, |state, c| {
        let _lock = c.command_lock()?;
        if c.state().status != from {
            return Err(runtime::Error::in_use(format!(
                "Container {} is not {what}",
                c.config.id
            )));
        }
        monitor::request(state, c, &req).map(|_| None)
    })
}

#[derive(clap::Args)]
pub struct RenameArgs {
    container: String,
    new_name: String,
}

pub fn rename(args: RenameArgs, root: Option<PathBuf>) -> ExitCode {
    let state = match state(root) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match container::find(&state, &args.container)
        .and_then(|c| container::rename(&state, &c, &args.new_name))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::runtime_error(&e),
    }
}

#[derive(clap::Args)]
pub struct AttachArgs {
    /// Do not attach stdin.
    #[arg(long = "no-stdin")]
    no_stdin: bool,
    container: String,
}

pub fn attach(args: AttachArgs, root: Option<PathBuf>) -> ExitCode {
    let (state, c) = match one(root, &args.container) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if !c.state().status.is_live() {
        return crate::fail(&"You cannot attach to a stopped container, start it first");
    }
    let stdin = !args.no_stdin && c.config.process.stdin;
    let conn = match client::attach(&state, &c, stdin) {
        Ok(conn) => conn,
        Err(e) => return crate::runtime_error(&e),
    };
    let raw = c.config.process.terminal && stdin && crate::tty::is_terminal();
    crate::run::attach_foreground(conn, &c, stdin, raw, false)
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// `vm container prune`: removes every container that is not running.
pub fn prune(args: PruneArgs, root: Option<PathBuf>) -> ExitCode {
    let state = match state(root) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if !args.force
        && !crate::images::confirm("WARNING! This will remove all stopped containers.")
    {
        return ExitCode::SUCCESS;
    }
    let (ids, bytes) = prune_stopped(&state);
    if !ids.is_empty() {
        println!("Deleted Containers:");
        for id in &ids {
            println!("{id}");
        }
        println!();
    }
    println!("Total reclaimed space: {}", crate::images::human(bytes));
    ExitCode::SUCCESS
}

/// Removes the containers that have no monitor; returns their IDs and
/// the disk space freed. Also sweeps what dead runs left behind.
pub fn prune_stopped(state: &Path) -> (Vec<String>, u64) {
    let mut ids = Vec::new();
    let mut bytes = 0;
    for c in container::list(state) {
        let Ok(_lock) = c.command_lock() else {
            continue;
        };
        if c.monitor_alive() {
            continue;
        }
        let size = dir_usage(&c.dir);
        if container::remove_files(state, &c).is_ok() {
            ids.push(c.config.id.clone());
            bytes += size;
        }
    }
    container::sweep(state);
    (ids, bytes)
}

/// Bytes a directory's files take on disk.
pub fn dir_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct ExecArgs {
    /// Keep stdin open and pass it to the process.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the process a pseudo-terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Start the process and return at once.
    #[arg(short = 'd', long)]
    detach: bool,
    /// User to run as: name, uid, name:group or uid:gid.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Set an environment variable (NAME=VALUE, or NAME to pass the host's).
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    container: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

/// `vm exec`: another process in a running container, with its own
/// stdio, terminal, signals and exit status.
pub fn exec(args: ExecArgs, root: Option<PathBuf>) -> ExitCode {
    let (state, c) = match one(root, &args.container) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if !matches!(c.state().status, container::Status::Running) {
        return crate::fail(&format!("container {} is not running", c.config.id));
    }
    let mut lines = Vec::new();
    for f in &args.env_file {
        match runtime::spec::read_env_file(f) {
            Ok(l) => lines.extend(l),
            Err(e) => return crate::fail(&e),
        }
    }
    // `NAME` alone takes our value, here, not in the monitor.
    let env = match runtime::spec::environment(&[], &lines, &args.env, |k| std::env::var(k).ok()) {
        Ok(env) => env,
        Err(e) => return crate::fail(&e),
    };
    let (rows, cols) = if args.tty {
        crate::tty::size().unwrap_or((24, 80))
    } else {
        (0, 0)
    };
    let opts = monitor::ExecOptions {
        args: args.command,
        env,
        user: args.user,
        workdir: args.workdir,
        tty: args.tty,
        stdin: args.interactive && !args.detach,
        rows,
        cols,
        builtin: None,
    };
    let conn = match client::exec(&state, &c, opts) {
        Ok(conn) => conn,
        Err(e) => return crate::runtime_error(&e),
    };
    if args.detach {
        return match client::wait_started(conn) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => crate::runtime_error(&e),
        };
    }
    let raw = args.tty && args.interactive && crate::tty::is_terminal();
    crate::run::attach_foreground(conn, &c, args.interactive, raw, false)
}
