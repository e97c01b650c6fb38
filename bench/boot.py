"""Boot benchmark driver (see bench/boot). Runs where KVM works."""
import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time

import peers as reference

GUEST_MIB = 128


def ours_cmd(a, initrd):
    return [a.vm, "boot", "--kernel", a.kernel, "--initrd", initrd,
            "--memory", str(GUEST_MIB), "--boot-time"]


def qemu_cmd(a, initrd):
    return reference.qemu_cmd(a.kernel, initrd, GUEST_MIB)


def fc_cmd(a, initrd):
    return reference.fc_cmd(a.firecracker, a.kernel, initrd, GUEST_MIB, a.scratch)


def timed(cmd):
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall = (time.monotonic() - t0) * 1000
    if p.returncode != 0 or "vm-agent: ready" not in p.stdout:
        sys.exit(f"benchmark run failed: {cmd[0]} exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return wall, p


def rss_overhead_kib(cmd):
    """Peak of (resident memory - resident guest RAM) while the guest runs."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    peak = 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/smaps") as f:
                text = f.read()
        except OSError:
            break
        total = guest = 0
        for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
            size = re.search(r"^Size:\s+(\d+) kB", block, re.M)
            rss = re.search(r"^Rss:\s+(\d+) kB", block, re.M)
            if not size or not rss:
                continue
            total += int(rss.group(1))
            # Guest RAM: the anonymous mapping of at least the guest's size.
            first = block.split("\n", 1)[0].split()
            anonymous = len(first) < 6
            if anonymous and int(size.group(1)) >= GUEST_MIB * 1024:
                guest = max(guest, int(rss.group(1)))
        peak = max(peak, total - guest)
        time.sleep(0.05)
    p.wait()
    return peak


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    for name in ("vm", "kernel", "initrd", "hold_initrd", "scratch"):
        ap.add_argument("--" + name.replace("_", "-"), required=True)
    ap.add_argument("--firecracker")
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    local = reference.local_copies(a, ("vm", "firecracker", "kernel", "initrd", "hold_initrd"))

    peers = [("vm", ours_cmd), ("qemu", qemu_cmd)]
    if a.firecracker:
        peers.append(("firecracker", fc_cmd))
    wall = {name: [] for name, _ in peers}
    ours_user = []
    for _, make in peers:
        timed(make(a, a.initrd))  # warm the page cache for each
    for i in range(a.runs):
        # Rotate who goes first, and every other round reverse the order,
        # so each one follows each other one equally often: in the nested
        # host a VM boots faster after a process that did not run a guest
        # (QEMU's own memory) than after one that did (see README).
        k = i // 2 % len(peers)
        order = peers[k:] + peers[:k]
        if i % 2:
            order.reverse()
        for name, make in order:
            ms, p = timed(make(a, a.initrd))
            wall[name].append(ms)
            if name == "vm":
                m = re.search(r"started after ([\d.]+) ms", p.stderr)
                if m:
                    ours_user.append(float(m.group(1)))
        print(f"run {i + 1}/{a.runs}: " + ", ".join(f"{n} {v[-1]:.0f} ms" for n, v in wall.items()),
              file=sys.stderr)

    mem = {name: rss_overhead_kib(make(a, a.hold_initrd)) for name, make in peers}
    shutil.rmtree(local, ignore_errors=True)

    def row(label, values):
        return f"{label:<44} {statistics.median(values):9.1f} {pct(values, 0.9):9.1f}"

    labels = {"vm": "vm", "qemu": "qemu -M microvm", "firecracker": "firecracker"}
    print(f"boot benchmark: {a.runs} runs each, {GUEST_MIB} MiB guest, 1 vCPU, same kernel and initramfs")
    print(f"{'':<44} {'median':>9} {'p90':>9}")
    if ours_user:
        print(row("vm: start to guest userspace (boot timer), ms", ours_user))
    for name, _ in peers:
        print(row(f"{labels[name]}: boot to exit (process wall time), ms", wall[name]))
    med = statistics.median(wall["vm"])
    print(f"vm: p90 / median, boot to exit: {pct(wall['vm'], 0.9) / med:.2f}")
    for name, _ in peers[1:]:
        print(f"ratio vm/{name}, boot to exit (median): {med / statistics.median(wall[name]):.2f}")
    for name, _ in peers[1:]:
        print(f"VMM memory overhead beyond guest RAM (peak RSS): vm {mem['vm'] / 1024:.1f} MiB, "
              f"{name} {mem[name] / 1024:.1f} MiB, ratio {mem['vm'] / max(mem[name], 1):.2f}")


if __name__ == "__main__":
    main()
