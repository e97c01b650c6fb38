//! What the VMM child gives up before it runs any guest code: it is the
//! one process of a container that a guest escaping the VM would find
//! itself in, so it keeps only what running the VM needs. It enters the
//! jail once every file it needs is open (see `vmm::VmConfig::confine`).
//!
//! - Its own network, IPC, UTS and mount namespaces (a non-root caller's
//!   VMM makes a user namespace first, mapping only its own uid and gid).
//!   The VMM talks to the world through descriptors and Unix sockets
//!   named by path, which work across network namespaces; it needs no
//!   network of its own.
//! - A root of its own: `pivot_root` into the run's jail directory, which
//!   holds only the vsock sockets, mounted read-only, no devices, no
//!   executables; the host's file system is unmounted from its view.
//! - Under root, a uid and gid of its own ([`vmm_uid`]) with no
//!   supplementary groups: it owns no file on the host, and the sockets
//!   it must reach are given to that uid.
//! - `no_new_privs`: no exec can give privileges back.
//! - No capabilities at all: the bounding set is emptied, then the
//!   permitted, effective and inheritable sets.
//! - Limits: no core dumps (guest memory would be in them), a cap on open
//!   descriptors, and on the size of a file it writes.

use std::io;
use std::path::{Path, PathBuf};

/// The most descriptors a VMM may have open: its disks (an image of up
/// to 1,024 layers is one disk of as many files), vsock connections (at
/// most 256), event descriptors and sockets.
const MAX_FILES: u64 = 4096;

/// The first of the uids (and gids) a root-run VMM takes: the VMM of the
/// monitor with pid P runs as `UID_BASE + P`. Pids are unique among
/// running processes and below 2^22, so no two VMMs share an id, and the
/// range (1,610,612,736 to 1,614,807,039) is clear of the ids that
/// distributions hand out to users, system services and subordinate id
/// ranges (`/etc/subuid` starts at 100,000 in steps of 65,536).
pub const UID_BASE: u32 = 0x6000_0000;

/// Where the VMM is jailed and as whom.
#[derive(Debug, Clone)]
pub struct Jail {
    /// Its root: a directory only for it (the run's vsock sockets).
    pub root: PathBuf,
    /// The uid and gid it takes; None keeps the caller's (a non-root
    /// caller, whose user namespace maps only its own).
    pub uid: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Step {
        what: &'static str,
        source: io::Error,
    },
    #[error(
        "the VMM cannot have namespaces of its own here ({0}): unprivileged user namespaces \
         are off on this host (sysctl kernel.unprivileged_userns_clone or \
         user.max_user_namespaces, or AppArmor's kernel.apparmor_restrict_unprivileged_userns), \
         or vm runs in a container without CAP_SYS_ADMIN. Allow them, run vm as root, or set \
         {ALLOW_NO_NAMESPACES}=1 to run the VMM without its own namespaces and root (a guest \
         that escaped the VM would then see the host's files as this user)"
    )]
    NoNamespaces(String),
}

/// Set to 1 to let the VMM run where namespaces cannot be made.
pub const ALLOW_NO_NAMESPACES: &str = "VM_ALLOW_NO_NAMESPACES";

fn step<E: Into<io::Error>>(what: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Step {
        what,
        source: e.into(),
    }
}

/// The uid (and gid) this process's VMMs run as: a uid of their own when
/// it runs as root and that id exists here (root of a user namespace
/// that maps fewer ids has none to give), none (the caller's own)
/// otherwise.
///
/// Worked out once per process, so that the jail and every socket given
/// to the VMM agree; an error (the id maps cannot be read) fails the
/// start rather than leave the VMM root.
pub fn vmm_uid() -> Result<Option<u32>, String> {
    type Cached = Option<(u32, Result<Option<u32>, String>)>;
    static CACHE: std::sync::Mutex<Cached> = std::sync::Mutex::new(None);
    let pid = std::process::id();
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    match &*cache {
        Some((p, v)) if *p == pid => v.clone(),
        _ => {
            let v = own_uid(pid);
            *cache = Some((pid, v.clone()));
            v
        }
    }
}

fn own_uid(pid: u32) -> Result<Option<u32>, String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    // pid_max is at most 2^22, so this cannot overflow.
    let id = UID_BASE + pid;
    let mapped = |file: &str| {
        std::fs::read_to_string(file)
            .map(|map| id_is_mapped(&map, id))
            .map_err(|e| format!("{file}: {e}"))
    };
    Ok((mapped("/proc/self/uid_map")? && mapped("/proc/self/gid_map")?).then_some(id))
}

/// Whether `id` is inside one of the ranges of a `uid_map`/`gid_map`
/// (lines of "inside outside count").
fn id_is_mapped(map: &str, id: u32) -> bool {
    map.lines().any(|l| {
        let f: Vec<u64> = l.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        matches!(f.as_slice(), [inside, _, count] if (*inside..inside + count).contains(&u64::from(id)))
    })
}

/// Makes the jail's root directory afresh: owned by root (or the caller),
/// searchable by the VMM's uid and writable by no one else. Its parent
/// (the run's directory) must be the caller's and writable by no one
/// else, or whoever could write it could swap the jail for a link.
pub fn make_root(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let parent = root.parent().unwrap_or(Path::new("/"));
    let meta = std::fs::symlink_metadata(parent)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} must be a directory of this user's that no one else can write",
            parent.display()
        )));
    }
    match std::fs::remove_dir_all(root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::DirBuilder::new().mode(0o711).create(root)?;
    // Whatever the umask said.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))
}

/// The vsock device's socket in a jail's root; the guest's connections
/// to port P arrive at `<that>_P`.
pub fn vsock_path(root: &Path) -> PathBuf {
    root.join("vsock")
}

/// Gives the socket at `path` to the VMM's uid (when it has one of its
/// own), so that it alone, besides root, can connect to it.
pub fn give_socket(path: &Path) -> io::Result<()> {
    if let Some(uid) = vmm_uid().map_err(io::Error::other)? {
        // The socket itself, never what a link there names.
        std::os::unix::fs::lchown(path, Some(uid), Some(uid))?;
    }
    Ok(())
}

/// Confines the calling process (the VMM child, single-threaded, with its
/// working directory in `jail.root`). `max_file_size` is the largest file
/// it may write: its largest disk.
pub fn enter(jail: &Jail, max_file_size: u64) -> Result<(), Error> {
    let mut uid = jail.uid;
    match namespaces() {
        Ok(own_user_ns) => {
            if own_user_ns && nix::unistd::geteuid().is_root() {
                // Root without CAP_SYS_ADMIN (in a container) got its
                // namespaces inside a user namespace of its own, which
                // maps only root: it keeps that uid, with no capability
                // outside.
                uid = None;
            }
            pivot(&jail.root).map_err(step("the VMM's root"))?
        }
        Err(e) if e.raw_os_error().is_some_and(no_namespaces) => {
            if std::env::var(ALLOW_NO_NAMESPACES).as_deref() != Ok("1") {
                return Err(Error::NoNamespaces(e.to_string()));
            }
            eprintln!("vm: the VMM runs without namespaces or a root of its own ({e})");
        }
        Err(e) => return Err(step("new namespaces for the VMM")(e)),
    }
    limits(max_file_size).map_err(step("limits for the VMM"))?;
    drop_bounding_set().map_err(step("the VMM's capability bounding set"))?;
    if let Some(uid) = uid {
        become_user(uid).map_err(step("the VMM's uid"))?;
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(step("no_new_privs")(io::Error::last_os_error()));
    }
    drop_capabilities().map_err(step("dropping the VMM's capabilities"))
}

/// Errors that mean this host gives the caller no namespaces.
fn no_namespaces(errno: i32) -> bool {
    [libc::EPERM, libc::EACCES, libc::ENOSPC].contains(&errno)
}

/// New namespaces, with mounts made private; true when they are inside a
/// user namespace of the VMM's own.
fn namespaces() -> io::Result<bool> {
    use nix::sched::{unshare, CloneFlags};
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    let mut flags = CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWNS;
    if !uid.is_root() {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    let own_user_ns = match unshare(flags) {
        Ok(()) => !uid.is_root(),
        // Root without CAP_SYS_ADMIN: a user namespace first gives it.
        Err(nix::errno::Errno::EPERM) if uid.is_root() => {
            unshare(flags | CloneFlags::CLONE_NEWUSER)?;
            true
        }
        Err(e) => return Err(e.into()),
    };
    if own_user_ns {
        // The caller's own ids, and nothing else, inside.
        std::fs::write("/proc/self/setgroups", "deny")?;
        std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
        std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    }
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    Ok(own_user_ns)
}

/// Makes `root` the process's `/`, read-only, with the host's tree
/// detached from its view.
fn pivot(root: &Path) -> io::Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    // pivot_root wants a mount point.
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    nix::unistd::chdir(root)?;
    // The old root ends up stacked on "." and is then detached.
    nix::unistd::pivot_root(".", ".")?;
    umount2(".", MntFlags::MNT_DETACH)?;
    nix::unistd::chdir("/")?;
    // Read-only, no devices, no set-uid, nothing to execute. In a user
    // namespace the flags the mount already had are locked: keep them.
    let had = nix::sys::statvfs::statvfs("/")?.flags();
    use nix::sys::statvfs::FsFlags;
    let mut flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    for (f, m) in [
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if had.contains(f) {
            flags |= m;
        }
    }
    // Neither: strictatime, which a remount must ask for by name (the
    // kernel's default is relatime).
    if !had.intersects(FsFlags::ST_NOATIME | FsFlags::ST_RELATIME) {
        flags |= MsFlags::MS_STRICTATIME;
    }
    mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)?;
    Ok(())
}

/// Takes `id` as every uid and gid, with no supplementary groups.
fn become_user(id: u32) -> io::Result<()> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    setgroups(&[])?;
    let gid = Gid::from_raw(id);
    setresgid(gid, gid, gid)?;
    let uid = Uid::from_raw(id);
    setresuid(uid, uid, uid)?;
    Ok(())
}

fn limits(max_file_size: u64) -> io::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    // A write past the limit fails (EFBIG) instead of killing the VMM: its
    // stderr may be a log file that has grown past it.
    // SAFETY: ignoring a signal installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    // MAX_FILES, or less if the caller's hard limit is lower.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(
        Resource::RLIMIT_NOFILE,
        hard.min(MAX_FILES),
        hard.min(MAX_FILES),
    )?;
    let (soft, hard) = getrlimit(Resource::RLIMIT_FSIZE)?;
    setrlimit(
        Resource::RLIMIT_FSIZE,
        soft.min(max_file_size),
        hard.min(max_file_size),
    )?;
    Ok(())
}

/// `struct __user_cap_header_struct` and `__user_cap_data_struct` of
/// <linux/capability.h> (version 3: two data structs, 64 capabilities).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Empties the capability bounding set (that needs CAP_SETPCAP, so it
/// comes before the uid changes).
fn drop_bounding_set() -> io::Result<()> {
    let last: u64 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } != 1 {
            continue; // not in the set (or not known to this kernel)
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                // Without CAP_SETPCAP the bounding set stays; the
                // capabilities themselves still go, and no_new_privs
                // keeps an exec from regaining any.
                eprintln!("vm: the VMM cannot empty its capability bounding set ({e})");
                break;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Empties the ambient, permitted, effective and inheritable sets.
fn drop_capabilities() -> io::Result<()> {
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
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a header and two data structs laid out as the
    // kernel's; both live for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_looked_up_in_the_map() {
        let host = "         0          0 4294967295\n";
        assert!(id_is_mapped(host, UID_BASE + 4_000_000));
        // An LXD-style container: a billion ids from 0.
        let lxd = "         0    1000000 1000000000\n";
        assert!(!id_is_mapped(lxd, UID_BASE + 1));
        assert!(id_is_mapped(lxd, 999_999_999));
        assert!(!id_is_mapped("", 0));
        assert!(id_is_mapped("0 0 1\n1000 100000 65536\n", 1000 + 65535));
        assert!(!id_is_mapped("0 0 1\n1000 100000 65536\n", 1000 + 65536));
    }

    #[test]
    fn a_jail_root_is_remade_and_its_parent_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("vm-jail-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let root = dir.join("jail");
        std::fs::create_dir(&root).expect("old jail");
        std::fs::write(root.join("stale"), "x").expect("stale file");
        make_root(&root).expect("jail root");
        let meta = std::fs::metadata(&root).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o777, 0o711);
        assert_eq!(std::fs::read_dir(&root).expect("list").count(), 0);
        // A parent others can write is refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(make_root(&root).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
