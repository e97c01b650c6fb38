#!/usr/bin/env bash
# Volumes and bind mounts over virtio-fs, as root in the nested host:
# named volumes across containers, two running containers sharing one,
# bind mounts both ways with owners and modes, read-only enforced by the
# host's daemon, symlinks, the image's VOLUME and copy-up, rm -v, a
# volume in use, tmpfs with --read-only, a full file system, the flags'
# errors, the volume commands, and nothing left behind.
# Needs: $VM, $IMAGES, $VM_ROOT, $W, $VM_KERNEL, $TEST_INITRD, $VIRTIOFSD.
set -u
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
R="vm run --rm -m 96m"
V=oci:$IMAGES/oci:volume
# virtiofsd runs as two processes (its sandbox is a child): count the
# parents.
daemons() {
    local n=0 p
    for p in $(pgrep -x virtiofsd); do
        [ "$(cat "/proc/$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null)/comm" 2>/dev/null)" = virtiofsd ] || n=$((n + 1))
    done
    echo $n
}

echo "== named"
$R -v v1:/v "$I" sh -c 'echo persisted > /v/f; chown 1234:5678 /v/f'
$R -v v1:/v "$I" sh -c 'cat /v/f; stat -c "%u:%g" /v/f'
vm volume ls -q
vm volume inspect -f '{{.Name}} {{.Driver}} {{.Mountpoint}}' v1

echo "== volumes-from"
vm create --name source -m 96m -v v1:/v -v "$W/from-bind:/b" --tmpfs /t "$I" true > /dev/null
$R --volumes-from source "$I" sh -c 'cat /v/f; echo b > /b/x && echo bind-rw; ls -d /t 2>&1 | sed "s/.*: //"'
$R --volumes-from source:ro "$I" sh -c '{ echo y > /v/y; } 2>&1 | sed "s/.*: //"; cat /b/x'
vm rm -v source > /dev/null
vm volume ls -q | grep -c -x v1

echo "== shared"
vm run -d --name writer -m 96m -v shared:/s "$I" sh -c 'i=0; while [ $i -lt 300 ]; do echo "w$i" > /s/from-writer.tmp && mv /s/from-writer.tmp /s/from-writer; i=$((i+1)); sleep 0.1; done' > /dev/null
vm run -d --name reader -m 96m -v shared:/s "$I" sh -c 'echo hello-from-reader > /s/from-reader; sleep 60' > /dev/null
# Each sees what the other wrote, while both run.
for _ in $(seq 1 100); do
    a=$(vm exec reader cat /s/from-writer 2>/dev/null)
    b=$(vm exec writer cat /s/from-reader 2>/dev/null)
    [ -n "$a" ] && [ -n "$b" ] && break
    sleep 0.3
done
case $a in w*) echo "reader sees writer";; *) echo "reader sees: $a";; esac
echo "writer sees: $b"
echo "daemons while two run: $(daemons)"
vm volume rm shared; echo "rm in use: rc=$?"
vm rm -f writer reader > /dev/null

echo "== bind"
B=$W/bind; rm -rf "$B"; mkdir -p "$B"; echo from-host > "$B/host-file"
vm run -d --name binder -m 96m -v "$B:/b" "$I" sleep 60 > /dev/null
vm exec binder cat /b/host-file
echo later > "$B/later"
for _ in $(seq 1 20); do vm exec binder cat /b/later 2>/dev/null && break; sleep 0.2; done
vm exec binder sh -c 'echo from-guest > /b/g; chown 1234:5678 /b/g; chmod 0640 /b/g; mkdir /b/d; chmod 0711 /b/d'
stat -c '%n %u:%g %a' "$B/g" "$B/d" | sed "s#$B/##"
cat "$B/g"
vm rm -f binder > /dev/null

echo "== readonly"
vm run -d --name ro -m 96m -v "$B:/b:ro" "$I" sleep 60 > /dev/null
vm exec ro sh -c 'echo x > /b/x' 2>&1 | sed 's/.*: //'
vm exec ro sh -c 'cat /b/host-file'
# The daemon of a read-only mount refuses writes itself.
# (The daemon's working directory is the directory it shares.)
mine=$(for p in $(pgrep -x virtiofsd); do
    [ "$(stat -L -c %d:%i "/proc/$p/cwd")" = "$(stat -c %d:%i "$B")" ] &&
        tr '\0' ' ' < "/proc/$p/cmdline" && echo
done)
[ -n "$mine" ] && ! grep -qv -- --readonly <<<"$mine" && echo "daemon --readonly"
vm rm -f ro > /dev/null
ls "$B" | tr '\n' ' '; echo
# Root in a guest that mounts the same daemon read-write still cannot
# write: the guest's mount flags are not what holds.
# (Its socket is in /tmp: $W is a 9p share in the nested host.)
rm -f /tmp/ro.sock
"$VIRTIOFSD" --socket-path=/tmp/ro.sock --shared-dir="$B" --sandbox=namespace --seccomp=kill \
    --inode-file-handles=never --cache=auto --log-level=error --readonly &
vfs=$!
for _ in $(seq 1 50); do [ -S /tmp/ro.sock ] && break; sleep 0.1; done
printf 'mkdir -p /m\nmount -t virtiofs ro /m && echo mounted-rw\necho x > /m/guest-root 2>/dev/null; echo "write rc=$?"\nmount -o remount,rw /m; echo y > /m/guest-root2 2>/dev/null; echo "after remount rc=$?"\n' > "$W/ro-script.sh"
truncate -s 4096 "$W/ro-script.sh"
timeout 60 "$VM" boot --kernel "$VM_KERNEL" --initrd "$TEST_INITRD" --memory 128 \
    --cmdline "console=ttyS0 quiet test.mode=script test.disk=auto" \
    --disk "$W/ro-script.sh,ro,id=script" --fs "ro,/tmp/ro.sock" | grep -E '^(mounted|write|after)'
wait $vfs
ls "$B" | grep -c guest-root

echo "== symlink"
ln -s /etc "$B/etc-link"
echo host-secret > "$W/outside"
ln -s "$W/outside" "$B/outside-link"
$R -h container-host -v "$B:/b" "$I" sh -c 'cat /b/etc-link/hostname; cat /b/outside-link 2>&1 | sed "s/.*: //"; ls /b/.. | grep -c host-file'

echo "== swap"
# A container that can write the parent of another's bind source swaps
# it for a symlink to /: the other's next start refuses it.
O=$W/outer; mkdir -p "$O/inner"; echo inner > "$O/inner/file"
vm create --name victim -m 96m -v "$O/inner:/x" "$I" cat /x/file > /dev/null
vm start -a victim
$R -v "$O:/o" "$I" sh -c 'rm -rf /o/inner && ln -s / /o/inner && echo swapped'
vm start -a victim 2>&1 | grep -o "goes through a symbolic link"; echo "rc=${PIPESTATUS[0]}"
vm run --rm -v "$O/inner:/x" "$I" true 2>&1 | grep -o "goes through a symbolic link"
vm rm victim > /dev/null

echo "== image-volume"
vm run --name withvol -m 96m "$V" sh -c 'cat /srv/data/seed; echo added > /srv/data/new' 
anon=$(vm inspect -f '{{range .Mounts}}{{.Name}}{{end}}' withvol)
vm inspect -f '{{range .Mounts}}{{.Type}} {{.Destination}} {{.RW}}{{end}}' withvol
vm volume ls -q | grep -c "^$anon\$"
stat -c '%u:%g %a' "$VM_ROOT/volumes/$anon/_data" "$VM_ROOT/volumes/$anon/_data/seed"
readlink "$VM_ROOT/volumes/$anon/_data/link"
cat "$VM_ROOT/volumes/$anon/_data/sub/deep" "$VM_ROOT/volumes/$anon/_data/new"
vm rm -v withvol > /dev/null
vm volume ls -q | grep -c "^$anon\$"

echo "== copy-up"
$R -v fresh:/srv/data "$V" sh -c 'ls /srv/data | tr "\n" " "; echo; stat -c "%u:%g %a" /srv/data/seed'
$R -v fresh:/srv/data "$V" cat /srv/data/seed
$R -v nocp:/srv/data:nocopy "$V" sh -c 'ls /srv/data | wc -l'
# A bind mount is never filled from the image.
E=$W/empty; rm -rf "$E"; mkdir -p "$E"
$R -v "$E:/srv/data" "$V" sh -c 'ls /srv/data | wc -l'

echo "== tmpfs"
$R --read-only --tmpfs /run:size=1m,mode=1777 --mount type=tmpfs,target=/work,tmpfs-size=2m "$I" sh -c '
echo a > /run/a && cat /run/a; stat -c %a /run; df -k /run /work | awk "NR>1 {print \$2}"
echo b > /b 2>/dev/null || echo root-read-only'

echo "== full"
F=$W/small; mkdir -p "$F"; mount -t tmpfs -o size=4m tmpfs "$F"
$R -v "$F:/f" "$I" sh -c 'dd if=/dev/zero of=/f/big bs=1M count=16 2> /tmp/dd.err; echo "dd rc=$?"; grep -o "No space left on device" /tmp/dd.err | head -1; rm /f/big; echo ok > /f/after && cat /f/after'
echo "run rc=$?"
umount "$F"

echo "== errors"
vm run --rm --mount "type=bind,source=$W/missing,target=/m" "$I" true 2>&1 | sed "s#$W#W#"; echo "rc=${PIPESTATUS[0]}"
vm run --rm -v "$W/made-by-v:/m" "$I" true; echo "rc=$? made=$(test -d "$W/made-by-v" && echo yes)"
vm run --rm -v "/tmp/../etc:/m" "$I" true 2>&1 | head -1 | grep -o "'..' is not allowed"; echo "rc=${PIPESTATUS[0]}"
vm run --rm -v "v1:relative" "$I" true 2>&1 | grep -o "absolute path"
vm run --rm -v "aa:/d" -v "bb:/d" "$I" true 2>&1 | grep -o "duplicate mount point: /d"
vm run --rm -v "$W/bind/host-file:/m" "$I" true 2>&1 | grep -o "not a directory"
vm volume rm no-such-volume 2>&1; echo "rc=$?"
vm volume rm -f no-such-volume; echo "rc=$?"

echo "== volume-commands"
vm volume create --label team=a labelled
vm volume create > "$W/anon-name"; grep -c '^[0-9a-f]\{64\}$' "$W/anon-name"
vm volume ls --filter label=team=a -q
vm create --name holder -v labelled:/x "$I" true > /dev/null
vm volume ls --filter dangling=false -q
vm system df --format '{{.Type}} {{.Active}}' | grep Volumes
vm volume inspect -f '{{.Labels}}' labelled
vm volume rm labelled > /dev/null 2>&1; echo "rm used by a stopped container: rc=$?"
vm rm holder > /dev/null
vm volume rm labelled "$(cat "$W/anon-name")" | sed 's/^[0-9a-f]\{64\}$/ANON/'
vm volume prune -f -a > /dev/null
vm volume ls -q | wc -l

echo "== rootless"
# A user who is not root: the daemon runs in a user namespace of its own
# that maps only that user.
chmod 666 /dev/kvm
sysctl -qw kernel.unprivileged_userns_clone=1 2>/dev/null
sysctl -qw user.max_user_namespaces=10000
U=/tmp/rootless-volumes
mkdir -p "$U/state" "$U/data"
cp "$VM_KERNEL" "$U/vmlinux"
cp "$VM_INITRD" "$U/agent.cpio"
cp "$VIRTIOFSD" "$U/virtiofsd"
cp -r "$IMAGES/oci" "$U/oci"
echo from-user > "$U/data/f"
chown -R 65534:65534 "$U/state" "$U/data"
chmod -R a+rX "$U"
as_user() {
    setpriv --reuid=65534 --regid=65534 --clear-groups \
        env HOME="$U" VM_ROOT="$U/state" VM_KERNEL="$U/vmlinux" VM_INITRD="$U/agent.cpio" \
        VM_VIRTIOFSD="$U/virtiofsd" timeout 120 "$VM" "$@"
}
as_user run --rm --network none -m 96m -v "$U/data:/d" "oci:$U/oci:busybox" sh -c '
cat /d/f; echo w > /d/w; chown 1234 /d/w 2>/dev/null || echo chown-refused'
stat -c %u "$U/data/w"
# Copy-up keeps the files; owners it cannot give stay the user's.
as_user run --rm --network none -m 96m -v nv:/srv/data "oci:$U/oci:volume" sh -c '
cat /srv/data/seed; ls /srv/data | tr "\n" " "; echo'
stat -c %u "$U/state/volumes/nv/_data/seed"

echo "== daemon-killed"
# The daemons die under a running container: its requests wait, and the
# container still stops and goes.
vm run -d --name orphan -m 96m -v v1:/v "$I" sh -c 'while :; do ls /v > /dev/null; sleep 0.2; done' > /dev/null
await orphan '{{.State.Status}}' running
sleep 1
pkill -9 -x virtiofsd
vm stop -t 2 orphan > /dev/null; echo "stop rc=$?"
vm inspect -f '{{.State.Status}}' orphan
vm rm orphan > /dev/null; echo "rm rc=$?"

echo "== leftovers"
vm run -d --name killed -m 96m -v v1:/v "$I" sleep 60 > /dev/null
await killed '{{.State.Status}}' running
kill -9 "$(vm inspect -f '{{.State.Pid}}' killed)"
for _ in $(seq 1 50); do [ "$(daemons)" = 0 ] && break; sleep 0.1; done
echo "daemons after a killed monitor: $(daemons)"
vm rm -f killed > /dev/null
echo "daemons: $(daemons)"
find "$VM_ROOT/run" -name 'vmfs*' | wc -l
grep -c virtiofs /proc/mounts
echo "== end"
