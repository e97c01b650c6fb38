//! Containers that outlive the command: `vm run -d`, ps, logs, stop,
//! restart policies, inspect, rm, pause, a killed monitor, wait, start,
//! create; and nothing left behind. The scripts are in tests/scripts/.

use vm_tests::{env, section, work_dir, ScriptOutput};

/// Runs tests/scripts/NAME.sh in the nested host. These boot a dozen
/// guests or more each: they get eight minutes.
fn run_script(name: &str) -> ScriptOutput {
    let e = env();
    let w = work_dir(name);
    let script = format!(
        "W={w} bash {repo}/tests/scripts/{name}.sh",
        w = w.display(),
        repo = e.repo.display()
    );
    e.run_with_kvm_retrying_for(&script, 480, |out| out.stdout.contains("rc=124"))
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn detached_containers_and_their_commands() {
    let out = run_script("lifecycle");
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("== end"), "{out}");

    let s = section(&out.stdout, "run-d");
    assert_eq!(
        lines(s),
        ["rc=0 id-length=64", "ticker running Up", "1"],
        "run -d prints the full ID and ps shows it up\n{out}"
    );

    let s = section(&out.stdout, "jail");
    assert_eq!(
        lines(s),
        [
            "CapEff: 0000000000000000",
            "CapBnd: 0000000000000000",
            "NoNewPrivs: 1",
            "Seccomp: 2",
            "own-net",
            "own-mnt",
            "core=0",
            "files=4096",
            "own-cgroup",
            // -m 96m: guest RAM + 128 MiB; 1 vCPU + 32 tasks + 8 for each
            // of up to 8 file system daemons; one CPU.
            "memory.max=234881024",
            "pids.max=97",
            "cpu.max=100000 100000",
            "own-uid",
            "jail-has-vsock",
            "mount / ro,nosuid,nodev,noexec"
        ],
        "the VMM runs without capabilities, in its own namespaces, as a uid of its own, in a read-only root that holds only its sockets, with limits\n{out}"
    );

    let s = section(&out.stdout, "memory-eater");
    let l = lines(s);
    for want in [
        "survived",
        "exec-rc=0",
        "peak-within-max",
        "guest-memory-charged",
        "oom_kill 0",
        "still-running",
    ] {
        assert!(
            l.contains(&want),
            "a guest that eats all its memory leaves the VMM inside its cgroup, alive: {want}\n{out}"
        );
    }

    let s = section(&out.stdout, "logs");
    assert_eq!(
        lines(s),
        ["tick 0", "err 0", "2", "1"],
        "stdout and stderr apart, --tail, -t\n{out}"
    );

    let s = section(&out.stdout, "logs-follow");
    assert_eq!(
        lines(s),
        [
            "follow-rc=0",
            "grew-while-running=yes",
            "complete=yes",
            "exited 137"
        ],
        "logs -f streams while running and ends when the container stops (sh as PID 1 ignores SIGTERM: killed after the timeout)\n{out}"
    );

    let s = section(&out.stdout, "stop-timeout");
    let l = lines(s);
    assert_eq!(l.first(), Some(&"stubborn"), "{out}");
    let took: u64 = l
        .iter()
        .find_map(|l| l.strip_prefix("took="))
        .and_then(|t| t.parse().ok())
        .unwrap_or(u64::MAX);
    // Killed after the 2 s timeout: not before it, and not much later.
    assert!((2..=8).contains(&took), "stop -t 2 took {took} s\n{out}");
    assert_eq!(l.last(), Some(&"exited 137"), "{out}");

    let s = section(&out.stdout, "restart");
    assert_eq!(
        lines(s),
        ["2 3 on-failure 2", "3"],
        "on-failure:2 restarts exactly twice (three runs)\n{out}"
    );

    let s = section(&out.stdout, "ps");
    assert_eq!(
        lines(s),
        [
            "flaky stubborn ticker ",
            "stubborn",
            "ticker",
            "0",
            "flaky",
            "NAMES      STATE",
            "1",
            "rc=125"
        ],
        "ps filters, -q, -n, table and json formats, a bad filter\n{out}"
    );

    let s = section(&out.stdout, "inspect");
    assert_eq!(
        lines(s),
        [
            &*format!(
                "/stubborn oci:{}/oci:busybox [\"sh\",\"-c\",\"trap '' TERM; echo ready; while true; do sleep 1; done\"] false false",
                env().images.display()
            ),
            "1",
            "rc=125"
        ],
        "{out}"
    );

    let s = section(&out.stdout, "names");
    assert_eq!(lines(s), ["1", "/mule"], "names are unique; rename\n{out}");

    let s = section(&out.stdout, "rm");
    assert_eq!(
        lines(s),
        ["rc=125", "victim", "rc=0", "0"],
        "rm refuses a running container; rm -f kills and removes it\n{out}"
    );
}

#[test]
fn pause_kill_wait_start_create_exec_and_many_layers() {
    let out = run_script("lifecycle-more");
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("== end"), "{out}");

    let s = section(&out.stdout, "pause");
    assert_eq!(
        lines(s),
        [
            "counter",
            "paused true",
            "paused-advanced=0",
            "counter",
            "resumed=yes",
            "running"
        ],
        "a paused container does not advance\n{out}"
    );

    let s = section(&out.stdout, "monitor-killed");
    assert_eq!(
        lines(s),
        ["dead", "dead 137", "orphan", "rc=0"],
        "a killed monitor shows as dead and rm cleans it\n{out}"
    );

    assert_eq!(lines(section(&out.stdout, "wait")), ["5"], "{out}");
    assert_eq!(
        lines(section(&out.stdout, "start-again")),
        ["rc=5", "waiter", "5"],
        "{out}"
    );
    let s = section(&out.stdout, "exec");
    let l = lines(s);
    assert_eq!(
        l,
        [
            "1",
            l.get(1).copied().unwrap_or_default(),
            "rc=3",
            "piped",
            "rc=127",
            "app /tmp bar",
            "tty",
            "24 80",
            "rc=0",
            "detached",
            "rc=125"
        ],
        "exec: the container's process is PID 1; status, stdin, 127, -u/-w/-e, -t, -d; refused once the container is gone\n{out}"
    );
    let second: Vec<&str> = l.get(1).map(|x| x.split(' ').collect()).unwrap_or_default();
    assert!(
        second.len() == 2 && second[0] != "1" && second[1] == "sleep",
        "an exec'd process is not PID 1 and sees the container's PID 1: {l:?}"
    );
    assert_eq!(
        lines(section(&out.stdout, "many-layers")),
        ["59", "layer 1", "layer 59"],
        "an image of 60 layers runs (one device carries them all)\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "create")),
        ["id-length=64", "created", "created-then-started"],
        "{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "run-flags")),
        [
            "cidfile-matches",
            "a db",
            "container ID file found",
            "rc=125",
            "is not supported",
            "rc=125",
            "oom-kill-disable is not supported",
            "rc=125",
        ],
        "--cidfile, --label-file under --label, --platform, and --oom-kill-disable refused\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "health")),
        [
            r#"starting ["CMD-SHELL","test -f /tmp/ok && echo fine"]"#,
            "(healthy)",
            "0 0 fine",
            "(unhealthy)",
            "True 3 no",
            "conflicts with --health",
            "rc=125",
            "cannot be negative",
            "rc=125",
            "one-shot",
        ],
        "--health-cmd: starting, then healthy once the check passes, unhealthy after --health-retries failures, shown by ps and inspect\n{out}"
    );
}

#[test]
fn nothing_left_behind() {
    let out = run_script("leftovers");
    assert_eq!(out.code, Some(0), "{out}");
    let clean = [
        "processes=0",
        "run-dirs=0",
        "containers=0",
        "temp-rootfs=0",
        "sockets=0",
    ];
    let s = section(&out.stdout, "killed-foreground");
    let l = lines(s);
    assert_eq!(l[..2], ["cli-killed", "running"], "{out}");
    assert_eq!(
        l[2..],
        clean,
        "the container of a killed `vm run --rm` runs on and is removed\n{out}"
    );
    let s = section(&out.stdout, "ten");
    let l = lines(s);
    assert_eq!(
        l[..3],
        ["10", "processes=20", "sockets=20"],
        "ten containers: a monitor and a VMM each; 2 sockets each (control and the VMM's vsock: each agent port is unbound once the agent connected)\n{out}"
    );
    assert_eq!(
        l[3], "named=1 1",
        "the monitor's and the VMM's command lines name the container\n{out}"
    );
    assert_eq!(
        l[4..10],
        ["700", "700", "700", "600", "600", "400"],
        "private state: directories, the log, the scratch disk, the unpacked image (read-only)\n{out}"
    );
    assert_eq!(l[10..12], ["10", "10"], "{out}");
    assert_eq!(l[12..], clean, "{out}");
}

#[test]
fn copy_export_top_stats_and_system() {
    let out = run_script("files");
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("== end"), "{out}");

    assert_eq!(
        lines(section(&out.stdout, "cp-out")),
        [
            "rc=0",
            "hello",
            "/etc/passwd",
            "755",
            "hello",
            "data",
            "link sub up ",
            "f",
            "rc=125 exists=no",
            "0"
        ],
        "cp out: a directory, a symlink kept as one, setuid cleared on the host, a file, into a directory, /. contents, a tar stream, a missing path; no temporary left\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "cp-in")),
        ["world", "world", "0", "1234", "rc=125"],
        "cp in: a directory, a file under a new name, root owns it unless -a, a missing source\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "cp-hostile")),
        [
            "dotdot-rc=125",
            "link-rc=0",
            "through-rc=125",
            "abs-rc=0",
            "0",
            "evil",
            "rc=0",
            "/",
            "evil3 "
        ],
        "hostile archives land inside the destination or are refused, both ways\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "export")),
        ["1", "some", "0", "rc=0", "1"],
        "export: the container's files, its writes, not /proc's contents; -o\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "top")),
        ["UID PID PPID C STIME TTY TIME CMD", "root 1 0 sleep 1000"],
        "top: the container's processes as it sees them\n{out}"
    );
    let s = lines(section(&out.stdout, "stats"));
    assert_eq!(
        s.first().copied(),
        Some("box 1"),
        "stats: the container's processes\n{out}"
    );
    assert_eq!(
        s.get(1).copied(),
        Some("CONTAINER ID NAME CPU % MEM USAGE / LIMIT MEM % NET I/O BLOCK I/O PIDS"),
        "{out}"
    );
    // "12.5MiB / 85.2MiB 0.50%": the guest's memory, under the VM's 96 MiB.
    let mem: Vec<&str> = s.get(2).map(|l| l.split(' ').collect()).unwrap_or_default();
    let mib = |t: &str| t.strip_suffix("MiB").and_then(|v| v.parse::<f64>().ok());
    assert!(
        mem.len() == 4
            && mem[1] == "/"
            && mib(mem[0]).is_some_and(|u| u > 1.0)
            && mib(mem[2]).is_some_and(|l| l > 40.0 && l <= 96.0)
            && mem[3].ends_with('%'),
        "stats memory {mem:?}\n{out}"
    );
    assert_eq!(
        s.get(3..).unwrap_or_default(),
        ["tables=several", "left=1"],
        "stats streams until stopped, and leaves nothing running in the guest\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "not-running")),
        ["rc=125", "rc=125"],
        "{out}"
    );
    let s = lines(section(&out.stdout, "system"));
    assert_eq!(s.first().copied(), Some("load-rc=0"), "{out}");
    assert!(
        s.get(1).is_some_and(|l| l.starts_with("Images some ")),
        "df counts the loaded images\n{out}"
    );
    assert_eq!(
        s.get(2..4).unwrap_or_default(),
        ["Containers 1 0", "Local Volumes 0 0"],
        "{out}"
    );
    assert!(
        s.get(4).is_some_and(|l| l.starts_with("Root FS Cache ")),
        "{out}"
    );
    assert_eq!(s.get(5).copied(), Some("Deleted Containers:"), "{out}");
    assert_eq!(
        s.get(6).map(|l| l.len()),
        Some(64),
        "the pruned container's ID\n{out}"
    );
    assert_eq!(
        s.get(7..).unwrap_or_default(),
        ["0", "some", "Images 0", "Containers 0"],
        "prune removes the stopped container; -a every image no container uses\n{out}"
    );
}
