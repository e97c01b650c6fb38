//! The parity suite: every case in tests/parity/cases runs through
//! Debian's Docker Engine on this machine and through `vm run` in one boot
//! of the KVM host, on the same image loaded into both, and the outputs
//! the case names (stdout, stderr, exit status) must be the same. A table
//! of every case is printed; the match count is written to
//! target/test-work/parity/SUMMARY.

use std::collections::BTreeMap;
use std::path::Path;
use vm_tests::{env, work_dir};

/// One line of tests/parity/cases.
struct Case {
    name: String,
    checks: String,
    args: String,
}

fn cases(repo: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(repo.join("tests/parity/cases")).expect("read the cases");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let mut parts = l.splitn(3, '|');
            let mut next = || parts.next().unwrap_or("").trim().to_string();
            Case {
                name: next(),
                checks: next(),
                args: next(),
            }
        })
        .collect()
}

/// What one CLI gave for one case.
#[derive(Debug, Default)]
struct Outcome {
    out: String,
    err: String,
    rc: String,
}

/// What one case left in `dir`; under a terminal, as the terminal had it
/// (line ends included).
fn outcome(dir: &Path, name: &str, terminal: bool) -> Outcome {
    let read = |ext: &str| {
        // A case that left no result differs from anything (the side
        // is named, so two missing ones differ too).
        let bytes = std::fs::read(dir.join(format!("{name}.{ext}")))
            .unwrap_or_else(|_| format!("<no {name}.{ext} in {}>", dir.display()).into_bytes());
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if terminal {
            text
        } else {
            text.replace("\r\n", "\n")
        }
    };
    Outcome {
        out: read("out"),
        err: read("err"),
        rc: read("rc").trim().to_string(),
    }
}

/// Facts about the Docker side that make its answers differ from a
/// usual install's for reasons of this machine rather than of Docker.
struct DockerHost {
    /// RLIMIT_NOFILE the private dockerd got (containers inherit it).
    daemon_nofile: String,
    /// The daemon's cgroup version: 1 here, 2 on a usual Debian 12.
    cgroup_version: String,
}

/// Where Docker's answer here is not the one a usual install (Debian 12:
/// cgroup v2, dockerd with LimitNOFILE=infinity, a full bounding set)
/// gives, for a reason of this machine: the usual answer (stdout, exit
/// status) and why.
fn environment_difference(
    name: &str,
    docker: &Outcome,
    host: &DockerHost,
) -> Option<(Outcome, String)> {
    if docker.rc.starts_with("<no ") {
        return None; // no answer from Docker to stand in for
    }
    let usual = |out: &str, rc: &str| Outcome {
        out: out.to_string(),
        err: String::new(),
        rc: rc.to_string(),
    };
    let nofile = &host.daemon_nofile;
    let v1 = host.cgroup_version == "1";
    let why_v1 = "this machine's Docker runs on cgroup v1, so it gives no cgroup namespace and no cgroup2 mount";
    match name {
        "nofile" if nofile != "1048576" && docker.out == format!("{nofile}\n{nofile}\n") => Some((
            usual("1048576\n1048576\n", &docker.rc),
            format!("this machine's hard file limit is {nofile}, so the test's dockerd could not get 1048576"),
        )),
        // runc cannot give a capability this machine's bounding set lacks.
        "privileged" | "sys-privileged" if docker.rc == "125" && docker.err.contains("unable to apply caps") => Some((
            if name == "privileged" {
                usual("CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nSeccomp:\t0\n", "0")
            } else {
                usual("rw\n", "0")
            },
            "this machine's own bounding set lacks capabilities, so runc cannot start a privileged container".to_string(),
        )),
        "cgroup-self" if v1 => Some((usual("0::/\n", "0"), why_v1.to_string())),
        "cgroup-mount" if v1 => Some((usual("/sys/fs/cgroup cgroup2 ro\n", "0"), why_v1.to_string())),
        "pids-max" | "pids-unlimited" if v1 => Some((usual("max\n", "0"), why_v1.to_string())),
        "pids-limit" if v1 => Some((usual("33\n", "0"), why_v1.to_string())),
        _ => None,
    }
}

/// Calls our guest kernel is built without (no fanotify, no disk
/// quotas): where Docker's kernel lets such a call through to its own
/// checks, ours answers ENOSYS. Docker's line is rewritten to that.
const NOT_IN_GUEST_KERNEL: &[&str] = &["quotactl", "fanotify_init"];

fn guest_kernel_difference(name: &str, docker: &str) -> Option<String> {
    if !name.starts_with("calls-") {
        return None;
    }
    let mut changed = false;
    let text = docker
        .lines()
        .map(|l| match l.split_once('=') {
            Some((call, result)) if NOT_IN_GUEST_KERNEL.contains(&call) && result != "EPERM" => {
                changed = true;
                format!("{call}=ENOSYS\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    changed.then_some(text)
}

#[test]
fn docker_run_parity() {
    let e = env();
    let w = work_dir("parity");
    let tar = w.join("parity.docker.tar");
    let build = e.run_here(&format!(
        "tests/parity/build-image \"$IMAGES\" {tar}",
        tar = tar.display()
    ));
    assert_eq!(build.code, Some(0), "building the parity image\n{build}");

    // Docker on this machine while the KVM host runs the vm side: the two
    // share nothing but the image archive.
    let docker = std::thread::spawn({
        let script = format!(
            "tests/parity/docker-side {tar} {w}",
            tar = tar.display(),
            w = w.display()
        );
        move || env().run_here(&script)
    });
    let vm = e.run_with_kvm_retrying_for(
        &format!(
            "set -e; \"$VM\" load -q -i {tar}; tests/parity/run-cases {w}/vm \"$VM\"; \
             \"$VM\" images --format '{{{{.ID}}}} {{{{.Repository}}}} {{{{.Tag}}}} {{{{.Size}}}}' parity > {w}/vm/images.out; \
             \"$VM\" image inspect -f '{{{{.Id}}}} {{{{.Size}}}} {{{{.Os}}}} {{{{.Architecture}}}}' parity > {w}/vm/image-inspect.out; \
             echo parity-done",
            tar = tar.display(),
            w = w.display()
        ),
        1800,
        |_| false,
    );
    let docker = docker.join().expect("the docker side");
    assert_eq!(docker.code, Some(0), "the Docker side\n{docker}");
    assert!(
        vm.code == Some(0) && vm.stdout.contains("parity-done"),
        "the vm side\n{vm}"
    );

    let version = std::fs::read_to_string(w.join("docker/VERSION")).unwrap_or_default();
    let fact = |f: &str| {
        std::fs::read_to_string(w.join("docker").join(f))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let host = DockerHost {
        daemon_nofile: fact("DAEMON_NOFILE"),
        cgroup_version: fact("CGROUP_VERSION"),
    };
    let all = cases(&e.repo);
    let mut table = String::new();
    let mut differ = BTreeMap::new();
    let mut environment = Vec::new();
    for case in &all {
        let v = outcome(&w.join("vm"), &case.name, case.checks.contains('t'));
        let mut d = outcome(&w.join("docker"), &case.name, case.checks.contains('t'));
        if let Some((usual, why)) = environment_difference(&case.name, &d, &host) {
            environment.push(format!("{}: {why}", case.name));
            d = usual;
        }
        if let Some(text) = guest_kernel_difference(&case.name, &d.out) {
            environment.push(format!(
                "{}: the guest kernel has no {}",
                case.name,
                NOT_IN_GUEST_KERNEL.join(" or ")
            ));
            d.out = text;
        }
        let expected_out = d.out.clone();
        let mut wrong = Vec::new();
        if case.checks.contains('o') && v.out != expected_out {
            wrong.push(format!("stdout docker {expected_out:?} vm {:?}", v.out));
        }
        if case.checks.contains('e') && v.err != d.err {
            wrong.push(format!("stderr docker {:?} vm {:?}", d.err, v.err));
        }
        if case.checks.contains('r') && v.rc != d.rc {
            wrong.push(format!(
                "exit docker {} vm {} (vm stderr {:?})",
                d.rc, v.rc, v.err
            ));
        }
        let verdict = if wrong.is_empty() { "same" } else { "DIFFERS" };
        table.push_str(&format!("{:<18} {:<4} {verdict}\n", case.name, case.checks));
        if !wrong.is_empty() {
            differ.insert(case.name.clone(), (case.args.clone(), wrong));
        }
    }
    let same = all.len() - differ.len();
    let summary = format!(
        "{same} of {} cases give the same result as Docker Engine {}",
        all.len(),
        version.trim()
    );
    eprintln!("{table}{summary}");
    for case in &all {
        if let Ok(err) =
            std::fs::read_to_string(w.join("vm").join(format!("{}.retried", case.name)))
        {
            eprintln!(
                "WARNING: {} ran twice: the first guest died under the emulated host:\n{err}",
                case.name
            );
        }
    }
    for note in &environment {
        eprintln!("known difference, compared with the usual answer: {note}");
    }
    std::fs::write(w.join("SUMMARY"), format!("{summary}\n")).expect("write SUMMARY");
    let report: String = differ
        .iter()
        .map(|(name, (args, wrong))| format!("{name}: {args}\n    {}\n", wrong.join("\n    ")))
        .collect();
    // Beyond `run`: how the image lists and inspects.
    for (name, what) in [
        ("images.out", "vm images (ID, name, unpacked size)"),
        (
            "image-inspect.out",
            "vm image inspect (Id, Size, Os, Architecture)",
        ),
    ] {
        let read =
            |side: &str| std::fs::read_to_string(w.join(side).join(name)).unwrap_or_default();
        let (d, v) = (read("docker"), read("vm"));
        assert!(!d.trim().is_empty(), "Docker's {name} is empty");
        assert_eq!(v, d, "{what} as Docker's");
    }
    assert!(differ.is_empty(), "{summary}; these differ:\n{report}");
}
