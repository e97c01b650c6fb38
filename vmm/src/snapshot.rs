//! Snapshots of a booted guest: the state of its vCPUs, interrupt
//! controllers, PIT, clock and UART (`state.json`) and its RAM (`memory`,
//! a sparse file), taken when the guest writes [`POINT_MAGIC`] to
//! [`POINT_PORT`] and restored into a new VM whose RAM maps that file
//! copy-on-write.
//!
//! A snapshot is read as untrusted input: its size is capped, its format,
//! key, command line, memory size and CPUID must match what the caller
//! expects, and anything else is refused with a reason (the caller then
//! boots cold or takes the snapshot again).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// The port the guest agent writes [`POINT_MAGIC`] to when it is ready to
/// be snapshotted. Only a VM being snapshotted listens on it.
pub const POINT_PORT: u16 = 0x441;
pub const POINT_MAGIC: u8 = 0x5a;
/// The version of `state.json`; another version is refused.
pub const FORMAT: u32 = 1;
pub const STATE_FILE: &str = "state.json";
pub const MEMORY_FILE: &str = "memory";
/// A state file larger than this is not ours (ours are about 100 KiB a vCPU).
const MAX_STATE_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the snapshot is corrupt: {0}")]
    Corrupt(String),
    #[error("the snapshot does not fit this VM: {0}")]
    Mismatch(String),
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// One vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
}

/// The VM-wide devices KVM emulates.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

#[derive(Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    /// What the snapshot was taken for (the caller's identity of its
    /// inputs); a restore asks for the same key.
    pub key: String,
    /// The guest's whole command line (it lives in guest memory).
    pub cmdline: String,
    pub memory_bytes: u64,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    /// The UART's registers.
    pub serial: [u8; 9],
}

/// What a restore needs to find in a snapshot.
pub struct Expect<'a> {
    pub key: &'a str,
    pub cmdline: &'a str,
    pub memory_bytes: u64,
    /// The CPUID each vCPU would get on this host, in vCPU order.
    pub cpuids: &'a [Vec<kvm_cpuid_entry2>],
}

/// The MSRs KVM can save on this host.
pub fn msr_list(kvm: &Kvm) -> Result<Vec<u32>> {
    let list = kvm.get_msr_index_list().map_err(self::kvm("MSR list"))?;
    let mut list = list.as_slice().to_vec();
    list.sort_unstable();
    list.dedup();
    Ok(list)
}

/// Saves one vCPU that has left KVM_RUN, with the CPUID it was given
/// (KVM's own copy has bits that follow the guest's registers, such as
/// OSXSAVE, which a restore sets again). A pending port or MMIO exit is
/// completed first (KVM_RUN with `immediate_exit`), as KVM asks before
/// its state is read.
pub fn save_vcpu(
    vcpu: &mut VcpuFd,
    msr_list: &[u32],
    cpuid: Vec<kvm_cpuid_entry2>,
) -> Result<VcpuState> {
    vcpu.set_kvm_immediate_exit(1);
    let run = vcpu.run().map(|_| ());
    vcpu.set_kvm_immediate_exit(0);
    match run {
        Err(e) if e.errno() == libc::EINTR => {}
        Err(e) => {
            return Err(Error::Kvm {
                what: "completing the last exit",
                source: e,
            })
        }
        Ok(()) => {}
    }
    let mut msrs = Vec::with_capacity(msr_list.len());
    for &index in msr_list {
        let mut one = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|e| Error::Corrupt(format!("MSR buffer: {e:?}")))?;
        // Some listed MSRs cannot be read in every configuration; those
        // are left as the new vCPU has them.
        if vcpu.get_msrs(&mut one).map_err(kvm("get MSRs"))? == 1 {
            msrs.push(one.as_slice()[0]);
        }
    }
    Ok(VcpuState {
        cpuid,
        mp_state: vcpu.get_mp_state().map_err(kvm("get MP state"))?,
        regs: vcpu.get_regs().map_err(kvm("get registers"))?,
        sregs: vcpu.get_sregs().map_err(kvm("get special registers"))?,
        xsave: vcpu.get_xsave().map_err(kvm("get XSAVE"))?,
        xcrs: vcpu.get_xcrs().map_err(kvm("get XCRs"))?,
        debugregs: vcpu.get_debug_regs().map_err(kvm("get debug registers"))?,
        lapic: vcpu.get_lapic().map_err(kvm("get local APIC"))?,
        msrs,
        events: vcpu.get_vcpu_events().map_err(kvm("get events"))?,
    })
}

/// Puts a new vCPU in the state `s` saved. The order matters: CPUID
/// first (it decides which MSRs and XSAVE features exist), the local
/// APIC before the MSRs (the TSC deadline lands in its timer), the
/// events last.
pub fn restore_vcpu(vcpu: &VcpuFd, s: &VcpuState) -> Result<()> {
    let cpuid =
        CpuId::from_entries(&s.cpuid).map_err(|e| Error::Corrupt(format!("CPUID: {e:?}")))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;
    vcpu.set_mp_state(s.mp_state).map_err(kvm("set MP state"))?;
    vcpu.set_regs(&s.regs).map_err(kvm("set registers"))?;
    let mut sregs = s.sregs;
    if is_amd(&s.cpuid) && sregs.tr.type_ == TSS_BUSY {
        // KVM on AMD reports the task register as a busy TSS (type 11)
        // whatever its VMCB holds; the CPU ignores the type there, but
        // QEMU's emulated SVM (our nested test host) refuses every port
        // access from user mode of a guest whose cached TSS type is not
        // 9, which is what `ltr` leaves. Intel's VM entry, by contrast,
        // requires the busy type, so only AMD gets the available one.
        sregs.tr.type_ = TSS_AVAILABLE;
    }
    vcpu.set_sregs(&sregs)
        .map_err(kvm("set special registers"))?;
    // SAFETY: `kvm_xsave` is the legacy 4 KiB area and KVM_SET_XSAVE
    // reads no more than that for it: the CPUID set above is this host's
    // (checked on load), which needs no larger area.
    unsafe { vcpu.set_xsave(&s.xsave) }.map_err(kvm("set XSAVE"))?;
    vcpu.set_xcrs(&s.xcrs).map_err(kvm("set XCRs"))?;
    vcpu.set_debug_regs(&s.debugregs)
        .map_err(kvm("set debug registers"))?;
    vcpu.set_lapic(&s.lapic).map_err(kvm("set local APIC"))?;
    let msrs = Msrs::from_entries(&s.msrs).map_err(|e| Error::Corrupt(format!("MSRs: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
    if set != s.msrs.len() {
        let index = s.msrs.get(set).map_or(0, |m| m.index);
        return Err(Error::Mismatch(format!(
            "KVM refused MSR {index:#x} ({set} of {} set)",
            s.msrs.len()
        )));
    }
    vcpu.set_vcpu_events(&s.events).map_err(kvm("set events"))?;
    Ok(())
}

const TSS_AVAILABLE: u8 = 9;
const TSS_BUSY: u8 = 11;

/// Whether the CPUID is an AMD CPU's ("AuthenticAMD").
fn is_amd(cpuid: &[kvm_cpuid_entry2]) -> bool {
    cpuid
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| (e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163))
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(kvm("get irqchip"))?;
    Ok(chip)
}

pub fn save_vm(vm: &VmFd) -> Result<VmState> {
    let mut clock = vm.get_clock().map_err(kvm("get clock"))?;
    // Only the value is restored; the flags describe this host's clock.
    clock.flags = 0;
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm("get PIT"))?,
        clock,
    })
}

pub fn restore_vm(vm: &VmFd, s: &VmState) -> Result<()> {
    for (chip, id) in [
        (&s.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&s.ioapic, KVM_IRQCHIP_IOAPIC),
    ] {
        if chip.chip_id != id {
            return Err(Error::Corrupt(format!(
                "irqchip {id} has ID {}",
                chip.chip_id
            )));
        }
        vm.set_irqchip(chip).map_err(kvm("set irqchip"))?;
    }
    vm.set_pit2(&s.pit).map_err(kvm("set PIT"))?;
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(kvm("set clock"))?;
    Ok(())
}

/// Writes `state` into `dir` (the memory file is written by the caller).
pub fn write_state(dir: &Path, state: &State) -> Result<()> {
    let path = dir.join(STATE_FILE);
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let json = serde_json::to_vec(state).map_err(|e| Error::Corrupt(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_0400()
        .open(&path)
        .map_err(io)?;
    f.write_all(&json).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

trait Mode0400 {
    /// Created read-only: nothing that runs as its owner later (a VMM
    /// without its jail) opens it for writing by mistake.
    fn mode_0400(&mut self) -> &mut Self;
}

impl Mode0400 for std::fs::OpenOptions {
    fn mode_0400(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o400)
    }
}

/// Reads and checks the snapshot in `dir`; returns its state and its
/// memory file, opened read-only (it is mapped privately: the guest's
/// writes never reach it).
pub fn load(dir: &Path, expect: &Expect) -> Result<(State, File)> {
    let path = dir.join(STATE_FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let f = File::open(&path).map_err(io(&path))?;
    let mut json = Vec::new();
    f.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(io(&path))?;
    if json.len() as u64 > MAX_STATE_BYTES {
        return Err(Error::Corrupt(format!(
            "{STATE_FILE} is larger than {MAX_STATE_BYTES} bytes"
        )));
    }
    let state = parse(&json)?;
    check(&state, expect)?;
    let mem_path = dir.join(MEMORY_FILE);
    let mem = File::open(&mem_path).map_err(io(&mem_path))?;
    let len = mem.metadata().map_err(io(&mem_path))?.len();
    if len != state.memory_bytes {
        return Err(Error::Corrupt(format!(
            "{MEMORY_FILE} holds {len} bytes, not {}",
            state.memory_bytes
        )));
    }
    Ok((state, mem))
}

/// The most vCPUs, CPUID leaves and MSRs a state file may list (each
/// decodes to kilobytes: they are counted before they are decoded).
const MAX_VCPUS: usize = 64;
const MAX_CPUID_LEAVES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;
const MAX_MSRS: usize = 4096;

fn parse(json: &[u8]) -> Result<State> {
    use serde::de::IgnoredAny;
    // The format and the counts first (a newer file is called that, not
    // corrupt), without decoding what is counted.
    #[derive(Deserialize)]
    struct Shape {
        format: u32,
        #[serde(default)]
        vcpus: Vec<VcpuShape>,
    }
    #[derive(Deserialize)]
    struct VcpuShape {
        cpuid: Vec<IgnoredAny>,
        msrs: Vec<IgnoredAny>,
    }
    let corrupt = |e: serde_json::Error| Error::Corrupt(format!("{STATE_FILE}: {e}"));
    let shape: Shape = serde_json::from_slice(json).map_err(corrupt)?;
    if shape.format != FORMAT {
        return Err(Error::Mismatch(format!(
            "format {} (this vm reads format {FORMAT})",
            shape.format
        )));
    }
    let too_many = shape.vcpus.len() > MAX_VCPUS
        || shape
            .vcpus
            .iter()
            .any(|v| v.cpuid.len() > MAX_CPUID_LEAVES || v.msrs.len() > MAX_MSRS);
    if too_many {
        return Err(Error::Corrupt(format!(
            "{STATE_FILE} lists more vCPUs, CPUID leaves or MSRs than a VM has"
        )));
    }
    serde_json::from_slice(json).map_err(corrupt)
}

fn check(state: &State, expect: &Expect) -> Result<()> {
    if state.key != expect.key {
        return Err(Error::Mismatch(format!(
            "it was taken for {:?}, not {:?}",
            state.key, expect.key
        )));
    }
    if state.cmdline != expect.cmdline {
        return Err(Error::Mismatch(format!(
            "its command line is {:?}, not {:?}",
            state.cmdline, expect.cmdline
        )));
    }
    if state.memory_bytes != expect.memory_bytes {
        return Err(Error::Mismatch(format!(
            "it has {} bytes of memory, not {}",
            state.memory_bytes, expect.memory_bytes
        )));
    }
    if state.vcpus.len() != expect.cpuids.len() {
        return Err(Error::Mismatch(format!(
            "it has {} vCPUs, not {}",
            state.vcpus.len(),
            expect.cpuids.len()
        )));
    }
    for (i, (v, want)) in state.vcpus.iter().zip(expect.cpuids).enumerate() {
        if !same_cpuid(&v.cpuid, want) {
            return Err(Error::Mismatch(format!(
                "vCPU {i}'s CPUID differs from what this host offers (taken on another CPU or KVM)"
            )));
        }
    }
    Ok(())
}

/// The same leaves with the same values, in any order.
fn same_cpuid(a: &[kvm_cpuid_entry2], b: &[kvm_cpuid_entry2]) -> bool {
    let key = |e: &kvm_cpuid_entry2| (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx);
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax,
            ..Default::default()
        }
    }

    fn state() -> State {
        State {
            format: FORMAT,
            key: "k1".into(),
            cmdline: "console=ttyS0".into(),
            memory_bytes: 4096,
            vcpus: vec![VcpuState {
                cpuid: vec![leaf(0, 0xd), leaf(1, 0x806f8)],
                mp_state: Default::default(),
                regs: kvm_regs {
                    rip: 0xffff_ffff_8100_0000,
                    ..Default::default()
                },
                sregs: Default::default(),
                xsave: Default::default(),
                xcrs: Default::default(),
                debugregs: Default::default(),
                lapic: Default::default(),
                msrs: vec![kvm_msr_entry {
                    index: 0x10,
                    data: 12345,
                    ..Default::default()
                }],
                events: Default::default(),
            }],
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            serial: [1, 2, 3, 4, 5, 6, 7, 8, 9],
        }
    }

    fn dir_with(json: &[u8], memory_len: u64) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        std::fs::write(d.0.join(STATE_FILE), json).expect("state");
        let m = File::create(d.0.join(MEMORY_FILE)).expect("memory");
        m.set_len(memory_len).expect("length");
        d
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "vmm-snapshot-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&p).expect("temp dir");
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn expect(cpuids: &[Vec<kvm_cpuid_entry2>]) -> Expect<'_> {
        Expect {
            key: "k1",
            cmdline: "console=ttyS0",
            memory_bytes: 4096,
            cpuids,
        }
    }

    #[test]
    fn round_trips_and_checks() {
        let json = serde_json::to_vec(&state()).expect("serializes");
        let d = dir_with(&json, 4096);
        // CPUID leaves in another order are the same CPUID.
        let cpuids = vec![vec![leaf(1, 0x806f8), leaf(0, 0xd)]];
        let (s, mem) = load(&d.0, &expect(&cpuids)).expect("loads");
        assert_eq!(s.vcpus[0].regs.rip, 0xffff_ffff_8100_0000);
        assert_eq!(s.vcpus[0].msrs[0].data, 12345);
        assert_eq!(s.serial, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(mem.metadata().expect("stat").len(), 4096);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let json = serde_json::to_vec(&state()).expect("serializes");
        let d = dir_with(&json, 4096);
        let good = vec![vec![leaf(0, 0xd), leaf(1, 0x806f8)]];
        let other_cpu = vec![vec![leaf(0, 0xd), leaf(1, 0x906ea)]];
        let two = vec![good[0].clone(), good[0].clone()];
        for (e, what) in [
            (
                Expect {
                    key: "k2",
                    ..expect(&good)
                },
                "taken for",
            ),
            (
                Expect {
                    cmdline: "quiet",
                    ..expect(&good)
                },
                "command line",
            ),
            (
                Expect {
                    memory_bytes: 8192,
                    ..expect(&good)
                },
                "bytes of memory",
            ),
            (expect(&other_cpu), "CPUID"),
            (expect(&two), "vCPUs"),
        ] {
            match load(&d.0, &e) {
                Err(Error::Mismatch(m)) => assert!(m.contains(what), "{m}"),
                Err(other) => panic!("{what}: {other}"),
                Ok(_) => panic!("{what}: loaded"),
            }
        }
    }

    #[test]
    fn refuses_corrupt_files() {
        let good = vec![vec![leaf(0, 0xd), leaf(1, 0x806f8)]];
        let json = serde_json::to_vec(&state()).expect("serializes");
        // Truncated, garbage, a memory file of the wrong length.
        for (json, len) in [
            (json[..json.len() / 2].to_vec(), 4096),
            (b"\x00\xffgarbage".to_vec(), 4096),
            (json.clone(), 100),
        ] {
            let d = dir_with(&json, len);
            assert!(
                matches!(load(&d.0, &expect(&good)), Err(Error::Corrupt(_))),
                "accepted a corrupt snapshot"
            );
        }
        // Another format is named as such.
        let mut s = state();
        s.format = FORMAT + 1;
        let d = dir_with(&serde_json::to_vec(&s).expect("serializes"), 4096);
        assert!(matches!(
            load(&d.0, &expect(&good)),
            Err(Error::Mismatch(_))
        ));
        // A state file past the cap is not read whole.
        let d = dir_with(&vec![b' '; (MAX_STATE_BYTES + 10) as usize], 4096);
        match load(&d.0, &expect(&good)) {
            Err(Error::Corrupt(m)) => assert!(m.contains("larger"), "{m}"),
            _ => panic!("read an oversized state file"),
        }
        // Counts past what a VM has are refused before they are decoded.
        let mut s = state();
        s.vcpus[0].msrs = vec![kvm_msr_entry::default(); MAX_MSRS + 1];
        let d = dir_with(&serde_json::to_vec(&s).expect("serializes"), 4096);
        match load(&d.0, &expect(&good)) {
            Err(Error::Corrupt(m)) => assert!(m.contains("more vCPUs"), "{m}"),
            _ => panic!("decoded an oversized MSR list"),
        }
        let many = format!(
            "{{\"format\":{FORMAT},\"vcpus\":[{}]}}",
            vec!["{\"cpuid\":[],\"msrs\":[]}"; MAX_VCPUS + 1].join(",")
        );
        let d = dir_with(many.as_bytes(), 4096);
        assert!(matches!(load(&d.0, &expect(&good)), Err(Error::Corrupt(_))));
        // A missing snapshot is an I/O error naming the file.
        let d = tempdir::Dir::new();
        assert!(matches!(load(&d.0, &expect(&good)), Err(Error::Io { .. })));
    }
}
