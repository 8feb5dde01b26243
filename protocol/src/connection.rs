//! Connection files (`ipcontroller[-<cluster>]-{engine,client}.json`), docs/protocol.md §2.1–2.3.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `ipcontroller-engine.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConnectionFile {
    pub ssh: String,
    pub interface: String,
    pub registration: u16,
    pub control: u16,
    pub mux: u16,
    pub task: u16,
    pub iopub: u16,
    pub hb_ping: u16,
    pub hb_pong: u16,
    pub broadcast: Vec<u16>,
    pub key: String,
    pub curve_serverkey: Option<String>,
    pub location: String,
    pub pack: String,
    pub unpack: String,
    pub signature_scheme: String,
}

/// `ipcontroller-client.json`. `ssh` and `task_scheme` are required by the stock Client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientConnectionFile {
    pub ssh: String,
    pub interface: String,
    pub registration: u16,
    pub control: u16,
    pub mux: u16,
    pub task: u16,
    pub task_scheme: String,
    pub iopub: u16,
    pub notification: u16,
    pub broadcast: u16,
    pub key: String,
    pub curve_serverkey: Option<String>,
    pub location: String,
    pub pack: String,
    pub unpack: String,
    pub signature_scheme: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
}

/// File names for a cluster id (`""` for none).
pub fn file_names(cluster_id: &str) -> (String, String) {
    if cluster_id.is_empty() {
        ("ipcontroller-engine.json".into(), "ipcontroller-client.json".into())
    } else {
        (format!("ipcontroller-{cluster_id}-engine.json"), format!("ipcontroller-{cluster_id}-client.json"))
    }
}

pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConnectionFileError> {
    let text = std::fs::read(path).map_err(|source| ConnectionFileError::Io { path: path.into(), source })?;
    serde_json::from_slice(&text).map_err(|source| ConnectionFileError::Json { path: path.into(), source })
}

/// Writes pretty JSON (indent 2) to a temp file in the same directory, mode 0600, then
/// renames it into place, so launchers polling for the file never read half of it.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), ConnectionFileError> {
    let io = |source| ConnectionFileError::Io { path: path.into(), source };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".ippx-").suffix(".tmp").tempfile_in(dir).map_err(io)?;
    let mut text = serde_json::to_vec_pretty(value).map_err(|source| ConnectionFileError::Json { path: path.into(), source })?;
    text.push(b'\n');
    tmp.write_all(&text).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EngineConnectionFile {
        EngineConnectionFile {
            ssh: String::new(),
            interface: "tcp://127.0.0.1".into(),
            registration: 1,
            control: 2,
            mux: 3,
            task: 4,
            iopub: 5,
            hb_ping: 6,
            hb_pong: 7,
            broadcast: vec![8, 9],
            key: "k".into(),
            curve_serverkey: None,
            location: "host".into(),
            pack: "msgpack".into(),
            unpack: "msgpack".into(),
            signature_scheme: "hmac-sha256".into(),
        }
    }

    #[test]
    fn write_is_atomic_private_and_readable() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("ipcontroller-engine.json");
        write_atomic(&p, &sample()).expect("write");
        let back: EngineConnectionFile = read(&p).expect("read");
        assert_eq!(back, sample());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let text = std::fs::read_to_string(&p).expect("text");
        assert!(text.contains("\"curve_serverkey\": null"));
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1, "no temp file left");
    }

    #[test]
    fn names_with_cluster_id() {
        assert_eq!(file_names("abc").1, "ipcontroller-abc-client.json");
        assert_eq!(file_names("").0, "ipcontroller-engine.json");
    }
}

/// The URL a peer dials for `port` on a connection file's `interface`: `tcp://host:port`,
/// or `ipc://path-port` for ipc (ipyparallel appends the port with a dash there).
pub fn url(interface: &str, port: u16) -> String {
    if interface.starts_with("ipc://") {
        format!("{interface}-{port}")
    } else {
        format!("{interface}:{port}")
    }
}

/// The URL a process on this machine dials to reach a socket it bound itself on `ip`
/// with `transport`: a wildcard address (`0.0.0.0`, `*`) is dialled on loopback.
pub fn local_url(transport: &str, ip: &str, port: u16) -> String {
    let ip = if ip == "0.0.0.0" || ip == "*" { "127.0.0.1" } else { ip };
    url(&format!("{transport}://{ip}"), port)
}

#[cfg(test)]
mod url_tests {
    #[test]
    fn tcp_and_ipc_urls() {
        assert_eq!(super::url("tcp://127.0.0.1", 5), "tcp://127.0.0.1:5");
        assert_eq!(super::local_url("tcp", "0.0.0.0", 7), "tcp://127.0.0.1:7");
        assert_eq!(super::local_url("ipc", "/tmp/x", 7), "ipc:///tmp/x-7");
        assert_eq!(super::url("ipc:///tmp/x", 5), "ipc:///tmp/x-5");
    }
}
