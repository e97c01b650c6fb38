"""Container lifecycle benchmark driver (see bench/lifecycle). Runs where
KVM works."""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

GUEST_MIB = 128


def timed(cmd, env, expect=None, ok=(0,)):
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    wall = (time.monotonic() - t0) * 1000
    if p.returncode not in ok or (expect is not None and expect not in p.stdout):
        sys.exit(f"benchmark step failed: {' '.join(cmd)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return wall, p.stdout


def med(v):
    return statistics.median(v) if v else float("nan")


def smaps_kib(pid, guest_kib):
    """Proportional set size of a process, less the mapping of guest RAM
    (the largest mapping of at least the guest's size: QEMU rounds its
    guest RAM mapping up)."""
    total = guest = 0
    size = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
                total += pss
                if size is not None and guest_kib <= size <= guest_kib + 8192:
                    guest = max(guest, pss)
    return total - guest


def children(pid):
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def main():
    ap = argparse.ArgumentParser()
    for name in ("vm", "kernel", "initrd", "idle_initrd", "image"):
        ap.add_argument("--" + name.replace("_", "-"), required=True)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    state = tempfile.mkdtemp(prefix="vm-bench-lifecycle-")
    env = dict(os.environ, VM_KERNEL=a.kernel, VM_INITRD=a.initrd, VM_ROOT=state)
    vm = [a.vm]
    mem = ["-m", f"{GUEST_MIB}m"]
    # Warm the root file system cache and the page cache.
    timed(vm + ["run", "--rm"] + mem + [a.image, "true"], env)

    run_d, run_true, run_cold, exec_true, stop = [], [], [], [], []
    timed(vm + ["run", "-d", "--name", "target"] + mem + [a.image, "sleep", "100000"], env)
    for i in range(a.runs):
        w, _ = timed(vm + ["run", "-d", "--name", f"d{i}"] + mem
                     + [a.image, "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"], env)
        run_d.append(w)
        run_true.append(timed(vm + ["run", "--rm"] + mem + [a.image, "true"], env)[0])
        fresh = dict(env, VM_ROOT=tempfile.mkdtemp(prefix="vm-bench-cold-"))
        run_cold.append(timed(vm + ["run", "--rm"] + mem + [a.image, "true"], fresh)[0])
        exec_true.append(timed(vm + ["exec", "target", "true"], env)[0])
        stop.append(timed(vm + ["stop", f"d{i}"], env)[0])
        timed(vm + ["rm", f"d{i}"], env)
        print(f"round {i + 1}/{a.runs}: run -d {run_d[-1]:.0f}, run true {run_true[-1]:.0f} "
              f"(cold {run_cold[-1]:.0f}), "
              f"exec true {exec_true[-1]:.0f}, stop {stop[-1]:.0f} ms", file=sys.stderr)
    timed(vm + ["rm", "-f", "target"], env)

    # Ten idle containers; each is a monitor and its VMM child.
    for i in range(10):
        timed(vm + ["run", "-d", "--name", f"idle{i}"] + mem + [a.image, "sleep", "100000"], env)
    time.sleep(2)
    per = []
    for i in range(10):
        _, out = timed(vm + ["inspect", "-f", "{{.State.Pid}}", f"idle{i}"], env)
        monitor = int(out.strip())
        kib = smaps_kib(monitor, GUEST_MIB * 1024)
        for child in children(monitor):
            kib += smaps_kib(child, GUEST_MIB * 1024)
        per.append(kib)
    ids = [f"idle{i}" for i in range(10)]
    timed(vm + ["rm", "-f"] + ids, env)

    # QEMU's microvm idling on the same kernel (an initramfs that sleeps),
    # for scale.
    q = subprocess.Popen(["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host",
                          "-m", str(GUEST_MIB), "-smp", "1", "-nodefaults", "-no-user-config",
                          "-display", "none", "-no-reboot", "-serial", "null",
                          "-kernel", a.kernel, "-initrd", a.idle_initrd,
                          "-append", "console=ttyS0 reboot=t panic=-1 quiet"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # QEMU starts slowly under the emulator (a large binary and its
    # libraries over 9p): sample once its memory has stopped growing.
    qemu_kib, last = float("nan"), -1
    for _ in range(60):
        time.sleep(1)
        if q.poll() is not None:
            qemu_kib = float("nan")
            break
        qemu_kib = smaps_kib(q.pid, GUEST_MIB * 1024)
        if last > 0 and abs(qemu_kib - last) <= 0.01 * last and qemu_kib > 1024:
            break
        last = qemu_kib
    q.kill()
    q.wait()

    r = med(run_true)
    print(f"{'':44}{'median ms':>10}{'vs run':>8}")
    print(f"{'vm run --rm IMAGE true (image cached)':44}{r:10.0f}{1.0:8.2f}")
    c = med(run_cold)
    print(f"{'vm run --rm IMAGE true (cold: fresh state)':44}{c:10.0f}{c / r:8.2f}")
    print(f"{'vm run -d ... until the process runs':44}{med(run_d):10.0f}{med(run_d) / r:8.2f}")
    print(f"{'vm exec CONTAINER true':44}{med(exec_true):10.0f}{med(exec_true) / r:8.2f}")
    print(f"{'vm stop (process handles SIGTERM)':44}{med(stop):10.0f}{med(stop) / r:8.2f}")
    m = med(per) / 1024
    qm = qemu_kib / 1024
    print(f"\nhost memory per idle container beyond guest RAM (PSS, monitor + VMM), 10 running: "
          f"median {m:.1f} MiB, max {max(per) / 1024:.1f} MiB")
    print(f"qemu -M microvm, same guest idle, PSS beyond guest RAM: {qm:.1f} MiB; ratio vm/qemu {m / qm:.2f}")
    print(f"exec true / cold run true: {med(exec_true) / c:.2f} (goal <= 0.1); "
          f"per-container overhead {m:.1f} MiB (goal < 5)")


main()
