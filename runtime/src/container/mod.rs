//! Containers on disk: one private directory per container under
//! `<state>/containers/<id>/` holding its configuration (`config.json`,
//! written once at create), its state (`state.json`, rewritten
//! atomically by its monitor and by commands), its log, and its scratch
//! disk (the container's writes, kept across restarts until `rm`).
//!
//! Locks: `lock` serialises commands on one container (stop, rm, start
//! ... run one after the other); `monitor.lock` is held by the container's
//! monitor for as long as it lives, so a monitor that was killed is seen
//! as such whatever `state.json` last said.

mod names;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use names::random_name;

/// What a container runs: fixed when it is created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub id: String,
    pub name: String,
    /// RFC 3339 (UTC, nanoseconds).
    pub created: String,
    /// The image as the user named it.
    pub image: String,
    /// The manifest digest it resolved to (`sha256:...`).
    pub image_digest: String,
    /// The image ID (config digest) as `vm images` shows it.
    pub image_id: String,
    /// Whether `image` is a transport reference (`oci:...`) rather than a
    /// name in the store.
    pub image_is_file: bool,
    pub process: agent_protocol::Process,
    pub hostname: String,
    pub cpus: u8,
    pub memory_mib: u64,
    /// `--cpuset-cpus` as given (the VMM is bound to those CPUs).
    #[serde(default)]
    pub cpuset_cpus: Option<String>,
    /// `--memory-reservation` (bytes) and `--memory-swap`, as given.
    #[serde(default)]
    pub memory_reservation: Option<u64>,
    #[serde(default)]
    pub memory_swap: Option<i64>,
    pub read_only: bool,
    /// `--storage-opt size=` in MiB (the scratch disk's size).
    #[serde(default)]
    pub scratch_mib: Option<u64>,
    /// Rate limits and the I/O weight.
    #[serde(default)]
    pub limits: crate::limits::Limits,
    pub debug: bool,
    /// Boot cold, never from a snapshot (`--no-snapshot`).
    #[serde(default)]
    pub no_snapshot: bool,
    pub restart: RestartPolicy,
    /// Remove the container when it ends (`--rm`).
    pub auto_remove: bool,
    /// The signal `vm stop` sends first (a number).
    pub stop_signal: i32,
    /// Seconds `vm stop` waits before it kills.
    pub stop_timeout: u64,
    pub log: LogOptions,
    /// `--label KEY=VALUE`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The command and the entrypoint as given (for `inspect`, `ps`).
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `--network`, `-p`, `--dns`...
    #[serde(default)]
    pub network: crate::network::Options,
    /// `-v`, `--mount`, `--tmpfs`, `--volumes-from` and the image's
    /// `VOLUME`s, volumes named.
    #[serde(default)]
    pub mounts: Vec<crate::volume::Mount>,
    /// `--cap-add`, `--security-opt`, `--ulimit`... as given (what they
    /// make is in `process.security` and `options`).
    #[serde(default)]
    pub security: crate::security::Request,
    /// `--init`, `--privileged`, `--sysctl`, `--shm-size`, `--pids-limit`
    /// as the guest applies them.
    #[serde(default)]
    pub options: agent_protocol::ContainerOptions,
    /// The health check (the image's, or `--health-*`), if any.
    #[serde(default)]
    pub healthcheck: Option<crate::health::Check>,
}

/// `--restart`: what the monitor does when the container's process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    /// Restart after a non-zero exit, at most this many times (0: no cap).
    OnFailure(u32),
    Always,
    UnlessStopped,
}

impl RestartPolicy {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "invalid restart policy {s:?}: use no, on-failure[:N], always or unless-stopped"
            ))
        };
        Ok(match s.split_once(':') {
            None => match s {
                "no" | "" => Self::No,
                "on-failure" => Self::OnFailure(0),
                "always" => Self::Always,
                "unless-stopped" => Self::UnlessStopped,
                _ => return Err(bad()),
            },
            Some(("on-failure", n)) => Self::OnFailure(n.parse().map_err(|_| bad())?),
            Some(_) => return Err(bad()),
        })
    }

    /// Docker's name (`on-failure`) and maximum retry count.
    pub fn name_and_max(&self) -> (&'static str, u32) {
        match self {
            Self::No => ("no", 0),
            Self::OnFailure(n) => ("on-failure", *n),
            Self::Always => ("always", 0),
            Self::UnlessStopped => ("unless-stopped", 0),
        }
    }

    /// Whether a process that ended with `code` is started again, after
    /// `restarts` restarts, unless a user stopped it.
    pub fn restarts(&self, code: i32, restarts: u32) -> bool {
        match self {
            Self::No => false,
            Self::OnFailure(max) => code != 0 && (*max == 0 || restarts < *max),
            Self::Always | Self::UnlessStopped => true,
        }
    }
}

/// `--log-opt max-size=` and `max-file=`: the json-file log's rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    pub max_size: u64,
    pub max_files: u32,
}

/// Unlike Docker's json-file (unbounded by default), a container's log is
/// capped unless told otherwise: 10 MiB a file, 3 files.
impl Default for LogOptions {
    fn default() -> Self {
        Self {
            max_size: 10 << 20,
            max_files: 3,
        }
    }
}

/// Docker's container states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Exited => "exited",
            Self::Dead => "dead",
        }
    }

    /// A monitor is (or should be) looking after it.
    pub fn is_live(&self) -> bool {
        matches!(self, Self::Running | Self::Paused | Self::Restarting)
    }
}

/// What happens to a container over time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    /// The monitor's pid while it lives (0 otherwise).
    pub pid: i32,
    pub exit_code: i32,
    /// Why the container could not run or died, if it did.
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
    pub restart_count: u32,
    /// `vm stop`/`vm kill` ended it (so no restart).
    #[serde(default)]
    pub stopped_by_user: bool,
    /// The network while it runs: address, published ports.
    #[serde(default)]
    pub network: Option<crate::network::Settings>,
    /// The health check's findings, when the container has one.
    #[serde(default)]
    pub health: Option<crate::health::Health>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            status: Status::Created,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            started_at: ZERO_TIME.into(),
            finished_at: ZERO_TIME.into(),
            restart_count: 0,
            stopped_by_user: false,
            network: None,
            health: None,
        }
    }
}

/// Docker's "never" timestamp.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// RFC 3339 with nanoseconds, UTC, as Docker writes times.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// Seconds since `t` (an RFC 3339 time), if it parses.
pub fn since(t: &str) -> Option<std::time::Duration> {
    let t = humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(t))
        .ok()?;
    SystemTime::now().duration_since(t).ok()
}

/// One container's directory.
#[derive(Debug, Clone)]
pub struct Container {
    pub dir: PathBuf,
    pub config: Config,
}

/// The directory that holds every container.
pub fn root(state: &Path) -> PathBuf {
    state.join("containers")
}

/// A private directory (0700), and its parents as needed.
pub fn private_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::host(format!("creating {}: {e}", path.display())))
}

/// Writes `data` to `path` through a temporary file and a rename, mode 0600.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    let err = |e: std::io::Error| Error::host(format!("writing {}: {e}", path.display()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_data().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

/// Opens (creating) a lock file, mode 0600.
fn lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::host(format!("opening {}: {e}", path.display())))
}

/// An exclusive lock on a file, waiting for it.
pub fn lock(path: &Path) -> Result<Flock<File>> {
    Flock::lock(lock_file(path)?, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::host(format!("locking {}: {e}", path.display())))
}

/// An exclusive lock on a file, if nobody else holds it.
pub fn try_lock(path: &Path) -> Result<Option<Flock<File>>> {
    match Flock::lock(lock_file(path)?, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::host(format!("locking {}: {e}", path.display()))),
    }
}

impl Container {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}-json.log", self.config.id))
    }

    pub fn scratch_path(&self) -> PathBuf {
        self.dir.join("scratch.img")
    }

    pub fn monitor_log_path(&self) -> PathBuf {
        self.dir.join("monitor.log")
    }

    /// The monitor's sockets (vsock, control), under a short path: Unix
    /// socket paths are limited to 108 bytes.
    pub fn run_dir(&self, state: &Path) -> PathBuf {
        state.join("run").join(&self.config.id[..16])
    }

    pub fn control_socket(&self, state: &Path) -> PathBuf {
        self.run_dir(state).join("control.sock")
    }

    /// Serialises commands on this container.
    pub fn command_lock(&self) -> Result<Flock<File>> {
        lock(&self.dir.join("lock"))
    }

    pub fn monitor_lock_path(&self) -> PathBuf {
        self.dir.join("monitor.lock")
    }

    /// Whether a monitor holds this container.
    pub fn monitor_alive(&self) -> bool {
        match try_lock(&self.monitor_lock_path()) {
            Ok(Some(_)) => false,
            Ok(None) => true,
            Err(_) => false,
        }
    }

    pub fn read_state(&self) -> State {
        std::fs::read(self.state_path())
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default()
    }

    /// The state as it truly is: one that says the container is live but
    /// has no monitor was left by a monitor that was killed.
    pub fn state(&self) -> State {
        let mut s = self.read_state();
        if s.status.is_live() && !self.monitor_alive() {
            s.status = Status::Dead;
            s.pid = 0;
            if s.error.is_empty() {
                s.error = "the container's monitor process died (killed?) while it ran".into();
            }
            s.exit_code = if s.exit_code == 0 { 137 } else { s.exit_code };
        }
        s
    }

    pub fn write_state(&self, s: &State) -> Result<()> {
        let data = serde_json::to_vec_pretty(s)
            .map_err(|e| Error::host(format!("encoding the state: {e}")))?;
        write_atomic(&self.state_path(), &data)
    }

    /// Reads, changes and writes the state.
    pub fn update_state(&self, f: impl FnOnce(&mut State)) -> Result<State> {
        let mut s = self.read_state();
        f(&mut s);
        self.write_state(&s)?;
        Ok(s)
    }

    pub fn short_id(&self) -> &str {
        &self.config.id[..12]
    }

    fn load(dir: PathBuf) -> Option<Self> {
        let data = std::fs::read(dir.join("config.json")).ok()?;
        let config = serde_json::from_slice(&data).ok()?;
        Some(Self { dir, config })
    }
}

/// Every container, newest first.
pub fn list(state: &Path) -> Vec<Container> {
    let mut out: Vec<Container> = match std::fs::read_dir(root(state)) {
        Ok(d) => d
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| Container::load(e.path()))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort_by(|a, b| b.config.created.cmp(&a.config.created));
    out
}

/// A container by full ID, name (with or without a leading `/`), or
/// unique ID prefix, as Docker finds them.
pub fn find(state: &Path, key: &str) -> Result<Container> {
    let all = list(state);
    let name = key.strip_prefix('/').unwrap_or(key);
    if let Some(c) = all
        .iter()
        .find(|c| c.config.id == key || c.config.name == name)
    {
        return Ok(c.clone());
    }
    let hex = !key.is_empty() && key.chars().all(|c| c.is_ascii_hexdigit());
    let matches: Vec<&Container> = if hex {
        all.iter()
            .filter(|c| c.config.id.starts_with(key))
            .collect()
    } else {
        Vec::new()
    };
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::not_found(format!("No such container: {key}"))),
        _ => Err(Error::invalid(format!(
            "multiple containers found with provided prefix: {key}"
        ))),
    }
}

/// Makes the container's directory and writes its config and a `created`
/// state. Names are unique: checked and taken under one lock.
pub fn create(state: &Path, mut config: Config) -> Result<Container> {
    let root = root(state);
    private_dir(&root)?;
    private_dir(&state.join("run"))?;
    let _names = lock(&root.join(".names.lock"))?;
    let all = list(state);
    if config.name.is_empty() {
        config.name = loop {
            let n = random_name();
            if !all.iter().any(|c| c.config.name == n) {
                break n;
            }
        };
    } else if let Some(other) = all.iter().find(|c| c.config.name == config.name) {
        return Err(Error::new(
            crate::Kind::NameConflict,
            format!(
                "Conflict. The container name \"/{}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                config.name, other.config.id
            ),
        ));
    }
    let dir = root.join(&config.id);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::host(format!("creating {}: {e}", dir.display())))?;
    let c = Container { dir, config };
    let data = serde_json::to_vec_pretty(&c.config)
        .map_err(|e| Error::host(format!("encoding the config: {e}")))?;
    write_atomic(&c.config_path(), &data)?;
    c.write_state(&State::default())?;
    Ok(c)
}

/// Renames a container (names stay unique).
pub fn rename(state: &Path, c: &Container, new_name: &str) -> Result<()> {
    crate::create::check_name(new_name)?;
    let _names = lock(&root(state).join(".names.lock"))?;
    if let Some(other) = list(state)
        .iter()
        .find(|o| o.config.name == new_name && o.config.id != c.config.id)
    {
        return Err(Error::new(
            crate::Kind::NameConflict,
            format!(
                "Conflict. The container name \"/{new_name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                other.config.id
            ),
        ));
    }
    let mut config = c.config.clone();
    config.name = new_name.to_string();
    let data = serde_json::to_vec_pretty(&config)
        .map_err(|e| Error::host(format!("encoding the config: {e}")))?;
    write_atomic(&c.config_path(), &data)
}

/// Deletes a container's files (its monitor must be gone).
pub fn remove_files(state: &Path, c: &Container) -> Result<()> {
    let _ = std::fs::remove_dir_all(c.run_dir(state));
    let _ = std::fs::remove_file(
        state
            .join("rootfs")
            .join(format!(".tmp-{}.ext4", c.config.id)),
    );
    std::fs::remove_dir_all(&c.dir)
        .map_err(|e| Error::host(format!("removing {}: {e}", c.dir.display())))
}

/// Removes what dead runs left behind: socket directories of containers
/// that are gone or have no monitor, and unsealed root file systems of
/// runs that no monitor finishes. Returns how many it removed.
pub fn sweep(state: &Path) -> usize {
    crate::network::sweep(state);
    let all = list(state);
    let live = |prefix: &str| {
        all.iter()
            .any(|c| c.config.id.starts_with(prefix) && c.monitor_alive())
    };
    let mut n = 0;
    if let Ok(dirs) = std::fs::read_dir(state.join("run")) {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if !live(&name) && std::fs::remove_dir_all(d.path()).is_ok() {
                n += 1;
            }
        }
    }
    if let Ok(files) = std::fs::read_dir(state.join("rootfs")) {
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix(".tmp-")
                .and_then(|r| r.strip_suffix(".ext4"))
            else {
                continue;
            };
            if id.len() == 64 && !live(id) && std::fs::remove_file(f.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies() {
        assert_eq!(RestartPolicy::parse("no").ok(), Some(RestartPolicy::No));
        assert_eq!(
            RestartPolicy::parse("on-failure:2").ok(),
            Some(RestartPolicy::OnFailure(2))
        );
        assert!(RestartPolicy::parse("sometimes").is_err());
        assert!(RestartPolicy::parse("on-failure:x").is_err());
        let p = RestartPolicy::OnFailure(2);
        assert!(p.restarts(1, 0) && p.restarts(1, 1) && !p.restarts(1, 2));
        assert!(!p.restarts(0, 0));
        assert!(RestartPolicy::Always.restarts(0, 100));
        assert!(!RestartPolicy::No.restarts(1, 0));
    }

    fn config(id: &str, name: &str) -> Config {
        Config {
            id: id.into(),
            name: name.into(),
            created: now_rfc3339(),
            image: "busybox".into(),
            image_digest: String::new(),
            image_id: String::new(),
            image_is_file: false,
            process: agent_protocol::Process {
                args: vec!["true".into()],
                env: Vec::new(),
                cwd: "/".into(),
                user: String::new(),
                terminal: false,
                stdin: false,
                rows: 0,
                cols: 0,
                security: Default::default(),
            },
            hostname: "h".into(),
            cpus: 1,
            memory_mib: 128,
            cpuset_cpus: None,
            memory_reservation: None,
            memory_swap: None,
            read_only: false,
            scratch_mib: None,
            limits: Default::default(),
            debug: false,
            no_snapshot: false,
            restart: RestartPolicy::No,
            auto_remove: false,
            stop_signal: 15,
            stop_timeout: 10,
            log: LogOptions::default(),
            labels: Default::default(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            network: Default::default(),
            mounts: Vec::new(),
            security: Default::default(),
            options: Default::default(),
            healthcheck: None,
        }
    }

    #[test]
    fn names_are_unique_and_found() {
        let dir = std::env::temp_dir().join(format!("vm-containers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = "a".repeat(64);
        let b = format!("ab{}", "0".repeat(62));
        create(&dir, config(&a, "web")).expect("create");
        let err = create(&dir, config(&b, "web")).expect_err("same name");
        assert_eq!(err.kind, crate::Kind::NameConflict);
        let c = create(&dir, config(&b, "")).expect("random name");
        assert!(!c.config.name.is_empty());
        assert_eq!(find(&dir, "web").expect("by name").config.id, a);
        assert_eq!(find(&dir, "/web").expect("by /name").config.id, a);
        assert_eq!(find(&dir, "ab").expect("by prefix").config.id, b);
        assert_eq!(
            find(&dir, "a").expect_err("ambiguous").kind,
            crate::Kind::InvalidArgument
        );
        assert_eq!(
            find(&dir, "nope").expect_err("missing").kind,
            crate::Kind::NotFound
        );
        // No monitor: a state that says running is dead.
        let web = find(&dir, "web").expect("web");
        web.update_state(|s| s.status = Status::Running)
            .expect("state");
        assert_eq!(web.state().status, Status::Dead);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&web.dir)
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let mode = std::fs::metadata(web.state_path())
            .expect("state file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        rename(&dir, &web, "api").expect("rename");
        assert!(find(&dir, "api").is_ok());
        remove_files(&dir, &web).expect("rm");
        assert!(find(&dir, "api").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
