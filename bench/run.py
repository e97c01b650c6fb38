"""Container run benchmark driver (see bench/run). Runs where KVM works."""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

GUEST_MIB = 256  # vm run's default


def timed(cmd, env=None, expect=None):
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    wall = (time.monotonic() - t0) * 1000
    if p.returncode != 0 or (expect and expect not in p.stdout):
        sys.exit(f"benchmark run failed: {' '.join(cmd)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return wall, p


def qemu_cmd(a):
    # reboot=t: QEMU's microvm has no i8042; a triple fault with -no-reboot
    # ends it at once.
    return ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host",
            "-m", str(GUEST_MIB), "-smp", "1", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-serial", "stdio",
            "-kernel", a.kernel, "-initrd", a.initrd,
            "-append", "console=ttyS0 reboot=t panic=-1 quiet"]


def phases(stderr):
    """Phase name -> ms since the run started (VM_TIMINGS=1 output)."""
    out = {}
    for m in re.finditer(r"^vm: timing: (\S+) ([\d.]+)$", stderr, re.M):
        out[m.group(1)] = float(m.group(2))
    m = re.search(r"guest userspace started after ([\d.]+) ms", stderr)
    if m and "vm-starting" in out:
        out["guest-userspace"] = out["vm-starting"] + float(m.group(1))
    return out


def med(v):
    return statistics.median(v) if v else float("nan")


def main():
    ap = argparse.ArgumentParser()
    for name in ("vm", "kernel", "initrd"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--image", action="append", required=True,
                    help="NAME=LAYOUT: an image NAME in the OCI layout directory LAYOUT")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    images = [i.split("=", 1) for i in a.image]

    env = dict(os.environ, VM_KERNEL=a.kernel, VM_INITRD=a.initrd, VM_TIMINGS="1")
    timed(qemu_cmd(a), expect="vm-agent: ready")  # warm the page cache
    qemu = []
    first = {n: [] for n, _ in images}
    repeat = {n: [] for n, _ in images}
    repeat_phases = {n: [] for n, _ in images}
    first_phases = {n: [] for n, _ in images}
    for i in range(a.runs):
        qemu.append(timed(qemu_cmd(a), expect="vm-agent: ready")[0])
        for name, layout in images:
            state = tempfile.mkdtemp(prefix="vm-bench-state-")
            e = dict(env, VM_ROOT=state)
            # A first run starts from the local store, where `vm load` (or
            # `vm pull`) verified the layers once; it unpacks them in the VM.
            timed([a.vm, "load", "-i", layout], env=e)
            w, p = timed([a.vm, "run", name, "true"], env=e)
            first[name].append(w)
            first_phases[name].append(phases(p.stderr))
            w, p = timed([a.vm, "run", name, "true"], env=e)
            repeat[name].append(w)
            repeat_phases[name].append(phases(p.stderr))
            shutil.rmtree(state, ignore_errors=True)
        print(f"round {i + 1}/{a.runs}: qemu {qemu[-1]:.0f} ms, "
              + ", ".join(f"{n} first {first[n][-1]:.0f} / repeat {repeat[n][-1]:.0f} ms" for n, _ in images),
              file=sys.stderr)

    q = med(qemu)
    print(f"{'':34}{'median ms':>10}{'vs qemu':>9}")
    print(f"{'qemu -M microvm boot to /init+exit':34}{q:10.0f}{1.0:9.2f}")
    for name, _ in images:
        for label, vals in (("first", first[name]), ("repeat", repeat[name])):
            m = med(vals)
            print(f"{'vm run ' + name + ' true, ' + label:34}{m:10.0f}{m / q:9.2f}")
    print("\nwhere the time goes (median ms since `vm run` started):")
    keys = ["image-opened", "disks-ready", "disks-ready-cached", "vm-starting", "guest-userspace",
            "agent-hello", "image-unpacked", "process-started", "process-exited", "vm-ended"]
    for name, _ in images:
        for label, runs in (("first", first_phases[name]), ("repeat", repeat_phases[name])):
            cols = []
            for k in keys:
                vals = [r[k] for r in runs if k in r]
                if vals:
                    cols.append(f"{k} {med(vals):.0f}")
            print(f"  {name} {label}: " + ", ".join(cols))
    goal = med(repeat[images[0][0]]) / q
    print(f"\nrepeat run of {images[0][0]} / qemu bare boot: {goal:.2f} (goal <= 0.6)")
    for name, _ in images:
        print(f"first / repeat run of {name}: {med(first[name]) / med(repeat[name]):.2f} (goal <= 2)")


main()
