//! The worker process: the same binary, started by the supervisor with
//! `--ippx-worker`, embedding CPython through pyo3.
//!
//! fd 3 is the link to the supervisor ([`crate::ipc`] framing), fd 4 a lifeline pipe
//! whose write end only the supervisor holds, fds 1 and 2 pipes the supervisor reads.
//! Python is initialised through `PyConfig` with `executable` and `program_name` set to
//! the chosen interpreter, so getpath reads the venv's `pyvenv.cfg` (a plain initialise
//! finds the base installation and misses the venv's site-packages), and with Python's
//! signal handlers installed, so a real SIGINT interrupts `time.sleep` in user code.
#![allow(unsafe_code)] // the CPython embedding API and fd plumbing are FFI

use crate::ipc;
use ippx_protocol::{Parent, Session, SessionConfig, Value};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};

pub const LINK_FD: i32 = 3;
pub const LIFELINE_FD: i32 = 4;
const WORKER_PY: &str = include_str!("worker.py");

static LINK_IN: OnceLock<Mutex<UnixStream>> = OnceLock::new();
static LINK_OUT: OnceLock<Mutex<UnixStream>> = OnceLock::new();
static INIT: OnceLock<Vec<Vec<u8>>> = OnceLock::new();

fn io_err(e: std::io::Error) -> PyErr {
    pyo3::exceptions::PyOSError::new_err(e.to_string())
}

#[pymodule]
mod _ippx_worker {
    use super::*;

    /// The next job from the supervisor (a list of bytes), or None when it has gone.
    /// Blocks without the GIL. The first call returns the init message.
    #[pyfunction]
    fn recv(py: Python<'_>) -> PyResult<Option<Bound<'_, PyList>>> {
        let parts = if let Some(init) = INIT.get().filter(|_| !INIT_TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst)) {
            Some(init.clone())
        } else {
            let link = LINK_IN.get().ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("no link"))?;
            py.detach(|| {
                let mut s = link.lock().unwrap_or_else(|p| p.into_inner());
                ipc::read_blocking(&mut *s)
            })
            .map_err(io_err)?
        };
        match parts {
            None => Ok(None),
            Some(parts) => {
                let items: Vec<Bound<'_, PyBytes>> = parts.iter().map(|p| PyBytes::new(py, p)).collect();
                Ok(Some(PyList::new(py, items)?))
            }
        }
    }

    /// Sends one message (a list of bytes-like objects) to the supervisor.
    #[pyfunction]
    fn send(py: Python<'_>, parts: Vec<Vec<u8>>) -> PyResult<()> {
        let frame = ipc::encode(&parts);
        let link = LINK_OUT.get().ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("no link"))?;
        py.detach(|| {
            let mut s = link.lock().unwrap_or_else(|p| p.into_inner());
            s.write_all(&frame)
        })
        .map_err(io_err)
    }
}

static INIT_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The nanny's job when the supervisor dies without unregistering (SIGKILL): tell the
/// hub, from a fresh DEALER as ipengine's nanny does, then exit.
fn lifeline(conf: serde_json::Value) {
    let mut pipe = unsafe { std::fs::File::from_raw_fd(LIFELINE_FD) };
    let mut b = [0u8; 16];
    loop {
        match pipe.read(&mut b) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // Told to stop on purpose (the supervisor wrote "q") or orphaned: either way, leave.
    if conf.get("unregister_on_orphan").and_then(|v| v.as_bool()).unwrap_or(true) {
        let _ = unregister(&conf);
    }
    unsafe { libc::_exit(1) };
}

fn unregister(conf: &serde_json::Value) -> Option<()> {
    let url = conf.get("registration_url")?.as_str()?;
    let id = conf.get("engine_id")?.as_i64()?;
    let pack: ippx_protocol::Packer = conf.get("pack")?.as_str()?.parse().ok()?;
    let mut cfg = SessionConfig::new(conf.get("key")?.as_str()?.as_bytes().to_vec(), pack);
    cfg.signature_scheme = conf.get("signature_scheme")?.as_str()?.to_owned();
    let mut session = Session::new(cfg).ok()?;
    let ctx = ippx_transport::zmq::Context::new();
    let security = ippx_transport::Security::client(conf.get("curve_serverkey").and_then(|k| k.as_str())).ok()?;
    let sock = security.socket(&ctx, ippx_transport::zmq::SocketType::DEALER, None).ok()?;
    let _ = sock.set_linger(1000);
    ippx_transport::connect(&sock, url).ok()?;
    let (_, frames) =
        session.serialize(vec![], "unregistration_request", Parent::None, &Value::map(), &ippx_protocol::vmap! {"id" => id}, vec![]).ok()?;
    ippx_transport::send(&sock, frames).ok()?;
    drop(sock);
    drop(ctx); // linger: waits up to 1 s for the message to leave
    Some(())
}

fn init_python(python: &str) -> Result<(), String> {
    let c = CString::new(python).map_err(|e| e.to_string())?;
    unsafe {
        let mut config: pyo3::ffi::PyConfig = std::mem::zeroed();
        pyo3::ffi::PyConfig_InitPythonConfig(&mut config);
        config.install_signal_handlers = 1;
        config.parse_argv = 0;
        let st = pyo3::ffi::PyConfig_SetBytesString(&mut config, &mut config.program_name, c.as_ptr());
        if pyo3::ffi::PyStatus_Exception(st) != 0 {
            pyo3::ffi::PyConfig_Clear(&mut config);
            return Err("PyConfig program_name".into());
        }
        let st = pyo3::ffi::PyConfig_SetBytesString(&mut config, &mut config.executable, c.as_ptr());
        if pyo3::ffi::PyStatus_Exception(st) != 0 {
            pyo3::ffi::PyConfig_Clear(&mut config);
            return Err("PyConfig executable".into());
        }
        let st = pyo3::ffi::Py_InitializeFromConfig(&config);
        pyo3::ffi::PyConfig_Clear(&mut config);
        if pyo3::ffi::PyStatus_Exception(st) != 0 {
            return Err(format!("Python did not initialise from {python}"));
        }
        // Release the GIL: every later use goes through Python::attach.
        pyo3::ffi::PyEval_SaveThread();
    }
    Ok(())
}

/// The exit status a Python SystemExit asks for (`sys.exit(3)`, `sys.exit("msg")` → 1).
fn exit_code(py: Python<'_>, e: &PyErr) -> Option<i32> {
    if !e.is_instance_of::<pyo3::exceptions::PySystemExit>(py) {
        return None;
    }
    let code = e.value(py).getattr("code").ok()?;
    if code.is_none() {
        return Some(0);
    }
    Some(code.extract::<i32>().unwrap_or(1))
}

/// Worker entry point (`--ippx-worker`); never returns.
pub fn run() -> ! {
    let link = unsafe { UnixStream::from_raw_fd(LINK_FD) };
    std::process::exit(serve(link, true))
}

/// Reads the init message from `link`, initialises Python and runs the worker loop on
/// this thread until the supervisor goes. Returns the exit status Python asked for.
/// `lifeline`: watch fd 4 and unregister if the supervisor dies (worker processes).
pub fn serve(link: UnixStream, lifeline_fd: bool) -> i32 {
    let out = match link.try_clone() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ippx-engine worker: link: {e}");
            return 70;
        }
    };
    let mut reader = link;
    let init = match ipc::read_blocking(&mut reader) {
        Ok(Some(p)) if p.len() >= 2 && p[0] == b"init" => p,
        _ => {
            eprintln!("ippx-engine worker: no init message from the supervisor");
            return 70;
        }
    };
    let conf: serde_json::Value = serde_json::from_slice(&init[1]).unwrap_or_default();
    let python = conf.get("python").and_then(|v| v.as_str()).unwrap_or("python3").to_owned();
    if lifeline_fd {
        let lconf = conf.clone();
        let _ = std::thread::Builder::new().name("lifeline".into()).spawn(move || lifeline(lconf));
    }
    let _ = LINK_IN.set(Mutex::new(reader));
    let _ = LINK_OUT.set(Mutex::new(out));
    let _ = INIT.set(init);

    pyo3::append_to_inittab!(_ippx_worker);
    if let Err(e) = init_python(&python) {
        eprintln!("ippx-engine worker: {e}");
        return 71;
    }
    let code = Python::attach(|py| -> i32 {
        let src = match CString::new(WORKER_PY) {
            Ok(s) => s,
            Err(_) => return 70,
        };
        let res = PyModule::from_code(py, &src, c"ippx_engine_worker.py", c"ippx_engine_worker").and_then(|m| m.getattr("main")?.call0().map(|_| ()));
        match res {
            Ok(()) => 0,
            Err(e) => match exit_code(py, &e) {
                Some(c) => c,
                None => {
                    e.print(py);
                    1
                }
            },
        }
    });
    // Flush Python's own streams before leaving.
    Python::attach(|py| {
        let _ = py.run(c"import sys\nfor s in (sys.stdout, sys.stderr):\n    try: s.flush()\n    except Exception: pass\n", None, None);
    });
    code
}
