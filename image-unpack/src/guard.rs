//! A reader between an untrusted tar stream and the tar crate that
//! refuses oversized metadata entries. The tar crate reads GNU long-name
//! (`L`), long-link (`K`) and PAX (`x`, `g`) entries into memory whole;
//! one that claims gigabytes would exhaust the host's memory. This reader
//! follows the stream's 512-byte blocks (header, then the data blocks its
//! size says) and fails on such an entry before the tar crate sees it.

use std::io::{self, Read};

/// The largest metadata entry let through.
pub const MAX_META: u64 = 1 << 20;

const BLOCK: usize = 512;

pub struct MetaCap<R> {
    inner: R,
    header: [u8; BLOCK],
    /// Bytes of the current header seen so far (while `data_left` is 0).
    have: usize,
    /// Bytes of data (whole blocks) before the next header.
    data_left: u64,
    /// The data of a PAX (`x`) entry being read, and how much of it is
    /// still to come: its `size` record replaces the next entry's size,
    /// for the tar crate and so for this reader.
    pax: Vec<u8>,
    pax_want: u64,
    pax_size: Option<u64>,
    /// The end-of-archive block went by: the tar crate reads no further.
    ended: bool,
}

impl<R> MetaCap<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            header: [0; BLOCK],
            have: 0,
            data_left: 0,
            pax: Vec::new(),
            pax_want: 0,
            pax_size: None,
            ended: false,
        }
    }
}

fn refuse(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The first `size` record of PAX data, as the tar crate reads it (a bad
/// record before it means none).
fn pax_size(data: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.ok()?;
        if ext.key() == Ok("size") {
            return ext.value().ok()?.parse().ok();
        }
    }
    None
}

impl<R> MetaCap<R> {
    /// A whole header has been seen: check it and learn how much data
    /// follows, exactly as the tar crate (0.4.46) will.
    fn header_done(&mut self) -> io::Result<()> {
        self.have = 0;
        if self.header.iter().all(|b| *b == 0) {
            self.ended = true;
            return Ok(());
        }
        let h = tar::Header::from_byte_slice(&self.header);
        let kind = h.entry_type();
        let mut size = h
            .entry_size()
            .map_err(|e| refuse(format!("a tar header with a bad size: {e}")))?;
        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        if extension && size > MAX_META {
            return Err(refuse(format!(
                "a tar metadata entry of {size} bytes (the limit is {MAX_META})"
            )));
        }
        // Old GNU sparse headers can be followed by extension blocks that
        // the size does not count; this reader would lose its place.
        if kind.is_gnu_sparse() && self.header[482] != 0 {
            return Err(refuse("extended GNU sparse entries are not supported".into()));
        }
        if !extension {
            if let Some(s) = self.pax_size.take() {
                size = s;
            }
        }
        if kind.is_pax_local_extensions() {
            self.pax.clear();
            self.pax_want = size;
            if size == 0 {
                self.pax_size = None;
            }
        }
        let rounded = size
            .checked_add(BLOCK as u64 - 1)
            .ok_or_else(|| refuse("a tar entry size overflows".into()))?;
        self.data_left = rounded & !(BLOCK as u64 - 1);
        Ok(())
    }

    /// Data bytes went by: keep those of a PAX entry.
    fn data(&mut self, bytes: &[u8]) {
        if self.pax_want == 0 {
            return;
        }
        let take = usize::try_from(self.pax_want).unwrap_or(usize::MAX).min(bytes.len());
        self.pax.extend_from_slice(&bytes[..take]);
        self.pax_want -= take as u64;
        if self.pax_want == 0 {
            self.pax_size = pax_size(&self.pax);
            self.pax = Vec::new();
        }
    }
}

impl<R: Read> Read for MetaCap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut i = 0;
        while i < n && !self.ended {
            if self.data_left > 0 {
                let skip = usize::try_from(self.data_left).unwrap_or(usize::MAX).min(n - i);
                self.data(&buf[i..i + skip]);
                self.data_left -= skip as u64;
                i += skip;
                continue;
            }
            let take = (BLOCK - self.have).min(n - i);
            self.header[self.have..self.have + take].copy_from_slice(&buf[i..i + take]);
            self.have += take;
            i += take;
            if self.have == BLOCK {
                self.header_done()?;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(size);
        h.set_path("x").expect("path");
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn passes_ordinary_archives_and_refuses_huge_metadata() {
        let mut ok = header(b'0', 700);
        ok.extend(vec![7u8; 1024]);
        ok.extend(header(b'L', 10));
        ok.extend(vec![b'a'; 512]);
        ok.extend(vec![0u8; 1024]);
        let mut out = Vec::new();
        // Read in odd-sized pieces so headers straddle reads.
        let mut r = MetaCap::new(&ok[..]);
        let mut buf = [0u8; 37];
        loop {
            let n = r.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, ok);

        let mut bad = header(b'0', 3);
        bad.extend(vec![1u8; 512]);
        bad.extend(header(b'x', 40 << 30));
        let e = std::io::copy(&mut MetaCap::new(&bad[..]), &mut std::io::sink());
        assert!(e.is_err_and(|e| e.to_string().contains("metadata entry")));
    }

    fn refused(stream: &[u8]) -> bool {
        std::io::copy(&mut MetaCap::new(stream), &mut std::io::sink())
            .is_err_and(|e| e.to_string().contains("metadata entry"))
    }

    #[test]
    fn keeps_its_place_as_the_tar_crate_does() {
        // A PAX size of 0 for a header that says 512: the tar crate reads
        // the next block as a header, and so must this reader.
        let record = b"10 size=0\n";
        let mut s = header(b'x', record.len() as u64);
        s.extend_from_slice(record);
        s.resize(1024, 0);
        s.extend(header(b'0', 512));
        s.extend(header(b'L', 8 << 30));
        s.extend(vec![0u8; 1024]);
        assert!(refused(&s), "a PAX size override");

        // A size field the tar crate trims (a tab, then octal zeros): it
        // reads the next block as a header, and so must this reader.
        let mut h = tar::Header::from_byte_slice(&header(b'0', 0)).clone();
        h.as_old_mut().size.copy_from_slice(b"\t0000000000\0");
        h.set_cksum();
        assert_eq!(h.entry_size().expect("size"), 0);
        let mut s = h.as_bytes().to_vec();
        s.extend(header(b'K', 8 << 30));
        s.extend(vec![0u8; 1024]);
        assert!(refused(&s), "as the tar crate reads the size");
    }
}
