//! Capability names, and `--cap-add`/`--cap-drop`/`--privileged` applied
//! to Docker's default set as Docker applies them.

use agent_protocol::DEFAULT_CAPABILITIES;

/// The kernel's capabilities by number (the guest kernel knows all).
const NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Every capability.
pub fn all() -> Vec<u32> {
    (0..NAMES.len() as u32).collect()
}

/// `CAP_NET_ADMIN`, `net_admin` or `NET_ADMIN` to its number; `ALL` is
/// not a capability here.
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

/// `CAP_CHOWN` for 0, as Docker's inspect and `/proc` readers show them.
pub fn name(cap: u32) -> String {
    NAMES
        .get(cap as usize)
        .map_or_else(|| format!("CAP_{cap}"), |n| format!("CAP_{n}"))
}

fn is_all(name: &str) -> bool {
    name.eq_ignore_ascii_case("ALL") || name.eq_ignore_ascii_case("CAP_ALL")
}

fn numbers(names: &[String]) -> Result<Vec<u32>, String> {
    names
        .iter()
        .filter(|n| !is_all(n))
        .map(|n| {
            number(n).ok_or_else(|| {
                format!("unknown capability: {n:?} (names as in capabilities(7), with or without CAP_, or ALL)")
            })
        })
        .collect()
}

/// The set a container gets: everything when privileged; else Docker's
/// rules: with `ALL` added, every capability but those dropped; with
/// `ALL` dropped, only those added; otherwise the defaults less those
/// dropped plus those added.
pub fn resolve(add: &[String], drop: &[String], privileged: bool) -> Result<Vec<u32>, String> {
    let added = numbers(add)?;
    let dropped = numbers(drop)?;
    if privileged {
        return Ok(all());
    }
    let mut caps: Vec<u32> = if add.iter().any(|n| is_all(n)) {
        all().into_iter().filter(|c| !dropped.contains(c)).collect()
    } else if drop.iter().any(|n| is_all(n)) {
        added
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| !dropped.contains(c))
            .chain(added)
            .collect()
    };
    caps.sort_unstable();
    caps.dedup();
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn names_and_numbers() {
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("sys_admin"), Some(21));
        assert_eq!(number("checkpoint_restore"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
        assert_eq!(name(13), "CAP_NET_RAW");
        assert_eq!(all().len(), 41);
    }

    #[test]
    fn docker_rules() {
        let d = resolve(&[], &[], false).expect("defaults");
        assert_eq!(d, DEFAULT_CAPABILITIES);
        let r = resolve(&v(&["NET_ADMIN"]), &v(&["CAP_CHOWN", "mknod"]), false).expect("r");
        assert!(r.contains(&12) && !r.contains(&0) && !r.contains(&27));
        let r = resolve(&v(&["NET_BIND_SERVICE"]), &v(&["ALL"]), false).expect("r");
        assert_eq!(r, [10]);
        let r = resolve(&v(&["all"]), &v(&["SYS_ADMIN"]), false).expect("r");
        assert_eq!(r.len(), 40);
        assert!(!r.contains(&21));
        assert_eq!(resolve(&[], &v(&["ALL"]), true).expect("p").len(), 41);
        let e = resolve(&v(&["CAP_FOO"]), &[], false).expect_err("unknown");
        assert!(e.contains("CAP_FOO"), "{e}");
    }
}
