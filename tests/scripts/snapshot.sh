#!/usr/bin/env bash
# Starting from a snapshot of a booted guest: cold boots with
# --no-snapshot and VM_SNAPSHOT=0, the first start taking the snapshot,
# restored VMs that differ from each other (boot ID, random bytes, MAC),
# the clock, one snapshot per shape, refused snapshots (garbage,
# truncated, foreign) taken again, networking and exec in a restored VM,
# and volumes booting cold. Each section starts with "== NAME";
# tests/tests/snapshot.rs checks them.
# Needs: $VM, $IMAGES, $W (a scratch directory).
set -u
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
# The state root must be on a file system that holds sockets.
export VM_ROOT=${VM_ROOT:-/tmp/vm-test-state}
rm -rf "$VM_ROOT/snapshots"
unset VM_SNAPSHOT  # on by default
S=$VM_ROOT/snapshots
R="vm run --rm -m 128m"
count() { find "$S" -mindepth 1 -maxdepth 1 -type d ! -name '.*' 2>/dev/null | wc -l; }
one() { find "$S" -mindepth 1 -maxdepth 1 -type d ! -name '.*' | head -1; }

echo "== cold"
VM_SNAPSHOT=0 $R $I echo cold-env
echo "rc=$? snapshots=$(count)"
$R --no-snapshot $I echo cold-flag
echo "rc=$? snapshots=$(count)"

echo "== first"
$R $I echo first
echo "rc=$? snapshots=$(count)"
d=$(one)
stat -c '%a' "$S" "$d" "$d/state.json" "$d/memory"
# Sparse: far fewer blocks than bytes.
bytes=$(stat -c %s "$d/memory")
used=$(($(stat -c %b "$d/memory") * 512))
[ "$bytes" -eq $((128 << 20)) ] && echo "memory-size-ok" || echo "memory-size=$bytes"
[ "$used" -lt $((bytes / 2)) ] && echo sparse || echo "used=$used of $bytes"
key=$(basename "$d")
grep -q "\"key\":\"$key\"" "$d/state.json" && echo key-matches-dir || echo key-differs

echo "== restored"
# A second start restores it: no new snapshot, and (under --debug) no
# kernel boot on the console, which a cold boot shows.
$R $I echo second
echo "rc=$? snapshots=$(count)"
$R --debug $I true 2>&1 | grep -c 'Linux version'
$R --debug $I true 2>&1 | grep -c 'Linux version'
$R --debug --no-snapshot $I true 2>&1 | grep -c 'Linux version'

echo "== differ"
probe='cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1 | tr -d " "; cat /proc/sys/kernel/random/uuid; hostname'
$R $I sh -c "$probe" > "$W/a"
$R $I sh -c "$probe" > "$W/b"
for i in 1 2 3 4; do
    x=$(sed -n "${i}p" "$W/a"); y=$(sed -n "${i}p" "$W/b")
    [ -n "$x" ] && [ "$x" != "$y" ] && echo "line$i-differs" || echo "line$i-same: $x $y"
done

echo "== clock"
# The snapshot's clock stopped when it was taken; a restored guest gets
# the host's time.
sleep 5
t=$($R $I date +%s)
h=$(date +%s)
d=$((h - t)); d=${d#-}
[ "$d" -le 3 ] && echo clock-ok || echo "clock-off-by=$d"

echo "== shapes"
vm run --rm -m 160m $I echo m160
echo "rc=$? snapshots=$(count)"
vm run --rm -m 160m $I echo m160-again
echo "rc=$? snapshots=$(count)"

echo "== refused"
d=$S/$key
printf 'garbage\0\377' > "$d/state.json"
$R $I echo after-garbage
echo "rc=$?"
grep -q "\"key\":\"$key\"" "$d/state.json" && echo retaken || echo not-retaken
truncate -s 4096 "$d/memory"
$R $I echo after-truncated
echo "rc=$?"
[ "$(stat -c %s "$d/memory")" -eq $((128 << 20)) ] && echo retaken || echo not-retaken
other=$(find "$S" -mindepth 1 -maxdepth 1 -type d ! -name '.*' ! -name "$key" | head -1)
cp "$other/state.json" "$d/state.json"
$R $I echo after-foreign
echo "rc=$?"
grep -q "\"key\":\"$key\"" "$d/state.json" && echo retaken || echo not-retaken
echo "snapshots=$(count) leftovers=$(find "$S" -mindepth 1 -maxdepth 1 -name '.*.tmp' | wc -l)"

echo "== network"
# Two restored VMs at once: each its own address and MAC.
id=$(vm run -d -m 128m $I sleep 60)
$R $I sh -c 'ip -4 -o addr show eth0 | grep -c inet; cat /sys/class/net/eth0/address' > "$W/n1"
vm exec "$id" sh -c 'ip -4 -o addr show eth0 | grep -c inet; cat /sys/class/net/eth0/address' > "$W/n2"
head -1 "$W/n1"
head -1 "$W/n2"
[ "$(sed -n 2p "$W/n1")" != "$(sed -n 2p "$W/n2")" ] && echo macs-differ || echo "same-mac $(cat "$W/n1" "$W/n2")"
$R --network none $I ls /sys/class/net
vm exec "$id" echo exec-ok
vm rm -f "$id" > /dev/null

echo "== volumes"
mkdir -p "$W/vol"
echo in-volume > "$W/vol/f"
$R --debug -v "$W/vol:/data" $I cat /data/f 2> "$W/vol.err"
grep -c 'booting cold: volumes' "$W/vol.err"

echo "== end"
