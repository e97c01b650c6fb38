"""Network benchmark driver (see bench/net). Runs where KVM works, as root."""
import argparse
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TAP = "vmbench0"
HOST_IP = "10.0.3.1"
GUEST_IP = "10.0.3.2"
MAC = "02:00:00:00:00:02"
SECONDS = 3
REQUESTS = 200

GUEST_SCRIPT = f"""
mkdir -p /tmp
ip link set eth0 up
ip addr add {GUEST_IP}/24 dev eth0
for i in $(seq 1 50); do ping -c 1 -W 1 {HOST_IP} > /dev/null && break; done
iperf3 -c {HOST_IP} -t {SECONDS} -f m | grep receiver | sed 's/^/guest-to-host: /'
iperf3 -c {HOST_IP} -t {SECONDS} -f m -R | grep receiver | sed 's/^/host-to-guest: /'
mkdir -p /www && echo ok > /www/i
httpd -p 8000 -h /www
echo bench-http-ready
nc -l -p 9999 > /dev/null
"""


def sh(*args):
    subprocess.run(args, check=True)


def script_disk(path):
    data = GUEST_SCRIPT.encode() + b"\n"
    data += b"\n" * (-len(data) % 4096)
    with open(path, "wb") as f:
        f.write(data)


def http_latencies(host, port, n=REQUESTS):
    """Milliseconds for each of `n` GETs, a new connection each."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c = http.client.HTTPConnection(host, port, timeout=10)
        c.request("GET", "/i")
        body = c.getresponse().read()
        c.close()
        if body.strip() != b"ok":
            sys.exit(f"unexpected answer from {host}:{port}: {body!r}")
        out.append((time.perf_counter() - t) * 1e3)
    return out


def guest_run(cmd):
    """Runs one guest; returns its throughputs and HTTP latencies."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, text=True)
    r = {}
    log = []
    for line in p.stdout:
        log.append(line)
        m = re.search(r"(guest-to-host|host-to-guest): .* ([\d.]+) Mbits/sec", line)
        if m:
            r[m.group(1)] = float(m.group(2))
        if "bench-http-ready" in line:
            lat = http_latencies(GUEST_IP, 8000)
            r["http"] = statistics.median(lat)
            with socket.create_connection((GUEST_IP, 9999), timeout=10):
                pass
    p.wait()
    if len(r) < 3:
        sys.exit(f"guest run failed ({cmd[0]}, exit {p.returncode}):\n{''.join(log)}")
    return r


def run_ours(a, work):
    return guest_run([a.vm, "boot", "--kernel", a.kernel, "--initrd", a.initrd, "--memory", "512",
                      "--net", f"{TAP},mac={MAC}",
                      "--disk", os.path.join(work, "script.img") + ",ro,id=script",
                      "--cmdline", "console=ttyS0 quiet test.mode=script test.disk=auto"])


def run_qemu(a, work):
    return guest_run(["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host",
                      "-m", "512", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
                      "-no-reboot", "-serial", "stdio", "-kernel", a.kernel, "-initrd", a.initrd,
                      "-append", "console=ttyS0 reboot=t panic=-1 quiet test.mode=script test.disk=auto",
                      "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                      "-device", f"virtio-net-device,netdev=n0,mac={MAC}",
                      "-drive", f"id=d1,file={work}/script.img,format=raw,if=none,readonly=on",
                      "-device", "virtio-blk-device,drive=d1,serial=script"])


def published_port(a):
    """HTTP latency to a container through `-p` (the monitor's proxy) and
    to its address directly."""
    name = "bench-net-web"
    subprocess.run([a.vm, "rm", "-f", name], capture_output=True)
    sh(a.vm, "run", "-d", "--name", name, "-m", "128m", "-p", "18088:80", a.image,
       "sh", "-c", "mkdir -p /w && echo ok > /w/i && exec httpd -f -p 80 -h /w")
    try:
        ip = subprocess.run([a.vm, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name],
                            capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(300):
            try:
                http_latencies("127.0.0.1", 18088, 1)
                break
            except OSError:
                time.sleep(0.2)
        r = {"direct": [], "proxy": []}
        for _ in range(a.rounds):
            r["direct"].append(statistics.median(http_latencies(ip, 80)))
            r["proxy"].append(statistics.median(http_latencies("127.0.0.1", 18088)))
        return {k: statistics.median(v) for k, v in r.items()}
    finally:
        subprocess.run([a.vm, "rm", "-f", name], capture_output=True)


def main():
    ap = argparse.ArgumentParser()
    for name in ("vm", "kernel", "initrd", "image"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    subprocess.run(["ip", "link", "del", TAP], capture_output=True)
    sh("ip", "tuntap", "add", TAP, "mode", "tap")
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP)
    sh("ip", "link", "set", TAP, "up")
    server = subprocess.Popen(["iperf3", "-s", "-B", HOST_IP], stdout=subprocess.DEVNULL)
    results = {"vm": [], "qemu": []}
    try:
        with tempfile.TemporaryDirectory(prefix="vm-bench-net-") as work:
            script_disk(os.path.join(work, "script.img"))
            for i in range(a.rounds):
                order = [("vm", run_ours), ("qemu", run_qemu)]
                if i % 2:
                    order.reverse()
                for name, fn in order:
                    r = fn(a, work)
                    results[name].append(r)
                    print(f"round {i + 1}/{a.rounds} {name}: {json.dumps(r)}", file=sys.stderr)
        proxy = published_port(a)
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "link", "del", TAP], capture_output=True)
    print(f"network benchmark: {a.rounds} rounds, medians, 1 vCPU, 512 MiB guest, same TAP, "
          f"iperf3 TCP for {SECONDS} s each way, {REQUESTS} HTTP GETs (new connection each); "
          "QEMU's tap netdev without vhost-net")
    print(f"{'':<30} {'vm':>10} {'qemu':>10} {'vm/qemu':>8}")
    for k, unit in (("guest-to-host", "Mbit/s"), ("host-to-guest", "Mbit/s"), ("http", "ms")):
        o = statistics.median(r[k] for r in results["vm"])
        t = statistics.median(r[k] for r in results["qemu"])
        print(f"{k + ' ' + unit:<30} {o:>10.2f} {t:>10.2f} {o / t:>8.2f}")
    print(f"\nvm run -p (a container's httpd): HTTP GET median, ms")
    print(f"{'to the container address':<30} {proxy['direct']:>10.2f}")
    print(f"{'through -p on 127.0.0.1':<30} {proxy['proxy']:>10.2f} "
          f"{proxy['proxy'] / proxy['direct']:>8.2f} x direct")


if __name__ == "__main__":
    main()
