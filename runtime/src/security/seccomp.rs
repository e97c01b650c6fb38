//! Seccomp for a container's processes inside the guest (defence in
//! depth: the VM is the boundary). Our default profile refuses, with
//! EPERM, what Docker's default profile refuses: kernel keyrings,
//! modules, reboot and kexec, clock setting, mounts and namespaces, NUMA
//! policy, raw I/O ports, cross-process memory access, and vsock sockets
//! (the guest's way to the host); most of them come back with the
//! capability that governs them (`--cap-add SYS_ADMIN` allows mounts).
//! A profile file in Docker's JSON format can be given instead.
//!
//! Filters are compiled here, on the host, with seccompiler; the guest
//! installs the programs as they are. One filter has one default action
//! and one action on a match, so a profile becomes a stack: a first
//! filter with the profile's default that allows every call any rule
//! names (under that rule's conditions), then one filter per other
//! action, which allows everything else. The kernel applies the most
//! restrictive verdict; between two errno verdicts the later filter's
//! wins, so a rule's own errno beats the default's.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use agent_protocol::BpfInsn;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::Deserialize;

/// `--security-opt seccomp=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    Default,
    Unconfined,
    File(std::path::PathBuf),
}

/// One rule: a system call, what happens to it, and when (the
/// conditions all hold; none: always).
#[derive(Debug, Clone)]
struct Rule {
    nr: i64,
    action: SeccompAction,
    conditions: Vec<SeccompCondition>,
}

/// The filters for `profile`, given the container's capabilities; none
/// when unconfined.
pub fn filters(profile: &Profile, caps: &[u32]) -> Result<Vec<Vec<BpfInsn>>, String> {
    let (default, rules) = match profile {
        Profile::Unconfined => return Ok(Vec::new()),
        Profile::Default => (SeccompAction::Allow, default_rules(caps)?),
        Profile::File(path) => docker_profile(path, caps)?,
    };
    compile(default, rules)
}

const EPERM: SeccompAction = SeccompAction::Errno(libc::EPERM as u32);

const SYS_CHROOT: u32 = 18;
const SYS_ADMIN: u32 = 21;
const SYS_BOOT: u32 = 22;
const SYS_MODULE: u32 = 16;
const SYS_RAWIO: u32 = 17;
const SYS_PTRACE: u32 = 19;
const SYS_PACCT: u32 = 20;
const SYS_NICE: u32 = 23;
const SYS_TIME: u32 = 25;
const SYS_TTY_CONFIG: u32 = 26;
const SYSLOG: u32 = 34;
const DAC_READ_SEARCH: u32 = 2;
const PERFMON: u32 = 38;
const BPF: u32 = 39;

/// Calls refused outright unless the container has one of the listed
/// capabilities (an empty list: refused whatever it has).
const REFUSED: &[(&[i64], &[u32])] = &[
    (
        &[
            libc::SYS_add_key,
            libc::SYS_keyctl,
            libc::SYS_request_key,
            libc::SYS_uselib,
            libc::SYS_ustat,
            libc::SYS_sysfs,
            libc::SYS__sysctl,
            libc::SYS_nfsservctl,
            libc::SYS_pivot_root,
            libc::SYS_swapon,
            libc::SYS_swapoff,
        ],
        &[],
    ),
    (
        &[
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_setns,
            libc::SYS_unshare,
            libc::SYS_quotactl,
            libc::SYS_lookup_dcookie,
            libc::SYS_fanotify_init,
            libc::SYS_name_to_handle_at,
            libc::SYS_fsopen,
            libc::SYS_fsconfig,
            libc::SYS_fsmount,
            libc::SYS_fspick,
            libc::SYS_move_mount,
            libc::SYS_open_tree,
            libc::SYS_mount_setattr,
        ],
        &[SYS_ADMIN],
    ),
    (&[libc::SYS_bpf], &[SYS_ADMIN, BPF]),
    (&[libc::SYS_perf_event_open], &[SYS_ADMIN, PERFMON]),
    (
        &[
            libc::SYS_reboot,
            libc::SYS_kexec_load,
            libc::SYS_kexec_file_load,
        ],
        &[SYS_BOOT],
    ),
    (
        &[
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
        ],
        &[SYS_MODULE],
    ),
    (&[libc::SYS_iopl, libc::SYS_ioperm], &[SYS_RAWIO]),
    (
        &[
            libc::SYS_kcmp,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_pidfd_getfd,
            libc::SYS_process_madvise,
            libc::SYS_userfaultfd,
        ],
        &[SYS_PTRACE],
    ),
    (&[libc::SYS_acct], &[SYS_PACCT]),
    (
        &[
            libc::SYS_get_mempolicy,
            libc::SYS_set_mempolicy,
            libc::SYS_mbind,
            libc::SYS_move_pages,
            libc::SYS_migrate_pages,
        ],
        &[SYS_NICE],
    ),
    (
        &[
            libc::SYS_settimeofday,
            libc::SYS_clock_settime,
            libc::SYS_clock_adjtime,
        ],
        &[SYS_TIME],
    ),
    (&[libc::SYS_vhangup], &[SYS_TTY_CONFIG]),
    (&[libc::SYS_chroot], &[SYS_CHROOT]),
    (&[libc::SYS_syslog], &[SYSLOG]),
    (&[libc::SYS_open_by_handle_at], &[DAC_READ_SEARCH]),
];

/// The namespace flags clone(2) may not carry without CAP_SYS_ADMIN.
const NAMESPACE_FLAGS: &[i32] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// The personalities a process may ask for (Linux's own, with and
/// without ADDR_NO_RANDOMIZE and UNAME26, and the query 0xffffffff).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

fn condition(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| format!("seccomp condition: {e}"))
}

fn default_rules(caps: &[u32]) -> Result<Vec<Rule>, String> {
    let has = |needed: &[u32]| needed.iter().any(|c| caps.contains(c));
    let mut rules = Vec::new();
    for (calls, unlock) in REFUSED {
        if has(unlock) {
            continue;
        }
        rules.extend(calls.iter().map(|nr| Rule {
            nr: *nr,
            action: EPERM,
            conditions: Vec::new(),
        }));
    }
    if !has(&[SYS_ADMIN]) {
        for flag in NAMESPACE_FLAGS {
            let flag = *flag as u64;
            rules.push(Rule {
                nr: libc::SYS_clone,
                action: EPERM,
                conditions: vec![condition(0, SeccompCmpOp::MaskedEq(flag), flag)?],
            });
        }
        // clone3's flags are in memory, out of a filter's reach: ENOSYS
        // sends the C library back to clone, which is checked.
        rules.push(Rule {
            nr: libc::SYS_clone3,
            action: SeccompAction::Errno(libc::ENOSYS as u32),
            conditions: Vec::new(),
        });
    }
    rules.push(Rule {
        nr: libc::SYS_socket,
        action: EPERM,
        // The family is an int: the kernel drops the upper half, so the
        // filter must too (0x1_0000_0028 is AF_VSOCK to the kernel).
        conditions: vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_VSOCK as u64,
        )
        .map_err(|e| format!("seccomp condition: {e}"))?],
    });
    let others = PERSONALITIES
        .iter()
        .map(|p| {
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *p)
                .map_err(|e| format!("seccomp condition: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.push(Rule {
        nr: libc::SYS_personality,
        action: EPERM,
        conditions: others,
    });
    Ok(rules)
}

/// A profile in Docker's format (the fields that matter here).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    syscalls: Vec<DockerRule>,
    #[serde(default)]
    listener_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerRule {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<DockerArg>>,
    #[serde(default)]
    includes: DockerFilter,
    #[serde(default)]
    excludes: DockerFilter,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerArg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerFilter {
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// The guest kernel's version, for `minKernel`.
const GUEST_KERNEL: (u32, u32) = (6, 1);

fn action(name: &str, errno: Option<u32>, default_errno: u32) -> Result<SeccompAction, String> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno.unwrap_or(default_errno)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno.unwrap_or(0)),
        "SCMP_ACT_LOG" => SeccompAction::Log,
        other => {
            return Err(format!(
                "seccomp action {other:?} is not supported (SCMP_ACT_ALLOW, _ERRNO, _KILL, _KILL_THREAD, _KILL_PROCESS, _TRAP, _TRACE, _LOG)"
            ))
        }
    })
}

fn is_ours(arch: &str) -> bool {
    matches!(arch, "amd64" | "x86_64" | "SCMP_ARCH_X86_64")
}

/// Whether a rule applies to this container (its capabilities, x86-64,
/// the guest's kernel).
fn applies(r: &DockerRule, caps: &[u32]) -> Result<bool, String> {
    let cap = |n: &String| {
        super::capabilities::number(n).ok_or_else(|| format!("unknown capability {n:?}"))
    };
    for n in r.includes.caps.iter().flatten() {
        if !caps.contains(&cap(n)?) {
            return Ok(false);
        }
    }
    for n in r.excludes.caps.iter().flatten() {
        if caps.contains(&cap(n)?) {
            return Ok(false);
        }
    }
    if let Some(a) = &r.includes.arches {
        if !a.is_empty() && !a.iter().any(|x| is_ours(x)) {
            return Ok(false);
        }
    }
    if r.excludes.arches.iter().flatten().any(|x| is_ours(x)) {
        return Ok(false);
    }
    if let Some(k) = &r.includes.min_kernel {
        let mut parts = k.split('.').map(|p| p.parse::<u32>());
        match (parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor))) => {
                if (major, minor) > GUEST_KERNEL {
                    return Ok(false);
                }
            }
            _ => return Err(format!("invalid minKernel {k:?}: use MAJOR.MINOR")),
        }
    }
    Ok(true)
}

fn docker_profile(path: &Path, caps: &[u32]) -> Result<(SeccompAction, Vec<Rule>), String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("reading the seccomp profile {}: {e}", path.display()))?;
    let p: DockerProfile = serde_json::from_slice(&text)
        .map_err(|e| format!("the seccomp profile {} is not valid: {e}", path.display()))?;
    let bad = |e: String| format!("the seccomp profile {}: {e}", path.display());
    if p.listener_path.as_deref().is_some_and(|l| !l.is_empty()) {
        return Err(bad(
            "a listenerPath (user notification) is not supported".into()
        ));
    }
    let default_errno = p.default_errno_ret.unwrap_or(libc::EPERM as u32);
    let default = action(&p.default_action, p.default_errno_ret, default_errno).map_err(bad)?;
    let mut rules = Vec::new();
    for r in &p.syscalls {
        if !applies(r, caps).map_err(bad)? {
            continue;
        }
        let act = action(&r.action, r.errno_ret, libc::EPERM as u32).map_err(bad)?;
        let mut conditions = Vec::new();
        for a in r.args.iter().flatten() {
            let (op, value) = match a.op.as_str() {
                "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, a.value),
                "SCMP_CMP_NE" => (SeccompCmpOp::Ne, a.value),
                "SCMP_CMP_LT" => (SeccompCmpOp::Lt, a.value),
                "SCMP_CMP_LE" => (SeccompCmpOp::Le, a.value),
                "SCMP_CMP_GT" => (SeccompCmpOp::Gt, a.value),
                "SCMP_CMP_GE" => (SeccompCmpOp::Ge, a.value),
                "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(a.value), a.value_two),
                other => return Err(bad(format!("unknown comparison {other:?}"))),
            };
            conditions.push(condition(a.index, op, value).map_err(bad)?);
        }
        // Names this architecture does not have are skipped, as libseccomp
        // does.
        for name in r.names.iter().chain(&r.name) {
            if let Ok(nr) = syscalls::Sysno::from_str(name) {
                rules.push(Rule {
                    nr: nr.id() as i64,
                    action: act.clone(),
                    conditions: conditions.clone(),
                });
            }
        }
    }
    Ok((default, rules))
}

/// The rules as a map for one seccompiler filter: a call with any
/// unconditional rule matches whatever its arguments.
fn rule_map(rules: &[&Rule]) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for r in rules {
        let entry = map.entry(r.nr).or_insert_with(|| Some(Vec::new()));
        if r.conditions.is_empty() {
            *entry = None;
        } else if let Some(list) = entry {
            list.push(
                SeccompRule::new(r.conditions.clone()).map_err(|e| format!("seccomp rule: {e}"))?,
            );
        }
    }
    Ok(map
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect())
}

fn program(
    rules: &[&Rule],
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<Vec<BpfInsn>, String> {
    let filter = SeccompFilter::new(rule_map(rules)?, mismatch, on_match, TargetArch::x86_64)
        .map_err(|e| format!("seccomp filter: {e}"))?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e| format!("compiling the seccomp filter: {e}"))?;
    Ok(prog
        .into_iter()
        .map(|i| BpfInsn(i.code, i.jt, i.jf, i.k))
        .collect())
}

/// The stack of filters (see the module's comment).
fn compile(default: SeccompAction, rules: Vec<Rule>) -> Result<Vec<Vec<BpfInsn>>, String> {
    let mut out = Vec::new();
    if default != SeccompAction::Allow {
        let all: Vec<&Rule> = rules.iter().collect();
        out.push(program(&all, default.clone(), SeccompAction::Allow)?);
    }
    let mut actions: Vec<SeccompAction> = Vec::new();
    for r in &rules {
        if r.action != SeccompAction::Allow && r.action != default && !actions.contains(&r.action) {
            actions.push(r.action.clone());
        }
    }
    for a in actions {
        let these: Vec<&Rule> = rules.iter().filter(|r| r.action == a).collect();
        out.push(program(&these, SeccompAction::Allow, a)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_profile(name: &str, body: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("vm-seccomp-{name}-{}", std::process::id()));
        std::fs::write(&p, body).expect("write");
        p
    }

    /// Installs the default profile (Docker's default capabilities) in a
    /// forked child and makes the calls a container would use to get
    /// around it; the child's exit status says which one got through.
    #[test]
    fn default_profile_refuses_in_a_real_filter() {
        let programs: Vec<seccompiler::BpfProgram> =
            filters(&Profile::Default, agent_protocol::DEFAULT_CAPABILITIES)
                .expect("default")
                .into_iter()
                .map(|p| {
                    p.into_iter()
                        .map(|BpfInsn(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
                        .collect()
                })
                .collect();
        // SAFETY: the test's child only makes system calls and _exits.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            // SAFETY: system calls on plain arguments, then _exit; the
            // programs live in memory the child shares.
            nix::unistd::ForkResult::Child => unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(2);
                }
                for p in &programs {
                    if seccompiler::apply_filter(p).is_err() {
                        libc::_exit(3);
                    }
                }
                let refused = |r: libc::c_long| {
                    r == -1 && *libc::__errno_location() == libc::EPERM
                };
                // AF_VSOCK, also with junk in the int's upper half.
                let vsock = libc::AF_VSOCK as libc::c_long;
                for family in [vsock, vsock | (1 << 32)] {
                    if !refused(libc::syscall(libc::SYS_socket, family, libc::SOCK_STREAM, 0)) {
                        libc::_exit(4);
                    }
                }
                if !refused(libc::syscall(libc::SYS_keyctl, 0, 0, 0)) {
                    libc::_exit(5);
                }
                if !refused(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS)) {
                    libc::_exit(6);
                }
                let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_long;
                if !refused(libc::syscall(libc::SYS_clone, flags | (1 << 40), 0, 0, 0, 0)) {
                    libc::_exit(7);
                }
                // Allowed: an ordinary socket.
                let fd = libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0);
                libc::_exit(if fd >= 0 { 0 } else { 8 });
            },
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).expect("wait");
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn default_profile_compiles_and_follows_capabilities() {
        let caps = agent_protocol::DEFAULT_CAPABILITIES;
        let f = filters(&Profile::Default, caps).expect("default");
        // EPERM and ENOSYS (clone3): two filters.
        assert_eq!(f.len(), 2);
        let mut with_admin = caps.to_vec();
        with_admin.push(SYS_ADMIN);
        let g = filters(&Profile::Default, &with_admin).expect("admin");
        assert_eq!(g.len(), 1, "no clone3 filter with CAP_SYS_ADMIN");
        assert!(g[0].len() < f[0].len());
        assert!(filters(&Profile::Unconfined, caps)
            .expect("none")
            .is_empty());
    }

    #[test]
    fn docker_profiles() {
        let p = write_profile(
            "ok",
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
                "architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[
                  {"names":["read","write","exit_group","arm_fadvise64_64"],"action":"SCMP_ACT_ALLOW"},
                  {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                  {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
                  {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                  {"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
                  {"names":["ptrace"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"4.8"}},
                  {"names":["s390_pci_mmio_read"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["s390x"]}}
                ]}"#,
        );
        let f = filters(&Profile::File(p.clone()), &[]).expect("profile");
        // The allow-list under EPERM, then clone3's ENOSYS.
        assert_eq!(f.len(), 2);
        let (_, rules) = docker_profile(&p, &[]).expect("rules");
        assert!(rules.iter().any(|r| r.nr == libc::SYS_ptrace));
        assert!(!rules.iter().any(|r| r.nr == libc::SYS_mount));
        let (_, rules) = docker_profile(&p, &[SYS_ADMIN]).expect("rules");
        assert!(rules.iter().any(|r| r.nr == libc::SYS_mount));
        let _ = std::fs::remove_file(&p);

        for (name, body, want) in [
            ("bad-json", "{", "not valid"),
            (
                "bad-action",
                r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#,
                "not supported",
            ),
            (
                "bad-op",
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_SOMETIMES"}]}]}"#,
                "unknown comparison",
            ),
            (
                "bad-index",
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":9,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
                "condition",
            ),
        ] {
            let p = write_profile(name, body);
            let e = filters(&Profile::File(p.clone()), &[]).expect_err(name);
            assert!(e.contains(want), "{name}: {e}");
            let _ = std::fs::remove_file(&p);
        }
        let e = filters(&Profile::File("/no/such/profile.json".into()), &[]).expect_err("missing");
        assert!(e.contains("/no/such/profile.json"), "{e}");
    }

    #[test]
    fn a_long_allow_list_compiles() {
        // Every x86-64 call allowed under a default of ERRNO: long jumps.
        let rules: Vec<Rule> = (0..450)
            .map(|nr| Rule {
                nr,
                action: SeccompAction::Allow,
                conditions: Vec::new(),
            })
            .collect();
        let f = compile(EPERM, rules).expect("long");
        assert_eq!(f.len(), 1);
        assert!(f[0].len() > 450);
    }
}
