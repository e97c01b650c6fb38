//! An image's unpacked size, as Docker reports it: per layer, the sizes
//! of everything but directories (a symbolic link counts its target's
//! length; a hard link counts once), summed over the layers.
//!
//! Only the layers' tar headers are read, through their decompression,
//! by a reader of our own that never holds more than one 512-byte block
//! and one small PAX record at a time (a general tar reader buffers
//! whole long-name and PAX entries, which a hostile layer can make
//! gigabytes long). A layer that decompresses past [`MAX_SCANNED`] in
//! all leaves the size unknown rather than keep a command busy.

use std::io::Read;

use crate::{Error, Image, LayerBlob, Result};

/// The most decompressed bytes read for one image's size.
pub const MAX_SCANNED: u64 = 16 << 30;
/// The largest PAX record set read for its `size` and `linkpath`.
const MAX_PAX: u64 = 64 << 10;
const BLOCK: usize = 512;

/// The unpacked size of `image`, or None when its layers hold more than
/// [`MAX_SCANNED`] bytes uncompressed.
pub fn unpacked(image: &Image) -> Result<Option<u64>> {
    let mut left = MAX_SCANNED;
    let mut total = 0u64;
    for layer in &image.layers {
        let mut capped = layer.uncompressed()?.take(left);
        let counted = count(&mut capped).map_err(|e| corrupt(layer, e))?;
        // Read to the end of the stream, so that what a layer hides after
        // its tar's end counts against the cap too.
        std::io::copy(&mut capped, &mut std::io::sink()).map_err(|e| corrupt(layer, e))?;
        if capped.limit() == 0 {
            return Ok(None);
        }
        left = capped.limit();
        total = total.saturating_add(counted);
    }
    Ok(Some(total))
}

fn corrupt(layer: &LayerBlob, e: std::io::Error) -> Error {
    Error::Invalid {
        what: format!("layer {}", layer.digest),
        detail: format!("not a readable tar: {e}"),
    }
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// A header's numeric field: octal text, or base-256 (GNU) when its
/// first byte has the high bit set.
fn number(field: &[u8]) -> std::io::Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(*b)))
                .ok_or_else(|| bad("a size beyond 64 bits"))?;
        }
        return Ok(n);
    }
    let text = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b));
    let mut n = 0u64;
    for b in text {
        n = n
            .checked_mul(8)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| bad("a size beyond 64 bits"))?;
    }
    Ok(n)
}

/// Skips `size` bytes of entry data and their padding.
fn skip(r: &mut impl Read, size: u64) -> std::io::Result<()> {
    let padded = size
        .checked_next_multiple_of(BLOCK as u64)
        .ok_or_else(|| bad("an entry too large"))?;
    let skipped = std::io::copy(&mut r.take(padded), &mut std::io::sink())?;
    if skipped != padded {
        return Err(bad("the archive ends inside an entry"));
    }
    Ok(())
}

/// The `size` and `linkpath` a PAX record set gives, if any.
fn pax(records: &[u8]) -> (Option<u64>, Option<u64>) {
    let (mut size, mut link) = (None, None);
    for record in records.split(|b| *b == b'\n') {
        // "LEN key=value": the key and value after the first space.
        let Some(space) = record.iter().position(|b| *b == b' ') else {
            continue;
        };
        let kv = &record[space + 1..];
        if let Some(v) = kv.strip_prefix(b"size=") {
            size = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
        } else if let Some(v) = kv.strip_prefix(b"linkpath=") {
            link = Some(v.len() as u64);
        }
    }
    (size, link)
}

/// What one layer's entries add up to.
fn count(r: &mut impl Read) -> std::io::Result<u64> {
    let mut total = 0u64;
    // What a PAX or GNU long-link entry says of the entry after it.
    let mut next_size: Option<u64> = None;
    let mut next_link: Option<u64> = None;
    let mut header = [0u8; BLOCK];
    loop {
        match r.read_exact(&mut header) {
            Ok(()) => {}
            // No end blocks: as tar readers do, take the end of the data.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(total),
            Err(e) => return Err(e),
        }
        if header.iter().all(|b| *b == 0) {
            return Ok(total);
        }
        let mut size = number(&header[124..136])?;
        let kind = header[156];
        match kind {
            // GNU long link name: its length is the next link's.
            b'K' => {
                next_link = Some(size.saturating_sub(1));
                skip(r, size)?;
                continue;
            }
            // PAX records for the next entry (read when small).
            b'x' if size <= MAX_PAX => {
                let mut records = Vec::new();
                r.take(size).read_to_end(&mut records)?;
                if records.len() as u64 != size {
                    return Err(bad("the archive ends inside an entry"));
                }
                let pad = size.next_multiple_of(BLOCK as u64) - size;
                if std::io::copy(&mut r.take(pad), &mut std::io::sink())? != pad {
                    return Err(bad("the archive ends inside an entry"));
                }
                let (s, l) = pax(&records);
                next_size = s.or(next_size);
                next_link = l.or(next_link);
                continue;
            }
            // GNU long names, global and oversized PAX records, others.
            b'L' | b'x' | b'g' | b'N' | b'V' => {
                skip(r, size)?;
                continue;
            }
            _ => {}
        }
        if let Some(s) = next_size.take() {
            size = s;
        }
        let link = next_link.take();
        total = total.saturating_add(match kind {
            b'0' | 0 | b'7' => size,
            b'2' => link
                .unwrap_or_else(|| header[157..257].iter().take_while(|b| **b != 0).count() as u64),
            _ => 0,
        });
        // Whatever the kind, `size` bytes follow, as tar readers take it.
        skip(r, size)?;
    }
}

impl LayerBlob {
    /// The layer's tar, decompressed.
    pub fn uncompressed(&self) -> Result<Box<dyn Read>> {
        let src = self.source.reader()?;
        Ok(match self.compression {
            crate::Compression::None => Box::new(src),
            crate::Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(src)),
            crate::Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(src).map_err(|e| self.source.io(e))?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        name: &str,
        data: &[u8],
        link: &str,
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if !link.is_empty() {
            b.append_link(&mut h, name, link).expect("link");
        } else {
            b.append_data(&mut h, name, data).expect("entry");
        }
    }

    #[test]
    fn counts_as_docker_does() {
        let mut b = tar::Builder::new(Vec::new());
        entry(&mut b, tar::EntryType::Directory, "d/", b"", "");
        entry(&mut b, tar::EntryType::Regular, "d/a", &[1u8; 1000], "");
        entry(&mut b, tar::EntryType::Link, "d/hard", b"", "d/a");
        entry(&mut b, tar::EntryType::Symlink, "d/s", b"", "a");
        // A long name and a long link target (GNU extension entries).
        let long = "x".repeat(300);
        entry(
            &mut b,
            tar::EntryType::Regular,
            &format!("d/{long}"),
            &[2u8; 10],
            "",
        );
        entry(&mut b, tar::EntryType::Symlink, "d/ls", b"", &long);
        let data = b.into_inner().expect("tar");
        assert_eq!(
            count(&mut data.as_slice()).expect("count"),
            1000 + 1 + 10 + 300
        );
        // Truncated inside an entry: an error, not a guess.
        assert!(count(&mut &data[..1024]).is_err());
    }

    #[test]
    fn pax_entries_keep_their_place() {
        // PAX records (a long name, and a made-up key) before a file, as
        // umoci and Go's archive/tar write them, then a second file.
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("{}/f", "p".repeat(200));
        b.append_pax_extensions([("path", long.as_bytes()), ("vm.test", &b"x"[..])])
            .expect("pax");
        entry(&mut b, tar::EntryType::Regular, "short", &[3u8; 700], "");
        entry(&mut b, tar::EntryType::Regular, "next", &[4u8; 5], "");
        let data = b.into_inner().expect("tar");
        assert_eq!(count(&mut data.as_slice()).expect("count"), 705);
    }

    #[test]
    fn a_huge_long_name_is_skipped_not_held() {
        // A GNU long-name header claiming 1 TiB, then nothing: an error
        // after reading what is there, with no allocation of its size.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(1 << 40);
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.extend(std::iter::repeat_n(b'x', 4096));
        assert!(count(&mut data.as_slice()).is_err());
    }

    #[test]
    fn pax_sizes_and_links() {
        let records = b"20 size=123456789\n16 linkpath=abc\n";
        assert_eq!(pax(records), (Some(123456789), Some(3)));
        assert_eq!(number(b"0000644\0").expect("octal"), 0o644);
        let mut base256 = [0u8; 12];
        base256[0] = 0x80;
        base256[11] = 5;
        assert_eq!(number(&base256).expect("base-256"), 5);
    }
}
