//! Volumes and bind mounts over virtio-fs, as root in the nested host:
//! tests/scripts/volumes.sh runs the containers; each section here checks
//! one behaviour.

use vm_tests::{env, section, work_dir, ScriptOutput};

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

fn run() -> ScriptOutput {
    let e = env();
    let w = work_dir("volumes");
    let script = format!(
        "W={w} bash {repo}/tests/scripts/volumes.sh",
        w = w.display(),
        repo = e.repo.display()
    );
    e.run_with_kvm_retrying_for(&script, 900, |out| out.stdout.contains("rc=124"))
}

#[test]
fn volumes_and_bind_mounts() {
    let out = run();
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("== end"), "{out}");

    assert_eq!(
        lines(section(&out.stdout, "named")),
        [
            "persisted",
            "1234:5678",
            "v1",
            "v1 local /tmp/vm-test-state/volumes/v1/_data"
        ],
        "a named volume keeps what one container wrote (owner too) for the next\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "volumes-from")),
        [
            "persisted",
            "bind-rw",
            "No such file or directory",
            "Read-only file system",
            "b",
            "1"
        ],
        "--volumes-from takes another container's volumes and binds (not its tmpfs), read-only with :ro; rm -v keeps a named volume\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "shared")),
        [
            "reader sees writer",
            "writer sees: hello-from-reader",
            "daemons while two run: 2",
            "rm in use: rc=125",
        ],
        "two running containers see each other's writes on one volume, which cannot be removed meanwhile\n{out}"
    );
    assert!(
        section(&out.stdout, "shared").contains("rm in use")
            && out.stderr.contains("volume is in use"),
        "{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "bind")),
        [
            "from-host",
            "later",
            "g 1234:5678 640",
            "d 0:0 711",
            "from-guest"
        ],
        "a bind mount shows host changes inside and container writes outside, owners and modes as written\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "readonly")),
        [
            "Read-only file system",
            "from-host",
            "daemon --readonly",
            "d g host-file later ",
            "mounted-rw",
            "write rc=1",
            "after remount rc=1",
            "0",
        ],
        ":ro is read-only in the container, its daemon runs --readonly, and even root that mounts that daemon read-write cannot write\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "symlink")),
        ["container-host", "No such file or directory", "0"],
        "symlinks in a bind mount resolve in the container's view, never to the host's files\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "swap")),
        [
            "inner",
            "swapped",
            "goes through a symbolic link",
            "rc=125",
            "goes through a symbolic link",
        ],
        "a bind source that a container swapped for a symlink is refused at the next start and at create\n{out}"
    );

    let image_volume = lines(section(&out.stdout, "image-volume"));
    assert_eq!(
        image_volume,
        [
            "seeded",
            "volume /srv/data true",
            "1",
            "1000:1000 750",
            "1000:2000 640",
            "seed",
            "deep",
            "added",
            "0",
        ],
        "the image's VOLUME gets an anonymous volume filled from the image (owners, modes, symlinks), which rm -v removes\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "copy-up")),
        ["link seed sub ", "1000:2000 640", "seeded", "0", "0"],
        "a new named volume is filled from the image once; nocopy and bind mounts are not\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "tmpfs")),
        ["a", "1777", "1024", "2048", "root-read-only"],
        "--tmpfs and --mount type=tmpfs with their sizes and mode, on a --read-only root\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "full")),
        ["dd rc=1", "No space left on device", "ok", "run rc=0"],
        "a full host file system is a clean ENOSPC in the guest, and the VM goes on\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "errors")),
        [
            "vm: error: invalid mount config for type \"bind\": bind source path does not exist: W/missing",
            "rc=125",
            "rc=0 made=yes",
            "'..' is not allowed",
            "rc=125",
            "absolute path",
            "duplicate mount point: /d",
            "not a directory",
            "vm: error: no such volume: no-such-volume",
            "rc=125",
            "no-such-volume",
            "rc=0",
        ],
        "bad mounts are refused with 125 and a reason; -v makes a missing bind source, --mount does not\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "volume-commands")),
        [
            "labelled",
            "1",
            "labelled",
            "labelled",
            "Local Volumes 1",
            "map[team:a]",
            "rm used by a stopped container: rc=125",
            "labelled",
            "ANON",
            "0",
        ],
        "vm volume create, ls with filters, system df, inspect, rm (refused while used), prune\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "rootless")),
        [
            "from-user",
            "chown-refused",
            "65534",
            "seeded",
            "link seed sub ",
            "65534"
        ],
        "a user who is not root shares directories as that user; copy-up works, other owners are not given\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "daemon-killed")),
        ["stop rc=0", "exited", "rm rc=0"],
        "a container whose file system daemons died still stops\n{out}"
    );

    assert_eq!(
        lines(section(&out.stdout, "leftovers")),
        ["daemons after a killed monitor: 0", "daemons: 0", "0", "0"],
        "no daemon, socket or mount is left, also after the monitor is killed\n{out}"
    );
}
