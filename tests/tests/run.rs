//! `vm run` end to end: real images built by umoci and skopeo, a real
//! guest (in the nested KVM host when needed), Docker's flags and exit
//! statuses. Each test runs many containers in one nested host.

use vm_tests::{debian_image, env, section, work_dir, ScriptOutput, START_REGISTRY};

/// A `vm run` that hung (nested-host flakiness) shows as 124 from the
/// `timeout` each container run gets.
fn hung(out: &ScriptOutput) -> bool {
    out.stdout.contains("rc=124")
}

fn line_after<'a>(text: &'a str, name: &str) -> &'a str {
    section(text, name).trim_end()
}

/// The `took=N` line of a section (seconds, from the script's clock).
fn seconds(section: &str) -> u64 {
    section
        .lines()
        .find_map(|l| l.strip_prefix("took="))
        .and_then(|t| t.parse().ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn streams_exit_codes_env_workdir_user_and_stdin() {
    let e = env();
    let w = work_dir("run-basics");
    let script = format!(
        r#"
W={w}
I=oci:$IMAGES/oci:busybox
R="timeout 120 $VM run"
echo "== streams"
$R $I sh -c 'echo out; echo err >&2; exit 7' >$W/out 2>$W/err; echo "rc=$?"
echo "stdout=$(cat $W/out)"; echo "stderr=$(cat $W/err)"
echo "== false"
$R $I false; echo "rc=$?"
echo "== missing"
$R $I no-such-command 2>$W/err; echo "rc=$?"; cat $W/err
echo "== not-executable"
$R $I /bin/not-executable 2>$W/err; echo "rc=$?"; cat $W/err
echo "== killed"
# (Not the container's PID 1 itself: the kernel ignores a SIGKILL that a
# namespace's init sends itself.)
$R $I sh -c 'sh -c "kill -KILL \$\$"; exit $?'; echo "rc=$?"
echo "== env"
printf 'FROM_FILE=file\n# a comment\n\nOVERRIDDEN=file\n' > $W/env
export FROM_HOST=host-value
$R -e A=1 -e FROM_HOST -e UNSET_ON_HOST --env-file $W/env -e OVERRIDDEN=flag $I \
    sh -c 'echo "A=$A FROM_HOST=$FROM_HOST FILE=$FROM_FILE OVERRIDDEN=$OVERRIDDEN UNSET=${{UNSET_ON_HOST-unset}} PATH=$PATH HOME=$HOME"'
echo "== workdir"
$R -w /tmp/new/dir $I pwd; echo "rc=$?"
echo "== user"
$R -u app $I sh -c 'echo "$(id -u) $(id -g) $(id -G) $HOME"'
$R -u 1000:2000 $I sh -c 'echo "$(id -u) $(id -g) $(id -G)"'
$R -u 4242 $I sh -c 'echo "$(id -u) $(id -g)"'
$R -u nobody2 $I true 2>$W/err; echo "rc=$?"; cat $W/err
echo "== capability"
$R -u app $I sh -c 'cat /root/secret 2>/dev/null || echo denied; /opt/cap/cat /root/secret'
$R $I sh -c '/opt/cap/true 2>/dev/null && echo sys-admin-granted || echo sys-admin-refused; grep CapBnd /proc/self/status'
echo "== image-config"
$R oci:$IMAGES/oci:app; echo "rc=$?"
$R oci:$IMAGES/oci:app extra args
$R --entrypoint sh oci:$IMAGES/oci:app -c 'echo "$(id -un) $(pwd) $GREETING"'
echo "== stdin"
printf 'hi\nthere\n' | $R -i $I cat; echo "rc=$?"
echo "no -i" | $R $I cat; echo "rc=$?"
echo "== resources"
$R --cpus 1.5 -m 300m $I sh -c 'nproc; free -m | awk "/Mem:/ {{print \$2}}"'
echo "== no-agent"
VM_INITRD=$TEST_INITRD $R --rm --name no-agent $I true 2>&1; echo "rc=$?"
echo "== hostname"
$R -h myhost $I hostname
$R $I sh -c 'hostname; cat /etc/hostname; grep -c localhost /etc/hosts'
echo "== end"
"#,
        w = w.display()
    );
    let out = e.run_with_kvm_retrying(&script, hung);
    assert_eq!(out.code, Some(0), "{out}");
    let o = &out.stdout;
    assert_eq!(
        line_after(o, "streams"),
        "rc=7\nstdout=out\nstderr=err",
        "{out}"
    );
    assert_eq!(line_after(o, "false"), "rc=1", "{out}");
    let missing = line_after(o, "missing");
    assert!(missing.starts_with("rc=127\n"), "{out}");
    assert!(missing.contains("executable file not found"), "{out}");
    let noexec = line_after(o, "not-executable");
    assert!(noexec.starts_with("rc=126\n"), "{out}");
    assert!(noexec.contains("permission denied"), "{out}");
    assert_eq!(line_after(o, "killed"), "rc=137", "{out}");
    assert_eq!(
        line_after(o, "env"),
        "A=1 FROM_HOST=host-value FILE=file OVERRIDDEN=flag UNSET=unset \
         PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root",
        "{out}"
    );
    assert_eq!(line_after(o, "workdir"), "/tmp/new/dir\nrc=0", "{out}");
    let user: Vec<&str> = line_after(o, "user").lines().collect();
    assert_eq!(user[0], "1000 1000 1000 2000 /home/app", "{out}");
    assert_eq!(user[1], "1000 2000 2000", "{out}");
    assert_eq!(user[2], "4242 0", "{out}");
    assert_eq!(user[3], "rc=125", "{out}");
    assert!(user[4].contains("unable to find user nobody2"), "{out}");
    // security.capability survived umoci, the layer, the unpack and the
    // overlay: the capable copy of cat reads what plain cat may not. The
    // bounding set is Docker's default one (0xa80425fb), so a file
    // capability outside it cannot be had, even by root.
    assert_eq!(
        line_after(o, "capability"),
        "denied\nroot's secret\nsys-admin-refused\nCapBnd:\t00000000a80425fb",
        "{out}"
    );
    assert_eq!(
        line_after(o, "image-config"),
        "default-cmd\nrc=0\nextra args\napp /home/app/work hello",
        "{out}"
    );
    assert_eq!(line_after(o, "stdin"), "hi\nthere\nrc=0\nrc=0", "{out}");
    let res: Vec<&str> = line_after(o, "resources").lines().collect();
    assert_eq!(res[0], "2", "--cpus 1.5 rounds up: {out}");
    let mib: u32 = res[1].parse().unwrap_or(0);
    assert!((250..=300).contains(&mib), "-m 300m gives {mib} MiB: {out}");
    // A guest without our agent: a clear error and its console's end.
    let no_agent = line_after(o, "no-agent");
    assert!(no_agent.ends_with("rc=125"), "{out}");
    assert!(
        no_agent.contains("the guest ended before the container reported"),
        "{out}"
    );
    assert!(
        no_agent.contains("last lines of the guest console"),
        "{out}"
    );
    let host: Vec<&str> = line_after(o, "hostname").lines().collect();
    assert_eq!(host[0], "myhost", "{out}");
    assert_eq!(host[1].len(), 12, "default hostname is a short id: {out}");
    assert_eq!(host[1], host[2], "{out}");
    assert_eq!(host[3], "2", "{out}");
    assert!(!o.contains("vm-agent:"), "guest console leaked: {out}");
}

#[test]
fn layers_archives_read_only_devices_signals_and_tty() {
    let e = env();
    let w = work_dir("run-image");
    let script = format!(
        r#"
W={w}
I=oci:$IMAGES/oci:busybox
R="timeout 120 $VM run"
echo "== layers"
$R oci:$IMAGES/oci:layers sh -c 'cat /data/keep /data/added /opaque/new; ls /data | tr "\n" " "; ls /opaque | tr "\n" " "; echo'
echo "== cache"
# tmpfs in the nested host (not the 9p share): SEEK_DATA must work there.
export VM_ROOT=/tmp/cache-test-state
$R oci:$IMAGES/oci:layers sh -c 'echo scribble > /data/keep; maj=$(cut -d: -f1 /sys/block/vdb/dev); mknod /tmp/vdb b $maj 16; dd if=/dev/zero of=/tmp/vdb bs=4096 count=64 conv=fsync 2>/dev/null && echo image-disk-written || echo image-disk-refused'
ls $VM_ROOT/rootfs | grep -c '^[0-9a-f]*\.ext4$'
$R oci:$IMAGES/oci:layers sh -c 'cat /data/keep; ls /opaque'
echo "== log-flood"
# A first run (nothing cached): the image disk is sealed before the
# container starts, so the device refuses its writes, 200 times; each is
# a line on vm's stderr, which stays rate-limited.
VM_ROOT=/tmp/flood-state $R oci:$IMAGES/oci:layers sh -c 'maj=$(cut -d: -f1 /sys/block/vdb/dev); mknod /tmp/vdb b $maj 16; i=0; while [ $i -lt 200 ]; do dd if=/dev/zero of=/tmp/vdb bs=4096 count=1 seek=$i conv=fsync 2>/dev/null; i=$((i+1)); done; echo flooded' 2>$W/flood.err
grep -c "virtio-blk:" $W/flood.err
echo "== private-layers"
# The published entry is read-only. The first run copied the layers into
# the store: a copy of the layout whose layer blobs are then rewritten in
# place (same size) still runs, from the checked copies, once the entry
# is gone.
stat -c %a $VM_ROOT/rootfs/*.ext4
cp -r $IMAGES/oci $W/oci-copy
n=0
for h in $(ls $VM_ROOT/images/blobs/sha256); do
    f=$W/oci-copy/blobs/sha256/$h
    [ -f $f ] && dd if=/dev/zero of=$f bs=16 count=1 conv=notrunc 2>/dev/null && n=$((n+1))
done
echo "rewritten=$n"
rm -f $VM_ROOT/rootfs/*.ext4
$R oci:$W/oci-copy:layers sh -c 'cat /data/keep; ls /opaque'
export VM_ROOT=/tmp/vm-test-state
echo "== archives"
$R oci-archive:$IMAGES/busybox.oci.tar:busybox sh -c 'echo oci-archive ok'
$R docker-archive:$IMAGES/busybox.docker.tar sh -c 'echo docker-archive ok'
echo "== read-only"
$R --read-only $I sh -c 'touch /x 2>/dev/null && echo wrote || echo refused; echo tmp >/dev/shm/t && cat /dev/shm/t'
$R $I sh -c 'touch /x && echo wrote'
echo "== storage-opt"
$R --storage-opt size=100m $I sh -c 'df -k / | awk "NR==2 {{print \$2}}"; dd if=/dev/zero of=/big bs=1M count=200 2>/dev/null && echo filled || echo full'
echo "== dev"
$R $I sh -c 'ls /dev | tr "\n" " "; echo; head -c 4 /dev/zero | wc -c; echo x > /dev/null && echo null-ok; echo $$; ls /proc/1/ns >/dev/null && echo proc-ok'
echo "== zombies"
$R $I sh -c 'c=$(cat /proc/1/comm); (sleep 0.2 &); sleep 1; grep -l "^State:.Z" /proc/[0-9]*/status | wc -l; echo $c'
echo "== sigterm"
# The container's process is PID 1 (as under Docker): it ends on SIGTERM
# because it has a handler.
$VM run $I sh -c 'trap "exit 143" TERM; echo started; while :; do sleep 0.1; done' >$W/sig.out 2>&1 &
pid=$!
for i in $(seq 1 600); do grep -q started $W/sig.out 2>/dev/null && break; sleep 0.1; done
t0=$(date +%s)
kill -TERM $pid
wait $pid; echo "rc=$?"
echo "took=$(( $(date +%s) - t0 ))"
echo "== sigterm-during-boot"
# Sent while the guest still boots: it waits for the container's process;
# that one (sleep, PID 1 without a handler) ignores it, as under Docker,
# and vm run is not killed by it: it waits for the end and cleans up.
$VM run --name early $I sleep 3 >$W/early.out 2>&1 &
pid=$!
# Once the container exists (its VM starts), not while the image is read.
for i in $(seq 1 300); do $VM inspect -f '{{{{.Name}}}}' early >/dev/null 2>&1 && break; sleep 0.1; done
t0=$(date +%s)
kill -TERM $pid
wait $pid; echo "rc=$?"
echo "took=$(( $(date +%s) - t0 ))"
# vm run itself was not killed (143 alone would not tell): it cleaned up.
echo "left=$(ls -A $VM_ROOT/run 2>/dev/null | wc -l)"
echo "== sigint-trapped"
$VM run $I sh -c 'trap "echo got-int; exit 9" INT; echo ready; while :; do sleep 0.1; done' >$W/int.out 2>&1 &
pid=$!
for i in $(seq 1 600); do grep -q got-int $W/int.out 2>/dev/null && break; grep -q ready $W/int.out && kill -INT $pid; sleep 0.1; done
wait $pid; echo "rc=$?"; cat $W/int.out
echo "== tty"
script -qec "$VM run -t $I sh -c 'tty; stty size; test -t 0 && echo stdin-is-tty'" /dev/null </dev/null | tr -d '\r'
echo "== tty-interactive"
printf 'echo $((6*7))\nexit 3\n' | script -qec "$VM run -it $I sh" /dev/null > $W/tty.out; echo "rc=$?"
tr -d '\r' < $W/tty.out | grep -x 42
echo "== tty-resize"
# The terminal vm run sits on changes size: the container's follows.
export INNER='stty size; echo ready; i=0; while [ $i -lt 300 ]; do [ "$(stty size)" = "40 100" ] && echo resized && exit 0; sleep 0.1; i=$((i+1)); done; echo never'
script -qfec 'tty > '$W'/tty.name; exec $VM run -t '$I' sh -c "$INNER"' $W/resize.out < /dev/null > /dev/null &
sp=$!
for i in $(seq 1 600); do grep -q ready $W/resize.out 2>/dev/null && break; sleep 0.1; done
stty -F $(cat $W/tty.name) rows 40 cols 100
wait $sp; echo "rc=$?"
tr -d '\r' < $W/resize.out | grep -x -e '24 80' -e resized -e never
echo "== end"
"#,
        w = w.display()
    );
    let out = e.run_with_kvm_retrying(&script, hung);
    assert_eq!(out.code, Some(0), "{out}");
    let o = &out.stdout;
    assert_eq!(
        line_after(o, "layers"),
        "keep\nlayer3\nnew\nadded keep new",
        "whiteouts and opaque dirs: {out}"
    );
    // The sealed image disk refuses the container's writes; one entry is
    // published; the next run finds the image as it was.
    assert_eq!(
        line_after(o, "cache"),
        "image-disk-refused\n1\nkeep\nnew",
        "{out}"
    );
    // 200 refused writes, a few lines: the burst and the rate.
    let flood: Vec<&str> = line_after(o, "log-flood").lines().collect();
    assert_eq!(flood.first(), Some(&"flooded"), "{out}");
    let lines: usize = flood.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!((1..=40).contains(&lines), "{out}");
    let private: Vec<&str> = line_after(o, "private-layers").lines().collect();
    assert_eq!(private.first(), Some(&"400"), "{out}");
    assert!(
        private
            .get(1)
            .is_some_and(|l| l.starts_with("rewritten=") && *l != "rewritten=0"),
        "{out}"
    );
    assert_eq!(&private[2..], ["keep", "new"], "{out}");
    assert_eq!(
        line_after(o, "archives"),
        "oci-archive ok\ndocker-archive ok",
        "{out}"
    );
    assert_eq!(line_after(o, "read-only"), "refused\ntmp\nwrote", "{out}");
    // --storage-opt size= is the size of what the container can write.
    let storage: Vec<&str> = line_after(o, "storage-opt").lines().collect();
    let kib: u64 = storage.first().and_then(|l| l.parse().ok()).unwrap_or(0);
    assert!((80_000..=102_400).contains(&kib), "{out}");
    assert_eq!(storage.get(1), Some(&"full"), "{out}");
    let dev: Vec<&str> = line_after(o, "dev").lines().collect();
    for node in [
        "console", "full", "null", "ptmx", "pts", "random", "shm", "tty", "urandom", "zero",
    ] {
        if node == "console" {
            continue; // only with -t
        }
        assert!(
            dev[0].split(' ').any(|n| n == node),
            "/dev/{node} missing: {out}"
        );
    }
    // The container's process is PID 1 of its namespace.
    assert_eq!(&dev[1..], ["4", "null-ok", "1", "proc-ok"], "{out}");
    // The orphaned sleep was reaped by the container's PID 1 (the shell).
    assert_eq!(line_after(o, "zombies"), "0\nsh", "{out}");
    let sig = line_after(o, "sigterm");
    assert!(sig.starts_with("rc=143\n"), "{out}");
    let took = seconds(sig);
    assert!(took < 60, "SIGTERM took {took}s: {out}");
    let early = line_after(o, "sigterm-during-boot");
    assert!(early.starts_with("rc=0\n"), "{out}");
    let took = seconds(early);
    assert!(took < 25, "an early SIGTERM took {took}s: {out}");
    assert!(early.ends_with("left=0"), "{out}");
    let int = line_after(o, "sigint-trapped");
    assert!(
        int.starts_with("rc=9\n") && int.contains("got-int"),
        "{out}"
    );
    let tty: Vec<&str> = line_after(o, "tty").lines().collect();
    assert!(tty[0].starts_with("/dev/pts/"), "{out}");
    assert!(tty.contains(&"stdin-is-tty"), "{out}");
    assert_eq!(line_after(o, "tty-interactive"), "rc=3\n42", "{out}");
    // No size on vm run's terminal at first (script's pty from /dev/null):
    // 24x80; then SIGWINCH carries the new one in.
    assert_eq!(line_after(o, "tty-resize"), "rc=0\n24 80\nresized", "{out}");
}

#[test]
fn rate_limits_pace_the_disks_and_vsock_and_io_weight_reaches_the_cgroup() {
    let e = env();
    let w = work_dir("run-limits");
    let script = format!(
        r#"
W={w}
I=oci:$IMAGES/oci:busybox
R="timeout 120 $VM run --rm"
echo "== disk-bps"
# 8 MiB written and synced at 2 MiB/s: the first 2 MiB come from the full
# bucket, the rest take at least 3 s (timed by the guest's clock).
$R --disk-bps 2m $I sh -c 't0=$(date +%s); dd if=/dev/zero of=/f bs=1M count=8 conv=fsync 2>/dev/null; echo "took=$(( $(date +%s) - t0 ))"; wc -c < /f'
echo "rc=$?"
echo "== vsock-bps"
# 2 MB of output at 200 KB/s: what the guest and host buffer aside, the
# writer waits at least 3 s; every byte arrives.
$R --vsock-bps 200k $I sh -c 't0=$(date +%s); head -c 2000000 /dev/zero; echo "took=$(( $(date +%s) - t0 ))" >&2' 2>$W/vs.err | wc -c
echo "rc=$?"
cat $W/vs.err
echo "== unlimited"
$R $I sh -c 't0=$(date +%s); dd if=/dev/zero of=/f bs=1M count=8 conv=fsync 2>/dev/null; head -c 2000000 /dev/zero | wc -c; echo "took=$(( $(date +%s) - t0 ))"'
echo "== blkio-weight"
id=$($VM run -d --blkio-weight 300 --disk-iops 500:10k $I sleep 60)
$VM inspect -f '{{{{.HostConfig.BlkioWeight}}}} {{{{.HostConfig.DiskRateLimits.Iops.PerSecond}}}} {{{{.HostConfig.DiskRateLimits.Iops.Burst}}}}' $id
cat /sys/fs/cgroup/vm/$id/io.weight 2>&1 | head -1
$VM rm -f $id >/dev/null
echo "== bad"
$R --disk-bps fast $I true 2>$W/err; echo "rc=$?"; cat $W/err
$R --blkio-weight 5 $I true 2>$W/err; echo "rc=$?"; cat $W/err
echo "== end"
"#,
        w = w.display()
    );
    let out = e.run_with_kvm_retrying(&script, hung);
    assert!(out.stdout.contains("== end"), "{out}");

    let disk = section(&out.stdout, "disk-bps");
    assert!(disk.contains("8388608\nrc=0"), "all 8 MiB written\n{out}");
    let took = seconds(disk);
    assert!(
        (3..60).contains(&took),
        "8 MiB at 2 MiB/s took {took}s\n{out}"
    );

    let vsock = section(&out.stdout, "vsock-bps");
    assert!(
        vsock.starts_with("2000000\nrc=0"),
        "all 2 MB arrived\n{out}"
    );
    let took = seconds(vsock);
    assert!(
        (3..60).contains(&took),
        "2 MB at 200 KB/s took {took}s\n{out}"
    );

    let free = section(&out.stdout, "unlimited");
    assert!(free.starts_with("2000000"), "{out}");

    assert_eq!(
        line_after(&out.stdout, "blkio-weight"),
        "300 500 10000\ndefault 2930",
        "--blkio-weight becomes the VMM cgroup's io.weight (runc's mapping)\n{out}"
    );

    let bad = section(&out.stdout, "bad");
    assert!(bad.contains("rc=125"), "{out}");
    assert!(bad.contains("\"fast\" is not a rate"), "{out}");
    assert!(bad.contains("weight from 10 to 1000"), "{out}");
}

#[test]
fn hostile_layers_fail_cleanly_and_nothing_escapes() {
    let e = env();
    let script = r#"
H=$IMAGES/hostile
R="timeout 120 $VM run"
for c in traversal hardlink corrupt-gzip; do
    echo "== $c"
    $R oci:$H/$c true 2>&1; echo "rc=$?"
done
echo "== bomb"
VM_MAX_LAYER_SIZE=64m $R oci:$H/bomb true 2>&1; echo "rc=$?"
echo "== symlink"
$R oci:$H/symlink sh -c 'cat /tmp/escaped-symlink; ls /evil/escaped-symlink' 2>&1; echo "rc=$?"
echo "== end"
"#;
    let out = e.run_with_kvm_retrying(script, hung);
    assert_eq!(out.code, Some(0), "{out}");
    let o = &out.stdout;
    for (case, words) in [
        ("traversal", "unsafe path"),
        ("hardlink", "unsafe path"),
        ("corrupt-gzip", "corrupt"),
        ("bomb", "limit"),
    ] {
        let s = line_after(o, case);
        assert!(s.ends_with("rc=125"), "{case}: {out}");
        assert!(s.contains("unpacking layer sha256:"), "{case}: {out}");
        assert!(s.contains(words), "{case} should mention {words:?}: {out}");
    }
    // The link resolves inside the container's root, so the file written
    // through it is the container's /tmp/escaped-symlink.
    assert_eq!(
        line_after(o, "symlink"),
        "contained\n/evil/escaped-symlink\nrc=0",
        "{out}"
    );
}

#[test]
fn bad_images_and_flags_are_clear_errors_before_any_vm() {
    let e = env();
    let script = r#"
# A state directory of its own: a cached root file system of the base
# image would make the tampered layer irrelevant (it is never read).
export VM_ROOT=$(mktemp -d)
H=$IMAGES/hostile
for c in digest-mismatch missing-blob media-type; do
    echo "== $c"
    $VM run oci:$H/$c true 2>&1; echo "rc=$?"
done
echo "== no-image"
$VM run oci:/nonexistent/layout true 2>&1; echo "rc=$?"
echo "== bad-transport"
$VM run docker://busybox true 2>&1; echo "rc=$?"
echo "== bad-flag"
$VM run --no-such-flag oci:$IMAGES/oci:busybox true 2>&1; echo "rc=$?"
echo "== bad-memory"
$VM run -m lots oci:$IMAGES/oci:busybox true 2>&1; echo "rc=$?"
echo "== fifo-archive"
mkfifo $VM_ROOT/fifo.tar
timeout 20 $VM run oci-archive:$VM_ROOT/fifo.tar true 2>&1; echo "rc=$?"
echo "== storage-too-small"
$VM run --storage-opt size=1m oci:$IMAGES/oci:busybox true 2>&1; echo "rc=$?"
echo "== storage-unknown"
$VM run --storage-opt dm.basesize=1g oci:$IMAGES/oci:busybox true 2>&1; echo "rc=$?"
echo "== seccomp"
# (The filter goes on once the VM is built, which PVM's KVM also does.)
VM_ALLOW_PVM=1 VM_SECCOMP_SELFTEST=1 $VM run --rm oci:$IMAGES/oci:busybox true 2>&1; echo "rc=$?"
echo "== relative-workdir"
$VM run -w rel oci:$IMAGES/oci:busybox true 2>&1; echo "rc=$?"
echo "== no-command"
$VM run --entrypoint "" oci:$IMAGES/oci:busybox 2>&1; echo "rc=$?"
echo "== leftovers"
ls -d ${TMPDIR:-/tmp}/vm-run-* $VM_ROOT/run/vm-run-* $VM_ROOT/rootfs/.tmp-* 2>/dev/null | wc -l
rm -rf "$VM_ROOT"
echo "== end"
"#;
    let out = e.run_here(script);
    assert_eq!(out.code, Some(0), "{out}");
    let o = &out.stdout;
    for (case, words) in [
        ("digest-mismatch", "does not match its content"),
        ("missing-blob", "is missing from the image"),
        ("media-type", "unsupported layer media type"),
        ("no-image", "not an OCI image layout"),
        ("bad-transport", "unknown image transport"),
        ("bad-flag", "--no-such-flag"),
        ("bad-memory", "invalid memory size"),
        // A FIFO would hold the open for ever (timeout's 124 if it did).
        ("fifo-archive", "not a regular file"),
        ("storage-too-small", "too small"),
        ("storage-unknown", "unknown storage option"),
        // The VMM's filter kills it for a call outside its list (the
        // self-test makes one): reported, 125.
        ("seccomp", "killed by its seccomp filter (SIGSYS)"),
        ("relative-workdir", "must be an absolute path"),
        ("no-command", "no command specified"),
    ] {
        let s = line_after(o, case);
        assert!(s.ends_with("rc=125"), "{case}: {out}");
        assert!(s.contains(words), "{case} should say {words:?}: {out}");
        assert!(!s.contains("panicked"), "{case}: {out}");
    }
    assert_eq!(line_after(o, "leftovers"), "0", "{out}");
}

#[test]
fn debian_minbase_image_runs_dpkg() {
    let e = env();
    let script = format!(
        r#"
D=oci:{debian}
R="timeout 180 $VM run"
echo "== dpkg"
$R $D sh -c 'dpkg -l | grep -c "^ii"; cut -d. -f1 /etc/debian_version'; echo "rc=$?"
echo "== nobody"
$R -u nobody $D id; echo "rc=$?"
echo "== apt"
$R -w /var/lib $D sh -c 'pwd; command -v apt-get'
echo "== end"
"#,
        debian = debian_image().display()
    );
    let out = e.run_with_kvm_retrying(&script, hung);
    assert_eq!(out.code, Some(0), "{out}");
    let o = &out.stdout;
    let dpkg: Vec<&str> = line_after(o, "dpkg").lines().collect();
    let installed: u32 = dpkg[0].parse().unwrap_or(0);
    assert!(installed > 50, "dpkg -l lists {installed} packages: {out}");
    assert_eq!(&dpkg[1..], ["12", "rc=0"], "{out}");
    assert_eq!(
        line_after(o, "nobody"),
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)\nrc=0",
        "{out}"
    );
    assert_eq!(line_after(o, "apt"), "/var/lib\n/usr/bin/apt-get", "{out}");
}

#[test]
fn images_load_into_the_store_and_run_by_name() {
    let e = env();
    let script = r#"
export VM_ROOT=/tmp/store-test
# (--rm: a container that is kept uses its image, and `vm rmi` below would
# refuse, as Docker's does.)
R="timeout 120 $VM run --rm"
echo "== bad-load"
# Into an empty store: the tampered layer is read, refused, nothing kept.
$VM load -i $IMAGES/hostile/digest-mismatch 2>&1 | grep -c "does not match"
ls -A $VM_ROOT/images/blobs/sha256 | wc -l
echo "== load"
# Two loads of the same archive at once: both succeed, one image.
$VM load -i $IMAGES/busybox.docker.tar > /tmp/l1 2>&1 & p1=$!
$VM load -i $IMAGES/busybox.docker.tar > /tmp/l2 2>&1 & p2=$!
wait $p1; echo "rc=$?"; wait $p2; echo "rc=$?"
cat /tmp/l1
$VM load -i $IMAGES/busybox.oci.tar; echo "rc=$?"
echo "== tag"
$VM tag busybox localhost:5000/me/bb:v1; echo "rc=$?"
$VM images | awk 'NR > 1 { print $1, $2 }' | LC_ALL=C sort
$VM images --format json | grep -c '"Repository"'
echo "== run"
$R busybox sh -c 'echo by name'; echo "rc=$?"
$R localhost:5000/me/bb:v1 sh -c 'echo by tag'; echo "rc=$?"
$R --pull never nosuch true 2>&1; echo "rc=$?"
echo "== in-use"
# While a container runs its image, its last name cannot be removed.
# (Its process is PID 1: it ends on SIGTERM because it says so, once it
# has said so: a signal that comes before its trap is ignored, as under
# Docker.)
$VM run --rm busybox sh -c 'trap "exit 143" TERM; echo ready; while true; do sleep 0.1; done' > /tmp/in-use.out 2>&1 & rp=$!
for i in $(seq 1 600); do grep -q ready /tmp/in-use.out 2>/dev/null && break; sleep 0.1; done
$VM rmi localhost:5000/me/bb:v1 > /dev/null; echo "rc=$?"
$VM rmi busybox 2>&1 | sed 's/container [0-9a-f]*;/container ID;/'; echo "rc=${PIPESTATUS[0]}"
$VM tag busybox localhost:5000/me/bb:v1
kill -TERM $rp; wait $rp; echo "rc=$?"
echo "== rmi"
$VM image inspect busybox | grep -c '"ManifestDigest"'
$VM rmi localhost:5000/me/bb:v1
$VM images | awk 'NR > 1 { print $1, $2 }' | LC_ALL=C sort
ls $VM_ROOT/rootfs/*.ext4 | wc -l
$VM rmi busybox > /dev/null; echo "rc=$?"
$VM rmi busybox 2>&1; echo "rc=$?"
echo "== prune"
# Left: the untagged image (the docker archive's, whose name moved) and
# the unpacked root file system of the image just removed.
$VM image prune --force | grep -c -e '^deleted: sha256:' -e '^Deleted cached root file systems: 1$'
$VM images | wc -l
ls -A $VM_ROOT/images/blobs/sha256 | wc -l
ls $VM_ROOT/rootfs/*.ext4 2>/dev/null | wc -l
echo "== end"
"#;
    let out = e.run_with_kvm_retrying(script, hung);
    assert_eq!(out.code, Some(0), "{out}");
    let o = &out.stdout;
    assert_eq!(
        line_after(o, "load"),
        "rc=0\nrc=0\nLoaded image: busybox:latest\nLoaded image: busybox:latest\nrc=0",
        "{out}"
    );
    assert_eq!(line_after(o, "bad-load"), "1\n0", "{out}");
    // busybox from the docker archive was replaced by the one from the OCI
    // archive (same name, last load wins; the first stays, untagged), then
    // tagged.
    assert_eq!(
        line_after(o, "tag"),
        "rc=0\n<none> <none>\nbusybox latest\nlocalhost:5000/me/bb v1\n3",
        "{out}"
    );
    let run = line_after(o, "run");
    assert!(run.starts_with("by name\nrc=0\nby tag\nrc=0\n"), "{out}");
    assert!(
        run.contains("no image docker.io/library/nosuch:latest in the local store"),
        "{out}"
    );
    assert!(run.ends_with("rc=125"), "{out}");
    assert_eq!(
        line_after(o, "in-use"),
        "rc=0\nvm: error: image busybox is in use by running container ID; stop it first, or use --force\nrc=125\nrc=143",
        "{out}"
    );
    assert_eq!(
        line_after(o, "rmi"),
        "1\nUntagged: localhost:5000/me/bb:v1\n<none> <none>\nbusybox latest\n1\nrc=0\n\
         vm: error: no image docker.io/library/busybox:latest in the local store\nrc=125",
        "{out}"
    );
    // Pruning removes the untagged image, then every blob and cached root
    // file system is unused and goes too.
    assert_eq!(line_after(o, "prune"), "2\n1\n0\n0", "{out}");
}

#[test]
fn images_pull_from_a_real_registry_and_run() {
    let e = env();
    let script = [
        "export TMPDIR=/tmp\nW=$(mktemp -d)\n",
        START_REGISTRY,
        r#"
# Debian's docker-registry (distribution 2.8) on loopback in this host.
start_registry reg 5055 < /dev/null
skopeo copy --quiet --dest-tls-verify=false oci:$IMAGES/oci:busybox docker://127.0.0.1:5055/test/busybox:1.0
skopeo copy --quiet --dest-tls-verify=false oci:$IMAGES/oci:app docker://127.0.0.1:5055/test/app:latest
export VM_ROOT=/tmp/pull-test
echo "== run-pulls"
timeout 120 $VM run 127.0.0.1:5055/test/busybox:1.0 sh -c 'echo pulled and ran'; echo "rc=$?"
$VM images | awk 'NR > 1 { print $1, $2 }'
echo "== pull"
$VM pull 127.0.0.1:5055/test/app | tail -1; echo "rc=$?"
timeout 120 $VM run --pull never 127.0.0.1:5055/test/app; echo "rc=$?"
echo "== errors"
$VM pull 127.0.0.1:5055/test/busybox:missing 2>&1; echo "rc=$?"
$VM pull 127.0.0.1:5999/nobody/home 2>&1 | grep -c "cannot reach the registry"
# Tamper with the app image's layer on the registry's disk.
export VM_ROOT=/tmp/pull-test-2
layer=$(skopeo inspect --tls-verify=false --raw docker://127.0.0.1:5055/test/app:latest | python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][0]["digest"][7:])')
f=$W/reg-data/docker/registry/v2/blobs/sha256/${layer:0:2}/$layer/data
printf 'X' | dd of=$f bs=1 seek=100 conv=notrunc 2>/dev/null
$VM pull 127.0.0.1:5055/test/app 2>&1 | grep -c "does not match"
ls -A $VM_ROOT/images/blobs/sha256 | grep -c "^$layer" || true
$VM images | wc -l
echo "== end"
"#,
    ]
    .concat();
    let out = e.run_with_kvm_retrying(&script, hung);
    assert_eq!(out.code, Some(0), "{out}");
    let o = &out.stdout;
    assert_eq!(
        line_after(o, "run-pulls"),
        "pulled and ran\nrc=0\n127.0.0.1:5055/test/busybox 1.0",
        "{out}"
    );
    assert_eq!(
        line_after(o, "pull"),
        "Downloaded: 127.0.0.1:5055/test/app:latest\nrc=0\ndefault-cmd\nrc=0",
        "{out}"
    );
    let errors = line_after(o, "errors");
    let lines: Vec<&str> = errors.lines().collect();
    assert!(
        lines[0].contains("not found (404: MANIFEST_UNKNOWN"),
        "{out}"
    );
    assert_eq!(lines[1], "rc=125", "{out}");
    // Unreachable: a clear message. Tampered: refused, the layer not
    // stored, no image named (only the header line).
    assert_eq!(&lines[2..], ["1", "1", "0", "1"], "{out}");
}

#[test]
fn images_save_as_archives_that_skopeo_reads_back() {
    let e = env();
    let w = work_dir("save");
    let script = format!(
        r#"
W={w}
export VM_ROOT=$W/state
$VM load -i $IMAGES/busybox.oci.tar > /dev/null
orig=$(skopeo inspect --format '{{{{.Digest}}}}' oci-archive:$IMAGES/busybox.oci.tar:busybox)
echo "== save"
$VM save -o $W/b.docker.tar busybox; echo "rc=$?"
$VM save --format oci-archive -o $W/b.oci.tar busybox; echo "rc=$?"
echo "== skopeo"
[ "$(skopeo inspect --format '{{{{.Digest}}}}' oci-archive:$W/b.oci.tar)" = "$orig" ] && echo same-manifest
skopeo inspect --format '{{{{len .Layers}}}}' docker-archive:$W/b.docker.tar
echo "== reload"
export VM_ROOT=$W/state2
$VM load -i $W/b.docker.tar
$VM images | awk 'NR > 1 {{ print $1, $2 }}'
echo "== missing"
$VM save -o $W/x.tar nosuch 2>&1; echo "rc=$?"
ls $W/x.tar* 2>/dev/null | wc -l
echo "== end"
"#,
        w = w.display()
    );
    let out = e.run_here(&script);
    assert_eq!(out.code, Some(0), "{out}");
    let o = &out.stdout;
    assert_eq!(line_after(o, "save"), "rc=0\nrc=0", "{out}");
    assert_eq!(line_after(o, "skopeo"), "same-manifest\n1", "{out}");
    assert_eq!(
        line_after(o, "reload"),
        "Loaded image: busybox:latest\nbusybox latest",
        "{out}"
    );
    let missing = line_after(o, "missing");
    assert!(
        missing.contains("no image docker.io/library/nosuch:latest"),
        "{out}"
    );
    assert!(missing.ends_with("rc=125\n0"), "{out}");
}
