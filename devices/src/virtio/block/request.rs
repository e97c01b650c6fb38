//! One block request: parse it from a descriptor chain, do the I/O on the
//! backing file, and write the status byte. Everything the guest hands in
//! is checked here: lengths, sector ranges, request types.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use virtio_queue::{Reader, Writer};
use virtio_queue::DescriptorChain;
use vm_memory::ByteValued;

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

/// Bounce buffer size for file I/O.
const CHUNK: usize = 128 * 1024;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RequestHeader {
    pub type_: u32,
    pub ioprio: u32,
    pub sector: u64,
}

// SAFETY: plain integers, no padding (4 + 4 + 8 bytes), any bit pattern valid.
unsafe impl ByteValued for RequestHeader {}

/// The storage behind a disk.
pub trait Disk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<usize>;
    fn flush(&self) -> std::io::Result<()>;
}

impl Disk for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<usize> {
        FileExt::write_at(self, buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.sync_data()
    }
}

pub struct DiskInfo<'a> {
    pub capacity_sectors: u64,
    pub read_only: bool,
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

fn range_ok(sector: u64, bytes: u64, capacity: u64) -> bool {
    if !bytes.is_multiple_of(SECTOR_SIZE) {
        return false;
    }
    sector
        .checked_add(bytes / SECTOR_SIZE)
        .is_some_and(|end| end <= capacity)
}

/// Execute the request in `chain`.
pub fn execute<D: Disk>(
    chain: DescriptorChain<&GuestMem>,
    mem: &GuestMem,
    disk: &D,
    info: &DiskInfo,
) -> Outcome {
    let fail = |why: String| Outcome {
        used_len: 0,
        status: None,
        error: Some(why),
    };
    let mut reader = match Reader::new(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => return fail(format!("bad descriptor chain: {e}")),
    };
    let mut writer = match Writer::new(mem, chain) {
        Ok(w) => w,
        Err(e) => return fail(format!("bad descriptor chain: {e}")),
    };
    let writable = writer.available_bytes();
    if writable == 0 {
        return fail("no writable byte for the status".into());
    }
    let mut status_writer = match writer.split_at(writable - 1) {
        Ok(w) => w,
        Err(e) => return fail(format!("bad descriptor chain: {e}")),
    };
    let header: RequestHeader = match reader.read_obj() {
        Ok(h) => h,
        Err(_) => {
            return finish(
                &mut status_writer,
                0,
                S_IOERR,
                Some("request header shorter than 16 bytes".into()),
            )
        }
    };
    let (data_len, status, error) = match header.type_ {
        T_IN => read_data(&mut writer, disk, header.sector, info),
        T_OUT => write_data(&mut reader, disk, header.sector, info),
        T_FLUSH => match disk.flush() {
            Ok(()) => (0, S_OK, None),
            Err(e) => (0, S_IOERR, Some(format!("flush: {e}"))),
        },
        T_GET_ID => {
            let n = writer.available_bytes().min(ID_BYTES);
            match writer.write_all(&info.id[..n]) {
                Ok(()) => (n, S_OK, None),
                Err(e) => (0, S_IOERR, Some(format!("get-id: {e}"))),
            }
        }
        other => (0, S_UNSUPP, Some(format!("unsupported request type {other}"))),
    };
    finish(&mut status_writer, data_len, status, error)
}

fn finish(status_writer: &mut Writer, data_len: usize, status: u8, error: Option<String>) -> Outcome {
    match status_writer.write_all(&[status]) {
        Ok(()) => Outcome {
            used_len: u32::try_from(data_len + 1).unwrap_or(u32::MAX),
            status: Some(status),
            error,
        },
        Err(e) => Outcome {
            used_len: 0,
            status: None,
            error: Some(format!("cannot write the status byte: {e}")),
        },
    }
}

fn read_data<D: Disk>(
    writer: &mut Writer,
    disk: &D,
    sector: u64,
    info: &DiskInfo,
) -> (usize, u8, Option<String>) {
    let len = writer.available_bytes();
    if !range_ok(sector, len as u64, info.capacity_sectors) {
        return (0, S_IOERR, Some(format!("read of {len} bytes at sector {sector} is outside the disk")));
    }
    let mut buf = vec![0u8; CHUNK.min(len)];
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(CHUNK);
        let offset = sector * SECTOR_SIZE + done as u64;
        if let Err(e) = read_exact_at(disk, &mut buf[..n], offset) {
            return (done, S_IOERR, Some(format!("read at {offset}: {e}")));
        }
        if let Err(e) = writer.write_all(&buf[..n]) {
            return (done, S_IOERR, Some(format!("copy to guest: {e}")));
        }
        done += n;
    }
    (done, S_OK, None)
}

fn write_data<D: Disk>(
    reader: &mut Reader,
    disk: &D,
    sector: u64,
    info: &DiskInfo,
) -> (usize, u8, Option<String>) {
    if info.read_only {
        return (0, S_IOERR, Some("write to a read-only disk refused".into()));
    }
    let len = reader.available_bytes();
    if !range_ok(sector, len as u64, info.capacity_sectors) {
        return (0, S_IOERR, Some(format!("write of {len} bytes at sector {sector} is outside the disk")));
    }
    let mut buf = vec![0u8; CHUNK.min(len)];
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(CHUNK);
        if let Err(e) = reader.read_exact(&mut buf[..n]) {
            return (0, S_IOERR, Some(format!("copy from guest: {e}")));
        }
        let offset = sector * SECTOR_SIZE + done as u64;
        if let Err(e) = write_all_at(disk, &buf[..n], offset) {
            return (0, S_IOERR, Some(format!("write at {offset}: {e}")));
        }
        done += n;
    }
    (0, S_OK, None)
}

fn read_exact_at<D: Disk>(disk: &D, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match disk.read_at(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

fn write_all_at<D: Disk>(disk: &D, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match disk.write_at(buf, offset)? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => {
                buf = &buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}
