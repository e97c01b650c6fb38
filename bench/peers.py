"""The reference VMMs the benchmarks compare with: QEMU's microvm machine
and Firecracker, each booting a kernel and initramfs bare to /init."""
import json
import os


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
