//! `vm boot`: real guests on our VMM (in the nested KVM host when this
//! machine's KVM cannot boot them).

use vm_tests::{env, section};

/// Shell function used by the scripts: boot, then print the exit status
/// and the VMM's stderr lines prefixed with "stderr: ".
/// Each boot gets 120 s (a healthy one takes a few): a guest that hangs
/// in the nested host shows up as rc=124 instead of stalling the suite.
const BOOT_FN: &str = r#"
boot() {
    timeout 120 "$VM" boot "$@" 2>/tmp/vm-stderr
    echo "rc=$?"
    sed 's/^/stderr: /' /tmp/vm-stderr
}
"#;

/// A boot that hit the 120 s limit: the nested host, not our VMM (every
/// boot here takes seconds); worth one more try.
fn timed_out(out: &vm_tests::ScriptOutput) -> bool {
    out.stdout.lines().any(|l| l == "rc=124")
}

fn rc_of(section: &str) -> Option<i32> {
    section
        .lines()
        .find_map(|l| l.strip_prefix("rc="))
        .and_then(|v| v.trim().parse().ok())
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.trim_end_matches([',', ')']).parse().ok())
}

const SIZES: [(u32, u64); 4] = [(1, 128), (2, 128), (1, 1024), (2, 1024)];

/// The guest's view of memory is a bit below what it was given (kernel
/// image, reserved areas), but not much.
fn assert_memory(seen_mib: u64, given_mib: u64, what: &str) {
    assert!(
        seen_mib <= given_mib && seen_mib * 100 >= given_mib * 85,
        "{what}: guest sees {seen_mib} MiB of {given_mib} MiB"
    );
}

/// Boot each of SIZES with the given initrd and extra arguments; return
/// the section of each boot's output, checked for a clean exit.
fn boot_each_size(initrd_var: &str, extra: &str) -> Vec<(u32, u64, String)> {
    let env = env();
    let mut script = String::from(BOOT_FN);
    for (cpus, mib) in SIZES {
        script.push_str(&format!(
            "echo '== {cpus}x{mib}'\nboot --kernel \"$VMLINUX\" --initrd \"${initrd_var}\" --cpus {cpus} --memory {mib} {extra}\n"
        ));
    }
    let out = env.run_with_kvm_retrying(&script, timed_out);
    assert_eq!(out.code, Some(0), "{out}");
    SIZES
        .iter()
        .map(|&(cpus, mib)| {
            let s = section(&out.stdout, &format!("{cpus}x{mib}"));
            assert_eq!(rc_of(s), Some(0), "{cpus} CPUs, {mib} MiB:\n{out}");
            (cpus, mib, s.to_string())
        })
        .collect()
}

fn line_starting<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
}

#[test]
fn agent_reports_ready_with_each_cpu_and_memory_size() {
    for (cpus, mib, s) in boot_each_size("AGENT_INITRD", "") {
        let ready = line_starting(&s, "vm-agent: ready");
        assert_eq!(field(ready, "("), Some(u64::from(cpus)), "{ready}");
        let seen = ready
            .split(", ")
            .nth(1)
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no memory size in {ready}"));
        assert_memory(seen, mib, ready);
    }
}

#[test]
fn busybox_guest_sees_cpus_and_memory() {
    let extra = "--cmdline 'console=ttyS0 quiet test.mode=info'";
    for (cpus, mib, s) in boot_each_size("TEST_INITRD", extra) {
        let line = line_starting(&s, "test-init: cpus=");
        assert_eq!(field(line, "cpus="), Some(u64::from(cpus)), "{line}");
        let kib = field(line, "mem_kib=").unwrap_or_else(|| panic!("{line}"));
        assert_memory(kib / 1024, mib, line);
    }
}

#[test]
fn vmlinux_and_bzimage_both_boot() {
    let env = env();
    let script = format!(
        "{BOOT_FN}
echo '== vmlinux'
boot --kernel \"$VMLINUX\" --initrd \"$AGENT_INITRD\"
echo '== bzImage'
boot --kernel \"$BZIMAGE\" --initrd \"$AGENT_INITRD\" --boot-time
"
    );
    let out = env.run_with_kvm_retrying(&script, timed_out);
    for name in ["vmlinux", "bzImage"] {
        let s = section(&out.stdout, name);
        assert_eq!(rc_of(s), Some(0), "{name}:\n{out}");
        assert!(s.contains("vm-agent: ready (1 CPUs"), "{name}:\n{out}");
    }
    // The boot-timer port was written by the agent and reported.
    assert!(
        section(&out.stdout, "bzImage").contains("stderr: vm: guest userspace started after"),
        "{out}"
    );
}

#[test]
fn guest_poweroff_and_reboot_end_the_vm_cleanly() {
    let env = env();
    let script = format!(
        "{BOOT_FN}
echo '== poweroff'
boot --kernel \"$VMLINUX\" --initrd \"$TEST_INITRD\" --cmdline 'console=ttyS0 quiet test.mode=poweroff'
echo '== reboot'
boot --kernel \"$VMLINUX\" --initrd \"$TEST_INITRD\" --cmdline 'console=ttyS0 quiet test.mode=reboot'
"
    );
    let out = env.run_with_kvm_retrying(&script, timed_out);
    for name in ["poweroff", "reboot"] {
        let s = section(&out.stdout, name);
        assert_eq!(rc_of(s), Some(0), "{name}:\n{out}");
        assert!(!s.contains("stderr: "), "{name} printed errors:\n{out}");
    }
}

#[test]
fn guest_panic_and_triple_fault_fail_clearly_and_leave_nothing_running() {
    let env = env();
    let script = format!(
        "{BOOT_FN}
echo '== panic'
boot --kernel \"$VMLINUX\" --initrd \"$TEST_INITRD\" --cpus 2 --cmdline 'console=ttyS0 quiet test.mode=panic'
echo \"left=$(pgrep -c -x vm || true)\"
echo '== triple'
boot --kernel \"$VMLINUX\" --initrd \"$TEST_INITRD\" --cpus 2 --cmdline 'console=ttyS0 quiet test.mode=reboot reboot=t'
echo \"left=$(pgrep -c -x vm || true)\"
"
    );
    let out = env.run_with_kvm_retrying(&script, timed_out);
    let panic = section(&out.stdout, "panic");
    assert_eq!(rc_of(panic), Some(1), "{out}");
    assert!(
        panic.contains("stderr: vm: the guest kernel panicked: Kernel panic - not syncing: Attempted to kill init!"),
        "{out}"
    );
    assert!(
        panic.contains("left=0"),
        "a process was left behind:\n{out}"
    );
    let triple = section(&out.stdout, "triple");
    assert_eq!(rc_of(triple), Some(1), "{out}");
    assert!(
        triple.contains("stderr: vm: the guest triple-faulted"),
        "{out}"
    );
    assert!(
        triple.contains("left=0"),
        "a process was left behind:\n{out}"
    );
}

#[test]
fn bad_input_is_a_clear_error_with_status_125() {
    let env = env();
    let script = format!(
        "{BOOT_FN}
echo '== not-a-kernel'
boot --kernel /etc/hostname
echo '== elf-not-kernel'
boot --kernel /bin/sh
echo '== missing-kernel'
boot --kernel /nonexistent/vmlinux
echo '== missing-initrd'
boot --kernel \"$VMLINUX\" --initrd /nonexistent/initrd
echo '== memory-0'
boot --kernel \"$VMLINUX\" --memory 0
echo '== cpus-0'
boot --kernel \"$VMLINUX\" --cpus 0
echo '== bad-flag'
boot --kernel \"$VMLINUX\" --frobnicate
echo '== end'
"
    );
    // None of these reach KVM, so they run on this machine directly.
    let out = env.run_here(&script);
    let expect = [
        ("not-a-kernel", "is not a Linux kernel"),
        ("elf-not-kernel", "is not a Linux kernel"),
        ("missing-kernel", "cannot open kernel /nonexistent/vmlinux"),
        ("missing-initrd", "cannot open initrd /nonexistent/initrd"),
        ("memory-0", "--memory must be at least"),
        ("cpus-0", "--cpus must be between 1 and"),
        ("bad-flag", "unexpected argument '--frobnicate'"),
    ];
    for (name, msg) in expect {
        let s = section(&out.stdout, name);
        assert_eq!(rc_of(s), Some(125), "{name}:\n{out}");
        assert!(s.contains(msg), "{name}: expected {msg:?}:\n{out}");
        assert!(
            !s.contains("panicked at"),
            "{name}: the VMM panicked:\n{out}"
        );
    }
}

#[test]
fn host_kvm_that_cannot_boot_is_explained() {
    let env = env();
    // Run on this machine itself, whatever its KVM is.
    let out = env.run_here(&format!(
        "{BOOT_FN}\necho '== here'\nboot --kernel \"$VMLINUX\" --initrd \"$AGENT_INITRD\"\n"
    ));
    let s = section(&out.stdout, "here");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(rc_of(s), Some(125), "{out}");
        assert!(s.contains("kvm_pvm"), "{out}");
        assert!(s.contains("Hosts without usable KVM"), "{out}");
    } else if !std::path::Path::new("/dev/kvm").exists() {
        assert_eq!(rc_of(s), Some(125), "{out}");
        assert!(s.contains("/dev/kvm does not exist"), "{out}");
    } else {
        assert_eq!(rc_of(s), Some(0), "{out}");
        assert!(s.contains("vm-agent: ready"), "{out}");
    }
}
