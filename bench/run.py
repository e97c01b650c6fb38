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

import peers as reference

GUEST_MIB = 256  # vm run's default


def timed(cmd, env=None, expect=None):
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    wall = (time.monotonic() - t0) * 1000
    if p.returncode != 0 or (expect and expect not in p.stdout):
        sys.exit(f"benchmark run failed: {' '.join(cmd)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return wall, p


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
    ap.add_argument("--firecracker", help="a Firecracker binary, to compare with its bare boot")
    a = ap.parse_args()
    images = [i.split("=", 1) for i in a.image]
    scratch = tempfile.mkdtemp(prefix="vm-bench-")
    local = reference.local_copies(a, ("vm", "firecracker", "kernel", "initrd"))
    bare = [("qemu", reference.qemu_cmd(a.kernel, a.initrd, GUEST_MIB))]
    if a.firecracker:
        bare.append(("firecracker", reference.fc_cmd(a.firecracker, a.kernel, a.initrd,
                                                     GUEST_MIB, scratch)))

    env = dict(os.environ, VM_KERNEL=a.kernel, VM_INITRD=a.initrd, VM_TIMINGS="1")
    env.pop("VM_SNAPSHOT", None)  # snapshots as by default: on
    for _, cmd in bare:
        timed(cmd, expect="vm-agent: ready")  # warm the page cache
    ref = {name: [] for name, _ in bare}
    # Per image: the first run (unpacking the image; it also takes the
    # snapshot of the VM's shape), the repeat run from that snapshot, and
    # the repeat run booting cold.
    rows = ("first", "repeat", "repeat cold")
    wall = {(n, r): [] for n, _ in images for r in rows}
    stages = {(n, r): [] for n, _ in images for r in rows}
    for i in range(a.runs):
        for name, cmd in bare:
            ref[name].append(timed(cmd, expect="vm-agent: ready")[0])
        for name, layout in images:
            state = tempfile.mkdtemp(prefix="vm-bench-state-")
            e = dict(env, VM_ROOT=state)
            # A first run starts from the local store, where `vm load` (or
            # `vm pull`) verified the layers once; it unpacks them in the VM.
            timed([a.vm, "load", "-i", layout], env=e)
            # Cold and from the snapshot alternate which goes first.
            order = [("first", []), ("repeat", []), ("repeat cold", ["--no-snapshot"])]
            if i % 2:
                order[1], order[2] = order[2], order[1]
            for label, flags in order:
                w, p = timed([a.vm, "run", *flags, name, "true"], env=e)
                wall[(name, label)].append(w)
                stages[(name, label)].append(phases(p.stderr))
            shutil.rmtree(state, ignore_errors=True)
        print(f"round {i + 1}/{a.runs}: "
              + ", ".join(f"{n} {v[-1]:.0f} ms" for n, v in ref.items()) + "; "
              + ", ".join(f"{n} {r} {wall[(n, r)][-1]:.0f}" for n, _ in images for r in rows),
              file=sys.stderr)
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(local, ignore_errors=True)

    meds = {n: med(v) for n, v in ref.items()}
    print(f"{'':40}{'median ms':>10}" + "".join(f"{'vs ' + n:>14}" for n in meds))
    labels = {"qemu": "qemu -M microvm boot to /init+exit",
              "firecracker": "firecracker boot to /init+exit"}
    for n, m in meds.items():
        print(f"{labels[n]:40}{m:10.0f}" + "".join(f"{m / q:14.2f}" for q in meds.values()))
    for name, _ in images:
        for label in rows:
            m = med(wall[(name, label)])
            print(f"{'vm run ' + name + ' true, ' + label:40}{m:10.0f}"
                  + "".join(f"{m / q:14.2f}" for q in meds.values()))
    print("\nwhere the time goes (median ms since `vm run` started):")
    keys = ["image-opened", "disks-ready", "disks-ready-cached", "snapshot-ready", "vm-starting",
            "guest-userspace", "agent-hello", "guest-spec", "guest-scratch-mounted",
            "guest-image-mounted", "guest-overlay-mounted", "guest-network-configured",
            "guest-prepared", "image-unpacked", "guest-started", "process-started",
            "guest-exited", "process-exited", "vm-ended", "cli-done"]
    for name, _ in images:
        for label in rows:
            cols = []
            for k in keys:
                vals = [r[k] for r in stages[(name, label)] if k in r]
                if vals:
                    cols.append(f"{k} {med(vals):.0f}")
            print(f"  {name} {label}: " + ", ".join(cols))
    first = images[0][0]
    snap, cold = med(wall[(first, "repeat")]), med(wall[(first, "repeat cold")])
    print(f"\nrepeat run of {first} from the snapshot / cold: {snap / cold:.2f}")
    for n, q in meds.items():
        print(f"repeat run of {first} from the snapshot / {n} bare boot: {snap / q:.2f}"
              + (" (goal <= 0.5)" if n == "firecracker" else ""))
    for name, _ in images:
        print(f"first / repeat run of {name}: "
              f"{med(wall[(name, 'first')]) / med(wall[(name, 'repeat')]):.2f}")


main()
