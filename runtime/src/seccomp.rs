//! The VMM child's system call filter, installed after the jail (see
//! `jail`) and before any guest code runs; every thread the VMM starts
//! afterwards inherits it. A call outside the list kills the whole process
//! with SIGSYS, which the monitor reports as a failure of the VMM.
//!
//! The list is what the VMM was seen to call under strace (`vm run` with
//! stdin, a terminal, a size limit and a Debian image's first run, and a
//! detached container's `exec`, `cp`, `top`, `stats`, `pause`, `logs`,
//! `export` and `stop`), plus what Rust's runtime calls on rare paths (a
//! thread's start and end, a panic's abort). What a VMM never needs stays
//! out: namespaces (`unshare`, `setns`, `clone` with a namespace flag),
//! `mount`, `ptrace`, `bpf`, `keyctl`, `execve`, sockets other than Unix.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// System calls allowed with any arguments.
const ALLOWED: &[i64] = &[
    // memory
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    // files and descriptors (disks, the kernel and initrd, /proc/self/fd)
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // the event loop
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // Unix sockets (vsock's host side); `socket` itself is below
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    // threads, time, signals
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// What a vCPU thread may do on top of that, once it runs: KVM_RUN and
/// the exits it serves (MMIO and port I/O into devices, which write to
/// eventfds and the console), memory, signals (the kick out of KVM_RUN),
/// and ending. No files, no sockets, no threads.
const VCPU_ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_futex,
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_close,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// `clone` flags that make new namespaces: a thread is made without them.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

fn rule(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(|e| format!("seccomp rule: {e}"))
}

/// `arg` (a 32-bit `int`/`unsigned int` in the kernel) is one of `values`.
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, String> {
    values
        .iter()
        .map(|&v| {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                .and_then(|c| SeccompRule::new(vec![c]))
                .map_err(|e| format!("seccomp rule: {e}"))
        })
        .collect()
}

/// The calls allowed only with certain arguments, for the process and,
/// with `vcpu`, for a vCPU thread:
/// - `ioctl`: the vCPU threads' KVM calls, and TUNSETOFFLOAD outside
///   them; no FIONBIO (sockets are made non-blocking when they are made),
///   no terminal or other device requests
///   (stderr may be the user's terminal);
/// - `fcntl`: reading flags and duplicating; no F_SETFL, which could take
///   O_APPEND off a log or set O_NONBLOCK on a shared terminal;
/// - `tgkill`: this process's own threads only (the vCPU kick, an abort).
fn argument_rules(vcpu: bool) -> Result<Vec<(i64, Vec<SeccompRule>)>, String> {
    let mut ioctls: Vec<u64> = vmm::vcpu_thread_ioctls().to_vec();
    if !vcpu {
        // (TUNSETOFFLOAD: a network device tells its TAP what offloads
        // the guest takes, when the guest activates it.)
        ioctls.push(libc::TUNSETOFFLOAD);
    }
    let mut rules = vec![
        (libc::SYS_ioctl, one_of(1, &ioctls)?),
        (
            libc::SYS_tgkill,
            vec![rule(0, SeccompCmpOp::Eq, u64::from(std::process::id()))?],
        ),
    ];
    if !vcpu {
        let fcntls = [
            libc::F_GETFD,
            libc::F_SETFD,
            libc::F_GETFL,
            libc::F_DUPFD_CLOEXEC,
        ];
        rules.push((libc::SYS_fcntl, one_of(1, &fcntls.map(|c| c as u64))?));
    }
    Ok(rules)
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .and_then(|f| f.try_into())
        .map_err(|e| format!("seccomp filter: {e}"))
}

/// The two filters: the first makes `clone3` fail with ENOSYS (its flags
/// sit in memory, where a filter cannot look, and the C library then
/// falls back to `clone`, whose flags it can); the second allows the list
/// and kills the process for anything else.
fn programs() -> Result<[BpfProgram; 2], String> {
    let no_clone3 = compile(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    rules.extend(argument_rules(false)?);
    // clone3 is answered by the first filter; allowed here so that its
    // answer, not a kill, is what the caller sees.
    rules.insert(libc::SYS_clone3, Vec::new());
    rules.insert(
        libc::SYS_clone,
        vec![rule(0, SeccompCmpOp::MaskedEq(NAMESPACE_FLAGS), 0)?],
    );
    rules.insert(
        libc::SYS_socket,
        vec![rule(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?],
    );
    rules.insert(
        libc::SYS_prctl,
        vec![
            rule(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?,
            rule(0, SeccompCmpOp::Eq, libc::PR_GET_NAME as u64)?,
            rule(0, SeccompCmpOp::Eq, libc::PR_GET_DUMPABLE as u64)?,
            // A vCPU thread narrowing itself further (only ever more
            // restrictive).
            rule(0, SeccompCmpOp::Eq, libc::PR_SET_NO_NEW_PRIVS as u64)?,
        ],
    );
    rules.insert(
        libc::SYS_seccomp,
        vec![rule(
            0,
            SeccompCmpOp::Eq,
            u64::from(libc::SECCOMP_SET_MODE_FILTER),
        )?],
    );
    let allow_list = compile(rules, SeccompAction::KillProcess, SeccompAction::Allow)?;
    Ok([no_clone3, allow_list])
}

/// The vCPU threads' own filter, on top of the process's.
fn vcpu_program() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        VCPU_ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    rules.extend(argument_rules(true)?);
    compile(rules, SeccompAction::KillProcess, SeccompAction::Allow)
}

/// Narrows the calling vCPU thread to [`VCPU_ALLOWED`] (the VMM calls it
/// first thing on each vCPU thread).
pub fn install_vcpu() -> Result<(), String> {
    let program = vcpu_program()?;
    seccompiler::apply_filter(&program)
        .map_err(|e| format!("installing the vCPU seccomp filter: {e}"))
}

/// Installs the filters on the calling thread (the VMM child, before it
/// starts any other). Needs `no_new_privs` or CAP_SYS_ADMIN.
pub fn install() -> Result<(), String> {
    for p in programs()? {
        seccompiler::apply_filter(&p)
            .map_err(|e| format!("installing the VMM's seccomp filter: {e}"))?;
    }
    // For the tests: a call outside the list, to show how its end is
    // reported.
    if std::env::var_os("VM_SECCOMP_SELFTEST").is_some() {
        // SAFETY: getppid takes no arguments; the filter kills the
        // process before it returns.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile() {
        let [a, b] = programs().expect("filters");
        assert!(!a.is_empty() && !b.is_empty());
        assert!(!vcpu_program().expect("vCPU filter").is_empty());
        // A vCPU thread is never allowed what the process is not.
        for nr in VCPU_ALLOWED {
            assert!(
                ALLOWED.contains(nr),
                "vCPU call {nr} is not in the process's list"
            );
        }
        // The list has no duplicates that would hide a missing entry.
        let mut seen = std::collections::HashSet::new();
        for nr in ALLOWED {
            assert!(seen.insert(nr), "system call {nr} listed twice");
        }
    }

    #[test]
    fn outside_the_list_is_death_by_sigsys_and_clone3_is_enosys() {
        use nix::sys::wait::{waitpid, WaitStatus};
        let programs = programs().expect("filters");
        // SAFETY: the child only makes system calls and leaves with
        // _exit; it allocates nothing and takes no lock.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                // SAFETY: system calls on plain arguments; the filters
                // live in memory the child shares until it exits.
                unsafe {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        libc::_exit(2);
                    }
                    for p in &programs {
                        if seccompiler::apply_filter(p).is_err() {
                            libc::_exit(3);
                        }
                    }
                    let r = libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize);
                    if r != -1 || *libc::__errno_location() != libc::ENOSYS {
                        libc::_exit(4);
                    }
                    // Allowed: goes on.
                    libc::syscall(libc::SYS_getpid);
                    // Not allowed: the end.
                    libc::syscall(libc::SYS_getppid);
                    libc::_exit(0);
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = waitpid(child, None).expect("wait");
                assert!(
                    matches!(
                        status,
                        WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
                    ),
                    "{status:?}"
                );
            }
        }
    }
}
