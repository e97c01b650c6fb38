"""Boot benchmark driver (see bench/boot). Runs where KVM works."""
import argparse
import re
import statistics
import subprocess
import sys
import time

GUEST_MIB = 128


def ours_cmd(a, initrd):
    return [a.vm, "boot", "--kernel", a.kernel, "--initrd", initrd,
            "--memory", str(GUEST_MIB), "--boot-time"]


def qemu_cmd(a, initrd):
    # reboot=t: QEMU's microvm has no i8042, a triple fault with -no-reboot
    # ends it at once.
    return ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host",
            "-m", str(GUEST_MIB), "-smp", "1", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-serial", "stdio",
            "-kernel", a.kernel, "-initrd", initrd,
            "-append", "console=ttyS0 reboot=t panic=-1 quiet"]


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
    for name in ("vm", "kernel", "initrd", "hold_initrd"):
        ap.add_argument("--" + name.replace("_", "-"), required=True)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()

    ours_wall, ours_user, qemu_wall = [], [], []
    timed(ours_cmd(a, a.initrd))  # warm the page cache for both
    timed(qemu_cmd(a, a.initrd))
    for i in range(a.runs):
        # Alternate who goes first so drift affects both alike.
        order = [("ours", ours_cmd), ("qemu", qemu_cmd)]
        if i % 2:
            order.reverse()
        for name, make in order:
            wall, p = timed(make(a, a.initrd))
            if name == "ours":
                ours_wall.append(wall)
                m = re.search(r"started after ([\d.]+) ms", p.stderr)
                if m:
                    ours_user.append(float(m.group(1)))
            else:
                qemu_wall.append(wall)
        print(f"run {i + 1}/{a.runs}: ours {ours_wall[-1]:.0f} ms, qemu {qemu_wall[-1]:.0f} ms",
              file=sys.stderr)

    ours_mem = rss_overhead_kib(ours_cmd(a, a.hold_initrd))
    qemu_mem = rss_overhead_kib(qemu_cmd(a, a.hold_initrd))

    def row(label, values):
        return f"{label:<44} {statistics.median(values):9.1f} {pct(values, 0.9):9.1f}"

    print(f"boot benchmark: {a.runs} runs each, {GUEST_MIB} MiB guest, 1 vCPU, same kernel and initramfs")
    print(f"{'':<44} {'median':>9} {'p90':>9}")
    if ours_user:
        print(row("vm: start to guest userspace (boot timer), ms", ours_user))
    print(row("vm: boot to exit (process wall time), ms", ours_wall))
    print(row("qemu -M microvm: boot to exit, ms", qemu_wall))
    ratio = statistics.median(ours_wall) / statistics.median(qemu_wall)
    print(f"ratio vm/qemu, boot to exit (median): {ratio:.2f}")
    print(f"VMM memory overhead beyond guest RAM (peak RSS): vm {ours_mem / 1024:.1f} MiB, "
          f"qemu {qemu_mem / 1024:.1f} MiB, ratio {ours_mem / max(qemu_mem, 1):.2f}")


if __name__ == "__main__":
    main()
