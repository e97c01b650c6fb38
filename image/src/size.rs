//! An image's unpacked size, as Docker reports it: per layer, the sizes
//! of everything but directories (a symbolic link counts its target's
//! length; a hard link counts once), summed over the layers. Only the
//! layers' tar headers are read, through their decompression; a layer
//! that decompresses past [`MAX_SCANNED`] (more than any run would
//! unpack) leaves the size unknown rather than keep a command busy.

use std::io::Read;

use crate::{Error, Image, LayerBlob, Result};

/// The most decompressed bytes read for one image's size.
pub const MAX_SCANNED: u64 = 64 << 30;

/// The unpacked size of `image`, or None when its layers hold more than
/// [`MAX_SCANNED`] bytes uncompressed.
pub fn unpacked(image: &Image) -> Result<Option<u64>> {
    let mut left = MAX_SCANNED;
    let mut total = 0u64;
    for layer in &image.layers {
        let mut capped = layer.uncompressed()?.take(left);
        let mut counted = 0u64;
        {
            let mut archive = tar::Archive::new(&mut capped);
            let entries = archive.entries().map_err(|e| corrupt(layer, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| corrupt(layer, e))?;
                let header = entry.header();
                counted += match header.entry_type() {
                    tar::EntryType::Directory | tar::EntryType::Link => 0,
                    tar::EntryType::Symlink => {
                        header.link_name_bytes().map_or(0, |l| l.len() as u64)
                    }
                    _ => header.size().map_err(|e| corrupt(layer, e))?,
                };
            }
        }
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

impl LayerBlob {
    /// The layer's tar, decompressed.
    pub fn uncompressed(&self) -> Result<Box<dyn Read>> {
        let src = self.source.reader()?;
        Ok(match self.compression {
            crate::Compression::None => Box::new(src),
            crate::Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(src)),
            crate::Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(src).map_err(|e| self.source.io(e))?,
            ),
        })
    }
}
