"""Pull benchmark driver (see bench/pull): vm pull vs skopeo copy."""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time


def timed(cmd, env=None):
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    wall = (time.monotonic() - t0) * 1000
    if p.returncode != 0:
        sys.exit(f"benchmark run failed: {' '.join(cmd)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return wall


def tree_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vm", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()

    store = os.path.join(a.work, "vm-state")
    oci = os.path.join(a.work, "skopeo-out")
    env = dict(os.environ, VM_ROOT=store)
    ours, theirs = [], []
    size = 0
    for i in range(a.runs):
        # Alternate who goes first, so neither always finds the registry's
        # files in a warmer page cache.
        order = ["vm", "skopeo"] if i % 2 == 0 else ["skopeo", "vm"]
        for who in order:
            if who == "vm":
                shutil.rmtree(store, ignore_errors=True)
                ours.append(timed([a.vm, "pull", a.ref], env=env))
                size = tree_bytes(os.path.join(store, "images", "blobs"))
            else:
                shutil.rmtree(oci, ignore_errors=True)
                theirs.append(timed(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                     f"docker://{a.ref}", f"oci:{oci}:img"]))
        print(f"round {i + 1}: vm pull {ours[-1]:.0f} ms, skopeo copy {theirs[-1]:.0f} ms",
              file=sys.stderr)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"image: {a.ref}, {size / 1e6:.1f} MB of blobs; {a.runs} rounds, fresh store each time")
    print(f"{'':<34} {'median ms':>10} {'ratio':>6}")
    print(f"{'skopeo copy docker:// oci:':<34} {t:10.0f} {1:6.2f}")
    print(f"{'vm pull':<34} {o:10.0f} {o / t:6.2f}")
    print(json.dumps({"vm_pull_ms": o, "skopeo_ms": t, "ratio": o / t, "bytes": size}))


if __name__ == "__main__":
    main()
