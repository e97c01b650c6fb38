//! Confining a container's process, in the order the kernel needs: the
//! bounding set and resource limits while we are still fully privileged,
//! `no_new_privs`, the seccomp filters (installing one without
//! `no_new_privs` takes CAP_SYS_ADMIN, which the switch of user drops),
//! then the user, then the capability sets the process keeps.

use agent_protocol::Security;

use crate::container::Fail;

fn fail(what: &str, e: impl std::fmt::Display) -> Fail {
    Fail {
        code: 126,
        msg: format!("{what}: {e}"),
    }
}

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Before the switch of user: bounding set, limits, `no_new_privs`,
/// seccomp, and PR_SET_KEEPCAPS so that the permitted set survives the
/// switch for [`after_user`] to trim.
pub fn before_user(sec: &Security) -> Result<(), Fail> {
    drop_bounding(&sec.capabilities)?;
    for r in &sec.rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: setrlimit reads one plain struct that lives on our stack.
        if unsafe { libc::setrlimit(r.resource as _, &lim) } != 0 {
            return Err(fail(
                &format!("setting resource limit {}", r.resource),
                last_error(),
            ));
        }
    }
    if sec.no_new_privileges {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(fail("setting no_new_privs", last_error()));
        }
    }
    for filter in &sec.seccomp {
        install_filter(filter)?;
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(fail("PR_SET_KEEPCAPS", last_error()));
    }
    Ok(())
}

/// After the switch of user: root keeps the container's capabilities
/// (permitted and effective), anyone else none; inheritable and ambient
/// are empty either way, so only file capabilities (within the bounding
/// set) can give a program more.
pub fn after_user(sec: &Security, uid: u32) -> Result<(), Fail> {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let keep = if uid == 0 { mask(&sec.capabilities) } else { 0 };
    set_capabilities(keep)
}

/// The capability numbers as a 64-bit mask (numbers past 63 ignored).
fn mask(caps: &[u32]) -> u64 {
    caps.iter()
        .filter(|c| **c < 64)
        .fold(0u64, |m, c| m | (1u64 << c))
}

/// Every capability not in `keep` leaves the bounding set.
pub fn drop_bounding(keep: &[u32]) -> Result<(), Fail> {
    for cap in 0..64u32 {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if rc != 0 {
            let e = last_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break; // past the last capability this kernel knows
            }
            return Err(fail(&format!("dropping capability {cap}"), e));
        }
    }
    Ok(())
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// capset(2): permitted and effective `caps`, inheritable empty.
fn set_capabilities(caps: u64) -> Result<(), Fail> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    for (i, d) in data.iter_mut().enumerate() {
        let word = (caps >> (32 * i)) as u32;
        d.effective = word;
        d.permitted = word;
    }
    // SAFETY: capset reads a version 3 header and two data structs, all
    // of which live on our stack with the layout the kernel expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(fail("setting the capabilities", last_error()));
    }
    Ok(())
}

/// Installs one seccomp filter.
fn install_filter(insns: &[agent_protocol::BpfInsn]) -> Result<(), Fail> {
    let mut prog: Vec<libc::sock_filter> = insns
        .iter()
        .map(|i| libc::sock_filter {
            code: i.0,
            jt: i.1,
            jf: i.2,
            k: i.3,
        })
        .collect();
    let len = u16::try_from(prog.len())
        .map_err(|_| fail("seccomp filter", "longer than 65535 instructions"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: the kernel copies the program during the call; `fprog`
    // points to `prog`, which outlives it.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(fail("installing the seccomp filter", last_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask(&[0, 1, 63, 64, 100]), 0b11 | 1 << 63);
        assert_eq!(mask(agent_protocol::DEFAULT_CAPABILITIES), 0xa80425fb);
    }
}
