//! `vm exec` in the monitor: another process in the running container.
//! The monitor binds listeners for the process's stdio, asks the agent to
//! start it, moves its output to the client as frames and the client's
//! input, signals and resizes to it, and ends with its exit status.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_protocol::{port, AgentMessage, ExecSpec, HostMessage, Process, StreamPorts};
use serde::{Deserialize, Serialize};

use super::{answer, Reply, Shared};
use crate::frames::{read_frame, write_frame, Failure, Frame};
use crate::session;

/// How long the agent has to connect an exec's streams.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What `vm exec` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecOptions {
    pub args: Vec<String>,
    /// `NAME=VALUE` entries over the container's environment.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub tty: bool,
    pub stdin: bool,
    pub rows: u16,
    pub cols: u16,
    /// A piece of the agent to run instead of `args` (`vm cp`, `top`, ...).
    #[serde(default)]
    pub builtin: Option<agent_protocol::Builtin>,
}

/// What the agent said of one exec.
#[derive(Debug, Default)]
pub struct Status {
    started: bool,
    code: Option<i32>,
    failed: Option<(i32, String)>,
}

/// The execs of the current run, by id.
#[derive(Default)]
pub struct Execs {
    pub next: u32,
    pub all: HashMap<u32, Status>,
}

impl Execs {
    /// Takes the agent's news of an exec.
    pub fn news(&mut self, msg: AgentMessage) {
        match msg {
            AgentMessage::ExecStarted { id } => {
                if let Some(s) = self.all.get_mut(&id) {
                    s.started = true;
                }
            }
            AgentMessage::ExecExited { id, code } => {
                if let Some(s) = self.all.get_mut(&id) {
                    s.code = Some(code);
                }
            }
            AgentMessage::ExecFailed { id, code, message } => {
                if let Some(s) = self.all.get_mut(&id) {
                    s.failed = Some((code, message));
                }
            }
            _ => {}
        }
    }

    /// The run ended: every exec still going ended with it.
    pub fn run_ended(&mut self) {
        for s in self.all.values_mut() {
            if s.code.is_none() && s.failed.is_none() {
                s.code = Some(137);
            }
        }
    }
}

fn refuse(conn: &UnixStream, msg: impl Into<String>) {
    let _ = answer(
        conn,
        &Reply {
            error: Some(msg.into()),
            code: None,
        },
    );
}

/// Serves one `exec` request on `conn` to its end.
pub fn serve(conn: UnixStream, shared: &Arc<Shared>, opts: ExecOptions) {
    if opts.args.is_empty() {
        return refuse(&conn, "no command given to exec");
    }
    let Some(token) = token() else {
        return refuse(
            &conn,
            "no random numbers for the exec's token (getrandom failed)",
        );
    };
    let c = &shared.container;
    let (id, agent, vsock) = {
        let mut g = shared.lock();
        let (Some(agent), Some(vsock)) = (g.agent.clone(), g.vsock.clone()) else {
            drop(g);
            return refuse(&conn, format!("container {} is not running", c.config.id));
        };
        let id = g.execs.next;
        g.execs.next += 1;
        g.execs.all.insert(id, Status::default());
        (id, agent, vsock)
    };
    let base = port::EXEC_BASE + 3 * id;
    let ports = StreamPorts {
        stdin: base,
        stdout: base + 1,
        stderr: base + 2,
    };
    let process = Process {
        args: opts.args.clone(),
        env: merge_env(&c.config.process.env, &opts.env),
        cwd: opts
            .workdir
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| c.config.process.cwd.clone()),
        user: opts
            .user
            .clone()
            .unwrap_or_else(|| c.config.process.user.clone()),
        terminal: opts.tty,
        stdin: opts.stdin,
        rows: opts.rows,
        cols: opts.cols,
        security: c.config.process.security.clone(),
    };
    let mut listeners = Vec::new();
    let wanted = [
        (ports.stdout, true),
        (ports.stderr, !process.terminal),
        (ports.stdin, process.stdin),
    ];
    for (p, want) in wanted {
        if !want {
            listeners.push(None);
            continue;
        }
        match session::bind_port(&vsock, p) {
            Ok(l) => listeners.push(Some(l)),
            Err(e) => {
                shared.lock().execs.all.remove(&id);
                return refuse(&conn, format!("exec sockets: {e}"));
            }
        }
    }
    agent.send(&HostMessage::Exec(Box::new(ExecSpec {
        id,
        process,
        ports,
        token: token.clone(),
        builtin: opts.builtin.clone(),
    })));
    if answer(&conn, &Reply::default()).is_ok() {
        let builtin = opts.builtin.is_some();
        let end = run(&conn, shared, id, &token, &agent, listeners, builtin);
        let writer = &mut &conn;
        let _ = match end {
            Ok(code) => write_frame(writer, &Frame::Exit(code)),
            Err(f) => write_frame(writer, &Frame::failed(&f)),
        };
    }
    shared.lock().execs.all.remove(&id);
}

/// The container's environment with the exec's entries over it.
fn merge_env(base: &[String], extra: &[String]) -> Vec<String> {
    let mut out = base.to_vec();
    for e in extra {
        let name = e.split('=').next().unwrap_or_default();
        out.retain(|o| o.split('=').next() != Some(name));
        out.push(e.clone());
    }
    out
}

fn failure(code: i32, message: String) -> Failure {
    Failure {
        code,
        kind: "Guest".into(),
        message,
        console: Vec::new(),
    }
}

/// Waits until `f` says something of exec `id` (or the run ended).
fn wait_for<T>(
    shared: &Shared,
    id: u32,
    timeout: Duration,
    f: impl Fn(&Status) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut g = shared.lock();
    loop {
        match g.execs.all.get(&id) {
            Some(s) => {
                if let Some(v) = f(s) {
                    return Some(v);
                }
            }
            None => return None,
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        g = shared
            .changed
            .wait_timeout(g, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn run(
    conn: &UnixStream,
    shared: &Arc<Shared>,
    id: u32,
    token: &str,
    agent: &session::Sender,
    listeners: Vec<Option<session::PortListener>>,
    builtin: bool,
) -> Result<i32, Failure> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let gone = || {
        let g = shared.lock();
        g.execs
            .all
            .get(&id)
            .is_none_or(|s| s.failed.is_some() || s.code.is_some())
    };
    let mut streams = Vec::new();
    // Each listener is gone once its stream is accepted.
    for (l, what) in listeners.into_iter().zip(["stdout", "stderr", "stdin"]) {
        let Some(l) = l else {
            streams.push(None);
            continue;
        };
        match l.accept_verified(what, deadline, &gone, &|s| has_token(s, token)) {
            Ok(s) => streams.push(Some(s)),
            Err(_) => {
                let why = wait_for(shared, id, Duration::from_secs(2), |s| s.failed.clone());
                let (code, msg) = why.unwrap_or((
                    125,
                    format!("the agent did not connect the exec's {what} stream"),
                ));
                return Err(failure(code, msg));
            }
        }
    }
    let started = wait_for(shared, id, CONNECT_TIMEOUT, |s| {
        if s.started {
            Some(Ok(()))
        } else {
            s.failed.clone().map(Err)
        }
    });
    match started {
        Some(Ok(())) => {}
        Some(Err((code, msg))) => return Err(failure(code, msg)),
        None => return Err(failure(125, "the exec's process did not start".into())),
    }
    let writer = Arc::new(Mutex::new(
        conn.try_clone()
            .map_err(|e| failure(125, format!("socket: {e}")))?,
    ));
    {
        let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
        let _ = write_frame(&mut *w, &Frame::Started);
    }
    let stdin = streams.pop().flatten();
    let stderr = streams.pop().flatten();
    let stdout = streams.pop().flatten();
    spawn_input(conn, id, agent, stdin, builtin);
    let pumps: Vec<_> = [(stdout, true), (stderr, false)]
        .into_iter()
        .filter_map(|(s, out)| s.map(|s| (s, out)))
        .filter_map(|(s, out)| {
            let w = writer.clone();
            std::thread::Builder::new()
                .name("exec-out".into())
                .spawn(move || pump(s, out, &w))
                .ok()
        })
        .collect();
    for p in pumps {
        let _ = p.join();
    }
    let code = wait_for(shared, id, Duration::from_secs(3600 * 24 * 365), |s| {
        s.code.or(s.failed.as_ref().map(|f| f.0))
    });
    Ok(code.unwrap_or(137))
}

fn pump(mut from: UnixStream, stdout: bool, to: &Mutex<UnixStream>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match std::io::Read::read(&mut from, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let f = if stdout {
            Frame::Stdout(buf[..n].to_vec())
        } else {
            Frame::Stderr(buf[..n].to_vec())
        };
        let mut w = to.lock().unwrap_or_else(|e| e.into_inner());
        // A client that went away: keep draining so the process is not
        // held up.
        let _ = write_frame(&mut *w, &f);
    }
}

/// The client's stdin, signals and resizes, to the exec'd process. A
/// builtin (`vm stats`, `vm cp`) is killed when its client goes away; a
/// user's process goes on, as under Docker.
fn spawn_input(
    conn: &UnixStream,
    id: u32,
    agent: &session::Sender,
    stdin: Option<UnixStream>,
    builtin: bool,
) {
    let Ok(mut reader) = conn.try_clone() else {
        return;
    };
    let agent = agent.clone();
    let run = move || {
        let mut stdin = stdin;
        while let Ok(Some(frame)) = read_frame(&mut reader) {
            match frame {
                Frame::Stdin(d) => {
                    if let Some(s) = &mut stdin {
                        let _ = s.write_all(&d);
                    }
                }
                Frame::StdinEof => {
                    if let Some(s) = stdin.take() {
                        let _ = s.shutdown(std::net::Shutdown::Write);
                    }
                }
                Frame::Signal(signal) => agent.send(&HostMessage::ExecSignal { id, signal }),
                Frame::Resize { rows, cols } => {
                    agent.send(&HostMessage::ExecResize { id, rows, cols })
                }
                _ => {}
            }
        }
        if builtin {
            agent.send(&HostMessage::ExecSignal {
                id,
                signal: libc::SIGKILL,
            });
        }
    };
    let _ = std::thread::Builder::new()
        .name("exec-in".into())
        .spawn(run);
}

/// A random token (128 bits, hex) for one exec's streams.
pub(super) fn token() -> Option<String> {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    (n == b.len() as isize).then(|| b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Whether a connection to an exec's port is the agent's: it starts with
/// the exec's token and a newline. Others (a container's own processes
/// connecting to the same port) are dropped by the caller.
pub(super) fn has_token(s: &mut UnixStream, token: &str) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut got = vec![0u8; token.len() + 1];
    let ok = std::io::Read::read_exact(s, &mut got).is_ok()
        && got[..token.len()] == *token.as_bytes()
        && got[token.len()] == b'\n';
    let _ = s.set_read_timeout(None);
    ok
}

/// The VMM's jail: its root directory, where its vsock sockets are.
pub fn jail_root(run_dir: &std::path::Path) -> PathBuf {
    run_dir.join("jail")
}

/// Where the guest's connections arrive (and exec sockets go): the run's
/// vsock path, in the VMM's jail.
pub fn vsock_path(run_dir: &std::path::Path) -> PathBuf {
    crate::jail::vsock_path(&jail_root(run_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_of_unknown_execs_changes_nothing_and_a_run_end_ends_the_rest() {
        let mut e = Execs::default();
        e.all.insert(1, Status::default());
        e.news(AgentMessage::ExecExited { id: 9, code: 0 });
        e.news(AgentMessage::ExecStarted { id: u32::MAX });
        e.news(AgentMessage::ExecFailed {
            id: 2,
            code: 125,
            message: "x".into(),
        });
        assert_eq!(
            e.all.len(),
            1,
            "no entry made for an id the host never chose"
        );
        e.news(AgentMessage::ExecStarted { id: 1 });
        e.news(AgentMessage::ExecStarted { id: 1 });
        assert!(e.all[&1].started && e.all[&1].code.is_none());
        e.run_ended();
        assert_eq!(e.all[&1].code, Some(137));
        e.news(AgentMessage::ExecExited { id: 1, code: 0 });
        assert_eq!(e.all[&1].code, Some(0), "a late report may still land");
    }

    #[test]
    fn exec_env_overrides_by_name() {
        let env = merge_env(&["A=1".into(), "B=2".into()], &["A=3".into(), "C".into()]);
        assert_eq!(env, ["B=2", "A=3", "C"]);
    }
}
