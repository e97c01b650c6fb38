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
    mkdir(&root.join("sys"))?;
    mnt(
        "sysfs",
        &root.join("sys"),
        Some("sysfs"),
        nosuid | MsFlags::MS_RDONLY,
        None,
    )?;

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
    mnt(
        "shm",
        &shm,
        Some("tmpfs"),
        nosuid,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
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
