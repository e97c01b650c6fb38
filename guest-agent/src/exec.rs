//! `vm exec` inside the guest: more processes in the running container,
//! each with its own stdio connections to the host, signals, terminal
//! size and exit status. The agent's reaper tells this module when one
//! of its processes ends.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use agent_protocol::{write_frame, AgentMessage, ExecSpec};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::container::{self, ExecInit, Fail};
use crate::run::{self, Running, Streams};

/// Where the agent's reports go: one writer shared by its threads.
pub type Reports = Arc<Mutex<File>>;

pub fn report(to: &Reports, msg: &AgentMessage) {
    let mut w = to.lock().unwrap_or_else(|e| e.into_inner());
    let _ = write_frame(&mut *w, msg);
}

struct Process {
    id: u32,
    pid: Pid,
    running: Option<Running>,
}

/// The exec'd processes that have not ended yet.
#[derive(Default)]
pub struct Execs {
    procs: Mutex<HashMap<u32, Process>>,
    /// Processes the reaper saw end before `start` recorded them.
    early: Mutex<HashMap<Pid, i32>>,
}

/// More early ends than this are not kept (they would not be ours).
const MAX_EARLY: usize = 1024;

impl Execs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Process>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `spec` in the container whose process is `target`.
    pub fn start(&self, spec: ExecSpec, target: Pid, reports: &Reports) {
        let id = spec.id;
        if self.lock().contains_key(&id) {
            report(
                reports,
                &AgentMessage::ExecFailed {
                    id,
                    code: 125,
                    message: format!("exec id {id} is already in use"),
                },
            );
            return;
        }
        let builtin = spec.builtin;
        let p = spec.process;
        let started = Streams::connect_with_token(spec.ports, p.terminal, p.stdin, &spec.token)
            .map_err(|e| Fail::setup(format!("connecting the exec's streams: {e}")))
            .and_then(|streams| {
                let init = ExecInit {
                    target: target.as_raw(),
                    process: p.clone(),
                    builtin: builtin.clone(),
                };
                run::start(p.terminal, streams, |stdio, pty| {
                    container::spawn_exec(&init, stdio, pty)
                })
            });
        match started {
            Ok(running) => {
                let pid = running.init;
                self.lock().insert(
                    id,
                    Process {
                        id,
                        pid,
                        running: Some(running),
                    },
                );
                report(reports, &AgentMessage::ExecStarted { id });
                // It may have ended (and been reaped) before it was recorded.
                let early = self
                    .early
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&pid);
                if let Some(code) = early {
                    self.ended(pid, code, reports);
                }
            }
            Err(f) => report(
                reports,
                &AgentMessage::ExecFailed {
                    id,
                    code: f.code,
                    message: f.msg,
                },
            ),
        }
    }

    pub fn signal(&self, id: u32, sig: i32) {
        if let (Some(pid), Ok(sig)) = (self.lock().get(&id).map(|p| p.pid), Signal::try_from(sig)) {
            let _ = kill(pid, sig);
        }
    }

    pub fn resize(&self, id: u32, rows: u16, cols: u16) {
        let g = self.lock();
        if let Some(pty) = g.get(&id).and_then(|p| p.running.as_ref()?.pty.as_ref()) {
            crate::pty::set_size(pty.as_raw_fd(), rows, cols);
        }
    }

    /// The reaper saw `pid` end with `code`: when it is one of ours,
    /// report it once its output has reached the host. Returns whether
    /// it was ours.
    pub fn ended(&self, pid: Pid, code: i32, reports: &Reports) -> bool {
        let mut g = self.lock();
        let Some(id) = g.values().find(|p| p.pid == pid).map(|p| p.id) else {
            drop(g);
            let mut early = self.early.lock().unwrap_or_else(|e| e.into_inner());
            if early.len() < MAX_EARLY {
                early.insert(pid, code);
            }
            return false;
        };
        let Some(mut p) = g.remove(&id) else {
            return false;
        };
        drop(g);
        let reports = reports.clone();
        let finish = move || {
            if let Some(r) = p.running.take() {
                drop(r.pty);
                for t in r.pumps {
                    let _ = t.join();
                }
            }
            report(&reports, &AgentMessage::ExecExited { id: p.id, code });
        };
        if let Err(e) = std::thread::Builder::new()
            .name("exec-exit".into())
            .spawn(finish)
        {
            eprintln!("vm-agent: cannot report the end of exec {id}: {e}");
        }
        true
    }
}
