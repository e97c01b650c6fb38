"""File system benchmark driver (see bench/fs). Runs where KVM works."""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

SEQ_MIB = 128
FILES = 10000
MEM_MIB = 512

GUEST_SCRIPT = f"""
mkdir -p /fs /blk
mount -t virtiofs bench /fs || echo "virtiofs mount failed"
for s in /sys/block/vd*/serial; do [ "$(cat $s)" = bench ] && d=$(basename $(dirname $s)); done
mount -t ext4 /dev/$d /blk || echo "ext4 mount failed"
for m in fs blk; do
    echo "target: $m"
    disk-bench /$m/file {SEQ_MIB}
    rm -f /$m/file
    disk-bench --files /$m/meta {FILES}
done
umount /fs /blk
"""


def script_disk(path):
    data = GUEST_SCRIPT.encode() + b"\n"
    data += b"\n" * (-len(data) % 4096)
    with open(path, "wb") as f:
        f.write(data)


def start_daemon(a, work):
    """virtiofsd on a fresh directory, with the runtime's own options."""
    shared = os.path.join(work, "shared")
    subprocess.run(["rm", "-rf", shared], check=True)
    os.makedirs(shared)
    sock = os.path.join(work, "fs.sock")
    if os.path.exists(sock):
        os.remove(sock)
    d = subprocess.Popen([a.virtiofsd, "--socket-path=" + sock, "--shared-dir=" + shared,
                          "--sandbox=namespace", "--seccomp=kill", "--inode-file-handles=never",
                          "--cache=auto", "--announce-submounts", "--log-level=error"])
    for _ in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    return d, sock


def fresh_disk(work):
    disk = os.path.join(work, "disk.img")
    with open(disk, "wb") as f:
        f.truncate((SEQ_MIB * 2 + 256) << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", disk], check=True)
    return disk


def run_ours(a, work, sock, disk):
    cmd = [a.vm, "boot", "--kernel", a.kernel, "--initrd", a.initrd, "--memory", str(MEM_MIB),
           "--disk", disk + ",id=bench",
           "--disk", os.path.join(work, "script.img") + ",ro,id=script",
           "--fs", "bench," + sock,
           "--cmdline", "console=ttyS0 quiet test.mode=script test.disk=auto"]
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def run_qemu(a, work, sock, disk):
    cmd = ["qemu-system-x86_64", "-M", f"microvm,acpi=off,memory-backend=mem", "-enable-kvm",
           "-cpu", "host", "-m", str(MEM_MIB), "-smp", "1", "-nodefaults", "-no-user-config",
           "-display", "none", "-no-reboot", "-serial", "stdio",
           "-object", f"memory-backend-memfd,id=mem,size={MEM_MIB}M,share=on",
           "-kernel", a.kernel, "-initrd", a.initrd,
           "-append", "console=ttyS0 reboot=t panic=-1 quiet test.mode=script test.disk=auto",
           "-drive", f"id=d0,file={disk},format=raw,if=none",
           "-device", "virtio-blk-device,drive=d0,serial=bench",
           "-drive", f"id=d1,file={work}/script.img,format=raw,if=none,readonly=on",
           "-device", "virtio-blk-device,drive=d1,serial=script",
           "-chardev", f"socket,id=fs0,path={sock}",
           "-device", "vhost-user-fs-device,chardev=fs0,tag=bench"]
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def parse(out):
    r = {}
    target = None
    for line in out.splitlines():
        m = re.search(r"target: (\w+)", line)
        if m:
            target = m.group(1)
            continue
        m = re.search(r"disk-bench: (\S+) ([\d.]+) MiB/s ([\d.]+) IOPS", line)
        if m and target:
            r[f"{target} {m.group(1)}"] = float(m.group(2))
            if "rand" in m.group(1):
                r[f"{target} {m.group(1)} IOPS"] = float(m.group(3))
        m = re.search(r"disk-bench: (\S+) ([\d.]+) files/s", line)
        if m and target:
            r[f"{target} {m.group(1)}"] = float(m.group(2))
    return r


def main():
    ap = argparse.ArgumentParser()
    for name in ("vm", "kernel", "initrd", "virtiofsd"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    results = {"vm": [], "qemu": []}
    with tempfile.TemporaryDirectory(prefix="vm-bench-fs-") as work:
        script_disk(os.path.join(work, "script.img"))
        for i in range(a.rounds):
            order = [("vm", run_ours), ("qemu", run_qemu)]
            if i % 2:
                order.reverse()
            for name, fn in order:
                disk = fresh_disk(work)
                daemon, sock = start_daemon(a, work)
                try:
                    p = fn(a, work, sock, disk)
                finally:
                    daemon.kill()
                    daemon.wait()
                r = parse(p.stdout)
                if "fs files-delete" not in r or "blk files-delete" not in r:
                    sys.exit(f"{name} run failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
                results[name].append(r)
                print(f"round {i + 1}/{a.rounds} {name}: " +
                      ", ".join(f"{k} {v:.0f}" for k, v in r.items()), file=sys.stderr)
    print(f"file system benchmark: {a.rounds} rounds, medians, 1 vCPU, {MEM_MIB} MiB guest; "
          f"virtio-fs (virtiofsd, cache=auto, a directory in {tempfile.gettempdir()}) "
          f"and ext4 on virtio-blk; {SEQ_MIB} MiB sequential in 1 MiB requests, 4 KiB random "
          f"for 4 s, {FILES} small files created, stat'ed, deleted")
    print(f"{'':<40} {'vm':>10} {'qemu':>10} {'vm/qemu':>8}")
    keys = []
    for target in ("fs", "blk"):
        for k in ("seq-write", "seq-read", "rand-write-4k IOPS", "rand-read-4k IOPS",
                  "files-create", "files-stat", "files-delete"):
            keys.append(f"{target} {k}")
    label = {"fs": "virtio-fs", "blk": "ext4 on virtio-blk"}
    for k in keys:
        ours = [r[k] for r in results["vm"] if k in r]
        theirs = [r[k] for r in results["qemu"] if k in r]
        if not ours or not theirs:
            continue
        target, what = k.split(" ", 1)
        unit = " MiB/s" if what.startswith("seq") else ("" if "IOPS" in what else " files/s")
        o, t = statistics.median(ours), statistics.median(theirs)
        print(f"{label[target] + ' ' + what + unit:<40} {o:>10.0f} {t:>10.0f} {o / t:>8.2f}")
    fs = {k: statistics.median(r[k] for r in results["vm"]) for k in keys if k in results["vm"][0]}
    print("virtio-fs against our own ext4 on virtio-blk (vm only): " + ", ".join(
        f"{w} {fs['fs ' + w] / fs['blk ' + w]:.2f}x"
        for w in ("seq-write", "seq-read", "files-create", "files-stat", "files-delete")
        if "fs " + w in fs and "blk " + w in fs))


if __name__ == "__main__":
    main()
