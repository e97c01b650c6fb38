//! sha256 digests and checking blobs against them.

use std::fmt;
use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::{BlobSource, Error, Result};

/// A `sha256:<64 hex>` digest; the only algorithm images use in practice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    hex: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Invalid {
            what: format!("digest {s:?}"),
            detail: why.to_string(),
        };
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("only sha256 digests are supported"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("expected 64 lower-case hex digits after sha256:"));
        }
        Ok(Self {
            hex: hex.to_string(),
        })
    }

    pub fn of_bytes(data: &[u8]) -> Self {
        Self {
            hex: hex(&Sha256::digest(data)),
        }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a blob whole, checking its size and digest: for manifests and
/// configs, which are small (`limit` caps them).
pub fn read_verified(
    src: &BlobSource,
    what: &'static str,
    digest: &Digest,
    size: u64,
    limit: u64,
) -> Result<Vec<u8>> {
    if size > limit {
        return Err(Error::Invalid {
            what: format!("{what} {digest}"),
            detail: format!("{size} bytes is more than the {limit}-byte limit"),
        });
    }
    check_size(src, what, digest, size)?;
    let data = src.read_small()?;
    check_bytes(what, digest, &data)?;
    Ok(data)
}

/// Streams a blob through sha256 and compares size and digest.
pub fn verify(src: &BlobSource, what: &'static str, digest: &Digest, size: u64) -> Result<()> {
    check_size(src, what, digest, size)?;
    let (got, _) =
        copy_hashing(&mut src.reader()?, &mut io::sink(), u64::MAX).map_err(|e| src.io(e))?;
    if &got != digest {
        return Err(mismatch(what, digest, &got));
    }
    Ok(())
}

/// `data` must have the digest `want`.
pub(crate) fn check_bytes(what: &'static str, want: &Digest, data: &[u8]) -> Result<()> {
    let got = Digest::of_bytes(data);
    if &got != want {
        return Err(mismatch(what, want, &got));
    }
    Ok(())
}

/// Copies `src` to `dst` until end of file, through sha256; returns the
/// digest and the byte count. It stops once more than `limit` bytes have
/// come (the count then says so).
pub(crate) fn copy_hashing(
    src: &mut dyn Read,
    dst: &mut dyn Write,
    limit: u64,
) -> io::Result<(Digest, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    while total <= limit {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((
        Digest {
            hex: hex(&h.finalize()),
        },
        total,
    ))
}

pub(crate) fn check_size(
    src: &BlobSource,
    what: &'static str,
    digest: &Digest,
    size: u64,
) -> Result<()> {
    if src.size != size {
        return Err(Error::DigestMismatch {
            what,
            expected: digest.to_string(),
            detail: format!(
                "the descriptor says {size} bytes, the blob has {}",
                src.size
            ),
        });
    }
    Ok(())
}

fn mismatch(what: &'static str, want: &Digest, got: &Digest) -> Error {
    Error::DigestMismatch {
        what,
        expected: want.to_string(),
        detail: format!("its sha256 is {got}"),
    }
}
