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
}

impl<R> MetaCap<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            header: [0; BLOCK],
            have: 0,
            data_left: 0,
        }
    }
}

/// The size field of a header (octal, or base-256 when its top bit is
/// set); `None` when it does not parse.
fn size(h: &[u8; BLOCK]) -> Option<u64> {
    let field = &h[124..136];
    if field[0] & 0x80 != 0 {
        let mut v: u64 = 0;
        for (i, b) in field.iter().enumerate() {
            let b = if i == 0 { b & 0x7f } else { *b };
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ' || *b == 0)
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

fn refuse(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl<R> MetaCap<R> {
    /// A whole header has been seen: check it and learn how much data
    /// follows.
    fn header_done(&mut self) -> io::Result<()> {
        self.have = 0;
        if self.header.iter().all(|b| *b == 0) {
            return Ok(()); // end-of-archive padding
        }
        let kind = self.header[156];
        let size = size(&self.header).ok_or_else(|| refuse("a tar header with a bad size".into()))?;
        let meta = matches!(kind, b'L' | b'K' | b'x' | b'g');
        if meta && size > MAX_META {
            return Err(refuse(format!(
                "a tar metadata entry of {size} bytes (the limit is {MAX_META})"
            )));
        }
        // Old GNU sparse headers can be followed by extension blocks that
        // the size does not count; this reader would lose its place.
        if kind == b'S' && self.header[482] != 0 {
            return Err(refuse("extended GNU sparse entries are not supported".into()));
        }
        self.data_left = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        Ok(())
    }
}

impl<R: Read> Read for MetaCap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut i = 0;
        while i < n {
            if self.data_left > 0 {
                let skip = usize::try_from(self.data_left).unwrap_or(usize::MAX).min(n - i);
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
}
