//! The container's view of the file system, built inside its own mount
//! namespace: /proc, /sys (read-only), a small /dev, the /etc files, then
//! the root switched to the container's (and made read-only on request).

use std::os::unix::fs::symlink;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::init_spec::InitSpec;

type R = Result<(), String>;

fn mnt(src: &str, target: &Path, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) -> R {
    mount(Some(src), target, fstype, flags, data).map_err(|e| {
        format!(
            "mount {} on {}: {e}",
            fstype.unwrap_or(src),
            target.display()
        )
    })
}

fn mkdir(p: &Path) -> R {
    std::fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

/// Device nodes every container gets, as Docker's defaults.
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

pub fn prepare(spec: &InitSpec) -> R {
    let none = None::<&str>;
    // Nothing we mount here may leak back into the agent's namespace.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("making mounts private: {e}"))?;
    let root = Path::new(&spec.root);
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    mkdir(&root.join("proc"))?;
    mnt("proc", &root.join("proc"), Some("proc"), nosuid, None)?;
    let privileged = spec.options.privileged;
    let ro = if privileged {
        MsFlags::empty()
    } else {
        MsFlags::MS_RDONLY
    };
    mkdir(&root.join("sys"))?;
    mnt("sysfs", &root.join("sys"), Some("sysfs"), nosuid | ro, None)?;
    // The container's cgroup (the root of its cgroup namespace), with
    // its limits to read; writable only when privileged.
    mnt(
        "cgroup",
        &root.join("sys/fs/cgroup"),
        Some("cgroup2"),
        nosuid | ro,
        None,
    )?;
    sysctls(root, &spec.options.sysctls)?;
    if !privileged {
        confine_proc(root)?;
    }

    let dev = root.join("dev");
    mkdir(&dev)?;
    mnt(
        "tmpfs",
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )
        .map_err(|e| format!("mknod {}: {e}", p.display()))?;
        // mknod honours the umask; the mode must be exactly 0666.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &p,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| format!("chmod {}: {e}", p.display()))?;
    }
    let pts = dev.join("pts");
    mkdir(&pts)?;
    mnt(
        "devpts",
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let shm = dev.join("shm");
    mkdir(&shm)?;
    let shm_size = match spec.options.shm_size {
        0 => 64 << 20,
        n => n,
    };
    mnt(
        "shm",
        &shm,
        Some("tmpfs"),
        nosuid,
        Some(&format!("mode=1777,size={shm_size}")),
    )?;
    let mqueue = dev.join("mqueue");
    mkdir(&mqueue)?;
    mnt("mqueue", &mqueue, Some("mqueue"), nosuid, None)?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link)).map_err(|e| format!("symlink /dev/{link}: {e}"))?;
    }
    if spec.process.terminal {
        // Docker gives a terminal container its pty as /dev/console; the
        // init binds it there once it has opened the pty.
        let console = dev.join("console");
        std::fs::File::create(&console).map_err(|e| format!("create /dev/console: {e}"))?;
    }

    let etc = root.join("etc");
    mkdir(&etc)?;
    for name in ["hosts", "hostname", "resolv.conf"] {
        let target = etc.join(name);
        if std::fs::symlink_metadata(&target).is_err() {
            std::fs::File::create(&target).map_err(|e| format!("create /etc/{name}: {e}"))?;
        }
        let src = Path::new(&spec.etc_dir).join(name);
        mount(Some(&src), &target, none, MsFlags::MS_BIND, none)
            .map_err(|e| format!("bind /etc/{name}: {e}"))?;
    }

    switch_root(root)?;
    crate::volumes::mount_all(&spec.mounts)?;
    if spec.read_only {
        mount(
            none,
            "/",
            none,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            none,
        )
        .map_err(|e| format!("making the root read-only: {e}"))?;
    }
    Ok(())
}

/// Sets the namespaced sysctls (the runtime checked their names) in the
/// container's /proc, before it turns read-only.
fn sysctls(root: &Path, list: &[(String, String)]) -> R {
    for (name, value) in list {
        if name.contains('/') || name.split('.').any(|p| p.is_empty() || p == "..") {
            return Err(format!("invalid sysctl name {name:?}"));
        }
        let path = root.join("proc/sys").join(name.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| format!("sysctl {name}={value}: {e}"))?;
    }
    Ok(())
}

/// As Docker does for a container that is not privileged: parts of
/// /proc that reach the kernel as a whole are read-only, and some that
/// tell about it are hidden.
fn confine_proc(root: &Path) -> R {
    let none = None::<&str>;
    let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for p in [
        "proc/bus",
        "proc/fs",
        "proc/irq",
        "proc/sys",
        "proc/sysrq-trigger",
    ] {
        let target = root.join(p);
        if std::fs::symlink_metadata(&target).is_err() {
            continue;
        }
        mnt(
            &target.display().to_string(),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        mount(
            none,
            &target,
            none,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | locked,
            none,
        )
        .map_err(|e| format!("making /{p} read-only: {e}"))?;
    }
    for p in [
        "proc/acpi",
        "proc/asound",
        "proc/kcore",
        "proc/keys",
        "proc/latency_stats",
        "proc/sched_debug",
        "proc/scsi",
        "proc/timer_list",
        "proc/timer_stats",
        "sys/firmware",
    ] {
        let target = root.join(p);
        let Ok(meta) = std::fs::symlink_metadata(&target) else {
            continue;
        };
        if meta.is_dir() {
            mnt(
                "tmpfs",
                &target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | locked,
                Some("size=0"),
            )?;
        } else {
            mnt("/dev/null", &target, None, MsFlags::MS_BIND, None)?;
        }
    }
    Ok(())
}

/// Moves `root` over `/` and chroots into it. pivot_root(2) cannot leave
/// an initramfs, so this is switch_root's way; the old root is not
/// reachable by path from the container's namespace.
fn switch_root(root: &Path) -> R {
    nix::unistd::chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving the container root to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}
