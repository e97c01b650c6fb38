#!/usr/bin/env bash
# Files in and out of a running container (cp both ways, hostile
# archives, export), its processes (top), what it uses (stats), and the
# state root's disk use and pruning (system df/prune), in one nested
# host. Each section starts with "== NAME"; tests/tests/lifecycle.rs
# checks them.
# Needs: $VM, $IMAGES, $W (a scratch directory), $VM_ROOT.
set -u
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

vm run -d --name box -m 96m $I sh -c '
  mkdir -p /data/sub; echo hello > /data/sub/f; chmod 4755 /data/sub/f
  ln -s /etc/passwd /data/link; ln -s ../../../../../../../tmp /data/up
  echo ready; exec sleep 1000' >/dev/null
for _ in $(seq 1 100); do vm logs box 2>/dev/null | grep -q ready && break; sleep 0.2; done

echo "== cp-out"
vm cp box:/data "$W/out"; echo "rc=$?"
cat "$W/out/sub/f"
readlink "$W/out/link"
stat -c %a "$W/out/sub/f"
vm cp box:/data/sub/f "$W/single"; cat "$W/single"
mkdir "$W/into"; vm cp box:/data "$W/into"; ls "$W/into"
vm cp box:/data/. "$W/contents"; ls "$W/contents" | tr '\n' ' '; echo
vm cp box:/data/sub/f - | tar -tf -
vm cp box:/nope "$W/nope"; echo "rc=$? exists=$([ -e "$W/nope" ] && echo yes || echo no)"
ls -a "$W" | grep -c '^\.vm-cp-'

echo "== cp-in"
mkdir -p "$W/src/d"; echo world > "$W/src/d/g"
vm cp "$W/src/d" box:/tmp/; vm exec box cat /tmp/d/g
vm cp "$W/src/d/g" box:/tmp/renamed; vm exec box cat /tmp/renamed
chown 1234:1234 "$W/src/d/g"
vm cp "$W/src/d/g" box:/tmp/rooted; vm exec box stat -c %u /tmp/rooted
vm cp -a "$W/src/d/g" box:/tmp/owned; vm exec box stat -c %u /tmp/owned
vm cp "$W/missing" box:/tmp/; echo "rc=$?"

echo "== cp-hostile"
# Archives a hostile user or image could make: a member with .., a
# symlink to / and then a file through it (refused: a link the copy made
# is no way through), an absolute path (taken as relative).
python3 - "$W" <<'PY'
import io, sys, tarfile
w = sys.argv[1]
def tar(name, members):
    with tarfile.open(f"{w}/{name}", "w", format=tarfile.GNU_FORMAT) as t:
        for path, kind, data in members:
            i = tarfile.TarInfo(path)
            if kind == "sym":
                i.type, i.linkname = tarfile.SYMTYPE, data
                t.addfile(i)
            else:
                i.size = len(data)
                t.addfile(i, io.BytesIO(data))
tar("dotdot.tar", [("../../../etc/evil", "file", b"evil\n")])
tar("link.tar", [("esc", "sym", "/")])
tar("through.tar", [("esc/etc/evil2", "file", b"evil\n")])
tar("abs.tar", [("/etc/evil3", "file", b"evil\n")])
PY
vm exec box mkdir /tmp/h
vm cp - box:/tmp/h < "$W/dotdot.tar"; echo "dotdot-rc=$?"
vm cp - box:/tmp/h < "$W/link.tar"; echo "link-rc=$?"
vm cp - box:/tmp/h < "$W/through.tar"; echo "through-rc=$?"
vm cp - box:/tmp/h < "$W/abs.tar"; echo "abs-rc=$?"
vm exec box sh -c 'ls /etc/evil /etc/evil2 /etc/evil3 /tmp/h/etc/evil2 2>/dev/null | wc -l'
vm exec box cat /tmp/h/etc/evil3
# Back out to the host: the symlink to / comes as a symlink; nothing is
# written through it.
vm cp box:/tmp/h "$W/back"; echo "rc=$?"
readlink "$W/back/esc"; ls "$W/back/etc" | tr '\n' ' '; echo

echo "== export"
vm export box | tar -tf - > "$W/list"
grep -c '^data/sub/f$' "$W/list"
grep -c '^bin/' "$W/list" | sed 's/^[1-9][0-9]*$/some/'
grep -c '^proc/.' "$W/list"
vm export -o "$W/box.tar" box; echo "rc=$?"
tar -tf "$W/box.tar" | grep -c '^tmp/renamed$'

echo "== top"
vm top box > "$W/top"
head -1 "$W/top" | tr -s ' '
awk 'NR > 1 { print $1, $2, $3, $8, $9 }' "$W/top"

echo "== stats"
vm stats --no-stream --format '{{.Name}} {{.PIDs}}' box
vm stats --no-stream box | head -1 | tr -s ' '
vm stats --no-stream --format '{{.MemUsage}} {{.CPUPerc}}' box
timeout 4 "$VM" stats box > "$W/stream"
echo "tables=$(grep -c 'CONTAINER ID' "$W/stream" | sed 's/^[2-9]$/several/')"
sleep 1
echo "left=$(vm top box | tail -n +2 | wc -l)"

echo "== not-running"
vm stop -t 1 box >/dev/null
vm cp box:/data "$W/late"; echo "rc=$?"
vm top box; echo "rc=$?"

echo "== system"
vm load -i "$IMAGES/oci" >/dev/null; echo "load-rc=$?"
vm system df --format '{{.Type}} {{.TotalCount}} {{.Active}}' | sed 's/^Images [1-9][0-9]* /Images some /'
vm system prune -f | head -2
vm ps -aq | wc -l
vm system prune -a -f | grep -c '^deleted: ' | sed 's/^[1-9][0-9]*$/some/'
vm system df --format '{{.Type}} {{.TotalCount}}' | head -2
echo "== end"
