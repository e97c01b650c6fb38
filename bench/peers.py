"""The reference VMMs the benchmarks compare with: QEMU's microvm machine
and Firecracker, each booting a kernel and initramfs bare to /init."""
import json
import os
import shutil
import tempfile


def qemu_cmd(kernel, initrd, mib):
    # reboot=t: QEMU's microvm has no i8042; a triple fault with -no-reboot
    # ends it at once.
    return ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host",
            "-m", str(mib), "-smp", "1", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-serial", "stdio",
            "-kernel", kernel, "-initrd", initrd,
            "-append", "console=ttyS0 reboot=t panic=-1 quiet"]


# Firecracker's getting-started command line, with our console settings.
FC_BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off quiet"


def fc_cmd(firecracker, kernel, initrd, mib, scratch):
    """Firecracker without its API socket, from a config file per initramfs
    and size, written into `scratch`."""
    cfg = os.path.join(scratch, f"firecracker-{os.path.basename(initrd)}-{mib}.json")
    with open(cfg, "w") as f:
        json.dump({
            "boot-source": {"kernel_image_path": kernel, "initrd_path": initrd,
                            "boot_args": FC_BOOT_ARGS},
            "drives": [],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": mib},
        }, f)
    # Without its seccomp filters, as PLATFORM.md measured it: a build for
    # the gnu target has no filter policy of its own.
    return [firecracker, "--no-api", "--no-seccomp", "--config-file", cfg, "--level", "Error"]


def local_copies(a, names):
    """Points `a.<name>` for each of `names` (the binaries measured, the
    kernel, the initramfs) at a copy in a new local temporary directory,
    which it returns. The nested host's root file system and the
    checkout are this machine's over 9p, and an executable there pays 9p
    round trips for the pages each run touches (about 0.6 s of every
    `vm` command's start, measured), which a host running from its own
    disk does not. QEMU, a system package with many shared libraries,
    stays where it is: its column pays the 9p toll, so it flatters us."""
    local = tempfile.mkdtemp(prefix="vm-bench-local-")
    for name in names:
        src = getattr(a, name, None)
        if src:
            dst = os.path.join(local, f"{name}-{os.path.basename(src)}")
            shutil.copy2(src, dst)
            setattr(a, name, dst)
    return local
