#!/usr/bin/env bash
# Detached containers and their commands (run -d, logs, stop, restart,
# ps, inspect, names, rm), in one nested host. Each section starts with
# "== NAME"; tests/tests/lifecycle.rs checks them.
# Needs: $VM, $IMAGES, $W (a scratch directory), $VM_ROOT.
set -u
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

echo "== run-d"
id=$(vm run -d --name ticker -m 96m $I sh -c 'i=0; while true; do echo "tick $i"; echo "err $i" >&2; i=$((i+1)); sleep 0.2; done')
echo "rc=$? id-length=${#id}"
vm ps --format '{{.Names}} {{.State}} {{.Status}}' | grep ticker | cut -d' ' -f1-3
vm ps --no-trunc -q | grep -c "^$id\$"

echo "== jail"
# The ticker's VMM, seen from the host while it runs.
vmm=$(pgrep -f "^vm-vmm ${id:0:12}" | head -1)
grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' "/proc/$vmm/status" | tr -s '\t ' ' '
[ "$(readlink "/proc/$vmm/ns/net")" != "$(readlink /proc/self/ns/net)" ] && echo own-net || echo host-net
[ "$(readlink "/proc/$vmm/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] && echo own-mnt || echo host-mnt
awk '/^Max open files/ { print "files=" $4 } /^Max core file size/ { print "core=" $5 }' "/proc/$vmm/limits"
cg=$(cut -d: -f3 "/proc/$vmm/cgroup")
[ "$cg" = "/vm/$id" ] && echo own-cgroup || echo "cgroup=$cg"
for f in memory.max pids.max cpu.max; do echo "$f=$(cat "/sys/fs/cgroup$cg/$f")"; done
# A uid of its own (not root), and a root of its own holding only sockets.
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$vmm/status")
[ "$uid" -ge 1610612736 ] && echo own-uid || echo "uid=$uid"
find "/proc/$vmm/root/" -mindepth 1 ! -type s | sed "s|/proc/$vmm/root|not-a-socket: |"
[ -e "/proc/$vmm/root/vsock" ] && echo jail-has-vsock
awk '{ print "mount", $5, $6 }' "/proc/$vmm/mountinfo" | cut -d, -f1-4

echo "== memory-eater"
# The container makes the guest use all of its memory: 160 MiB of its
# (sparse) scratch disk read through a 96 MiB guest's page cache touches
# every guest page, while the host writes nothing (a write would also
# charge the host's page cache, here tmpfs, to the VMM). The VMM stays
# inside its cgroup and is not killed.
vm exec ticker sh -c 'mknod /tmp/vda b $(tr : " " < /sys/block/vda/dev) && dd if=/tmp/vda of=/dev/null bs=1M count=160 2>/dev/null && echo survived'
echo "exec-rc=$?"
peak=$(cat "/sys/fs/cgroup$cg/memory.peak")
max=$(cat "/sys/fs/cgroup$cg/memory.max")
[ "$peak" -le "$max" ] && echo peak-within-max || echo "peak=$peak max=$max"
[ "$peak" -ge $((64 << 20)) ] && echo guest-memory-charged || echo "peak=$peak"
grep oom_kill "/sys/fs/cgroup$cg/memory.events"
vm exec ticker echo still-running

echo "== logs"
sleep 1
vm logs ticker 2>/dev/null | head -1
vm logs ticker 2>&1 >/dev/null | head -1
vm logs --tail 2 ticker 2>&1 | wc -l
vm logs -t ticker 2>/dev/null | head -1 | grep -cE '^20[0-9-]+T[0-9:.]+Z tick 0$'

echo "== logs-follow"
( vm logs -f ticker > "$W/follow" 2>/dev/null; echo "follow-rc=$?" > "$W/follow.rc" ) &
follower=$!
sleep 2
before=$(grep -c tick "$W/follow")
sleep 1
during=$(grep -c tick "$W/follow")
vm stop -t 1 ticker >/dev/null
wait $follower
cat "$W/follow.rc"
echo "grew-while-running=$([ "$during" -gt "$before" ] && echo yes || echo no)"
echo "complete=$([ "$(grep -c tick "$W/follow")" = "$(vm logs ticker 2>/dev/null | grep -c tick)" ] && echo yes || echo no)"
vm inspect -f '{{.State.Status}} {{.State.ExitCode}}' ticker

echo "== stop-timeout"
vm run -d --name stubborn -m 96m $I sh -c "trap '' TERM; echo ready; while true; do sleep 1; done" >/dev/null
t0=$(now)
vm stop -t 2 stubborn
t1=$(now)
echo "took=$(awk "BEGIN { print int($t1 - $t0) }")"
vm inspect -f '{{.State.Status}} {{.State.ExitCode}}' stubborn

echo "== restart"
vm run -d --name flaky -m 96m --restart on-failure:2 $I sh -c 'echo attempt; exit 3' >/dev/null
await flaky '{{.State.Status}}' exited
vm inspect -f '{{.RestartCount}} {{.State.ExitCode}} {{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}' flaky
vm logs flaky | grep -c attempt

echo "== ps"
vm ps -a --filter status=exited --format '{{.Names}}' | sort | tr '\n' ' '; echo
vm ps -a --filter name=stub --format '{{.Names}}'
vm ps -a --filter id="${id:0:6}" --format '{{.Names}}'
vm ps -q | wc -l
vm ps -a -n 1 --format '{{.Names}}'
vm ps -a --format 'table {{.Names}}\t{{.State}}' | head -1
vm ps -a --format json | head -1 | grep -c '"Names":'
vm ps -a --filter bogus=1 >/dev/null 2>&1; echo "rc=$?"

echo "== inspect"
vm inspect -f '{{.Name}} {{.Config.Image}} {{json .Config.Cmd}} {{.State.Running}} {{.HostConfig.AutoRemove}}' stubborn
vm inspect stubborn | grep -c '"LogPath"'
vm inspect no-such-container >/dev/null 2>&1; echo "rc=$?"

echo "== names"
vm run -d --name stubborn $I true 2>&1 >/dev/null | grep -c 'is already in use'
vm rename stubborn mule && vm inspect -f '{{.Name}}' mule

echo "== rm"
vm run -d --name victim -m 96m $I sleep 1000 >/dev/null
vm rm victim >/dev/null 2>&1; echo "rc=$?"
vm rm -f victim; echo "rc=$?"
vm ps -a -q --filter name=victim | wc -l

echo "== end"
