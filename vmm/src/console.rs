//! The guest's serial console on the host: output is passed through to a
//! writer (stdout) and watched line by line for the kernel's last words.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;

use crate::exit::{ExitReason, ExitSignal};

const MAX_LINE: usize = 1024;
const KEEP_LINES: usize = 40;

/// What a line of kernel output tells about the guest's state.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Panic(String),
    PowerOff,
}

/// Recognise the kernel's panic and power-off messages in one console line.
/// Userspace output can interleave with the kernel's, byte by byte, so the
/// panic line is also recognised by its first words alone, and by the
/// "Kernel Offset:" line that x86 prints on every panic.
pub fn classify(line: &str) -> Option<Verdict> {
    if let Some(i) = line.find("Kernel panic") {
        return Some(Verdict::Panic(line[i..].trim_end().to_string()));
    }
    if line.starts_with("Kernel Offset:") {
        return Some(Verdict::Panic(
            "Kernel panic (message garbled on the console)".into(),
        ));
    }
    if line.contains("reboot: Power down") || line.contains("reboot: System halted") {
        return Some(Verdict::PowerOff);
    }
    None
}

pub struct ConsoleOut<W: Write> {
    out: W,
    pending: Vec<u8>,
    line: Vec<u8>,
    recent: VecDeque<String>,
    exit: Arc<ExitSignal>,
    panicked: Option<String>,
}

impl<W: Write> ConsoleOut<W> {
    pub fn new(out: W, exit: Arc<ExitSignal>) -> Self {
        Self {
            out,
            pending: Vec::with_capacity(4096),
            line: Vec::with_capacity(MAX_LINE),
            recent: VecDeque::with_capacity(KEEP_LINES),
            exit,
            panicked: None,
        }
    }

    /// The last lines the guest printed, oldest first.
    pub fn recent_lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self.recent.iter().cloned().collect();
        if !self.line.is_empty() {
            v.push(String::from_utf8_lossy(&self.line).into_owned());
        }
        v
    }

    /// The panic line, once the guest has panicked.
    pub fn panic_message(&self) -> Option<&str> {
        self.panicked.as_deref()
    }

    fn end_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line)
            .trim_end_matches('\r')
            .to_string();
        self.line.clear();
        match classify(&text) {
            Some(Verdict::Panic(msg)) if self.panicked.is_none() => self.panicked = Some(msg),
            Some(Verdict::PowerOff) => self.exit.set(ExitReason::PowerOff),
            _ => {}
        }
        if self.recent.len() == KEEP_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(text);
    }
}

impl<W: Write> Write for ConsoleOut<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.end_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        self.pending.extend_from_slice(buf);
        if buf.contains(&b'\n') || self.pending.len() >= 4096 {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let r = self
            .out
            .write_all(&self.pending)
            .and_then(|_| self.out.flush());
        // Output that cannot be written (a closed pipe) is dropped rather
        // than kept growing.
        self.pending.clear();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_panic_and_poweroff() {
        assert_eq!(
            classify(
                "[    1.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000"
            ),
            Some(Verdict::Panic(
                "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000".into()
            ))
        );
        assert!(matches!(
            classify("test-iniKernel panic - not syncintg: Attempt: ed"),
            Some(Verdict::Panic(m)) if m.starts_with("Kernel panic - not sync")
        ));
        assert!(matches!(
            classify("Kernel Offset: disabled"),
            Some(Verdict::Panic(_))
        ));
        assert_eq!(classify("reboot: Power down"), Some(Verdict::PowerOff));
        assert_eq!(
            classify("[ 0.5] reboot: System halted"),
            Some(Verdict::PowerOff)
        );
        assert_eq!(classify("hello"), None);
    }

    #[test]
    fn passes_output_through_and_remembers_lines() {
        let exit = Arc::new(ExitSignal::new().expect("eventfd"));
        let mut c = ConsoleOut::new(Vec::new(), exit.clone());
        c.write_all(b"one\r\ntwo\nKernel panic - not syncing: boom\npart")
            .expect("write");
        assert_eq!(c.panic_message(), Some("Kernel panic - not syncing: boom"));
        assert_eq!(
            exit.get(),
            None,
            "a panic waits for the reset or the grace period"
        );
        c.flush().expect("flush");
        assert_eq!(c.out, b"one\r\ntwo\nKernel panic - not syncing: boom\npart");
        assert_eq!(
            c.recent_lines(),
            vec!["one", "two", "Kernel panic - not syncing: boom", "part"]
        );
        c.write_all(b"\nreboot: Power down\n").expect("write");
        assert_eq!(exit.get(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn long_lines_are_capped() {
        let exit = Arc::new(ExitSignal::new().expect("eventfd"));
        let mut c = ConsoleOut::new(io::sink(), exit);
        c.write_all(&vec![b'x'; 10 * MAX_LINE]).expect("write");
        assert_eq!(c.recent_lines()[0].len(), MAX_LINE);
    }
}
