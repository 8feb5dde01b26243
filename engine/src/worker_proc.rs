//! The supervisor's handle on its worker process: spawning it with the link on fd 3, the
//! lifeline on fd 4 and pipes on fds 1 and 2; non-blocking reads and writes from the
//! supervisor's loop; signals; reaping.
#![allow(unsafe_code)] // fd plumbing between fork and exec, fcntl, kill

use crate::ipc;
use serde_json::json;
use std::io::{PipeReader, PipeWriter, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Everything a worker is started with.
#[derive(Clone, Debug, Default)]
pub struct WorkerSpec {
    pub exe: PathBuf,
    pub python: String,
    pub engine_id: i64,
    pub uuid: String,
    pub pack: String,
    pub unpack: String,
    pub key: String,
    pub signature_scheme: String,
    pub registration_url: String,
    /// The controller's CURVE key, for the orphaned worker's unregistration.
    pub curve_serverkey: Option<String>,
    pub username: String,
    pub profile_dir: String,
    pub shell_config: Vec<(String, String)>,
    pub startup_command: Vec<String>,
    pub startup_script: Vec<String>,
    /// Restarts so far (restart-on-crash).
    pub restarts: u32,
}

impl WorkerSpec {
    fn init_conf(&self) -> serde_json::Value {
        json!({
            "python": self.python,
            "engine_id": self.engine_id,
            "uuid": self.uuid,
            "pack": self.pack,
            "unpack": self.unpack,
            "key": self.key,
            "signature_scheme": self.signature_scheme,
            "registration_url": self.registration_url,
            "curve_serverkey": self.curve_serverkey,
            "username": self.username,
            "profile_dir": self.profile_dir,
            "shell_config": self.shell_config,
            // A restarted worker does not re-run --c/--s? It does: ipengine's startup
            // code is what makes a fresh namespace usable.
            "startup_command": self.startup_command,
            "startup_script": self.startup_script,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

pub struct WorkerProc {
    /// None in `--in-process` mode: Python runs on this process's main thread.
    child: Option<Child>,
    pub pid: u32,
    link: UnixStream,
    reader: ipc::Reader,
    pub writer: ipc::Writer,
    out: [PipeReader; 2],
    _lifeline: Option<PipeWriter>,
    pub ready: bool,
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd this process owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl WorkerProc {
    pub fn spawn(spec: &WorkerSpec) -> std::io::Result<WorkerProc> {
        let (link, child_link) = UnixStream::pair()?;
        let (life_r, life_w) = std::io::pipe()?;
        let (out_r, out_w) = std::io::pipe()?;
        let (err_r, err_w) = std::io::pipe()?;
        let link_fd = child_link.as_raw_fd();
        let life_fd = life_r.as_raw_fd();
        let mut cmd = Command::new(&spec.exe);
        cmd.arg("--ippx-worker").stdin(Stdio::null()).stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
        // SAFETY: only async-signal-safe calls (dup2, setpgid is not used) between fork
        // and exec. dup2 clears close-on-exec on the targets.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(link_fd, crate::worker::LINK_FD) < 0 || libc::dup2(life_fd, crate::worker::LIFELINE_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(child_link);
        drop(life_r);
        let pid = child.id();
        link.set_nonblocking(true)?;
        set_nonblocking(out_r.as_raw_fd())?;
        set_nonblocking(err_r.as_raw_fd())?;
        let mut w = WorkerProc {
            child: Some(child),
            pid,
            link,
            reader: ipc::Reader::default(),
            writer: ipc::Writer::default(),
            out: [out_r, err_r],
            _lifeline: Some(life_w),
            ready: false,
        };
        let conf = serde_json::to_vec(&spec.init_conf()).map_err(std::io::Error::other)?;
        w.writer.push(&[b"init".as_slice(), &conf]);
        tracing::info!("started Python worker {pid} ({})", spec.python);
        Ok(w)
    }

    /// `--in-process`: the worker is this process's main thread, already serving `link`'s
    /// other end; `out` are the read ends of the pipes now on fds 1 and 2.
    pub fn in_process(spec: &WorkerSpec, link: UnixStream, out: [PipeReader; 2]) -> std::io::Result<WorkerProc> {
        link.set_nonblocking(true)?;
        for r in &out {
            set_nonblocking(r.as_raw_fd())?;
        }
        let mut w = WorkerProc {
            child: None,
            pid: std::process::id(),
            link,
            reader: ipc::Reader::default(),
            writer: ipc::Writer::default(),
            out,
            _lifeline: None,
            ready: false,
        };
        let conf = serde_json::to_vec(&spec.init_conf()).map_err(std::io::Error::other)?;
        w.writer.push(&[b"init".as_slice(), &conf]);
        Ok(w)
    }

    pub fn is_in_process(&self) -> bool {
        self.child.is_none()
    }

    /// (link, wants write), stdout, stderr: for the supervisor's poll.
    pub fn poll_fds(&self) -> [(RawFd, bool); 3] {
        [(self.link.as_raw_fd(), self.writer.pending()), (self.out[0].as_raw_fd(), false), (self.out[1].as_raw_fd(), false)]
    }

    pub fn flush_writes(&mut self) -> std::io::Result<()> {
        self.writer.flush(&mut self.link)
    }

    /// Complete messages from the worker, and its exit if the link closed.
    pub fn read_link(&mut self) -> (Vec<ipc::Parts>, Option<Exit>) {
        let open = match self.reader.fill(&mut self.link) {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!("link to the worker failed: {e}");
                false
            }
        };
        let mut msgs = Vec::new();
        loop {
            match self.reader.next_message() {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("corrupt message from the worker: {e}; stopping it");
                    self.signal(libc::SIGKILL);
                    break;
                }
            }
        }
        let exit = if open { None } else { Some(self.reap()) };
        (msgs, exit)
    }

    /// What is waiting on the worker's stdout and stderr.
    pub fn read_output(&mut self) -> [Vec<u8>; 2] {
        let mut got = [Vec::new(), Vec::new()];
        let mut buf = [0u8; 64 * 1024];
        for (i, r) in self.out.iter_mut().enumerate() {
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got[i].extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        got
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid (reaped only by us), or in-process on
        // ourselves: every thread but Python's main thread blocks the signals Python
        // handles, so the kernel delivers them to that thread and interrupts its sleep.
        let r = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        if r != 0 {
            tracing::warn!("signal {sig} to worker {}: {}", self.pid, std::io::Error::last_os_error());
        }
    }

    fn reap(&mut self) -> Exit {
        let Some(child) = self.child.as_mut() else {
            // In-process: Python's main loop returned; nothing to wait for.
            return Exit::Code(1);
        };
        // The link closes as the worker dies; the exit status follows at once.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    return match (st.code(), st.signal()) {
                        (Some(c), _) => Exit::Code(c),
                        (None, Some(s)) => Exit::Signal(s),
                        _ => Exit::Code(1),
                    }
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    // Closed its link but lives on: it is of no use any more.
                    // SAFETY: kill(2) on our own child.
                    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
                    let _ = child.wait();
                    return Exit::Signal(libc::SIGKILL);
                }
                Err(_) => return Exit::Code(1),
            }
        }
    }

    /// Stops the worker: SIGTERM, then SIGKILL after a second.
    pub fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `--in-process` plumbing: fds 1 and 2 become pipes the supervisor reads (Python, C code
/// and subprocesses print there, as from a worker process), and the log goes to a copy of
/// the original stderr. Returns (supervisor's link end, worker's link end, pipe read
/// ends, log file).
pub fn in_process_stdio() -> std::io::Result<(UnixStream, UnixStream, [PipeReader; 2], std::fs::File)> {
    use std::os::fd::FromRawFd;
    // SAFETY: dup of our own stderr; the new fd is owned by the returned File.
    let log_fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 10) };
    if log_fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let log = unsafe { std::fs::File::from_raw_fd(log_fd) };
    let (out_r, out_w) = std::io::pipe()?;
    let (err_r, err_w) = std::io::pipe()?;
    // SAFETY: dup2 onto this process's stdout/stderr; the pipe write ends are then closed
    // (fds 1 and 2 keep the pipes open).
    unsafe {
        if libc::dup2(out_w.as_raw_fd(), 1) < 0 || libc::dup2(err_w.as_raw_fd(), 2) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    drop(out_w);
    drop(err_w);
    let (sup, worker) = UnixStream::pair()?;
    Ok((sup, worker, [out_r, err_r], log))
}

/// Blocks (or unblocks) the signals Python handles in the calling thread; threads it
/// starts afterwards inherit the mask. In `--in-process` mode every thread but Python's
/// blocks them, so a process-directed SIGINT interrupts Python's `time.sleep`.
pub fn mask_python_signals(block: bool) {
    // SAFETY: sigset manipulation on a local set and pthread_sigmask for this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGALRM, libc::SIGWINCH] {
            libc::sigaddset(&mut set, s);
        }
        let how = if block { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}
