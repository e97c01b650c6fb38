//! The host terminal for `vm run -t`: raw mode while the container runs,
//! and its size.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

/// Puts stdin's terminal in raw mode; restores it when dropped, or when
/// `vm` panics meanwhile (panics abort: no destructor would run).
pub struct RawMode {
    saved: Termios,
}

/// The terminal's settings while a `RawMode` holds it, for the panic hook.
static HELD: std::sync::Mutex<Option<Termios>> = std::sync::Mutex::new(None);

fn restore(saved: &Termios) {
    let stdin = std::io::stdin();
    let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, saved);
}

impl RawMode {
    pub fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        let saved = tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if let Some(saved) = HELD.try_lock().ok().and_then(|mut h| h.take()) {
                    restore(&saved);
                }
                previous(info);
            }));
        });
        tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        if let Ok(mut h) = HELD.lock() {
            // (a nested hold keeps the outermost settings)
            h.get_or_insert_with(|| saved.clone());
        }
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore(&self.saved);
        if let Ok(mut h) = HELD.lock() {
            *h = None;
        }
    }
}

/// (rows, cols) of the terminal on stdout (or stdin), if there is one.
pub fn size() -> Option<(u16, u16)> {
    let out = std::io::stdout();
    let inp = std::io::stdin();
    winsize(out.as_fd()).or_else(|| winsize(inp.as_fd()))
}

fn winsize(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCGWINSZ writes one winsize through a valid pointer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

pub fn is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}
