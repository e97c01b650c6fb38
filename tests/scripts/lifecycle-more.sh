#!/usr/bin/env bash
# More of the container lifecycle (pause, a killed monitor, wait, start,
# create, exec, a 60-layer image, --cidfile, --label-file, --platform,
# health checks),
# in one nested host. Each section
# starts with "== NAME"; tests/tests/lifecycle.rs checks them.
# Needs: $VM, $IMAGES, $W (a scratch directory), $VM_ROOT.
set -u
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

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

echo "== exec"
vm run -d --name box -m 96m $I sh -c 'echo $$ > /tmp/pid; sleep 1000' >/dev/null
# (`run -d` returns once the process started, maybe before its first line)
for _ in $(seq 50); do vm exec box test -s /tmp/pid && break; sleep 0.2; done
vm exec box cat /tmp/pid
vm exec box sh -c 'echo "$$ $(cat /proc/1/comm)"; exit 3'; echo "rc=$?"
echo piped | vm exec -i box cat
vm exec box no-such-command 2>/dev/null; echo "rc=$?"
vm exec -u app -w /tmp -e FOO=bar box sh -c 'echo "$(id -un) $(pwd) $FOO"'
script -qec "$VM exec -t box sh -c 'test -t 0 && echo tty; stty size'" /dev/null </dev/null | tr -d '\r\000'
vm exec -d box sh -c 'echo detached > /tmp/d'; echo "rc=$?"
sleep 0.5
vm exec box cat /tmp/d
vm rm -f box >/dev/null
vm exec box true 2>/dev/null; echo "rc=$?"

echo "== many-layers"
vm run --rm -m 96m oci:$IMAGES/oci:many sh -c 'ls /many | wc -l; cat /many/file1 /many/file59'

echo "== create"
cid=$(vm create --name later -m 96m $I echo created-then-started)
echo "id-length=${#cid}"
vm inspect -f '{{.State.Status}}' later
vm start -a later

echo "== run-flags"
printf '# labels\nteam=a\nrole=web\n' > "$W/labels"
cid=$(vm create --cidfile "$W/cid" --label-file "$W/labels" -l role=db --platform linux/amd64 -m 96m "$I" true)
[ "$(cat "$W/cid")" = "$cid" ] && echo cidfile-matches
vm inspect -f '{{index .Config.Labels "team"}} {{index .Config.Labels "role"}}' "$cid"
vm create --cidfile "$W/cid" "$I" true 2>&1 | grep -o "container ID file found"; echo "rc=${PIPESTATUS[0]}"
vm create --platform linux/arm64 "$I" true 2>&1 | grep -o "is not supported"; echo "rc=${PIPESTATUS[0]}"
vm run --rm --oom-kill-disable "$I" true 2>&1 | grep -o "oom-kill-disable is not supported"; echo "rc=${PIPESTATUS[0]}"
vm rm "$cid" > /dev/null

echo "== health"
# Healthy once a file exists; one that never passes turns unhealthy after
# two failures; the flags are checked as Docker checks them.
vm run -d --name doc -m 96m --health-cmd 'test -f /tmp/ok && echo fine' --health-interval 1s \
    --health-retries 2 "$I" sh -c 'sleep 3; touch /tmp/ok; sleep 1000' > /dev/null
vm inspect -f '{{.State.Health.Status}} {{json .Config.Healthcheck.Test}}' doc
await doc '{{.State.Health.Status}}' healthy
vm ps --filter name=doc --format '{{.Status}}' | grep -o '(healthy)'
vm inspect -f '{{json .State.Health}}' doc | python3 -c 'import json,sys; h=json.load(sys.stdin); print(h["FailingStreak"], h["Log"][-1]["ExitCode"], h["Log"][-1]["Output"].strip())'
vm rm -f doc > /dev/null
vm run -d --name sick -m 96m --health-cmd 'echo no; exit 3' --health-interval 1s --health-retries 2 "$I" sleep 1000 > /dev/null
await sick '{{.State.Health.Status}}' unhealthy
vm ps --filter name=sick --format '{{.Status}}' | grep -o '(unhealthy)'
vm inspect -f '{{json .State.Health}}' sick | python3 -c 'import json,sys; h=json.load(sys.stdin); print(h["FailingStreak"] >= 2, h["Log"][-1]["ExitCode"], h["Log"][-1]["Output"].strip())'
vm rm -f sick > /dev/null
vm run --rm --no-healthcheck --health-cmd true "$I" true 2>&1 | grep -o "conflicts with --health"; echo "rc=${PIPESTATUS[0]}"
vm run --rm --health-cmd true --health-interval -1s "$I" true 2>&1 | grep -o "cannot be negative"; echo "rc=${PIPESTATUS[0]}"
vm run --rm --health-cmd true --health-interval 1s "$I" echo one-shot
echo "== end"
