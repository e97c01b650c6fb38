//! A container's log in Docker's json-file format: one JSON object a line,
//! `{"log":"...\n","stream":"stdout","time":"RFC 3339 nanoseconds"}`,
//! rotated by size (`<log>.1` is the previous file, and so on).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::container::LogOptions;

/// A line longer than this is written in pieces, as Docker does at 16 KiB.
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub log: String,
    pub stream: Stream,
    pub time: String,
}

/// Appends entries, rotating when a file reaches `max_size`.
pub struct Writer {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    opts: LogOptions,
    /// Bytes of an unfinished line, per stream.
    partial: [Vec<u8>; 2],
}

impl Writer {
    pub fn open(path: &Path, opts: LogOptions) -> std::io::Result<Self> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(file),
            size,
            opts,
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Takes output as it comes; whole lines are written at once.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) {
        let i = stream as usize;
        while !data.is_empty() {
            let take = match data.iter().position(|&b| b == b'\n') {
                Some(n) => n + 1,
                None => data.len(),
            };
            self.partial[i].extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial[i].ends_with(b"\n") || self.partial[i].len() >= MAX_LINE {
                let line = std::mem::take(&mut self.partial[i]);
                self.entry(stream, &line);
            }
        }
    }

    /// Writes what is left of unfinished lines (at the end of a stream).
    pub fn flush_partial(&mut self, stream: Stream) {
        let line = std::mem::take(&mut self.partial[stream as usize]);
        if !line.is_empty() {
            self.entry(stream, &line);
        }
    }

    fn entry(&mut self, stream: Stream, line: &[u8]) {
        let e = Entry {
            log: String::from_utf8_lossy(line).into_owned(),
            stream,
            time: crate::container::now_rfc3339(),
        };
        let Ok(mut text) = serde_json::to_vec(&e) else {
            return;
        };
        text.push(b'\n');
        if self.size > 0 && self.size + text.len() as u64 > self.opts.max_size {
            self.rotate();
        }
        if let Some(f) = &mut self.file {
            // A full disk loses log lines, never the container.
            if f.write_all(&text).is_ok() {
                self.size += text.len() as u64;
            }
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let max = self.opts.max_files.max(1);
        if max == 1 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(numbered(&self.path, max - 1));
            for n in (1..max - 1).rev() {
                let _ = std::fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1));
            }
            let _ = std::fs::rename(&self.path, numbered(&self.path, 1));
        }
        self.file = open_append(&self.path).ok();
        self.size = 0;
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The log's files, oldest first.
pub fn files(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for n in (1..100).rev() {
        let p = numbered(path, n);
        if p.exists() {
            out.push(p);
        }
    }
    if path.exists() {
        out.push(path.to_path_buf());
    }
    out
}

/// Every entry of the log, oldest first (lines that do not parse are
/// skipped).
pub fn read_all(path: &Path) -> Vec<Entry> {
    read_all_open(path).0
}

/// [`read_all`], and the current file (`path`) still open with the bytes
/// of it read: following it from there misses nothing written meanwhile.
pub fn read_all_open(path: &Path) -> (Vec<Entry>, Option<(File, u64)>) {
    let mut out = Vec::new();
    let mut current = None;
    for f in files(path) {
        if let Ok(file) = File::open(&f) {
            let used = read_entries(BufReader::new(&file), &mut out);
            if f == path {
                current = Some((file, used));
            }
        }
    }
    (out, current)
}

/// Reads the entries a reader holds up to its end; returns the bytes
/// consumed (a last line without its newline is left for later).
pub fn read_entries(mut r: impl BufRead, out: &mut Vec<Entry>) -> u64 {
    let mut used = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) if line.ends_with(b"\n") => {
                used += n as u64;
                if let Ok(e) = serde_json::from_slice::<Entry>(&line) {
                    out.push(e);
                }
            }
            Ok(_) => break,
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_rotation_and_reading() {
        let dir = std::env::temp_dir().join(format!("vm-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c-json.log");
        let mut w = Writer::open(
            &path,
            LogOptions {
                max_size: 300,
                max_files: 2,
            },
        )
        .expect("open");
        w.write(Stream::Stdout, b"one\ntw");
        w.write(Stream::Stderr, b"err\n");
        w.write(Stream::Stdout, b"o\n");
        let e = read_all(&path);
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].log.as_str(), e[0].stream), ("one\n", Stream::Stdout));
        assert_eq!((e[1].log.as_str(), e[1].stream), ("err\n", Stream::Stderr));
        assert_eq!(e[2].log, "two\n");
        for i in 0..20 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes());
        }
        w.write(Stream::Stdout, b"no newline");
        w.flush_partial(Stream::Stdout);
        assert!(numbered(&path, 1).exists());
        assert!(
            !numbered(&path, 2).exists(),
            "max-file 2 keeps one old file"
        );
        let total: u64 = files(&path)
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(total <= 600, "{total} bytes kept");
        let e = read_all(&path);
        assert_eq!(e.last().map(|e| e.log.as_str()), Some("no newline"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
