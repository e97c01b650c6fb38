#!/usr/bin/env bash
# Detached containers and their commands, in one nested host. Each
# section starts with "== NAME"; tests/tests/lifecycle.rs checks them.
# Needs: $VM, $IMAGES, $W (a scratch directory), $VM_ROOT.
set -u
I=oci:$IMAGES/oci:busybox
vm() { timeout 120 "$VM" "$@"; }
now() { date +%s.%N; }
# Polls (up to 60 s) until `vm inspect -f FORMAT NAME` prints WANT.
await() {
    for _ in $(seq 1 300); do
        [ "$(vm inspect -f "$2" "$1" 2>/dev/null)" = "$3" ] && return 0
        sleep 0.2
    done
    echo "timed out waiting for $1: $2 = $3 (is $(vm inspect -f "$2" "$1"))"
}

echo "== run-d"
id=$(vm run -d --name ticker -m 96m $I sh -c 'i=0; while true; do echo "tick $i"; echo "err $i" >&2; i=$((i+1)); sleep 0.2; done')
echo "rc=$? id-length=${#id}"
vm ps --format '{{.Names}} {{.State}} {{.Status}}' | grep ticker | cut -d' ' -f1-3
vm ps --no-trunc -q | grep -c "^$id\$"

echo "== logs"
sleep 1
vm logs ticker 2>/dev/null | head -1
vm logs ticker 2>&1 >/dev/null | head -1
vm logs --tail 2 ticker 2>/dev/null | wc -l
vm logs -t ticker 2>/dev/null | head -1 | grep -cE '^20[0-9-]+T[0-9:.]+Z tick 0$'

echo "== logs-follow"
( vm logs -f ticker > "$W/follow" 2>/dev/null; echo "follow-rc=$?" > "$W/follow.rc" ) &
follower=$!
sleep 2
before=$(grep -c tick "$W/follow")
sleep 1
during=$(grep -c tick "$W/follow")
vm stop -t 5 ticker >/dev/null
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

echo "== pause"
vm run -d --name counter -m 96m $I sh -c 'i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done' >/dev/null
sleep 1
vm pause counter
vm inspect -f '{{.State.Status}} {{.State.Paused}}' counter
a=$(vm logs counter | wc -l); sleep 2; b=$(vm logs counter | wc -l)
echo "paused-advanced=$((b - a))"
vm unpause counter
sleep 2
c=$(vm logs counter | wc -l)
echo "resumed=$([ "$c" -gt "$b" ] && echo yes || echo no)"
vm inspect -f '{{.State.Status}}' counter
vm rm -f counter >/dev/null

echo "== monitor-killed"
vm run -d --name orphan -m 96m $I sleep 1000 >/dev/null
pid=$(vm inspect -f '{{.State.Pid}}' orphan)
kill -9 "$pid"
sleep 1
vm ps -a --filter name=orphan --format '{{.State}}'
vm inspect -f '{{.State.Status}} {{.State.ExitCode}}' orphan
vm rm orphan; echo "rc=$?"

echo "== wait"
vm run -d --name waiter -m 96m $I sh -c 'sleep 1; exit 5' >/dev/null
vm wait waiter

echo "== start-again"
vm start -a waiter; echo "rc=$?"
vm start waiter
await waiter '{{.State.Status}}' exited
vm inspect -f '{{.State.ExitCode}}' waiter

echo "== many-layers"
vm run --rm -m 96m oci:$IMAGES/oci:many sh -c 'ls /many | wc -l; cat /many/file1 /many/file59'

echo "== create"
cid=$(vm create --name later -m 96m $I echo created-then-started)
echo "id-length=${#cid}"
vm inspect -f '{{.State.Status}}' later
vm start -a later
echo "== end"
