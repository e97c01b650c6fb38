//! One block request: parse it from a descriptor chain, do the I/O between
//! the backing file and guest memory directly (no bounce buffer), and
//! write the status byte. Everything the guest hands in is checked here:
//! descriptor order, lengths, addresses, sector ranges, request types.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::sync::atomic::Ordering;

use virtio_queue::DescriptorChain;
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile, VolatileSlice, WriteVolatile,
};

use crate::virtio::GuestMem;

pub const SECTOR_SIZE: u64 = 512;
pub const ID_BYTES: usize = 20;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

const HEADER_LEN: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RequestHeader {
    pub type_: u32,
    pub ioprio: u32,
    pub sector: u64,
}

// SAFETY: plain integers, no padding (4 + 4 + 8 bytes), any bit pattern valid.
unsafe impl ByteValued for RequestHeader {}

/// Part of a disk: `len` bytes of `file` from `file_offset`, at `start`
/// bytes into the disk. A disk's pieces are sorted and do not overlap;
/// what lies between them reads as zeros.
pub struct Piece {
    pub file: File,
    pub file_offset: u64,
    pub len: u64,
    pub start: u64,
}

pub struct DiskInfo<'a> {
    pub capacity_sectors: u64,
    pub read_only: bool,
    /// Set when the disk is sealed: from then on it refuses writes too.
    /// Looked at for every write request, not once per batch, so that no
    /// write queued behind the seal gets through.
    pub seal: Option<&'a super::Seal>,
    /// Set by every write, cleared by a flush: a flush with nothing
    /// written since the last one costs no host sync (a guest that
    /// floods flushes does not flood the host's disk with them).
    pub unsynced: &'a std::sync::atomic::AtomicBool,
    /// Where the disk starts in the file, and its length in bytes.
    pub offset: u64,
    pub size: u64,
    pub id: &'a [u8; ID_BYTES],
}

/// What happened to a request, for the used ring and the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes written into the chain (data + status), for the used ring.
    pub used_len: u32,
    pub status: Option<u8>,
    /// Why the request failed, for the log.
    pub error: Option<String>,
}

/// A run of guest memory named by one descriptor (or part of one).
#[derive(Clone, Copy, Debug)]
struct Seg {
    addr: u64,
    len: u64,
}

/// The chain split the way virtio-blk lays it out: device-readable
/// buffers (header, then data for writes), then device-writable buffers
/// (data for reads, then the status byte).
struct Layout {
    readable: Vec<Seg>,
    writable: Vec<Seg>,
}

fn layout(chain: DescriptorChain<&GuestMem>) -> Result<Layout, String> {
    let mut l = Layout {
        readable: Vec::new(),
        writable: Vec::new(),
    };
    for d in chain {
        let seg = Seg {
            addr: d.addr().0,
            len: u64::from(d.len()),
        };
        if d.is_write_only() {
            l.writable.push(seg);
        } else if l.writable.is_empty() {
            l.readable.push(seg);
        } else {
            return Err("a device-readable buffer follows a writable one".into());
        }
    }
    Ok(l)
}

/// Drop the first `n` bytes of a list of segments; None if shorter.
fn skip(segs: &[Seg], mut n: u64) -> Option<Vec<Seg>> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        if n >= s.len {
            n -= s.len;
            continue;
        }
        out.push(Seg {
            addr: s.addr.checked_add(n)?,
            len: s.len - n,
        });
        n = 0;
    }
    (n == 0).then_some(out)
}

fn total(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| s.len).sum()
}

fn slice<'m>(mem: &'m GuestMem, s: Seg) -> Result<VolatileSlice<'m, ()>, String> {
    let len = usize::try_from(s.len).map_err(|_| "buffer too long".to_string())?;
    mem.get_slice(GuestAddress(s.addr), len).map_err(|e| {
        format!(
            "buffer {:#x}+{:#x} is not in guest memory: {e}",
            s.addr, s.len
        )
    })
}

fn range_ok(sector: u64, bytes: u64, capacity: u64) -> bool {
    bytes.is_multiple_of(SECTOR_SIZE)
        && sector
            .checked_add(bytes / SECTOR_SIZE)
            .is_some_and(|end| end <= capacity)
}

/// A request's buffers, read from its descriptor chain once: what it
/// costs and what it does are both worked out from this one reading,
/// however the guest rewrites the descriptors meanwhile.
pub struct Request(Result<Layout, String>);

impl Request {
    pub fn parse(chain: DescriptorChain<&GuestMem>) -> Self {
        Self(layout(chain))
    }

    /// Every byte the request moves (header, data, status).
    pub fn bytes(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |l| total(&l.readable).saturating_add(total(&l.writable)))
    }
}

/// Execute `request`.
pub fn execute(
    request: Request,
    mem: &GuestMem,
    disk: &File,
    pieces: &[Piece],
    info: &DiskInfo,
) -> Outcome {
    let fail = |why: String| Outcome {
        used_len: 0,
        status: None,
        error: Some(why),
    };
    let l = match request.0 {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    // The status byte is the last byte of the last writable buffer.
    let Some(last) = l.writable.iter().rev().find(|s| s.len > 0).copied() else {
        return fail("no writable byte for the status".into());
    };
    let status_addr = last.addr.saturating_add(last.len - 1);
    let mut data_out = l.writable.clone();
    // Trim the status byte off the writable data.
    let mut left = total(&data_out) - 1;
    data_out.retain_mut(|s| {
        let keep = s.len.min(left);
        s.len = keep;
        left -= keep;
        keep > 0
    });

    let (data_len, status, error) = match read_header(mem, &l.readable) {
        Err(e) => (0, S_IOERR, Some(e)),
        Ok(h) => {
            let data_in = skip(&l.readable, HEADER_LEN as u64).unwrap_or_default();
            match h.type_ {
                T_IN => read_data(mem, &data_out, pieces, h.sector, info),
                T_OUT => write_data(mem, &data_in, disk, h.sector, info),
                T_FLUSH => flush(disk, info),
                T_GET_ID => get_id(mem, &data_out, info),
                other => (
                    0,
                    S_UNSUPP,
                    Some(format!("unsupported request type {other}")),
                ),
            }
        }
    };
    match mem.write_obj(status, GuestAddress(status_addr)) {
        Ok(()) => Outcome {
            used_len: u32::try_from(data_len + 1).unwrap_or(u32::MAX),
            status: Some(status),
            error,
        },
        Err(e) => fail(format!("cannot write the status byte: {e}")),
    }
}

fn read_header(mem: &GuestMem, readable: &[Seg]) -> Result<RequestHeader, String> {
    if total(readable) < HEADER_LEN as u64 {
        return Err("request header shorter than 16 bytes".into());
    }
    let mut h = RequestHeader::default();
    let bytes = h.as_mut_slice();
    let mut done = 0;
    for s in readable {
        if done == HEADER_LEN {
            break;
        }
        let n = (HEADER_LEN - done).min(s.len as usize);
        mem.read_slice(&mut bytes[done..done + n], GuestAddress(s.addr))
            .map_err(|e| format!("request header not in guest memory: {e}"))?;
        done += n;
    }
    Ok(h)
}

fn read_data(
    mem: &GuestMem,
    segs: &[Seg],
    pieces: &[Piece],
    sector: u64,
    info: &DiskInfo,
) -> (u64, u8, Option<String>) {
    let len = total(segs);
    if !range_ok(sector, len, info.capacity_sectors) {
        return (
            0,
            S_IOERR,
            Some(format!(
                "read of {len} bytes at sector {sector} is outside the disk"
            )),
        );
    }
    let mut pos = sector * SECTOR_SIZE;
    let mut done = 0;
    for &s in segs {
        let mut dst = match slice(mem, s) {
            Ok(v) => v,
            Err(e) => return (done, S_IOERR, Some(e)),
        };
        if let Err(e) = fill(pieces, pos, &mut dst) {
            return (done, S_IOERR, Some(format!("read at sector {sector}: {e}")));
        }
        pos += s.len;
        done += s.len;
    }
    (done, S_OK, None)
}

/// Fills `dst` with the disk's bytes from `pos`: from the piece that holds
/// them, zeros where no piece does (between pieces, past the last one,
/// or past the end of a file that shrank).
fn fill(pieces: &[Piece], pos: u64, dst: &mut VolatileSlice<'_, ()>) -> std::io::Result<()> {
    let mut off = 0usize;
    while off < dst.len() {
        let at = pos + off as u64;
        let room = dst.len() - off;
        // The first piece that ends after `at`.
        let i = pieces.partition_point(|p| p.start + p.len <= at);
        let n = match pieces.get(i) {
            Some(p) if p.start <= at => {
                let n = room.min(usize::try_from(p.start + p.len - at).unwrap_or(usize::MAX));
                let mut part = dst
                    .offset(off)
                    .and_then(|d| d.subslice(0, n))
                    .map_err(std::io::Error::other)?;
                read_exact_or_zero(p, p.file_offset + (at - p.start), &mut part)?;
                n
            }
            next => {
                let gap = next.map_or(u64::MAX, |p| p.start - at);
                let n = room.min(usize::try_from(gap).unwrap_or(usize::MAX));
                zero(&dst.offset(off).map_err(std::io::Error::other)?, n)?;
                n
            }
        };
        off += n;
    }
    Ok(())
}

fn zero(dst: &VolatileSlice<'_, ()>, n: usize) -> std::io::Result<()> {
    const ZEROS: [u8; 512] = [0; 512];
    let mut off = 0;
    while off < n {
        let k = (n - off).min(ZEROS.len());
        dst.offset(off)
            .map_err(std::io::Error::other)?
            .copy_from(&ZEROS[..k]);
        off += k;
    }
    Ok(())
}

/// Reads all of `dst` from the piece's file at `at`; a file that ends
/// early leaves zeros.
fn read_exact_or_zero(p: &Piece, at: u64, dst: &mut VolatileSlice<'_, ()>) -> std::io::Result<()> {
    let mut f = &p.file;
    f.seek(SeekFrom::Start(at))?;
    let mut off = 0;
    while off < dst.len() {
        let mut rest = dst.offset(off).map_err(std::io::Error::other)?;
        match f.read_volatile(&mut rest) {
            Ok(0) => return zero(&rest, rest.len()),
            Ok(n) => off += n,
            Err(vm_memory::VolatileMemoryError::IOError(e))
                if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
    Ok(())
}

fn write_data(
    mem: &GuestMem,
    segs: &[Seg],
    disk: &File,
    sector: u64,
    info: &DiskInfo,
) -> (u64, u8, Option<String>) {
    let sealed = info.seal.is_some_and(super::Seal::is_sealed);
    if info.read_only || sealed {
        return (0, S_IOERR, Some("write to a read-only disk refused".into()));
    }
    let len = total(segs);
    if !range_ok(sector, len, info.capacity_sectors) {
        return (
            0,
            S_IOERR,
            Some(format!(
                "write of {len} bytes at sector {sector} is outside the disk"
            )),
        );
    }
    // Check every buffer before writing any, so a bad one writes nothing.
    let mut slices = Vec::with_capacity(segs.len());
    for &s in segs {
        match slice(mem, s) {
            Ok(v) => slices.push(v),
            Err(e) => return (0, S_IOERR, Some(e)),
        }
    }
    info.unsynced.store(true, Ordering::Relaxed);
    let mut f = disk;
    if let Err(e) = f.seek(SeekFrom::Start(info.offset + sector * SECTOR_SIZE)) {
        return (0, S_IOERR, Some(format!("seek: {e}")));
    }
    for src in &slices {
        if let Err(e) = f.write_all_volatile(src) {
            return (0, S_IOERR, Some(format!("write at sector {sector}: {e}")));
        }
    }
    (0, S_OK, None)
}

fn flush(disk: &File, info: &DiskInfo) -> (u64, u8, Option<String>) {
    if !info.unsynced.swap(false, Ordering::Relaxed) {
        return (0, S_OK, None);
    }
    match disk.sync_data() {
        Ok(()) => (0, S_OK, None),
        Err(e) => {
            info.unsynced.store(true, Ordering::Relaxed);
            (0, S_IOERR, Some(format!("flush: {e}")))
        }
    }
}

fn get_id(mem: &GuestMem, segs: &[Seg], info: &DiskInfo) -> (u64, u8, Option<String>) {
    let mut done = 0usize;
    for s in segs {
        if done == ID_BYTES {
            break;
        }
        let n = (ID_BYTES - done).min(s.len as usize);
        if let Err(e) = mem.write_slice(&info.id[done..done + n], GuestAddress(s.addr)) {
            return (done as u64, S_IOERR, Some(format!("get-id: {e}")));
        }
        done += n;
    }
    (done as u64, S_OK, None)
}
