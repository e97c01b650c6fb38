#!/usr/bin/env bash
# Nothing is left behind: a foreground `vm run --rm` killed with SIGKILL
# (its container goes on and is removed when it ends), ten detached
# containers stopped and removed. Counts processes, sockets and files.
# Needs: $VM, $IMAGES, $VM_ROOT.
set -u
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
# Processes of ours: monitors and VMMs are forks of the vm binary.
procs() { pgrep -x vm | wc -l; }
leftovers() {
    echo "processes=$(procs)"
    echo "run-dirs=$(find "$VM_ROOT/run" -mindepth 1 2>/dev/null | wc -l)"
    echo "containers=$(find "$VM_ROOT/containers" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l)"
    echo "temp-rootfs=$(find "$VM_ROOT/rootfs" -name '.tmp-*' 2>/dev/null | wc -l)"
    echo "sockets=$(find "$VM_ROOT" /tmp -type s 2>/dev/null | wc -l)"
}

echo "== killed-foreground"
vm run --rm --name fg -m 96m $I sh -c 'sleep 4; echo done' > /dev/null &
cli=$!
for _ in $(seq 1 100); do
    [ "$(vm inspect -f '{{.State.Status}}' fg 2>/dev/null)" = running ] && break
    sleep 0.2
done
kill -9 $cli
wait $cli 2>/dev/null
echo "cli-killed"
vm ps -a --filter name=fg --format '{{.State}}'
for _ in $(seq 1 150); do
    [ -z "$(vm ps -a -q --filter name=fg)" ] && break
    sleep 0.2
done
leftovers

echo "== ten"
for i in 0 1 2 3 4 5 6 7 8 9; do
    vm run -d --name "c$i" -m 64m $I sleep 1000 >/dev/null || echo "c$i failed"
done
vm ps -q | wc -l
echo "processes=$(procs)"
echo "sockets=$(find "$VM_ROOT" -type s | wc -l)"
# The monitor and the VMM carry the container's ID on their command lines.
c0=$(vm inspect -f '{{.Id}}' c0)
echo "named=$(pgrep -fc "^vm-monitor $c0\$") $(pgrep -fc "^vm-vmm $c0\$")"
log=$(vm inspect -f '{{.LogPath}}' c0)
stat -c '%a' "$VM_ROOT/containers" "$VM_ROOT/run" "$VM_ROOT/rootfs" "$log" "$(dirname "$log")/scratch.img" "$VM_ROOT"/rootfs/*.ext4
vm stop -t 1 $(vm ps -q) | wc -l
vm rm $(vm ps -a -q) | wc -l
leftovers
echo "== end"
