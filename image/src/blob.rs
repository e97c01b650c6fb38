//! Reading a blob from where it sits (a file, or a range of an archive).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Take};

use crate::media::MAX_JSON;
use crate::{BlobSource, Error, Result};

impl BlobSource {
    /// A reader over exactly this blob's bytes. The file must be a
    /// regular file when it is opened, not only when it was looked up: a
    /// FIFO put in its place (by whoever can write an `oci:` directory)
    /// would otherwise hold the open for ever.
    pub fn reader(&self) -> Result<Take<File>> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        let regular = f.metadata().map_err(|e| self.io(e))?.is_file();
        if !regular {
            return Err(self.io(std::io::Error::other("not a regular file")));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_in_place_of_a_blob_is_refused_not_waited_on() {
        let dir = std::env::temp_dir().join(format!("vm-blob-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("blob");
        let c = std::ffi::CString::new(path.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let src = BlobSource {
            path: path.clone(),
            offset: 0,
            size: 0,
        };
        let err = src
            .reader()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not a regular file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
