//! Where the engine finds its controller: `$IPP_CONNECTION_INFO`, `--file`, or the
//! profile's `security/ipcontroller[-<cluster>]-engine.json` (waited for, as ipengine
//! waits for a controller that is still starting).

use crate::args::EngineArgs;
use ippx_protocol::connection::{self, EngineConnectionFile};
use ippx_protocol::{Packer, SessionConfig};
use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("$IPP_CONNECTION_INFO is not an engine connection dict: {0}")]
    Env(serde_json::Error),
    #[error("connection file never arrived: {0}")]
    Missing(PathBuf),
    #[error(transparent)]
    File(#[from] connection::ConnectionFileError),
    #[error("bad packer in the connection info: {0}")]
    Packer(String),
}

/// The profile directory as IPython resolves it.
pub fn profile_dir(a: &EngineArgs) -> PathBuf {
    if let Some(d) = &a.profile_dir {
        return d.clone();
    }
    if let Ok(d) = std::env::var("IPP_PROFILE_DIR") {
        if !d.is_empty() {
            return d.into();
        }
    }
    let ipython_dir = a.ipython_dir.clone().or_else(|| std::env::var_os("IPYTHONDIR").map(PathBuf::from)).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        home.join(".ipython")
    });
    ipython_dir.join(format!("profile_{}", a.profile))
}

pub fn cluster_id(a: &EngineArgs) -> String {
    if !a.cluster_id.is_empty() {
        return a.cluster_id.clone();
    }
    std::env::var("IPP_CLUSTER_ID").unwrap_or_default()
}

/// Reads the connection info, waiting up to `wait_for_url_file` for a file. As ipengine,
/// `$IPP_CURVE_SERVERKEY` supplies the controller's CURVE key when the info has none.
pub fn load(a: &EngineArgs) -> Result<(EngineConnectionFile, String), ConnectError> {
    let (mut info, from) = load_info(a)?;
    if info.curve_serverkey.as_deref().is_none_or(str::is_empty) {
        info.curve_serverkey = std::env::var("IPP_CURVE_SERVERKEY").ok().filter(|k| !k.is_empty());
    }
    Ok((info, from))
}

fn load_info(a: &EngineArgs) -> Result<(EngineConnectionFile, String), ConnectError> {
    if a.url_file.is_none() {
        if let Ok(env) = std::env::var("IPP_CONNECTION_INFO") {
            if !env.is_empty() {
                let info = serde_json::from_str(&env).map_err(ConnectError::Env)?;
                return Ok((info, "$IPP_CONNECTION_INFO".into()));
            }
        }
    }
    let path = a.url_file.clone().unwrap_or_else(|| {
        let (engine_file, _) = connection::file_names(&cluster_id(a));
        profile_dir(a).join("security").join(engine_file)
    });
    let start = Instant::now();
    loop {
        if path.exists() {
            match connection::read::<EngineConnectionFile>(&path) {
                Ok(info) => return Ok((info, path.display().to_string())),
                // A file that is being written may not parse yet.
                Err(e) if start.elapsed() >= a.wait_for_url_file => return Err(e.into()),
                Err(_) => {}
            }
        } else if start.elapsed() >= a.wait_for_url_file {
            return Err(ConnectError::Missing(path));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn session_config(info: &EngineConnectionFile) -> Result<SessionConfig, ConnectError> {
    let pack: Packer = info.pack.parse().map_err(|_| ConnectError::Packer(info.pack.clone()))?;
    let unpack: Packer = info.unpack.parse().map_err(|_| ConnectError::Packer(info.unpack.clone()))?;
    let mut cfg = SessionConfig::new(info.key.as_bytes().to_vec(), pack);
    cfg.unpacker = unpack;
    cfg.signature_scheme = info.signature_scheme.clone();
    Ok(cfg)
}

/// Whether `addr` is one of this machine's addresses: binding to it works only then.
fn is_local(addr: IpAddr) -> bool {
    addr.is_loopback() || UdpSocket::bind((addr, 0)).is_ok()
}

/// ipyparallel's `disambiguate_ip_address`: a controller bound to all interfaces is dialled
/// on loopback when it runs here (or nothing says where it runs), else at its location.
pub fn disambiguate(interface: &str, location: &str) -> String {
    let Some((proto, ip)) = interface.split_once("://") else {
        return interface.to_owned();
    };
    if !matches!(ip, "0.0.0.0" | "*") {
        return interface.to_owned();
    }
    if location.is_empty() {
        return format!("{proto}://127.0.0.1");
    }
    let resolved: Option<IpAddr> =
        location.parse::<IpAddr>().ok().or_else(|| (location, 0).to_socket_addrs().ok().and_then(|mut a| a.next()).map(|s| s.ip()));
    match resolved {
        Some(ip) if is_local(ip) => format!("{proto}://127.0.0.1"),
        Some(ip) => format!("{proto}://{ip}"),
        None => format!("{proto}://{location}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_interfaces_are_kept_and_wildcards_resolved() {
        assert_eq!(disambiguate("tcp://10.1.2.3", "x"), "tcp://10.1.2.3");
        assert_eq!(disambiguate("tcp://0.0.0.0", ""), "tcp://127.0.0.1");
        assert_eq!(disambiguate("tcp://*", "127.0.0.1"), "tcp://127.0.0.1");
        // 192.0.2.0/24 is TEST-NET-1: never an address of this machine; nothing is sent.
        assert_eq!(disambiguate("tcp://0.0.0.0", "192.0.2.7"), "tcp://192.0.2.7");
    }

    #[test]
    fn connection_file_is_waited_for_then_missing() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = EngineArgs {
            url_file: Some(dir.path().join("nope.json")),
            wait_for_url_file: std::time::Duration::from_millis(200),
            ..Default::default()
        };
        assert!(matches!(load(&a), Err(ConnectError::Missing(_))));
    }
}
