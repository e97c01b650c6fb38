//! What a container's processes may do inside the guest, from `vm run`'s
//! flags: capabilities (`--cap-add`, `--cap-drop`, `--privileged`),
//! `--security-opt` (seccomp, no-new-privileges), `--ulimit`,
//! `--group-add`, `--sysctl`, `--shm-size`, `--pids-limit` and `--init`.
//! Everything is checked when the container is created; the guest gets
//! the result ([`agent_protocol::Security`] and
//! [`agent_protocol::ContainerOptions`]).

pub mod capabilities;
pub mod seccomp;

use agent_protocol::{ContainerOptions, Rlimit, Security};
use serde::{Deserialize, Serialize};

/// The flags as given (kept in the container's config for `inspect`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Request {
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    pub security_opt: Vec<String>,
    pub ulimits: Vec<String>,
    pub group_add: Vec<String>,
    pub sysctls: Vec<String>,
    /// Bytes.
    pub shm_size: Option<u64>,
    /// As given: 0 or less is no limit.
    pub pids_limit: Option<i64>,
    pub init: bool,
}

/// RLIMIT_NOFILE unless `--ulimit nofile=` says otherwise: what Docker's
/// daemon hands down in a usual install (databases and proxies need
/// more than the kernel's 1024).
pub const DEFAULT_NOFILE: u64 = 1 << 20;

impl Request {
    /// Checks the flags and works out what the guest applies.
    pub fn resolve(&self) -> Result<(Security, ContainerOptions), String> {
        let caps = capabilities::resolve(&self.cap_add, &self.cap_drop, self.privileged)?;
        let mut no_new_privileges = false;
        let mut profile = None;
        for o in &self.security_opt {
            match parse_security_opt(o)? {
                SecurityOpt::NoNewPrivileges(v) => no_new_privileges = v,
                SecurityOpt::Seccomp(p) => profile = Some(p),
                SecurityOpt::Ignored => {}
            }
        }
        // Privileged containers are unconfined unless a profile is named.
        let profile = match profile {
            Some(p) => p,
            None if self.privileged => seccomp::Profile::Unconfined,
            None => seccomp::Profile::Default,
        };
        let seccomp = seccomp::filters(&profile, &caps)?;
        let mut rlimits = vec![Rlimit {
            resource: libc::RLIMIT_NOFILE,
            soft: DEFAULT_NOFILE,
            hard: DEFAULT_NOFILE,
        }];
        for u in &self.ulimits {
            let r = parse_ulimit(u)?;
            rlimits.retain(|x| x.resource != r.resource);
            rlimits.push(r);
        }
        let mut sysctls = Vec::new();
        for s in &self.sysctls {
            sysctls.push(parse_sysctl(s)?);
        }
        let shm_size = match self.shm_size {
            Some(0) => return Err("invalid --shm-size: must be greater than 0".into()),
            Some(n) => n,
            None => 0,
        };
        let pids_limit = self.pids_limit.filter(|n| *n > 0).map(|n| n as u64);
        for g in &self.group_add {
            if g.is_empty() || g.contains(':') || g.contains('\n') {
                return Err(format!(
                    "invalid --group-add {g:?}: use a group name or number"
                ));
            }
        }
        Ok((
            Security {
                capabilities: caps,
                no_new_privileges,
                seccomp,
                rlimits,
                groups: self.group_add.clone(),
            },
            ContainerOptions {
                init: self.init,
                privileged: self.privileged,
                sysctls,
                shm_size,
                pids_limit,
            },
        ))
    }
}

enum SecurityOpt {
    NoNewPrivileges(bool),
    Seccomp(seccomp::Profile),
    /// SELinux labels and AppArmor profiles: the guest has neither.
    Ignored,
}

/// `no-new-privileges[=true|false]`, `seccomp=unconfined|builtin|FILE`,
/// `label=...`, `apparmor=...` (also with `:` for `=`, as Docker's old
/// form).
fn parse_security_opt(o: &str) -> Result<SecurityOpt, String> {
    let (key, value) = match o.split_once('=').or_else(|| o.split_once(':')) {
        Some((k, v)) => (k, Some(v)),
        None => (o, None),
    };
    match (key, value) {
        ("no-new-privileges", None) => Ok(SecurityOpt::NoNewPrivileges(true)),
        ("no-new-privileges", Some(v)) => match v {
            "true" | "1" => Ok(SecurityOpt::NoNewPrivileges(true)),
            "false" | "0" => Ok(SecurityOpt::NoNewPrivileges(false)),
            _ => Err(format!(
                "invalid --security-opt {o:?}: no-new-privileges takes true or false"
            )),
        },
        ("seccomp", Some("unconfined")) => Ok(SecurityOpt::Seccomp(seccomp::Profile::Unconfined)),
        ("seccomp", Some("builtin")) => Ok(SecurityOpt::Seccomp(seccomp::Profile::Default)),
        ("seccomp", Some(path)) if !path.is_empty() => {
            Ok(SecurityOpt::Seccomp(seccomp::Profile::File(path.into())))
        }
        ("label", Some(_)) | ("apparmor", Some(_)) => Ok(SecurityOpt::Ignored),
        _ => Err(format!(
            "invalid --security-opt {o:?}: use no-new-privileges[=true|false], seccomp=unconfined|PROFILE.json, label=... or apparmor=..."
        )),
    }
}

/// `--ulimit NAME=SOFT[:HARD]` (-1: unlimited).
fn parse_ulimit(u: &str) -> Result<Rlimit, String> {
    const NAMES: &[(&str, libc::__rlimit_resource_t)] = &[
        ("as", libc::RLIMIT_AS),
        ("core", libc::RLIMIT_CORE),
        ("cpu", libc::RLIMIT_CPU),
        ("data", libc::RLIMIT_DATA),
        ("fsize", libc::RLIMIT_FSIZE),
        ("locks", libc::RLIMIT_LOCKS),
        ("memlock", libc::RLIMIT_MEMLOCK),
        ("msgqueue", libc::RLIMIT_MSGQUEUE),
        ("nice", libc::RLIMIT_NICE),
        ("nofile", libc::RLIMIT_NOFILE),
        ("nproc", libc::RLIMIT_NPROC),
        ("rss", libc::RLIMIT_RSS),
        ("rtprio", libc::RLIMIT_RTPRIO),
        ("rttime", libc::RLIMIT_RTTIME),
        ("sigpending", libc::RLIMIT_SIGPENDING),
        ("stack", libc::RLIMIT_STACK),
    ];
    let (name, limits) = u.split_once('=').ok_or_else(|| {
        format!("invalid ulimit argument: {u}: use NAME=SOFT[:HARD], e.g. nofile=1024:4096")
    })?;
    let resource = NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| *r)
        .ok_or_else(|| format!("invalid ulimit type: {name}"))?;
    let value = |v: &str| -> Result<u64, String> {
        match v.parse::<i64>() {
            Ok(-1) => Ok(u64::MAX),
            Ok(n) if n >= 0 => Ok(n as u64),
            _ => Err(format!(
                "invalid ulimit value {v:?} in {u}: use a number, or -1 for unlimited"
            )),
        }
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((s, h)) => (value(s)?, value(h)?),
        None => {
            let v = value(limits)?;
            (v, v)
        }
    };
    if soft > hard {
        return Err(format!(
            "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
        ));
    }
    Ok(Rlimit {
        resource,
        soft,
        hard,
    })
}

/// `--sysctl NAME=VALUE` for the sysctls a container's namespaces hold
/// (as Docker allows them): IPC (`kernel.msg*`, `kernel.sem`,
/// `kernel.shm*`, `fs.mqueue.*`) and network (`net.*`).
fn parse_sysctl(s: &str) -> Result<(String, String), String> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid --sysctl {s:?}: use NAME=VALUE"))?;
    let name = name.replace('/', ".");
    let well_formed = !name.is_empty()
        && name.split('.').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        });
    let namespaced =
        IPC.contains(&name.as_str()) || name.starts_with("fs.mqueue.") || name.starts_with("net.");
    if !well_formed || !namespaced {
        return Err(format!(
            "sysctl {name:?} is not allowed: only namespaced ones are (kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*, net.*)"
        ));
    }
    if value.contains('\n') {
        return Err(format!("invalid value for sysctl {name}"));
    }
    Ok((name, value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let (sec, opts) = Request::default().resolve().expect("defaults");
        assert_eq!(sec.capabilities, agent_protocol::DEFAULT_CAPABILITIES);
        assert!(!sec.no_new_privileges);
        assert_eq!(sec.seccomp.len(), 2);
        assert_eq!(
            sec.rlimits,
            [Rlimit {
                resource: libc::RLIMIT_NOFILE,
                soft: DEFAULT_NOFILE,
                hard: DEFAULT_NOFILE
            }]
        );
        assert_eq!(opts, ContainerOptions::default());
    }

    #[test]
    fn privileged_and_security_opts() {
        let r = Request {
            privileged: true,
            ..Default::default()
        };
        let (sec, opts) = r.resolve().expect("privileged");
        assert_eq!(sec.capabilities.len(), 41);
        assert!(sec.seccomp.is_empty());
        assert!(opts.privileged);
        for (opt, nnp, filters) in [
            ("no-new-privileges", true, 2),
            ("no-new-privileges=true", true, 2),
            ("no-new-privileges:true", true, 2),
            ("no-new-privileges=false", false, 2),
            ("seccomp=unconfined", false, 0),
            ("seccomp:unconfined", false, 0),
            ("label=disable", false, 2),
        ] {
            let r = Request {
                security_opt: vec![opt.into()],
                ..Default::default()
            };
            let (sec, _) = r.resolve().expect(opt);
            assert_eq!(
                (sec.no_new_privileges, sec.seccomp.len()),
                (nnp, filters),
                "{opt}"
            );
        }
        for bad in [
            "no-new-privileges=maybe",
            "seccomp=",
            "nonsense",
            "seccomp=/no/such.json",
        ] {
            let r = Request {
                security_opt: vec![bad.into()],
                ..Default::default()
            };
            assert!(r.resolve().is_err(), "{bad}");
        }
    }

    #[test]
    fn ulimits() {
        let r = parse_ulimit("nofile=1024:2048").expect("nofile");
        assert_eq!(
            (r.resource, r.soft, r.hard),
            (libc::RLIMIT_NOFILE, 1024, 2048)
        );
        let r = parse_ulimit("core=-1").expect("core");
        assert_eq!((r.soft, r.hard), (u64::MAX, u64::MAX));
        assert!(parse_ulimit("nofile=10:5")
            .expect_err("soft > hard")
            .contains("10 > 5"));
        assert!(parse_ulimit("bogus=1")
            .expect_err("type")
            .contains("invalid ulimit type"));
        assert!(parse_ulimit("nofile").is_err());
        assert!(parse_ulimit("nofile=x").is_err());
        let req = Request {
            ulimits: vec!["nofile=100:200".into(), "nproc=50".into()],
            ..Default::default()
        };
        let (sec, _) = req.resolve().expect("ulimits");
        assert_eq!(sec.rlimits.len(), 2);
        assert!(sec
            .rlimits
            .iter()
            .any(|r| r.resource == libc::RLIMIT_NOFILE && r.soft == 100));
    }

    #[test]
    fn sysctls() {
        assert_eq!(
            parse_sysctl("kernel.shmmax=1000").expect("shm"),
            ("kernel.shmmax".to_string(), "1000".to_string())
        );
        assert!(parse_sysctl("net.ipv4.ip_forward=1").is_ok());
        assert!(parse_sysctl("fs.mqueue.msg_max=20").is_ok());
        assert!(parse_sysctl("net/ipv4/ip_forward=1").is_ok());
        for bad in [
            "vm.swappiness=1",
            "kernel.hostname=x",
            "net..x=1",
            "net.ipv4",
            "kernel.core_pattern=|/x",
        ] {
            assert!(parse_sysctl(bad).is_err(), "{bad}");
        }
    }
}
