//! Shared harness of the integration tests: builds what a test needs
//! (the `vm` binary, the guest kernel, initramfs images) once, and runs
//! shell scripts either directly or inside the nested KVM host when this
//! machine's own KVM cannot boot a guest.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The nested host's default time limit for one script, in seconds.
const DEFAULT_LIMIT: u32 = 360;

pub struct Env {
    pub repo: PathBuf,
    pub vm: PathBuf,
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
    pub agent_initrd: PathBuf,
    pub test_initrd: PathBuf,
    /// virtiofsd (resources/virtiofsd/build).
    pub virtiofsd: PathBuf,
    /// The static vsock test peer (also inside the test initramfs).
    pub vsock_tool: PathBuf,
    /// Test images (tests/fixtures/build-images): `$IMAGES/oci` is an OCI
    /// layout with tags busybox, layers, app; archives and hostile/* beside.
    pub images: PathBuf,
    /// Guests run inside resources/kvm-host/run.
    pub nested: bool,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

fn target_dir(repo: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"))
}

/// Run a build script and return the last line of its stdout (a path).
fn script_output_path(repo: &Path, script: &str) -> PathBuf {
    let out = Command::new(repo.join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(out.status.success(), "{script} failed: {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{script} printed nothing"));
    PathBuf::from(last.trim())
}

/// The VMM under test, built with optimisations: the data-path tests move
/// gigabytes through the nested host, where a debug build is the bottleneck.
fn build_vm(repo: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = true;
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo)
        .args(["build", "--quiet", "-p", "vm-cli", "--bin", "vm"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build of vm failed");
    target_dir(repo)
        .join(if release { "release" } else { "debug" })
        .join("vm")
}

fn host_kvm_can_boot() -> bool {
    match std::env::var("VM_TEST_HOST").as_deref() {
        Ok("native") => return true,
        Ok("nested") => return false,
        _ => {}
    }
    Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists()
}

pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let repo = repo_root();
        let vmlinux = script_output_path(&repo, "resources/guest-kernel/build");
        let bzimage = vmlinux.with_file_name("bzImage");
        let agent_initrd = script_output_path(&repo, "resources/initramfs/build");
        let test_initrd = script_output_path(&repo, "tests/fixtures/build-initramfs");
        let virtiofsd = script_output_path(&repo, "resources/virtiofsd/build");
        let vsock_tool = target_dir(&repo).join("x86_64-unknown-linux-gnu/release/vsock-tool");
        let images = target_dir(&repo).join("test-images");
        let status = Command::new(repo.join("tests/fixtures/build-images"))
            .arg(&images)
            .status()
            .expect("run tests/fixtures/build-images");
        assert!(status.success(), "tests/fixtures/build-images failed");
        Env {
            vm: build_vm(&repo),
            test_initrd,
            virtiofsd,
            vsock_tool,
            images,
            vmlinux,
            bzimage,
            agent_initrd,
            nested: !host_kvm_can_boot(),
            repo,
        }
    })
}

/// The Debian minbase OCI layout (tests/fixtures/build-debian-image,
/// cached after the first build).
pub fn debian_image() -> &'static Path {
    static DEBIAN: OnceLock<PathBuf> = OnceLock::new();
    DEBIAN.get_or_init(|| script_output_path(&repo_root(), "tests/fixtures/build-debian-image"))
}

pub struct ScriptOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ScriptOutput {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code(),
            // Guest console lines end in CRLF; tests compare lines.
            stdout: String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n"),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for ScriptOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Env {
    fn script_command(&self, script: &str, in_kvm_host: bool, limit: u32) -> Command {
        let mut cmd = if in_kvm_host && self.nested {
            let mut c = Command::new(self.repo.join("resources/kvm-host/run"));
            // A nested host that has not finished in `limit` seconds is
            // stuck (6 minutes by default: the emulated host boots a guest
            // in 2 to 6 s, and scripts here boot up to 30). It happens:
            // the emulated host has wedged at the start of a guest boot,
            // where even `timeout` inside it stopped working.
            // `vm` from the nested host's own memory: run from the 9p
            // share, every command paid 9p round trips for the pages of
            // code it touched (about 0.6 s each, measured). Still named
            // `vm`: scripts count its processes by name.
            let script = format!(
                "mkdir -p /tmp/vm-under-test && cp \"$VM\" /tmp/vm-under-test/vm \
                 && export VM=/tmp/vm-under-test/vm || exit 125\n{script}"
            );
            c.args(["--timeout", &limit.to_string(), "bash", "-c", &script]);
            c
        } else {
            let mut c = Command::new("bash");
            c.args(["-c", script]);
            c
        };
        cmd.current_dir(&self.repo)
            .env("VM", &self.vm)
            .env("VMLINUX", &self.vmlinux)
            .env("BZIMAGE", &self.bzimage)
            .env("AGENT_INITRD", &self.agent_initrd)
            .env("TEST_INITRD", &self.test_initrd)
            .env("VIRTIOFSD", &self.virtiofsd)
            .env("VSOCK_TOOL", &self.vsock_tool)
            .env("IMAGES", &self.images)
            // `vm run` finds these without help on a checkout; say them
            // anyway so a test never picks up another build.
            .env("VM_KERNEL", &self.vmlinux)
            .env("VM_INITRD", &self.agent_initrd)
            // The default state directory is not writable in the nested
            // host; each script gets a fresh one unless it says otherwise.
            .env("VM_ROOT", "/tmp/vm-test-state")
            .stdin(Stdio::null());
        cmd
    }

    /// Run a bash script where guests can boot: here, or in the nested KVM
    /// host. $VM, $VMLINUX, $BZIMAGE, $AGENT_INITRD, $TEST_INITRD, $VIRTIOFSD are set.
    pub fn run_with_kvm(&self, script: &str) -> ScriptOutput {
        self.run_with_kvm_for(script, DEFAULT_LIMIT)
    }

    /// `run_with_kvm` with a time limit (seconds) for the nested host.
    pub fn run_with_kvm_for(&self, script: &str, limit: u32) -> ScriptOutput {
        let out = self
            .script_command(script, true, limit)
            .output()
            .expect("run the test script");
        ScriptOutput::from(out)
    }

    /// Like `run_with_kvm`, but runs the script a second time when the
    /// first run hit a failure of the nested host rather than of the code
    /// under test: the nested host itself stuck until its time limit, or
    /// what `flaked` recognises (a guest that hung until its own limit).
    /// The first failure is printed, never hidden.
    pub fn run_with_kvm_retrying(
        &self,
        script: &str,
        flaked: impl Fn(&ScriptOutput) -> bool,
    ) -> ScriptOutput {
        self.run_with_kvm_retrying_for(script, DEFAULT_LIMIT, flaked)
    }

    /// `run_with_kvm_retrying` with a time limit (seconds).
    pub fn run_with_kvm_retrying_for(
        &self,
        script: &str,
        limit: u32,
        flaked: impl Fn(&ScriptOutput) -> bool,
    ) -> ScriptOutput {
        let out = self.run_with_kvm_for(script, limit);
        // The nested host stuck until its time limit (124), or gone without
        // running the script to its end (it crashed: 125 and this message).
        let host_stuck = self.nested
            && (out.code == Some(124)
                || (out.code == Some(125) && out.stderr.contains("the nested host ended without")));
        if !host_stuck && !flaked(&out) {
            return out;
        }
        eprintln!(
            "WARNING: the nested host run looks like an environment failure; retrying once:\n{out}"
        );
        self.run_with_kvm_for(script, limit)
    }

    /// Run a bash script on this machine (no guest boots).
    pub fn run_here(&self, script: &str) -> ScriptOutput {
        let out = self
            .script_command(script, false, DEFAULT_LIMIT)
            .output()
            .expect("run the test script");
        ScriptOutput::from(out)
    }
}

/// A shell function for test scripts: `start_registry NAME PORT` starts
/// Debian's docker-registry on 127.0.0.1:PORT with its data and config in
/// `$W` (extra config lines on stdin, e.g. `http:` TLS settings), waits
/// until it listens, and has it killed when the script exits.
pub const START_REGISTRY: &str = r#"
start_registry() {
    name=$1 port=$2
    {
        printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s/%s-data\n' "$W" "$name"
        printf 'http:\n  addr: 127.0.0.1:%s\n' "$port"
        cat
    } > "$W/$name.yml"
    docker-registry serve "$W/$name.yml" > "$W/$name.log" 2>&1 &
    pids="${pids:-} $!"
    for i in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return 0; sleep 0.1; done
    echo "registry $name did not start"; cat "$W/$name.log"; exit 1
}
trap 'kill ${pids:-} 2>/dev/null' EXIT
"#;

/// The text between `== NAME` and the next `== ` marker line.
pub fn section<'a>(text: &'a str, name: &str) -> &'a str {
    let marker = format!("== {name}\n");
    let Some(start) = text.find(&marker) else {
        return "";
    };
    let rest = &text[start + marker.len()..];
    match rest.find("\n== ") {
        Some(end) => &rest[..end + 1],
        None => rest,
    }
}

/// A scratch directory for one test, inside the checkout (so the nested
/// host sees it too), emptied first.
pub fn work_dir(name: &str) -> PathBuf {
    let dir = target_dir(&repo_root()).join("test-work").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create work dir");
    dir
}

/// Write a guest shell script as a disk image (padded with newlines to
/// whole 4 KiB blocks) for test-init's `test.mode=script`.
pub fn script_disk(dir: &Path, script: &str) -> PathBuf {
    let mut bytes = script.as_bytes().to_vec();
    bytes.push(b'\n');
    let padded = bytes.len().div_ceil(4096) * 4096;
    bytes.resize(padded, b'\n');
    let path = dir.join("script.disk");
    std::fs::write(&path, bytes).expect("write script disk");
    path
}
