//! The scheduler's link to its hub, in one place for both ends: the monitor channel (a
//! socket to a hub in another process, or an in-memory channel to a hub in this one),
//! the ports the scheduler bound and the ready line that reports them, and the command
//! line of `ippx-scheduler` as a typed [`SchedulerArgs`] that the hub renders with
//! [`SchedulerArgs::to_argv`] and the binary parses with clap, so the two cannot drift.

use crate::runner::{SchedulerConfig, TaskMode};
use ippx_protocol::{Packer, SessionConfig};
use ippx_transport::{self as tp, zmq, WakeReceiver, Waker};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Transport(#[from] tp::TransportError),
    #[error("bad ready line from ippx-scheduler ({line:?}): {error}")]
    ReadyLine { line: String, error: String },
    #[error("{0}")]
    Args(String),
}

/// Ports to bind; 0 means "let the OS choose".
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelayPorts {
    pub control: u16,
    pub mux: u16,
    pub task: u16,
    pub iopub: u16,
}

impl RelayPorts {
    /// `control,mux,task,iopub`, the order of `--engine-ports`/`--client-ports`.
    pub fn from_list(v: &[u16], what: &str) -> Result<RelayPorts, LinkError> {
        match v {
            [control, mux, task, iopub] => Ok(RelayPorts { control: *control, mux: *mux, task: *task, iopub: *iopub }),
            _ => Err(LinkError::Args(format!("--{what}-ports needs 4 values: control,mux,task,iopub"))),
        }
    }

    pub fn to_list(self) -> [u16; 4] {
        [self.control, self.mux, self.task, self.iopub]
    }
}

/// What a bound scheduler listens on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BoundPorts {
    pub engine: RelayPorts,
    pub client: RelayPorts,
    pub engine_broadcast: Vec<u16>,
    pub client_broadcast: u16,
}

#[derive(Serialize, Deserialize)]
struct Ready {
    ippx_scheduler_ready: BoundPorts,
}

impl BoundPorts {
    /// The one line `ippx-scheduler` prints on stdout once bound; the hub reads it to
    /// learn the ports for the connection files.
    pub fn ready_line(&self) -> String {
        serde_json::to_string(&Ready { ippx_scheduler_ready: self.clone() }).unwrap_or_default()
    }

    pub fn from_ready_line(line: &str) -> Result<BoundPorts, LinkError> {
        serde_json::from_str::<Ready>(line.trim())
            .map(|r| r.ippx_scheduler_ready)
            .map_err(|e| LinkError::ReadyLine { line: line.to_owned(), error: e.to_string() })
    }
}

/// How monitor copies (`[topic, frames..]`) reach the hub.
pub enum MonitorLink {
    /// A PUB connected to the hub's monitor SUB (a separate process).
    Url(String),
    /// The hub runs in this process: copies go through a channel, and the hub's loop is
    /// woken once per batch rather than once per message.
    Channel(MonitorTx),
}

impl std::fmt::Debug for MonitorLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MonitorLink::Url(u) => write!(f, "Url({u})"),
            MonitorLink::Channel(_) => f.write_str("Channel"),
        }
    }
}

/// The scheduler's end of an in-process monitor link.
pub struct MonitorTx {
    pub tx: std::sync::mpsc::Sender<Vec<Vec<u8>>>,
    /// Set by us when we wake the hub, cleared by the hub before it drains the channel:
    /// while it is set the hub is known to be coming, and no wake-up is sent.
    pub signalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub waker: Waker,
}

/// The hub's end of an in-process monitor link.
pub struct MonitorRx {
    pub rx: std::sync::mpsc::Receiver<Vec<Vec<u8>>>,
    pub signalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub wake: WakeReceiver,
}

/// An in-process monitor link (both ends); `name` must be unique within the context.
pub fn monitor_channel(ctx: &zmq::Context, name: &str) -> Result<(MonitorTx, MonitorRx), LinkError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let signalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (waker, wake) = tp::waker(ctx, name)?;
    Ok((MonitorTx { tx, signalled: signalled.clone(), waker }, MonitorRx { rx, signalled, wake }))
}

/// The command line of `ippx-scheduler`.
#[derive(clap::Parser, Debug, Clone, PartialEq)]
#[command(name = "ippx-scheduler", version, about = "ippx relays and task scheduler")]
pub struct SchedulerArgs {
    /// IP the engine-facing sockets bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub engine_ip: String,
    /// IP the client-facing sockets bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub client_ip: String,
    #[arg(long, default_value = "tcp")]
    pub transport: String,
    /// Engine-side ports control,mux,task,iopub (0 = any free port).
    #[arg(long, value_delimiter = ',', default_values_t = [0u16, 0, 0, 0])]
    pub engine_ports: Vec<u16>,
    /// Client-side ports control,mux,task,iopub (0 = any free port).
    #[arg(long, value_delimiter = ',', default_values_t = [0u16, 0, 0, 0])]
    pub client_ports: Vec<u16>,
    /// Engine-side broadcast leaf ports; their count is 2**depth.
    #[arg(long, value_delimiter = ',', default_values_t = [0u16, 0])]
    pub engine_broadcast: Vec<u16>,
    #[arg(long, default_value_t = 0)]
    pub client_broadcast: u16,
    /// The hub's monitor socket (SUB) this scheduler publishes copies to.
    #[arg(long)]
    pub monitor: String,
    /// The hub's notification PUB.
    #[arg(long)]
    pub notification: String,
    /// The hub's registration/query ROUTER.
    #[arg(long)]
    pub registration: String,
    /// Packer for the signed dicts: json or msgpack.
    #[arg(long, default_value = "msgpack")]
    pub packer: Packer,
    #[arg(long, default_value = "hmac-sha256")]
    pub signature_scheme: String,
    /// File holding the HMAC key; otherwise $IPPX_SESSION_KEY (empty disables signing).
    #[arg(long)]
    pub keyfile: Option<std::path::PathBuf>,
    /// leastload, lru, twobin, weighted, plainrandom, pure or none.
    #[arg(long, default_value = "leastload")]
    pub scheme: TaskMode,
    /// Tasks an engine may hold at once (0 = unlimited).
    #[arg(long, default_value_t = 1)]
    pub hwm: usize,
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub log_format: ippx_telemetry::logging::LogFormat,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9811). Off unless set.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Exit when standard input closes: the hub holds the other end of that pipe, so we
    /// die with it even when it is SIGKILLed.
    #[arg(long)]
    pub lifeline: bool,
}

fn join(v: &[u16]) -> String {
    v.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

impl SchedulerArgs {
    /// The arguments that make `ippx-scheduler` parse back to `self` (without argv[0]).
    pub fn to_argv(&self) -> Vec<String> {
        let mut v = vec![
            format!("--engine-ip={}", self.engine_ip),
            format!("--client-ip={}", self.client_ip),
            format!("--transport={}", self.transport),
            format!("--engine-ports={}", join(&self.engine_ports)),
            format!("--client-ports={}", join(&self.client_ports)),
            format!("--engine-broadcast={}", join(&self.engine_broadcast)),
            format!("--client-broadcast={}", self.client_broadcast),
            format!("--monitor={}", self.monitor),
            format!("--notification={}", self.notification),
            format!("--registration={}", self.registration),
            format!("--packer={}", self.packer),
            format!("--signature-scheme={}", self.signature_scheme),
            format!("--scheme={}", self.scheme),
            format!("--hwm={}", self.hwm),
            format!("--log-level={}", self.log_level),
            format!("--log-format={}", self.log_format),
        ];
        if let Some(k) = &self.keyfile {
            v.push(format!("--keyfile={}", k.display()));
        }
        if let Some(a) = self.metrics_addr {
            v.push(format!("--metrics-addr={a}"));
        }
        if self.lifeline {
            v.push("--lifeline".to_owned());
        }
        v
    }

    /// The scheduler configuration these arguments describe, monitoring over a socket.
    /// `curve`: the controller's CURVE keys (from the environment, never the command line).
    pub fn config(&self, key: &str, curve: Option<tp::CurveKeys>) -> Result<SchedulerConfig, LinkError> {
        let n = self.engine_broadcast.len();
        if !(n.is_power_of_two() && n >= 2) {
            return Err(LinkError::Args("--engine-broadcast needs 2**depth ports, depth >= 1".into()));
        }
        let mut session = SessionConfig::new(key.as_bytes().to_vec(), self.packer);
        session.signature_scheme.clone_from(&self.signature_scheme);
        Ok(SchedulerConfig {
            transport: self.transport.clone(),
            engine_ip: self.engine_ip.clone(),
            client_ip: self.client_ip.clone(),
            engine: RelayPorts::from_list(&self.engine_ports, "engine")?,
            client: RelayPorts::from_list(&self.client_ports, "client")?,
            engine_broadcast: self.engine_broadcast.clone(),
            client_broadcast: self.client_broadcast,
            monitor: MonitorLink::Url(self.monitor.clone()),
            notifications_published: None,
            notification_url: self.notification.clone(),
            registration_url: self.registration.clone(),
            session,
            task_mode: self.scheme,
            hwm: self.hwm,
            stranded_delay: Duration::from_secs(5),
            curve,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn args() -> SchedulerArgs {
        SchedulerArgs::try_parse_from([
            "ippx-scheduler",
            "--monitor=tcp://127.0.0.1:1",
            "--notification=tcp://127.0.0.1:2",
            "--registration=tcp://127.0.0.1:3",
        ])
        .expect("parse")
    }

    #[test]
    fn argv_parses_back_to_the_same_arguments() {
        let mut a = args();
        a.engine_ports = vec![1, 2, 3, 4];
        a.engine_broadcast = vec![5, 6, 7, 8];
        a.packer = Packer::Json;
        a.scheme = "twobin".parse().expect("scheme");
        a.hwm = 0;
        a.keyfile = Some("/tmp/key".into());
        a.metrics_addr = Some("127.0.0.1:9811".parse().expect("addr"));
        a.lifeline = true;
        a.log_format = ippx_telemetry::logging::LogFormat::Json;
        let argv = std::iter::once("ippx-scheduler".to_owned()).chain(a.to_argv());
        assert_eq!(SchedulerArgs::try_parse_from(argv).expect("parse back"), a);
        let d = args();
        let argv = std::iter::once("ippx-scheduler".to_owned()).chain(d.to_argv());
        assert_eq!(SchedulerArgs::try_parse_from(argv).expect("parse back"), d);
    }

    #[test]
    fn config_checks_port_counts() {
        let mut a = args();
        assert!(a.config("k", None).is_ok());
        a.engine_broadcast = vec![1, 2, 3];
        assert!(a.config("k", None).is_err());
        a.engine_broadcast = vec![1, 2];
        a.client_ports = vec![1];
        assert!(a.config("k", None).is_err());
    }

    #[test]
    fn the_ready_line_round_trips() {
        let p = BoundPorts {
            engine: RelayPorts { control: 1, mux: 2, task: 3, iopub: 4 },
            client: RelayPorts { control: 5, mux: 6, task: 7, iopub: 8 },
            engine_broadcast: vec![9, 10],
            client_broadcast: 11,
        };
        assert_eq!(BoundPorts::from_ready_line(&format!("{}\n", p.ready_line())).expect("parse"), p);
        assert!(BoundPorts::from_ready_line("").is_err());
        assert!(BoundPorts::from_ready_line("{\"other\": 1}").is_err());
    }
}
