//! Reading a blob from where it sits (a file, or a range of an archive).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Take};

use crate::media::MAX_JSON;
use crate::{BlobSource, Error, Result};

impl BlobSource {
    /// A reader over exactly this blob's bytes.
    pub fn reader(&self) -> Result<Take<File>> {
        let mut f = File::open(&self.path).map_err(|e| self.io(e))?;
        f.seek(SeekFrom::Start(self.offset))
            .map_err(|e| self.io(e))?;
        Ok(f.take(self.size))
    }

    /// The whole blob, for small JSON documents (capped at [`MAX_JSON`]).
    pub fn read_small(&self) -> Result<Vec<u8>> {
        if self.size > MAX_JSON {
            return Err(Error::Invalid {
                what: self.path.display().to_string(),
                detail: format!("{} bytes is more than the {MAX_JSON}-byte limit", self.size),
            });
        }
        let mut data = Vec::with_capacity(self.size as usize);
        self.reader()?
            .read_to_end(&mut data)
            .map_err(|e| self.io(e))?;
        Ok(data)
    }

    /// Up to `buf.len()` bytes from the start of the blob.
    pub fn head(&self, buf: &mut [u8]) -> Result<usize> {
        let mut r = self.reader()?;
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]).map_err(|e| self.io(e))? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }

    pub(crate) fn io(&self, source: std::io::Error) -> Error {
        Error::Read {
            path: self.path.clone(),
            source,
        }
    }
}
