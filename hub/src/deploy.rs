//! Deploying a controller across machines and in containers (issue 13):
//!
//! - `--print-connection-info=engine|client` prints the JSON that `ipengine`/`ippx-engine`
//!   take from `$IPP_CONNECTION_INFO` (and that `Client(dict)` takes) without binding or
//!   writing anything, so compose or a shell can hand it to engines through the
//!   environment instead of a shared volume (ipyparallel #502). It needs fixed `--ports`
//!   and a key from `$IPP_SESSION_KEY`/`--keyfile`: then it is the same on every start.
//! - `--probe=URL` exits 0 iff the URL answers 200 (`/readyz`: ready), with nothing but
//!   the standard library, so a healthcheck needs no curl in the image.
//! - The location diagnostics logged at start: the exact addresses engines and clients
//!   will dial, and a warning when those cannot work for remote peers.

use crate::cli::{CliError, HubConfig};
use crate::profile::plan_ports;
use ippx_protocol::connection::{ClientConnectionFile, EngineConnectionFile};
use ippx_scheduler::link::RelayPorts;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

/// Which connection file `--print-connection-info` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Engine,
    Client,
}

/// What the deploy flags ask the binary to do instead of running a controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeployAction {
    PrintConnectionInfo(Which),
    Probe { url: String, timeout: Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("--print-connection-info needs fixed ports (e.g. --ports=21000-21017); {0} would be chosen by the OS at start")]
    PortsNotFixed(&'static str),
    #[error(
        "--print-connection-info needs the key from $IPP_SESSION_KEY, --Session.key or --keyfile (without one a random key is made on every start)"
    )]
    NoKey,
    #[error("--print-connection-info with CURVE needs the controller's keys in $IPP_CURVE_PUBLICKEY and $IPP_CURVE_SECRETKEY (without them a pair is made on every start)")]
    NoCurveKeys,
    #[error("{0}")]
    Curve(#[from] ippx_transport::TransportError),
    #[error("reading keyfile {path}: {source}")]
    Keyfile { path: String, source: std::io::Error },
    #[error("--print-connection-info with --reuse: the files of the last run decide; read them instead")]
    Reuse,
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("bad probe URL {0:?} (expected http://HOST:PORT/PATH)")]
    Url(String),
    #[error("{0}: does not resolve ({1})")]
    Resolve(String, std::io::Error),
    #[error("{0}: cannot connect ({1})")]
    Connect(String, std::io::Error),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: not an HTTP response: {1:?}")]
    Response(String, String),
    #[error("{url}: HTTP {status}: {body}")]
    NotReady { url: String, status: u16, body: String },
}

/// Removes `--print-connection-info[=]WHICH`, `--probe[=]URL` and `--probe-timeout[=]SECS`
/// from `args`, which then go to the usual settings loader untouched.
pub fn take_flags(args: &[String]) -> Result<(Option<DeployAction>, Vec<String>), CliError> {
    let mut rest = Vec::with_capacity(args.len());
    let (mut print, mut probe, mut timeout) = (None, None, Duration::from_secs(2));
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        if !matches!(name, "--print-connection-info" | "--probe" | "--probe-timeout") {
            rest.push(arg.clone());
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None if i < args.len() => {
                i += 1;
                args[i - 1].clone()
            }
            None => return Err(CliError(format!("{name} needs a value"))),
        };
        match name {
            "--print-connection-info" => {
                print = Some(match value.as_str() {
                    "engine" => Which::Engine,
                    "client" => Which::Client,
                    _ => return Err(CliError(format!("--print-connection-info: expected engine or client, got {value:?}"))),
                })
            }
            "--probe" => probe = Some(value),
            _ => {
                let secs: f64 = value.parse().map_err(|_| CliError(format!("--probe-timeout: expected seconds, got {value:?}")))?;
                if !(secs > 0.0 && secs < 3600.0) {
                    return Err(CliError(format!("--probe-timeout: expected seconds between 0 and 3600, got {value:?}")));
                }
                timeout = Duration::from_secs_f64(secs);
            }
        }
    }
    let action = match (print, probe) {
        (Some(_), Some(_)) => return Err(CliError("--print-connection-info and --probe cannot be combined".into())),
        (Some(w), None) => Some(DeployAction::PrintConnectionInfo(w)),
        (None, Some(url)) => Some(DeployAction::Probe { url, timeout }),
        (None, None) => None,
    };
    Ok((action, rest))
}

fn key(cfg: &HubConfig) -> Result<String, DeployError> {
    match (&cfg.key, &cfg.keyfile) {
        (Some(k), _) => Ok(k.clone()),
        (None, Some(f)) => {
            std::fs::read_to_string(f).map(|s| s.trim().to_owned()).map_err(|source| DeployError::Keyfile { path: f.display().to_string(), source })
        }
        // --no-secure, or CURVE: an empty key, as the controller uses then.
        (None, None) if !cfg.secure || cfg.enable_curve => Ok(String::new()),
        (None, None) => Err(DeployError::NoKey),
    }
}

/// The two connection files a controller started with `cfg` will write, computed from the
/// settings alone (the same port plan and fields as `Controller::bind`; the e2e test
/// compares them with the files a running hub writes).
pub fn connection_files(cfg: &HubConfig) -> Result<(EngineConnectionFile, ClientConnectionFile), DeployError> {
    if cfg.reuse {
        return Err(DeployError::Reuse);
    }
    let p = plan_ports(cfg);
    let named = [
        ("the registration port", p.registration),
        ("the engine control port", p.engine_control),
        ("the engine mux port", p.engine_mux),
        ("the engine task port", p.engine_task),
        ("the engine iopub port", p.engine_iopub),
        ("the heartbeat ping port", p.hb_ping),
        ("the heartbeat pong port", p.hb_pong),
        ("the client control port", p.client_control),
        ("the client mux port", p.client_mux),
        ("the client task port", p.client_task),
        ("the client iopub port", p.client_iopub),
        ("the notification port", p.notification),
        ("the client broadcast port", p.client_broadcast),
    ];
    if let Some((name, _)) = named.iter().find(|(_, port)| *port == 0) {
        return Err(DeployError::PortsNotFixed(name));
    }
    if p.engine_broadcast.contains(&0) {
        return Err(DeployError::PortsNotFixed("an engine broadcast port"));
    }
    let key = key(cfg)?;
    // The same files a running controller writes, from the planned ports (all fixed here).
    let curve = match (cfg.enable_curve, &cfg.curve_publickey, &cfg.curve_secretkey) {
        (false, _, _) => None,
        (true, Some(public), Some(secret)) => Some(ippx_transport::CurveKeys::from_z85(public, secret)?),
        (true, _, _) => return Err(DeployError::NoCurveKeys),
    };
    let plan = crate::controller::plan::Plan { key, packer: cfg.packer, ports: p.clone(), reused: false, curve };
    let bound = crate::controller::plan::Bound {
        registration: p.registration,
        hb_ping: p.hb_ping,
        hb_pong: p.hb_pong,
        notification: p.notification,
        engine: RelayPorts { control: p.engine_control, mux: p.engine_mux, task: p.engine_task, iopub: p.engine_iopub },
        client: RelayPorts { control: p.client_control, mux: p.client_mux, task: p.client_task, iopub: p.client_iopub },
        engine_broadcast: p.engine_broadcast.clone(),
        client_broadcast: p.client_broadcast,
    };
    Ok(crate::controller::plan::connection_files(cfg, &plan, &bound))
}

/// One line of JSON, for `IPP_CONNECTION_INFO="$(ippx-hub ... --print-connection-info=engine)"`.
pub fn connection_info(cfg: &HubConfig, which: Which) -> Result<String, DeployError> {
    let (e, c) = connection_files(cfg)?;
    Ok(match which {
        Which::Engine => serde_json::to_string(&e)?,
        Which::Client => serde_json::to_string(&c)?,
    })
}

/// `http://host:port/path` → (host, port, path); a bare `host:port` probes `/readyz`.
fn parse_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/readyz"),
    };
    let (host, port) = hostport.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || (url.contains("://") && !url.starts_with("http://")) {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?, path.to_owned()))
}

/// Ok iff `url` answers HTTP 200 within `timeout` (connect, send and read together).
pub fn probe(url: &str, timeout: Duration) -> Result<(), ProbeError> {
    let (host, port, path) = parse_url(url).ok_or_else(|| ProbeError::Url(url.to_owned()))?;
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> = (host.as_str(), port).to_socket_addrs().map_err(|e| ProbeError::Resolve(url.to_owned(), e))?.collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut s = stream.ok_or_else(|| ProbeError::Connect(url.to_owned(), last))?;
    let io = |e| ProbeError::Io(url.to_owned(), e);
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(io)?;
    s.set_write_timeout(Some(left)).map_err(io)?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).map_err(io)?;
    // A readiness answer is a few bytes; cap what we read so a wrong port cannot make us
    // buffer without bound.
    let mut buf = Vec::new();
    s.take(64 * 1024).read_to_end(&mut buf).map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or("");
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ProbeError::Response(url.to_owned(), status_line.chars().take(80).collect()))?;
    if status == 200 {
        return Ok(());
    }
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.trim()).unwrap_or("").chars().take(200).collect();
    Err(ProbeError::NotReady { url: url.to_owned(), status, body })
}

fn is_any(ip: &str) -> bool {
    matches!(ip, "0.0.0.0" | "*" | "::" | "")
}

/// Whether `ip` is an address of this machine: binding a socket to it succeeds only then
/// (EADDRNOTAVAIL otherwise), which needs no interface listing.
pub fn is_local_address(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// What a peer on another machine dials for a socket bound to `bound_ip`: the bound
/// address itself, or for 0.0.0.0 the location (ipyparallel's `disambiguate_ip_address`
/// on a machine other than the controller's).
pub fn remote_dial_host(bound_ip: &str, location: &str) -> String {
    if is_any(bound_ip) {
        location.to_owned()
    } else {
        bound_ip.to_owned()
    }
}

/// The start-up report: info lines (the addresses peers will dial) and warnings.
#[derive(Debug, Default)]
pub struct LocationReport {
    pub info: Vec<String>,
    pub warnings: Vec<String>,
}

fn ports(v: &[(&str, u16)]) -> String {
    v.iter().map(|(n, p)| format!("{n}={p}")).collect::<Vec<_>>().join(" ")
}

/// The addresses engines and clients on other machines will dial, and what is wrong with
/// them. `resolve` maps a name to its addresses here (a parameter so tests need no DNS),
/// `is_local` says whether an address belongs to this machine.
pub fn location_report(
    cfg: &HubConfig,
    engine: &EngineConnectionFile,
    client: &ClientConnectionFile,
    resolve: impl Fn(&str) -> std::io::Result<Vec<IpAddr>>,
    is_local: impl Fn(IpAddr) -> bool,
) -> LocationReport {
    let mut r = LocationReport::default();
    let t = &cfg.transport;
    let eh = remote_dial_host(&cfg.engine_ip, &engine.location);
    let ch = remote_dial_host(&cfg.client_ip, &client.location);
    let bcast: Vec<String> = engine.broadcast.iter().map(u16::to_string).collect();
    r.info.push(format!(
        "engines will dial {t}://{eh}: {} broadcast={}",
        ports(&[
            ("registration", engine.registration),
            ("control", engine.control),
            ("mux", engine.mux),
            ("task", engine.task),
            ("iopub", engine.iopub),
            ("hb_ping", engine.hb_ping),
            ("hb_pong", engine.hb_pong),
        ]),
        bcast.join(",")
    ));
    r.info.push(format!(
        "clients will dial {t}://{ch}: {}",
        ports(&[
            ("registration", client.registration),
            ("control", client.control),
            ("mux", client.mux),
            ("task", client.task),
            ("iopub", client.iopub),
            ("notification", client.notification),
            ("broadcast", client.broadcast),
        ])
    ));
    if t != "tcp" {
        return r;
    }
    let any_bound = is_any(&cfg.engine_ip) || is_any(&cfg.client_ip);
    if !any_bound {
        // Peers dial the bound address itself; the location is not used.
        return r;
    }
    let loc = engine.location.as_str();
    let addrs = match loc.parse::<IpAddr>() {
        Ok(a) => vec![a],
        Err(_) => match resolve(loc) {
            Ok(a) => a,
            Err(e) => {
                r.warnings.push(format!(
                    "--location={loc} does not resolve on this machine ({e}); engines and clients elsewhere must resolve it themselves"
                ));
                return r;
            }
        },
    };
    let shown: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
    if !addrs.is_empty() && addrs.iter().all(IpAddr::is_loopback) {
        r.warnings.push(format!(
            "the location {loc:?} resolves to loopback ({}) here, but the controller is bound to 0.0.0.0 for remote engines: \
             a peer that resolves it the same way dials its own machine (Debian maps the hostname to 127.0.1.1, ipython #8459). \
             Pass --location=<this machine's LAN address or DNS name>",
            shown.join(", ")
        ));
    } else if !addrs.iter().any(|a| is_local(*a)) {
        r.warnings.push(format!(
            "the location {loc:?} resolves to {} here, none of which is an address of this machine: engines and clients \
             will dial it and reach us only through NAT or a port forward",
            shown.join(", ")
        ));
    }
    r
}

/// The resolver `location_report` uses outside tests.
pub fn resolve_host(name: &str) -> std::io::Result<Vec<IpAddr>> {
    Ok((name, 0).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// Logs the start-up report: the dial addresses at info, problems as warnings (also on
/// stderr, as the loopback-bind warning is: people read a container's first lines).
pub fn log_location(cfg: &HubConfig, engine: &EngineConnectionFile, client: &ClientConnectionFile) {
    let r = location_report(cfg, engine, client, resolve_host, is_local_address);
    for l in &r.info {
        tracing::info!("{l}");
    }
    for w in &r.warnings {
        tracing::warn!("!!! {w}");
        eprintln!("\nWARNING: {w}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn fixed() -> HubConfig {
        HubConfig {
            ports: (21000..=21017).collect(),
            key: Some("k3y".into()),
            engine_ip: "0.0.0.0".into(),
            client_ip: "0.0.0.0".into(),
            location: Some("hub".into()),
            ..Default::default()
        }
    }

    #[test]
    fn flags_are_taken_out_and_the_rest_left_in_order() {
        let (a, rest) = take_flags(&args(&["--ip=0.0.0.0", "--print-connection-info", "engine", "--ports=1-20"])).expect("ok");
        assert_eq!(a, Some(DeployAction::PrintConnectionInfo(Which::Engine)));
        assert_eq!(rest, args(&["--ip=0.0.0.0", "--ports=1-20"]));
        let (a, _) = take_flags(&args(&["--probe=http://h:1/readyz", "--probe-timeout=0.5"])).expect("ok");
        assert_eq!(a, Some(DeployAction::Probe { url: "http://h:1/readyz".into(), timeout: Duration::from_millis(500) }));
        assert_eq!(take_flags(&args(&["--hwm=2"])).expect("ok").0, None);
        assert!(take_flags(&args(&["--print-connection-info=both"])).is_err());
        assert!(take_flags(&args(&["--probe"])).is_err());
        assert!(take_flags(&args(&["--probe=x:1", "--probe-timeout=-1"])).is_err());
        assert!(take_flags(&args(&["--probe=x:1", "--print-connection-info=client"])).is_err());
    }

    #[test]
    fn connection_info_is_deterministic_and_in_port_order() {
        let cfg = fixed();
        let a = connection_info(&cfg, Which::Engine).expect("engine");
        assert_eq!(a, connection_info(&cfg, Which::Engine).expect("again"));
        let e: serde_json::Value = serde_json::from_str(&a).expect("json");
        assert_eq!((e["registration"].as_u64(), e["hb_pong"].as_u64()), (Some(21000), Some(21006)));
        assert_eq!(e["broadcast"], serde_json::json!([21007, 21008]));
        assert_eq!((e["interface"].as_str(), e["location"].as_str(), e["key"].as_str()), (Some("tcp://0.0.0.0"), Some("hub"), Some("k3y")));
        assert_eq!((e["pack"].as_str(), e["signature_scheme"].as_str()), (Some("msgpack"), Some("hmac-sha256")));
        let c: serde_json::Value = serde_json::from_str(&connection_info(&cfg, Which::Client).expect("client")).expect("json");
        assert_eq!((c["control"].as_u64(), c["notification"].as_u64(), c["broadcast"].as_u64()), (Some(21009), Some(21013), Some(21014)));
        assert_eq!(c["task_scheme"].as_str(), Some("leastload"));
    }

    #[test]
    fn connection_info_refuses_what_would_differ_between_starts() {
        let mut cfg = fixed();
        cfg.ports = (21000..=21010).collect(); // too few: the client ports would be random
        assert!(matches!(connection_info(&cfg, Which::Client), Err(DeployError::PortsNotFixed(_))));
        let mut cfg = fixed();
        cfg.key = None;
        assert!(matches!(connection_info(&cfg, Which::Engine), Err(DeployError::NoKey)));
        cfg.secure = false;
        assert!(connection_info(&cfg, Which::Engine).is_ok_and(|j| j.contains("\"key\":\"\"")));
        let dir = tempfile::tempdir().expect("tmp");
        let kf = dir.path().join("key");
        std::fs::write(&kf, "from-file\n").expect("write");
        let cfg = HubConfig { key: None, keyfile: Some(kf), ..fixed() };
        assert!(connection_info(&cfg, Which::Engine).is_ok_and(|j| j.contains("\"key\":\"from-file\"")));
        let cfg = HubConfig { reuse: true, ..fixed() };
        assert!(matches!(connection_info(&cfg, Which::Engine), Err(DeployError::Reuse)));
    }

    fn report(cfg: &HubConfig, resolved: &'static [&'static str], local: &'static [&'static str]) -> LocationReport {
        let (e, c) = connection_files(cfg).expect("files");
        location_report(
            cfg,
            &e,
            &c,
            |_| Ok(resolved.iter().map(|a| a.parse().expect("ip")).collect()),
            |a| local.iter().any(|l| l.parse::<IpAddr>().ok() == Some(a)),
        )
    }

    #[test]
    fn report_names_the_dialed_addresses() {
        let r = report(&fixed(), &["10.0.0.1"], &["10.0.0.1"]);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(r.info[0].starts_with("engines will dial tcp://hub: registration=21000 control=21001"), "{:?}", r.info);
        assert!(r.info[0].ends_with("broadcast=21007,21008"), "{:?}", r.info);
        assert!(r.info[1].starts_with("clients will dial tcp://hub: registration=21000 control=21009"), "{:?}", r.info);
        // bound to one address: peers dial that, whatever the location
        let cfg = HubConfig { engine_ip: "10.0.0.1".into(), client_ip: "10.0.0.1".into(), ..fixed() };
        let r = report(&cfg, &["127.0.1.1"], &[]);
        assert!(r.info[0].starts_with("engines will dial tcp://10.0.0.1:"), "{:?}", r.info);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn loopback_and_foreign_locations_warn() {
        // Debian's /etc/hosts: the hostname is 127.0.1.1
        let r = report(&fixed(), &["127.0.1.1"], &["127.0.1.1"]);
        assert!(r.warnings.len() == 1 && r.warnings[0].contains("resolves to loopback (127.0.1.1)"), "{:?}", r.warnings);
        let cfg = HubConfig { location: Some("127.0.0.1".into()), ..fixed() };
        assert!(report(&cfg, &[], &["127.0.0.1"]).warnings.iter().any(|w| w.contains("loopback")));
        let r = report(&fixed(), &["198.51.100.7"], &["10.0.0.1"]);
        assert!(r.warnings.len() == 1 && r.warnings[0].contains("none of which is an address of this machine"), "{:?}", r.warnings);
        // one of several addresses local: fine
        assert!(report(&fixed(), &["198.51.100.7", "10.0.0.1"], &["10.0.0.1"]).warnings.is_empty());
        let (e, c) = connection_files(&fixed()).expect("files");
        let r = location_report(&fixed(), &e, &c, |_| Err(std::io::Error::other("no such host")), |_| true);
        assert!(r.warnings.iter().any(|w| w.contains("does not resolve")), "{:?}", r.warnings);
    }

    #[test]
    fn local_addresses_are_found_by_binding() {
        assert!(is_local_address("127.0.0.1".parse().expect("ip")));
        // TEST-NET-2 (RFC 5737) is nobody's address
        assert!(!is_local_address("198.51.100.7".parse().expect("ip")));
    }

    #[test]
    fn probe_reads_the_status() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            for answer in ["HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n", "HTTP/1.1 503 Service Unavailable\r\n\r\nstarting\n", "garbage"] {
                let (mut s, _) = l.accept().expect("accept");
                let mut req = [0u8; 512];
                let n = s.read(&mut req).expect("read");
                assert!(String::from_utf8_lossy(&req[..n]).starts_with("GET /readyz HTTP/1.0\r\n"));
                s.write_all(answer.as_bytes()).expect("write");
            }
        });
        let url = format!("http://127.0.0.1:{port}/readyz");
        assert!(probe(&url, Duration::from_secs(5)).is_ok());
        let e = probe(&format!("127.0.0.1:{port}"), Duration::from_secs(5)).expect_err("503");
        assert!(matches!(&e, ProbeError::NotReady { status: 503, body, .. } if body == "starting"), "{e}");
        assert!(matches!(probe(&url, Duration::from_secs(5)), Err(ProbeError::Response(..))));
        server.join().expect("server");
        // nothing listens there any more
        assert!(matches!(probe(&url, Duration::from_secs(2)), Err(ProbeError::Connect(..))));
        assert!(matches!(probe("ftp://x:1/", Duration::from_secs(1)), Err(ProbeError::Url(_))));
        assert!(matches!(probe("http://nohost/", Duration::from_secs(1)), Err(ProbeError::Url(_))));
    }
}
