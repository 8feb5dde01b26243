//! What a controller is before any socket is bound: its key, packer and port plan (from
//! the configuration, or from the connection files of an earlier run with `--reuse`),
//! the connection files peers read, the hub's settings, and the location checks.

use crate::cli::{DbBackend, HubConfig};
use crate::hub::HubSettings;
use crate::profile::{PortPlan, Profile};
use crate::records::Limits;
use ippx_protocol::connection::{self, ClientConnectionFile, EngineConnectionFile};
use ippx_protocol::content::EnginePorts;
use ippx_protocol::session::new_id;
use ippx_protocol::{Packer, SessionConfig};
use ippx_scheduler::link::RelayPorts;
use ippx_transport::CurveKeys;
use std::time::Duration;
use tracing::{info, warn};

/// The key, packer and ports a controller starts with.
pub struct Plan {
    pub key: String,
    pub packer: Packer,
    pub ports: PortPlan,
    /// The connection files were reused (`--reuse`): they are not written again.
    pub reused: bool,
    /// The controller's CurveZMQ key pair when CURVE is on.
    pub curve: Option<CurveKeys>,
}

/// The CURVE key pair `cfg` asks for: none, the configured one, or a new one.
fn curve_keys(cfg: &HubConfig) -> anyhow::Result<Option<CurveKeys>> {
    if !cfg.enable_curve {
        return Ok(None);
    }
    let keys = match (&cfg.curve_publickey, &cfg.curve_secretkey) {
        (Some(p), Some(s)) => CurveKeys::from_z85(p, s)?,
        (None, None) => {
            info!("generating new CURVE credentials");
            CurveKeys::generate()?
        }
        _ => anyhow::bail!("CURVE needs both keys: IPP_CURVE_PUBLICKEY and IPP_CURVE_SECRETKEY (or neither, to generate a pair)"),
    };
    info!("using CurveZMQ security (public key {}); messages are not signed unless a session key is given", keys.public());
    Ok(Some(keys))
}

/// Reused files must agree on what peers cannot renegotiate (docs/protocol.md, 2.1).
/// With CURVE the files must also name our public key: a pair generated for this run
/// (no `IPP_CURVE_*KEY` given) makes the old files unusable, and they are written anew.
fn load_reusable(profile: &Profile, curve: Option<&CurveKeys>) -> Option<(EngineConnectionFile, ClientConnectionFile)> {
    let e: EngineConnectionFile = connection::read(&profile.engine_file()).ok()?;
    let c: ClientConnectionFile = connection::read(&profile.client_file()).ok()?;
    let same =
        e.key == c.key && e.registration == c.registration && e.pack == c.pack && e.unpack == c.unpack && e.signature_scheme == c.signature_scheme;
    let server_key = curve.map(|k| k.public().to_owned());
    if same && (e.curve_serverkey != server_key || c.curve_serverkey != server_key) {
        warn!("--reuse: the connection files name another CURVE key; writing new ones (set IPP_CURVE_PUBLICKEY and IPP_CURVE_SECRETKEY to keep files across restarts)");
        return None;
    }
    same.then_some((e, c))
}

impl Plan {
    pub fn new(cfg: &HubConfig, profile: &Profile) -> anyhow::Result<Plan> {
        let curve = curve_keys(cfg)?;
        let mut key = match (&cfg.key, &cfg.keyfile) {
            (Some(k), _) => k.clone(),
            (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("reading keyfile {}: {e}", f.display()))?.trim().to_owned(),
            // As ipcontroller: CURVE authenticates every connection and stops replays, so
            // the redundant HMAC is off unless a key is configured.
            (None, None) if curve.is_some() => String::new(),
            (None, None) if cfg.secure => new_id(),
            _ => String::new(),
        };
        let mut packer = cfg.packer;
        let mut ports = crate::profile::plan_ports(cfg);
        let reused = if cfg.reuse { load_reusable(profile, curve.as_ref()) } else { None };
        if let Some((e, c)) = &reused {
            info!("reusing connection files in {}", profile.security().display());
            key.clone_from(&e.key);
            packer = e.pack.parse()?;
            anyhow::ensure!(e.unpack.parse::<Packer>()? == packer, "the reused connection files name different packers");
            ports = PortPlan {
                registration: e.registration,
                engine_control: e.control,
                engine_mux: e.mux,
                engine_task: e.task,
                engine_iopub: e.iopub,
                hb_ping: e.hb_ping,
                hb_pong: e.hb_pong,
                engine_broadcast: e.broadcast.clone(),
                client_control: c.control,
                client_mux: c.mux,
                client_task: c.task,
                client_iopub: c.iopub,
                notification: c.notification,
                client_broadcast: c.broadcast,
                monitor: 0,
            };
        }
        Ok(Plan { key, packer, ports, reused: reused.is_some(), curve })
    }

    pub fn session(&self, cfg: &HubConfig) -> SessionConfig {
        let mut s = SessionConfig::new(self.key.clone().into_bytes(), self.packer);
        s.signature_scheme.clone_from(&cfg.signature_scheme);
        if let Some(u) = &cfg.username {
            s.username.clone_from(u);
        }
        s
    }
}

/// The ports every socket ended up on.
pub struct Bound {
    pub registration: u16,
    pub hb_ping: u16,
    pub hb_pong: u16,
    pub notification: u16,
    pub engine: RelayPorts,
    pub client: RelayPorts,
    pub engine_broadcast: Vec<u16>,
    pub client_broadcast: u16,
}

/// The two connection files, as `ipcontroller` writes them.
pub fn connection_files(cfg: &HubConfig, plan: &Plan, b: &Bound) -> (EngineConnectionFile, ClientConnectionFile) {
    let t = cfg.transport.as_str();
    let location = cfg.location.clone().unwrap_or_else(crate::profile::hostname);
    let packer = plan.packer.name().to_owned();
    let engine = EngineConnectionFile {
        ssh: String::new(),
        interface: format!("{t}://{}", cfg.engine_ip),
        registration: b.registration,
        control: b.engine.control,
        mux: b.engine.mux,
        task: b.engine.task,
        iopub: b.engine.iopub,
        hb_ping: b.hb_ping,
        hb_pong: b.hb_pong,
        broadcast: b.engine_broadcast.clone(),
        key: plan.key.clone(),
        curve_serverkey: plan.curve.as_ref().map(|k| k.public().to_owned()),
        location: location.clone(),
        pack: packer.clone(),
        unpack: packer.clone(),
        signature_scheme: cfg.signature_scheme.clone(),
    };
    let client = ClientConnectionFile {
        ssh: String::new(),
        interface: format!("{t}://{}", cfg.client_ip),
        registration: b.registration,
        control: b.client.control,
        mux: b.client.mux,
        task: b.client.task,
        task_scheme: cfg.scheme.to_string(),
        iopub: b.client.iopub,
        notification: b.notification,
        broadcast: b.client_broadcast,
        key: plan.key.clone(),
        curve_serverkey: plan.curve.as_ref().map(|k| k.public().to_owned()),
        location,
        pack: packer.clone(),
        unpack: packer,
        signature_scheme: cfg.signature_scheme.clone(),
    };
    (engine, client)
}

/// The hub state machine's settings.
pub fn hub_settings(cfg: &HubConfig, plan: &Plan, engine_file: &EngineConnectionFile) -> HubSettings {
    let reg_timeout = cfg.registration_timeout.unwrap_or_else(|| (cfg.ping_ms as f64 / 100.0).max(30.0));
    HubSettings {
        hb_period: Duration::from_millis(cfg.ping_ms.max(10)),
        max_misses: cfg.max_misses,
        registration_timeout: Duration::from_secs_f64(reg_timeout.max(0.1)),
        engine_ports: EnginePorts {
            interface: engine_file.interface.clone(),
            registration: engine_file.registration,
            control: engine_file.control,
            mux: engine_file.mux,
            task: engine_file.task,
            iopub: engine_file.iopub,
            hb_ping: engine_file.hb_ping,
            hb_pong: engine_file.hb_pong,
            broadcast: engine_file.broadcast.clone(),
        },
        packer: plan.packer,
        limits: Limits { record_limit: cfg.record_limit, size_limit: cfg.size_limit, cull_fraction: cfg.cull_fraction },
        nodb: cfg.db == DbBackend::None,
        max_engines: usize::MAX,
        readmit: cfg.readmit,
    }
}

fn is_loopback(ip: &str) -> bool {
    ip == "localhost" || ip.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// Engines on other machines cannot reach a controller bound to loopback. Users lose
/// hours to this (ipyparallel #499, #355), so say it loudly at start-up when the
/// configuration suggests remote peers.
pub fn remote_peers_warning(cfg: &HubConfig) -> Option<String> {
    let loop_engine = is_loopback(&cfg.engine_ip);
    let loop_client = is_loopback(&cfg.client_ip);
    let location = cfg.location.as_deref().filter(|l| !l.is_empty() && !is_loopback(l))?;
    if !(loop_engine || loop_client) {
        return None;
    }
    let which = match (loop_engine, loop_client) {
        (true, true) => "engines and clients",
        (true, false) => "engines",
        _ => "clients",
    };
    Some(format!(
        "the controller binds only loopback (engine ip {}, client ip {}) but --location={location} says peers are remote: \
         {which} on other machines will not be able to connect. Use --ip=0.0.0.0 (or this machine's address) to accept them.",
        cfg.engine_ip, cfg.client_ip
    ))
}

pub fn warn_if_unreachable(cfg: &HubConfig) {
    if let Some(w) = remote_peers_warning(cfg) {
        warn!("!!! {w}");
        eprintln!("\nWARNING: {w}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_with_a_remote_location_warns() {
        let mut cfg = HubConfig { location: Some("10.1.2.3".into()), ..Default::default() };
        assert!(remote_peers_warning(&cfg).is_some_and(|w| w.contains("engines and clients")));
        cfg.engine_ip = "0.0.0.0".into();
        cfg.client_ip = "0.0.0.0".into();
        assert!(remote_peers_warning(&cfg).is_none());
        let local = HubConfig { location: Some("127.0.0.1".into()), ..Default::default() };
        assert!(remote_peers_warning(&local).is_none());
        assert!(remote_peers_warning(&HubConfig::default()).is_none());
    }
}
