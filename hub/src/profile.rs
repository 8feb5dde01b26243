//! Profile directory layout (docs/protocol.md §2.1, 3.7) and the port pools of docs/protocol.md §2.5.

use crate::cli::HubConfig;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Profile {
    pub dir: PathBuf,
    pub cluster_id: String,
}

impl Profile {
    /// `--profile-dir` / `$IPP_PROFILE_DIR`, else `<ipython_dir>/profile_<name>`.
    pub fn resolve(cfg: &HubConfig, home: Option<PathBuf>) -> Profile {
        let dir = match &cfg.profile_dir {
            Some(d) => d.clone(),
            None => {
                let ipdir = cfg.ipython_dir.clone().unwrap_or_else(|| home.unwrap_or_else(|| PathBuf::from(".")).join(".ipython"));
                ipdir.join(format!("profile_{}", cfg.profile))
            }
        };
        Profile { dir, cluster_id: cfg.cluster_id.clone() }
    }

    /// The stock controller creates these on start; tests rely on it.
    pub fn create(&self) -> std::io::Result<()> {
        for sub in ["security", "log", "startup", "pid"] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(self.dir.join("security"), std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    pub fn security(&self) -> PathBuf {
        self.dir.join("security")
    }

    pub fn engine_file(&self) -> PathBuf {
        self.security().join(ippx_protocol::connection::file_names(&self.cluster_id).0)
    }

    pub fn client_file(&self) -> PathBuf {
        self.security().join(ippx_protocol::connection::file_names(&self.cluster_id).1)
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("log").join(format!("engines{}.json", self.cluster_id))
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.join("ipcontroller_config.py")
    }
}

/// Every port the controller binds; 0 = let the OS choose.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortPlan {
    pub registration: u16,
    pub engine_control: u16,
    pub engine_mux: u16,
    pub engine_task: u16,
    pub engine_iopub: u16,
    pub hb_ping: u16,
    pub hb_pong: u16,
    pub engine_broadcast: Vec<u16>,
    pub client_control: u16,
    pub client_mux: u16,
    pub client_task: u16,
    pub client_iopub: u16,
    pub notification: u16,
    pub client_broadcast: u16,
    pub monitor: u16,
}

/// Takes ports from the pools in the order Python does, so `--ports=A-B` gives the same
/// files as ipcontroller. Pools that run dry leave 0 (any free port).
pub fn plan_ports(cfg: &HubConfig) -> PortPlan {
    let common: Vec<u16> = cfg.ports.clone();
    let mut common = common.into_iter();
    let mut engine = cfg.engine_ports.clone().into_iter();
    let mut client = cfg.client_ports.clone().into_iter();
    let use_engine_pool = !cfg.engine_ports.is_empty();
    let use_client_pool = !cfg.client_ports.is_empty();
    let mut e = || if use_engine_pool { engine.next().unwrap_or(0) } else { common.next().unwrap_or(0) };
    let mut p = PortPlan {
        registration: e(),
        engine_control: e(),
        engine_mux: e(),
        engine_task: e(),
        engine_iopub: e(),
        hb_ping: e(),
        hb_pong: e(),
        ..Default::default()
    };
    let leaves = 1usize << cfg.broadcast_depth.clamp(1, 8);
    p.engine_broadcast = (0..leaves).map(|_| e()).collect();
    let mut c = || if use_client_pool { client.next().unwrap_or(0) } else { common.next().unwrap_or(0) };
    p.client_control = c();
    p.client_mux = c();
    p.client_task = c();
    p.client_iopub = c();
    p.notification = c();
    p.client_broadcast = c();
    // Python puts internal broadcast ports here; we have none, the monitor comes last.
    // It is bound only with --scheduler-mode=process; taking it from the pool keeps every
    // port the controller listens on inside --ports (issue 13).
    p.monitor = common.next().unwrap_or(0);
    if cfg.regport != 0 {
        p.registration = cfg.regport;
    }
    p
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

pub fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), "cannot remove: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_python_order() {
        let cfg = HubConfig { ports: (21000..=21017).collect(), ..Default::default() };
        let p = plan_ports(&cfg);
        assert_eq!((p.registration, p.engine_control, p.hb_pong), (21000, 21001, 21006));
        assert_eq!(p.engine_broadcast, vec![21007, 21008]);
        assert_eq!((p.client_control, p.notification, p.client_broadcast), (21009, 21013, 21014));
        assert_eq!(p.monitor, 21015);
    }

    #[test]
    fn no_pools_means_os_ports() {
        let p = plan_ports(&HubConfig::default());
        assert_eq!(p, PortPlan { engine_broadcast: vec![0, 0], ..Default::default() });
    }

    #[test]
    fn profile_paths() {
        let cfg = HubConfig { profile: "iptest".into(), cluster_id: "abc".into(), ..Default::default() };
        let p = Profile::resolve(&cfg, Some(PathBuf::from("/home/u")));
        assert_eq!(p.dir, PathBuf::from("/home/u/.ipython/profile_iptest"));
        assert!(p.client_file().ends_with("security/ipcontroller-abc-client.json"));
        assert!(p.state_file().ends_with("log/enginesabc.json"));
    }
}
