//! Commands that talk to registries: `vm pull`, `vm push`, `vm login`,
//! `vm logout`. Credentials, insecure registries and CA files come from
//! the config file (see `vm_image::auth`) and the flags.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use vm_image::auth::Config;
use vm_image::name::{Name, DEFAULT_REGISTRY};
use vm_image::registry::{Options, Progress};
use vm_image::store::Store;

use crate::images::{finish, human, store};

/// How to reach a registry: shared by pull, push and login.
#[derive(clap::Args, Default, Clone)]
pub struct ConnectArgs {
    /// Reach this registry (host[:port]) over plain HTTP.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// Trust this CA (a PEM file) for the registry's TLS certificate, as
    /// well as the usual roots and certs.d/HOST/*.crt.
    #[arg(long = "ca-file", value_name = "FILE")]
    ca_file: Vec<PathBuf>,
}

impl ConnectArgs {
    fn connect(&self) -> runtime::pull::Connect {
        runtime::pull::Connect {
            insecure: self.insecure.clone(),
            ca_files: self.ca_file.clone(),
        }
    }
}

/// The options for talking to `registry`: flags, then the config file.
fn options(registry: &str, args: &ConnectArgs) -> Result<Options, String> {
    runtime::pull::options(registry, &args.connect()).map_err(|e| e.message)
}

/// Progress on a terminal: step lines, and a status line of bytes moved
/// that is rewritten in place and cleared at the end. Nothing when
/// stderr is not a terminal.
pub struct Meter {
    tty: bool,
    status_shown: bool,
}

impl Meter {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            status_shown: false,
        }
    }

    pub fn report(&mut self, p: Progress) {
        if !self.tty {
            return;
        }
        match p {
            Progress::Line(l) => eprint!("\r\x1b[K{l}\n"),
            Progress::Bytes { done, total } => {
                eprint!("\r\x1b[K{} / {}", human(done), human(total));
                self.status_shown = true;
            }
        }
        let _ = std::io::stderr().flush();
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if self.status_shown {
            eprint!("\r\x1b[K");
        }
    }
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// The image: NAME[:TAG] or NAME@DIGEST (`busybox` means
    /// docker.io/library/busybox:latest).
    name: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn pull(args: PullArgs, root: Option<PathBuf>) -> ExitCode {
    finish((|| {
        let store = store(root)?;
        let name = Name::parse(&args.name).map_err(|e| e.to_string())?;
        let digest = pull_into(&store, &name, &args.connect)?;
        println!("Digest: {digest}");
        println!("Downloaded: {name}");
        Ok(())
    })())
}

/// Pulls `name` into `store`, with progress lines on a terminal.
fn pull_into(
    store: &Store,
    name: &Name,
    connect: &ConnectArgs,
) -> Result<vm_image::Digest, String> {
    let mut meter = Meter::new();
    runtime::pull::pull(store, name, &connect.connect(), &mut |p| meter.report(p))
        .map_err(|e| e.message)
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// A stored image's name, which says where it goes
    /// (HOST[:PORT]/REPO[:TAG]).
    name: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn push(args: PushArgs, root: Option<PathBuf>) -> ExitCode {
    finish((|| {
        let store = store(root)?;
        let name = Name::parse(&args.name).map_err(|e| e.to_string())?;
        let image = store.image(&name).map_err(|e| e.to_string())?;
        let opts = options(&name.registry, &args.connect)?;
        let mut meter = Meter::new();
        let pushed = vm_image::registry::push(&image, &name, &opts, &mut |p| meter.report(p));
        drop(meter);
        let digest = pushed.map_err(|e| format!("pushing {name}: {e}"))?;
        println!(
            "{}: digest: {digest} size: {}",
            name.tag.as_deref().unwrap_or("latest"),
            image.raw_manifest.data.len()
        );
        Ok(())
    })())
}

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The registry (host[:port]); Docker Hub when left out.
    server: Option<String>,
    /// The user name (asked for on a terminal when left out).
    #[arg(short, long)]
    username: Option<String>,
    /// The password (visible to other users in `ps`: prefer
    /// --password-stdin).
    #[arg(short, long)]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long, conflicts_with = "password")]
    password_stdin: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    /// The registry (host[:port]); Docker Hub when left out.
    server: Option<String>,
}

/// A registry as `vm login` takes it: `host[:port]`, a URL, or one of
/// Docker Hub's names; normalised as image names are.
fn server_name(server: Option<&str>) -> Result<String, String> {
    let Some(s) = server else {
        return Ok(DEFAULT_REGISTRY.to_string());
    };
    let bare = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = bare.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@') {
        return Err(format!(
            "invalid registry {s:?}: expected HOST[:PORT], e.g. registry.example.com:5000"
        ));
    }
    Ok(match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DEFAULT_REGISTRY.to_string(),
        h => h.to_ascii_lowercase(),
    })
}

/// Reads a line from the terminal, with echo off when `secret`.
fn prompt(label: &str, secret: bool) -> Result<String, String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(format!(
            "cannot ask for the {}: standard input is not a terminal; use --username and --password-stdin",
            label.to_lowercase()
        ));
    }
    eprint!("{label}: ");
    let _ = std::io::stderr().flush();
    let saved = if secret {
        let saved = tcgetattr(&stdin).map_err(|e| format!("terminal: {e}"))?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(|e| format!("terminal: {e}"))?;
        Some(saved)
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
        eprintln!();
    }
    read.map_err(|e| format!("reading the {}: {e}", label.to_lowercase()))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub fn login(args: LoginArgs) -> ExitCode {
    finish((|| {
        let registry = server_name(args.server.as_deref())?;
        let username = match args.username {
            Some(u) => u,
            None => prompt("Username", false)?,
        };
        let password = if args.password_stdin {
            let mut p = String::new();
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut p)
                .map_err(|e| format!("reading the password from standard input: {e}"))?;
            p.trim_end_matches(['\r', '\n']).to_string()
        } else if let Some(p) = args.password {
            eprintln!("vm: warning: --password is visible to other users; use --password-stdin");
            p
        } else {
            prompt("Password", true)?
        };
        if username.is_empty() || password.is_empty() {
            return Err("a user name and a password are both needed".into());
        }
        let mut opts = options(&registry, &args.connect)?;
        opts.credentials = Some(format!("{username}:{password}"));
        vm_image::registry::login(&registry, &opts)
            .map_err(|e| format!("logging in to {registry}: {e}"))?;
        let mut config = Config::load().map_err(|e| e.to_string())?;
        config
            .set_credentials(&registry, &username, &password)
            .map_err(|e| format!("saving the credentials: {e}"))?;
        println!("Login Succeeded");
        Ok(())
    })())
}

pub fn logout(args: LogoutArgs) -> ExitCode {
    finish((|| {
        let registry = server_name(args.server.as_deref())?;
        let mut config = Config::load().map_err(|e| e.to_string())?;
        if config
            .remove_credentials(&registry)
            .map_err(|e| e.to_string())?
        {
            println!("Removing login credentials for {registry}");
        } else {
            println!("Not logged in to {registry}");
        }
        Ok(())
    })())
}
