"""Device benchmark driver (see bench/devices). Runs where KVM works."""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

DISK_MIB = 256
SEQ_MIB = 128
VSOCK_BYTES = 32 << 20
VSOCK_STREAMS = 4

GUEST_SCRIPT = f"""
for s in /sys/block/vd*/serial; do [ "$(cat $s)" = bench ] && d=$(basename $(dirname $s)); done
disk-bench /dev/$d {SEQ_MIB}
vsock-tool vsock:2:6000 put {VSOCK_BYTES} 1 {VSOCK_STREAMS}
vsock-tool vsock:2:6000 get {VSOCK_BYTES} 2 {VSOCK_STREAMS}
"""


def script_disk(path):
    data = GUEST_SCRIPT.encode() + b"\n"
    data += b"\n" * (-len(data) % 4096)
    with open(path, "wb") as f:
        f.write(data)


def run_ours(a, work):
    sock = os.path.join(work, "v.sock")
    server = subprocess.Popen([a.tool, "serve-unix", sock + "_6000"])
    try:
        cmd = [a.vm, "boot", "--kernel", a.kernel, "--initrd", a.initrd, "--memory", "512",
               "--disk", os.path.join(work, "disk.img") + ",id=bench",
               "--disk", os.path.join(work, "script.img") + ",ro,id=script",
               "--vsock", "3," + sock,
               "--cmdline", "console=ttyS0 quiet test.mode=script test.disk=auto"]
        return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    finally:
        server.kill()
        server.wait()
        for f in (sock,):
            if os.path.exists(f):
                os.remove(f)


def run_qemu(a, work):
    server = subprocess.Popen([a.tool, "serve-vsock", "6000"], stdout=subprocess.DEVNULL)
    try:
        cmd = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host",
               "-m", "512", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
               "-no-reboot", "-serial", "stdio", "-kernel", a.kernel, "-initrd", a.initrd,
               "-append", "console=ttyS0 reboot=t panic=-1 quiet test.mode=script test.disk=auto",
               "-drive", f"id=d0,file={work}/disk.img,format=raw,if=none",
               "-device", "virtio-blk-device,drive=d0,serial=bench",
               "-drive", f"id=d1,file={work}/script.img,format=raw,if=none,readonly=on",
               "-device", "virtio-blk-device,drive=d1,serial=script",
               "-device", "vhost-vsock-device,guest-cid=3"]
        return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    finally:
        server.kill()
        server.wait()


def parse(out):
    r = {}
    for m in re.finditer(r"disk-bench: (\S+) ([\d.]+) MiB/s ([\d.]+) IOPS", out):
        r[m.group(1)] = float(m.group(2))
        r[m.group(1) + " IOPS"] = float(m.group(3))
    for m in re.finditer(r"vsock-tool: (put|get) ok: \d+ streams, [\d.]+ MiB in [\d.]+ s, ([\d.]+) MiB/s", out):
        r["vsock guest->host" if m.group(1) == "put" else "vsock host->guest"] = float(m.group(2))
    return r


def main():
    ap = argparse.ArgumentParser()
    for name in ("vm", "kernel", "initrd", "tool"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    qemu_vsock = os.path.exists("/dev/vhost-vsock")
    results = {"vm": [], "qemu": []}
    with tempfile.TemporaryDirectory(prefix="vm-bench-") as work:
        script_disk(os.path.join(work, "script.img"))
        for i in range(a.rounds):
            order = [("vm", run_ours), ("qemu", run_qemu)]
            if i % 2:
                order.reverse()
            for name, fn in order:
                with open(os.path.join(work, "disk.img"), "wb") as f:
                    f.truncate(DISK_MIB << 20)
                p = fn(a, work)
                r = parse(p.stdout)
                if "seq-read" not in r:
                    sys.exit(f"{name} run failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
                results[name].append(r)
                print(f"round {i + 1}/{a.rounds} {name}: " +
                      ", ".join(f"{k} {v:.1f}" for k, v in r.items()), file=sys.stderr)
    keys = ["seq-write", "seq-read", "rand-write-4k", "rand-read-4k",
            "rand-write-4k IOPS", "rand-read-4k IOPS", "vsock guest->host", "vsock host->guest"]
    print(f"device benchmark: {a.rounds} rounds, medians, 1 vCPU, 512 MiB guest, "
          f"{SEQ_MIB} MiB sequential in 1 MiB O_DIRECT requests, 4 KiB random for 4 s, "
          f"vsock {VSOCK_STREAMS} streams x {VSOCK_BYTES >> 20} MiB")
    print(f"{'':<22} {'vm':>10} {'qemu':>10} {'vm/qemu':>8}")
    for k in keys:
        ours = [r[k] for r in results["vm"] if k in r]
        theirs = [r[k] for r in results["qemu"] if k in r]
        if not ours:
            continue
        o = statistics.median(ours)
        unit = "" if "IOPS" in k else " MiB/s"
        if theirs:
            t = statistics.median(theirs)
            print(f"{k + unit:<22} {o:>10.1f} {t:>10.1f} {o / t:>8.2f}")
        else:
            print(f"{k + unit:<22} {o:>10.1f} {'n/a':>10}")
    if not qemu_vsock:
        print("qemu vsock: /dev/vhost-vsock is not available on this host")


if __name__ == "__main__":
    main()
