//! Signals to the supervisor arrive as bytes on a pipe its poll loop watches: a
//! signal-hook iterator thread writes each signal number there.

use signal_hook::consts::*;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

/// Handled: TERM/HUP stop the engine, INT interrupts a running request, the rest are
/// forwarded to the worker (test_cluster sends SIGUSR1 to the engine's pid).
pub const HANDLED: &[i32] = &[SIGTERM, SIGHUP, SIGINT, SIGUSR1, SIGUSR2, SIGQUIT, SIGWINCH];
/// With Python in this process (`--in-process`), INT and USR1/USR2 are Python's.
pub const HANDLED_IN_PROCESS: &[i32] = &[SIGTERM, SIGHUP, SIGQUIT];

pub struct SignalPipe {
    rx: UnixStream,
}

impl SignalPipe {
    pub fn install(forward: bool) -> std::io::Result<SignalPipe> {
        let (rx, mut tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        let mut signals = signal_hook::iterator::Signals::new(if forward { HANDLED } else { HANDLED_IN_PROCESS })?;
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            for sig in signals.forever() {
                let _ = tx.write_all(&[sig as u8]);
            }
        })?;
        Ok(SignalPipe { rx })
    }

    pub fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    pub fn drain(&mut self) -> Vec<i32> {
        let mut out = Vec::new();
        let mut b = [0u8; 64];
        while let Ok(n) = self.rx.read(&mut b) {
            if n == 0 {
                break;
            }
            out.extend(b[..n].iter().map(|s| *s as i32));
        }
        out
    }
}

pub fn by_name(name: &str) -> Option<i32> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    Some(match n {
        "INT" => SIGINT,
        "TERM" => SIGTERM,
        "KILL" => SIGKILL,
        "HUP" => SIGHUP,
        "QUIT" => SIGQUIT,
        "USR1" => SIGUSR1,
        "USR2" => SIGUSR2,
        "ABRT" => SIGABRT,
        "SEGV" => SIGSEGV,
        "BUS" => SIGBUS,
        "STOP" => SIGSTOP,
        "CONT" => SIGCONT,
        "ALRM" => SIGALRM,
        "WINCH" => SIGWINCH,
        _ => return n.parse().ok(),
    })
}

pub fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGKILL => "SIGKILL",
        SIGHUP => "SIGHUP",
        SIGQUIT => "SIGQUIT",
        SIGUSR1 => "SIGUSR1",
        SIGUSR2 => "SIGUSR2",
        SIGABRT => "SIGABRT",
        SIGSEGV => "SIGSEGV",
        SIGBUS => "SIGBUS",
        SIGFPE => "SIGFPE",
        SIGILL => "SIGILL",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_and_numbers() {
        assert_eq!(super::by_name("SIGINT"), Some(libc::SIGINT));
        assert_eq!(super::by_name("usr1"), Some(libc::SIGUSR1));
        assert_eq!(super::by_name("10"), Some(10));
        assert_eq!(super::by_name("nope"), None);
        assert_eq!(super::name(libc::SIGSEGV), "SIGSEGV");
    }
}
