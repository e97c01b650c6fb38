//! The attach stream between a container's monitor and a client (`vm
//! run`, `vm attach`, `vm start -a`): frames of a kind byte, a 4-byte
//! big-endian length and a payload, both ways on one Unix stream.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// No frame is larger; a reader refuses a longer one.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Why a container could not run, as the monitor reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// The exit status for the caller: 125, or 126/127 from the agent.
    pub code: i32,
    pub kind: String,
    pub message: String,
    #[serde(default)]
    pub console: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    // Monitor to client.
    /// The monitor holds the container (its first frame).
    Ready,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The container's process runs.
    Started,
    /// The process ended with this status; nothing follows.
    Exit(i32),
    /// The container could not run (JSON [`Failure`]); nothing follows.
    Failed(Vec<u8>),
    // Client to monitor.
    Stdin(Vec<u8>),
    StdinEof,
    Signal(i32),
    Resize {
        rows: u16,
        cols: u16,
    },
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Ready => 6,
            Frame::Stdout(_) => 1,
            Frame::Stderr(_) => 2,
            Frame::Started => 3,
            Frame::Exit(_) => 4,
            Frame::Failed(_) => 5,
            Frame::Stdin(_) => 10,
            Frame::StdinEof => 11,
            Frame::Signal(_) => 12,
            Frame::Resize { .. } => 13,
        }
    }

    pub fn failed(f: &Failure) -> Self {
        Frame::Failed(serde_json::to_vec(f).unwrap_or_default())
    }
}

pub fn write_frame(w: &mut impl Write, f: &Frame) -> io::Result<()> {
    let payload: Vec<u8> = match f {
        Frame::Stdout(d) | Frame::Stderr(d) | Frame::Stdin(d) | Frame::Failed(d) => d.clone(),
        Frame::Ready | Frame::Started | Frame::StdinEof => Vec::new(),
        Frame::Exit(c) | Frame::Signal(c) => c.to_be_bytes().to_vec(),
        Frame::Resize { rows, cols } => [rows.to_be_bytes(), cols.to_be_bytes()].concat(),
    };
    for chunk in payload.chunks(MAX_PAYLOAD).chain(
        // An empty payload is still one frame.
        payload.is_empty().then_some(&[][..]),
    ) {
        let mut buf = Vec::with_capacity(5 + chunk.len());
        buf.push(f.kind());
        buf.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        buf.extend_from_slice(chunk);
        w.write_all(&buf)?;
    }
    Ok(())
}

/// The next frame, or `None` at a clean end of the stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..])?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::other(format!(
            "attach frame of {len} bytes is over the limit"
        )));
    }
    let mut p = vec![0u8; len];
    r.read_exact(&mut p)?;
    let int = |p: &[u8]| -> io::Result<i32> {
        p.try_into()
            .map(i32::from_be_bytes)
            .map_err(|_| io::Error::other("short attach frame"))
    };
    Ok(Some(match head[0] {
        1 => Frame::Stdout(p),
        2 => Frame::Stderr(p),
        3 => Frame::Started,
        4 => Frame::Exit(int(&p)?),
        5 => Frame::Failed(p),
        6 => Frame::Ready,
        10 => Frame::Stdin(p),
        11 => Frame::StdinEof,
        12 => Frame::Signal(int(&p)?),
        13 if p.len() == 4 => Frame::Resize {
            rows: u16::from_be_bytes([p[0], p[1]]),
            cols: u16::from_be_bytes([p[2], p[3]]),
        },
        k => return Err(io::Error::other(format!("unknown attach frame kind {k}"))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let frames = [
            Frame::Stdout(b"hi\n".to_vec()),
            Frame::Stderr(Vec::new()),
            Frame::Started,
            Frame::Ready,
            Frame::Exit(137),
            Frame::Stdin(b"x".to_vec()),
            Frame::StdinEof,
            Frame::Signal(15),
            Frame::Resize {
                rows: 40,
                cols: 100,
            },
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).expect("write");
        }
        let mut r = &buf[..];
        for f in &frames {
            assert_eq!(read_frame(&mut r).expect("read").as_ref(), Some(f));
        }
        assert_eq!(read_frame(&mut r).expect("end"), None);
        let mut bad: &[u8] = &[1, 0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut bad).is_err());
        let mut unknown: &[u8] = &[99, 0, 0, 0, 0];
        assert!(read_frame(&mut unknown).is_err());
    }
}
