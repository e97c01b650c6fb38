//! Loading the guest kernel (ELF vmlinux or bzImage), the initrd and the
//! command line, and writing the zero page and MP table.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::arch::boot_params::{initrd_address, ZeroPage};
use crate::arch::layout::{
    ram_ranges, CMDLINE, CMDLINE_MAX, HIMEM_START, MPTABLE_START, ZERO_PAGE,
};
use crate::arch::{boot_params, mptable};
use crate::memory::GuestMem;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a Linux kernel: expected an x86_64 ELF vmlinux or a bzImage")]
    NotAKernel { path: PathBuf },
    #[error("cannot load kernel {path}: {detail}")]
    LoadKernel { path: PathBuf, detail: String },
    #[error("cannot open initrd {path}: {source}")]
    OpenInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory; give the VM more memory")]
    InitrdTooLarge { path: PathBuf, size: u64 },
    #[error("cannot read initrd {path}: {detail}")]
    ReadInitrd { path: PathBuf, detail: String },
    #[error("kernel command line is too long or invalid: {0}")]
    Cmdline(String),
    #[error(transparent)]
    ZeroPage(#[from] boot_params::Error),
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    #[error("writing boot data into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Tell the format from the first bytes: ELF magic, or the "HdrS" magic of
/// the x86 boot protocol at 0x202.
pub fn detect_format(file: &mut File) -> std::io::Result<Option<KernelFormat>> {
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0))?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    if n >= 20 && head[..4] == *b"\x7fELF" {
        // 64-bit, little-endian, executable (not a shared object), x86_64.
        let is_kernel = head[4] == 2
            && head[5] == 1
            && u16::from_le_bytes([head[16], head[17]]) == 2
            && u16::from_le_bytes([head[18], head[19]]) == 62;
        return Ok(is_kernel.then_some(KernelFormat::Elf));
    }
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

/// Check that the kernel is a kernel and the initrd a readable file,
/// before anything else is set up.
pub fn check_files(kernel: &Path, initrd: Option<&Path>) -> Result<(), Error> {
    let kpath = kernel.to_path_buf();
    let open_err = |source| Error::OpenKernel {
        path: kpath.clone(),
        source,
    };
    let mut f = File::open(kernel).map_err(open_err)?;
    if !f.metadata().map_err(open_err)?.is_file() {
        return Err(Error::NotAKernel { path: kpath });
    }
    if detect_format(&mut f).map_err(open_err)?.is_none() {
        return Err(Error::NotAKernel { path: kpath });
    }
    if let Some(p) = initrd {
        let open_err = |source| Error::OpenInitrd {
            path: p.to_path_buf(),
            source,
        };
        let f = File::open(p).map_err(open_err)?;
        if !f.metadata().map_err(open_err)?.is_file() {
            return Err(open_err(std::io::Error::other("not a regular file")));
        }
    }
    Ok(())
}

/// What the vCPU needs from loading: where to start.
pub struct Loaded {
    pub entry: u64,
}

pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub mem_bytes: u64,
    pub cpus: u8,
}

pub fn load(mem: &GuestMem, spec: &BootSpec) -> Result<Loaded, Error> {
    let kpath = spec.kernel.to_path_buf();
    let mut kfile = File::open(spec.kernel).map_err(|source| Error::OpenKernel {
        path: kpath.clone(),
        source,
    })?;
    let format = detect_format(&mut kfile)
        .map_err(|source| Error::OpenKernel {
            path: kpath.clone(),
            source,
        })?
        .ok_or_else(|| Error::NotAKernel {
            path: kpath.clone(),
        })?;
    let load_err = |e: linux_loader::loader::Error| Error::LoadKernel {
        path: kpath.clone(),
        detail: e.to_string(),
    };
    let (result, entry): (KernelLoaderResult, u64) = match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut kfile, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            let entry = r.kernel_load.0;
            (r, entry)
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut kfile, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            // The 64-bit entry point sits 0x200 bytes into the protected-mode code.
            let entry = r.kernel_load.0 + 0x200;
            (r, entry)
        }
    };
    if result.kernel_end > mem.last_addr().0 {
        return Err(Error::LoadKernel {
            path: kpath,
            detail: "the kernel does not fit in guest memory".into(),
        });
    }

    let cmdline = build_cmdline(spec.cmdline)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE), &cmdline)
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    let cmdline_size = cmdline
        .as_cstring()
        .map_err(|e| Error::Cmdline(e.to_string()))?
        .as_bytes_with_nul()
        .len() as u32;

    let ram = ram_ranges(spec.mem_bytes);
    let initrd = match spec.initrd {
        Some(path) => {
            let max = result
                .setup_header
                .map(|h| u64::from(h.initrd_addr_max))
                .filter(|m| *m != 0)
                .unwrap_or(u64::from(u32::MAX));
            Some(load_initrd(mem, path, &ram, max, result.kernel_end)?)
        }
        None => None,
    };

    let params = ZeroPage {
        header: result.setup_header,
        ram: &ram,
        cmdline_addr: CMDLINE,
        cmdline_size,
        initrd,
    }
    .build()?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE))?;

    let table = mptable::build(MPTABLE_START, spec.cpus)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_START))?;
    Ok(Loaded { entry })
}

/// The kernel command line as linux-loader writes it, within Linux's limit.
pub fn build_cmdline(text: &str) -> Result<Cmdline, Error> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(|e| Error::Cmdline(e.to_string()))?;
    cmdline.insert_str(text).map_err(|e| {
        Error::Cmdline(format!(
            "{e} ({} bytes, at most {})",
            text.len(),
            CMDLINE_MAX - 1
        ))
    })?;
    Ok(cmdline)
}

fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    ram: &[(u64, u64)],
    addr_max: u64,
    kernel_end: u64,
) -> Result<(u64, u32), Error> {
    let open_err = |source| Error::OpenInitrd {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(Error::OpenInitrd {
            path: path.to_path_buf(),
            source: std::io::Error::other("not a regular file"),
        });
    }
    let size = meta.len();
    let too_large = || Error::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
    };
    let size32 = u32::try_from(size).map_err(|_| too_large())?;
    let addr = initrd_address(ram, size, addr_max, kernel_end).ok_or_else(too_large)?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| Error::ReadInitrd {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    Ok((addr, size32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(name: &str, bytes: &[u8]) -> (PathBuf, File) {
        let path =
            std::env::temp_dir().join(format!("vm-loader-test-{}-{name}", std::process::id()));
        let mut f = File::create(&path).expect("create");
        f.write_all(bytes).expect("write");
        (path.clone(), File::open(&path).expect("open"))
    }

    #[test]
    fn detects_elf_kernels_only() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little endian
        elf[16] = 2; // ET_EXEC
        elf[18] = 62; // x86_64
        let (p, mut f) = temp_file("elf", &elf);
        assert!(matches!(detect_format(&mut f), Ok(Some(KernelFormat::Elf))));
        elf[16] = 3; // ET_DYN: a program, not a kernel
        let (p2, mut f) = temp_file("dyn", &elf);
        assert!(matches!(detect_format(&mut f), Ok(None)));
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(p2);
    }

    #[test]
    fn detects_bzimage_magic() {
        let mut img = vec![0u8; 0x300];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        let (p, mut f) = temp_file("bz", &img);
        assert!(matches!(
            detect_format(&mut f),
            Ok(Some(KernelFormat::BzImage))
        ));
        let (p2, mut f) = temp_file("short", b"HdrS");
        assert!(matches!(detect_format(&mut f), Ok(None)));
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(p2);
    }

    #[test]
    fn check_files_names_the_bad_one() {
        let (p, _) = temp_file("text", b"hello world");
        assert!(matches!(
            check_files(&p, None),
            Err(Error::NotAKernel { .. })
        ));
        assert!(matches!(
            check_files(Path::new("/nonexistent/k"), None),
            Err(Error::OpenKernel { .. })
        ));
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn command_line_limits() {
        let c = build_cmdline("console=ttyS0 quiet").expect("cmdline");
        assert_eq!(
            c.as_cstring().expect("cstring").as_bytes(),
            b"console=ttyS0 quiet"
        );
        let long = "x".repeat(CMDLINE_MAX);
        match build_cmdline(&long) {
            Err(err) => assert!(err.to_string().contains("at most 2047"), "{err}"),
            Ok(_) => panic!("a command line over Linux's limit was accepted"),
        }
        assert!(
            build_cmdline("a\nb").is_err(),
            "control characters are refused"
        );
    }
}
