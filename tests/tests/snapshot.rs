//! Starting from a snapshot of a booted guest (tests/scripts/snapshot.sh):
//! the cold paths, taking the snapshot, restored VMs that differ, the
//! clock, one snapshot per shape, refused snapshots taken again,
//! networking and exec, and volumes booting cold.

use vm_tests::{env, section, work_dir, ScriptOutput};

fn run_script() -> ScriptOutput {
    let e = env();
    let w = work_dir("snapshot");
    let script = format!(
        "W={w} bash {repo}/tests/scripts/snapshot.sh",
        w = w.display(),
        repo = e.repo.display()
    );
    e.run_with_kvm_retrying_for(&script, 600, |out| out.stdout.contains("rc=124"))
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn containers_start_from_a_snapshot_of_a_booted_guest() {
    let out = run_script();
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("== end"), "{out}");

    assert_eq!(
        lines(section(&out.stdout, "cold")),
        [
            "cold-env",
            "rc=0 snapshots=0",
            "cold-flag",
            "rc=0 snapshots=0"
        ],
        "VM_SNAPSHOT=0 and --no-snapshot boot cold and take no snapshot\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "first")),
        [
            "first",
            "rc=0 snapshots=1",
            "700",
            "700",
            "400",
            "400",
            "memory-size-ok",
            "sparse",
            "key-matches-dir"
        ],
        "the first start takes one private, read-only, sparse snapshot named by its key\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "restored")),
        ["second", "rc=0 snapshots=1", "0", "0", "1"],
        "later starts restore it (no kernel boot on the console); --no-snapshot boots the kernel\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "differ")),
        [
            "line1-differs",
            "line2-differs",
            "line3-differs",
            "line4-differs"
        ],
        "two restored VMs differ in boot ID, random bytes, UUIDs and hostname\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "clock")),
        ["clock-ok"],
        "a restored guest has the host's time\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "shapes")),
        ["m160", "rc=0 snapshots=3", "m160-again", "rc=0 snapshots=3"],
        "another memory size takes its own snapshot (the last section's --debug made one too), once\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "refused")),
        [
            "after-garbage",
            "rc=0",
            "retaken",
            "after-truncated",
            "rc=0",
            "retaken",
            "after-foreign",
            "rc=0",
            "retaken",
            "snapshots=3 leftovers=0"
        ],
        "a garbage, truncated or foreign snapshot is refused, the run still works, and it is taken again\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "network")),
        ["1", "1", "macs-differ", "lo", "exec-ok"],
        "restored VMs get their own address and MAC; --network none shows only lo; exec works\n{out}"
    );
    assert_eq!(
        lines(section(&out.stdout, "volumes")),
        ["in-volume", "1"],
        "a virtio-fs volume boots cold and says so under --debug\n{out}"
    );
}
