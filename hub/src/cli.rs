//! The `ipcontroller`-compatible command line, environment and `ipcontroller_config.py`.
//!
//! Hand-parsed rather than with clap: traitlets accepts `--Class.trait=value` for any
//! class, `--name value` as well as `--name=value`, and bare flags, and unknown traits
//! must warn rather than fail (docs/protocol.md §7.2). Everything funnels into [`apply_trait`], so a
//! trait set on the command line and in the config file behave the same.

use ippx_protocol::Packer;
use ippx_scheduler::runner::TaskMode;
use ippx_telemetry::logging::LogFormat;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbBackend {
    Dict,
    Sqlite,
    None,
}

/// Where the scheduler runs. A thread keeps the monitor copies (three per load-balanced
/// task) in memory instead of sending them to the hub over TCP, which halves the
/// controller's CPU per task; a process isolates a scheduler crash from the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerMode {
    Thread,
    Process,
}

impl std::str::FromStr for SchedulerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "thread" => Ok(SchedulerMode::Thread),
            "process" => Ok(SchedulerMode::Process),
            _ => Err(format!("{s:?} is not thread or process")),
        }
    }
}

impl std::fmt::Display for SchedulerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SchedulerMode::Thread => "thread",
            SchedulerMode::Process => "process",
        })
    }
}

#[derive(Clone, Debug)]
pub struct HubConfig {
    pub profile: String,
    pub profile_dir: Option<PathBuf>,
    pub ipython_dir: Option<PathBuf>,
    pub cluster_id: String,
    pub log_level: String,
    pub ping_ms: u64,
    pub max_misses: u32,
    pub registration_timeout: Option<f64>,
    pub db: DbBackend,
    pub engine_ip: String,
    pub client_ip: String,
    pub monitor_ip: String,
    pub transport: String,
    pub location: Option<String>,
    pub regport: u16,
    pub ports: Vec<u16>,
    pub engine_ports: Vec<u16>,
    pub client_ports: Vec<u16>,
    pub scheme: TaskMode,
    pub hwm: usize,
    pub broadcast_depth: u32,
    pub reuse: bool,
    pub restore: bool,
    /// Re-admit engines whose heart stopped and came back (`--no-readmit`: stock's way).
    pub readmit: bool,
    pub packer: Packer,
    pub unpacker: Option<Packer>,
    pub key: Option<String>,
    pub keyfile: Option<PathBuf>,
    pub secure: bool,
    pub signature_scheme: String,
    pub username: Option<String>,
    /// CurveZMQ on every socket (`IPP_ENABLE_CURVE=1`, `IPController.enable_curve`).
    pub enable_curve: bool,
    /// The controller's CURVE key pair, Z85 (`IPP_CURVE_PUBLICKEY`/`IPP_CURVE_SECRETKEY`);
    /// generated at start when not given.
    pub curve_publickey: Option<String>,
    pub curve_secretkey: Option<String>,
    pub record_limit: usize,
    pub size_limit: usize,
    pub cull_fraction: f64,
    /// `--SQLiteDB.filename` (default `tasks.db`), relative to `sqlite_location`.
    pub sqlite_filename: String,
    /// `--SQLiteDB.location`: the directory of the file (default: the profile dir).
    pub sqlite_location: Option<PathBuf>,
    /// `--SQLiteDB.table` (default `ippx_tasks`; ippx's layout differs from stock's).
    pub sqlite_table: String,
    /// `--SQLiteDB.max_age=SECONDS`: drop records unchanged for longer (0 = keep).
    pub sqlite_max_age: f64,
    /// `--SQLiteDB.max_records=N`: keep the newest N records (0 = no limit).
    pub sqlite_max_records: u64,
    /// `--SQLiteDB.max_bytes=N`: keep at most N bytes of buffers (0 = no limit).
    pub sqlite_max_bytes: u64,
    /// `--SQLiteDB.synchronous=off|normal|full`.
    pub sqlite_synchronous: crate::store::sqlite::Synchronous,
    /// Do not start `ippx-scheduler`; it runs separately (needs fixed ports).
    pub no_scheduler: bool,
    /// `--scheduler-mode=thread|process`: run the scheduler on a thread of this process
    /// (default) or as an `ippx-scheduler` child process.
    pub scheduler_mode: SchedulerMode,
    /// `--metrics-addr`: serve /metrics, /healthz, /readyz here (off unless set).
    pub metrics_addr: Option<String>,
    /// `--scheduler-metrics-addr`: the /metrics of a scheduler child process (none unless
    /// set; a scheduler thread's metrics are in the hub's /metrics).
    pub scheduler_metrics_addr: Option<String>,
    /// `--log-format=text|json`.
    pub log_format: LogFormat,
    /// `--config=PATH`: an `ippx.toml` (or, ending in `.py`, an `ipcontroller_config.py`).
    pub config_file: Option<PathBuf>,
    pub scheduler_cmd: Option<PathBuf>,
    pub warnings: Vec<String>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            profile: "default".into(),
            profile_dir: None,
            ipython_dir: None,
            cluster_id: String::new(),
            log_level: "INFO".into(),
            ping_ms: 3000,
            max_misses: 10,
            registration_timeout: None,
            db: DbBackend::Dict,
            engine_ip: "127.0.0.1".into(),
            client_ip: "127.0.0.1".into(),
            monitor_ip: "127.0.0.1".into(),
            transport: "tcp".into(),
            location: None,
            regport: 0,
            ports: Vec::new(),
            engine_ports: Vec::new(),
            client_ports: Vec::new(),
            scheme: TaskMode::Balanced(ippx_scheduler::task::Scheme::LeastLoad),
            hwm: 1,
            broadcast_depth: 1,
            reuse: false,
            restore: false,
            readmit: true,
            packer: Packer::Msgpack,
            unpacker: None,
            key: None,
            keyfile: None,
            secure: true,
            signature_scheme: "hmac-sha256".into(),
            username: None,
            enable_curve: false,
            curve_publickey: None,
            curve_secretkey: None,
            record_limit: 1024,
            size_limit: 1 << 30,
            cull_fraction: 0.1,
            sqlite_filename: "tasks.db".into(),
            sqlite_location: None,
            sqlite_table: "ippx_tasks".into(),
            sqlite_max_age: 0.0,
            sqlite_max_records: 0,
            sqlite_max_bytes: 1 << 30,
            sqlite_synchronous: crate::store::sqlite::Synchronous::Normal,
            no_scheduler: false,
            scheduler_mode: SchedulerMode::Thread,
            metrics_addr: None,
            scheduler_metrics_addr: None,
            log_format: LogFormat::Text,
            config_file: None,
            scheduler_cmd: None,
            warnings: Vec::new(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Run,
    Help,
    Version,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

fn parse_num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, CliError> {
    v.trim().parse().map_err(|_| CliError(format!("--{name}: expected a number, got {v:?}")))
}

fn parse_bool(name: &str, v: &str) -> Result<bool, CliError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(CliError(format!("--{name}: expected True or False, got {v:?}"))),
    }
}

/// `21000-21017`, `21000,21001`, or a Python list literal `[21000, 21001]`.
pub fn parse_ports(name: &str, v: &str) -> Result<Vec<u16>, CliError> {
    let v = v.trim().trim_start_matches(['[', '(']).trim_end_matches([']', ')']);
    if v.is_empty() {
        return Ok(Vec::new());
    }
    if let Some((a, b)) = v.split_once('-') {
        let (a, b): (u16, u16) = (parse_num(name, a)?, parse_num(name, b)?);
        if a > b {
            return Err(CliError(format!("--{name}: empty range {v}")));
        }
        return Ok((a..=b).collect());
    }
    v.split(',').filter(|s| !s.trim().is_empty()).map(|s| parse_num(name, s)).collect()
}

fn unquote(v: &str) -> String {
    let t = v.trim();
    for q in ['"', '\''] {
        if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
            return t[1..t.len() - 1].to_owned();
        }
    }
    t.to_owned()
}

fn db_from_class(v: &str) -> Option<DbBackend> {
    let v = v.rsplit('.').next().unwrap_or(v).to_ascii_lowercase();
    match v.as_str() {
        "dictdb" => Some(DbBackend::Dict),
        "sqlitedb" => Some(DbBackend::Sqlite),
        "nodb" => Some(DbBackend::None),
        _ => None,
    }
}

/// Applies one `Class.trait = value`. Returns false for a trait we do not know.
pub fn apply_trait(cfg: &mut HubConfig, name: &str, raw: &str) -> Result<bool, CliError> {
    let v = unquote(raw);
    let trait_name = name.rsplit('.').next().unwrap_or(name);
    match name {
        "HeartMonitor.period" => {
            cfg.ping_ms = parse_num(name, &v)?;
            if cfg.ping_ms == 0 {
                return Err(CliError(format!("--{name}: must be positive")));
            }
        }
        "HeartMonitor.max_heartmonitor_misses" => cfg.max_misses = parse_num(name, &v)?,
        "IPController.ip" => {
            cfg.engine_ip.clone_from(&v);
            cfg.client_ip.clone_from(&v);
            cfg.monitor_ip = v;
        }
        "IPController.engine_ip" => cfg.engine_ip = v,
        "IPController.client_ip" => cfg.client_ip = v,
        "IPController.monitor_ip" => cfg.monitor_ip = v,
        "IPController.transport" | "IPController.engine_transport" | "IPController.client_transport" => cfg.transport = v,
        "IPController.location" => cfg.location = Some(v),
        "IPController.regport" => cfg.regport = parse_num(name, &v)?,
        "IPController.ports" => cfg.ports = parse_ports(name, &v)?,
        "IPController.engine_ports" => cfg.engine_ports = parse_ports(name, &v)?,
        "IPController.client_ports" => cfg.client_ports = parse_ports(name, &v)?,
        "IPController.broadcast_scheduler_depth" => {
            cfg.broadcast_depth = parse_num(name, &v)?;
            if !(1..=8).contains(&cfg.broadcast_depth) {
                return Err(CliError(format!("--{name}: must be between 1 and 8")));
            }
        }
        "IPController.registration_timeout" => cfg.registration_timeout = Some(parse_num(name, &v)?),
        "IPController.reuse_files" => cfg.reuse = parse_bool(name, &v)?,
        "IPController.restore_engines" => cfg.restore = parse_bool(name, &v)?,
        "IPController.enable_curve" => cfg.enable_curve = parse_bool(name, &v)?,
        "IPController.curve_publickey" => cfg.curve_publickey = Some(unquote_bytes(&v)),
        "IPController.curve_secretkey" => cfg.curve_secretkey = Some(unquote_bytes(&v)),
        "IPController.db_class" => {
            cfg.db = db_from_class(&v).ok_or_else(|| CliError(format!("--{name}: unsupported db class {v:?} (DictDB, SQLiteDB or NoDB)")))?
        }
        "TaskScheduler.scheme_name" => {
            cfg.scheme = v.parse().map_err(|e| CliError(format!("--{name}: {e}")))?;
        }
        "TaskScheduler.hwm" => cfg.hwm = parse_num(name, &v)?,
        "Session.packer" => cfg.packer = v.parse().map_err(|e| CliError(format!("--{name}: {e}")))?,
        "Session.unpacker" => cfg.unpacker = Some(v.parse().map_err(|e| CliError(format!("--{name}: {e}")))?),
        "Session.key" => cfg.key = Some(unquote_bytes(&v)),
        "Session.keyfile" => cfg.keyfile = Some(PathBuf::from(v)),
        "Session.signature_scheme" => cfg.signature_scheme = v,
        "Session.username" => cfg.username = Some(v),
        "DictDB.record_limit" => cfg.record_limit = parse_num(name, &v)?,
        "DictDB.size_limit" => cfg.size_limit = parse_num(name, &v)?,
        "DictDB.cull_fraction" => {
            cfg.cull_fraction = parse_num(name, &v)?;
            if !(0.0..=1.0).contains(&cfg.cull_fraction) {
                return Err(CliError(format!("--{name}: must be between 0 and 1")));
            }
        }
        "SQLiteDB.filename" => cfg.sqlite_filename = v,
        "SQLiteDB.location" => cfg.sqlite_location = (!v.is_empty()).then(|| PathBuf::from(v)),
        "SQLiteDB.table" => cfg.sqlite_table = v,
        "SQLiteDB.max_age" => cfg.sqlite_max_age = parse_num(name, &v)?,
        "SQLiteDB.max_records" => cfg.sqlite_max_records = parse_num(name, &v)?,
        "SQLiteDB.max_bytes" => cfg.sqlite_max_bytes = parse_num(name, &v)?,
        "SQLiteDB.synchronous" => {
            cfg.sqlite_synchronous =
                crate::store::sqlite::Synchronous::parse(&v).ok_or_else(|| CliError(format!("--{name}: expected off, normal or full, got {v:?}")))?
        }
        "BaseParallelApplication.cluster_id" | "IPController.cluster_id" => cfg.cluster_id = v,
        "BaseIPythonApplication.profile" | "ProfileDir.profile" => cfg.profile = v,
        "ProfileDir.location" => cfg.profile_dir = Some(PathBuf::from(v)),
        "BaseIPythonApplication.ipython_dir" => cfg.ipython_dir = Some(PathBuf::from(v)),
        "Application.log_level" | "IPController.log_level" => cfg.log_level = v,
        // ippx's own settings, named as traits so that every layer parses them here.
        "IPPX.readmit" => cfg.readmit = parse_bool(name, &v)?,
        "IPPX.log_format" => cfg.log_format = v.parse().map_err(|e| CliError(format!("--log-format: {e}")))?,
        "IPPX.scheduler_mode" => cfg.scheduler_mode = v.parse().map_err(|e| CliError(format!("--scheduler-mode: {e}")))?,
        "IPPX.metrics_addr" => cfg.metrics_addr = Some(parse_addr("metrics-addr", &v)?),
        "IPPX.scheduler_metrics_addr" => cfg.scheduler_metrics_addr = Some(parse_addr("scheduler-metrics-addr", &v)?),
        _ if trait_name == "log_level" => cfg.log_level = v,
        _ => return Ok(false),
    }
    Ok(true)
}

/// Aliases `--name=value` of ipcontroller, mapped to traits.
fn alias(name: &str) -> Option<&'static str> {
    Some(match name {
        "ip" => "IPController.ip",
        "transport" => "IPController.transport",
        "location" => "IPController.location",
        "port" => "IPController.regport",
        "ports" => "IPController.ports",
        "ping" => "HeartMonitor.period",
        "scheme" => "TaskScheduler.scheme_name",
        "hwm" => "TaskScheduler.hwm",
        "keyfile" => "Session.keyfile",
        "user" => "Session.username",
        "ident" => "Session.session",
        "packer" => "Session.packer",
        "unpacker" => "Session.unpacker",
        "cluster-id" => "BaseParallelApplication.cluster_id",
        "profile" => "BaseIPythonApplication.profile",
        "profile-dir" => "ProfileDir.location",
        "ipython-dir" => "BaseIPythonApplication.ipython_dir",
        "log-level" => "Application.log_level",
        _ => return None,
    })
}

/// Aliases that take a value but mean nothing to ippx.
const IGNORED_ALIASES: &[&str] = &["ssh", "enginessh", "work-dir", "log-to-file", "clean-logs", "log-url", "url"];

/// Parses argv (without the program name) into `cfg`, after the config file and the
/// environment have been applied, so the command line wins.
pub fn parse_args(cfg: &mut HubConfig, args: &[String]) -> Result<Action, CliError> {
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-').filter(|b| b.len() > 1)) else {
            if arg == "start" {
                continue; // `ipcontroller start` style subcommand
            }
            cfg.warnings.push(format!("ignoring positional argument {arg:?}"));
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        // Flags (no value).
        let flag: Option<fn(&mut HubConfig)> = match name {
            "help" | "h" | "help-all" => return Ok(Action::Help),
            "version" | "V" => return Ok(Action::Version),
            "debug" => Some(|c: &mut HubConfig| c.log_level = "DEBUG".into()),
            "quiet" => Some(|c: &mut HubConfig| c.log_level = "CRITICAL".into()),
            "dictdb" => Some(|c: &mut HubConfig| c.db = DbBackend::Dict),
            "sqlitedb" => Some(|c: &mut HubConfig| c.db = DbBackend::Sqlite),
            "nodb" => Some(|c: &mut HubConfig| c.db = DbBackend::None),
            "reuse" => Some(|c: &mut HubConfig| c.reuse = true),
            "restore" => Some(|c: &mut HubConfig| {
                c.restore = true;
                c.reuse = true;
            }),
            "secure" => Some(|c: &mut HubConfig| c.secure = true),
            "no-secure" => Some(|c: &mut HubConfig| c.secure = false),
            "no-scheduler" => Some(|c: &mut HubConfig| c.no_scheduler = true),
            "readmit" => Some(|c: &mut HubConfig| c.readmit = true),
            "no-readmit" => Some(|c: &mut HubConfig| c.readmit = false),
            "usethreads" | "init" | "log-to-file" | "clean-logs" => Some(|_: &mut HubConfig| {}),
            "mongodb" => Some(|c: &mut HubConfig| {
                c.warnings.push("--mongodb is not supported by ippx; using the in-memory store".into());
                c.db = DbBackend::Dict;
            }),
            _ => None,
        };
        if let Some(f) = flag {
            if inline.is_none() || matches!(name, "log-to-file" | "clean-logs") {
                f(cfg);
                continue;
            }
        }
        let take_value = |i: &mut usize| -> Result<String, CliError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None if *i < args.len() => {
                    *i += 1;
                    Ok(args[*i - 1].clone())
                }
                None => Err(CliError(format!("--{name} needs a value"))),
            }
        };
        if name == "scheduler-cmd" {
            cfg.scheduler_cmd = Some(PathBuf::from(take_value(&mut i)?));
            continue;
        }
        if name == "config" {
            cfg.config_file = Some(PathBuf::from(take_value(&mut i)?));
            continue;
        }
        if let Some(t) = match name {
            "metrics-addr" => Some("IPPX.metrics_addr"),
            "scheduler-metrics-addr" => Some("IPPX.scheduler_metrics_addr"),
            "scheduler-mode" => Some("IPPX.scheduler_mode"),
            "log-format" => Some("IPPX.log_format"),
            _ => None,
        } {
            apply_trait(cfg, t, &take_value(&mut i)?)?;
            continue;
        }
        if IGNORED_ALIASES.contains(&name) {
            let v = take_value(&mut i)?;
            cfg.warnings.push(format!("--{name}={v} has no effect in ippx"));
            continue;
        }
        if let Some(t) = alias(name) {
            let v = take_value(&mut i)?;
            if t == "Session.session" {
                continue;
            }
            // Errors name the option the user typed, not the trait behind it.
            apply_trait(cfg, t, &v).map_err(|e| CliError(e.0.replacen(&format!("--{t}"), &format!("--{name}"), 1)))?;
            continue;
        }
        if name.contains('.') {
            // --Class.trait=value: values are required inline or as the next argument.
            let v = take_value(&mut i)?;
            if !apply_trait(cfg, name, &v)? {
                cfg.warnings.push(format!("unknown option --{name}={v} ignored"));
            }
            continue;
        }
        return Err(CliError(format!("unrecognised option {arg:?} (see --help)")));
    }
    Ok(Action::Run)
}

impl HubConfig {
    /// Checks across settings, after every layer is applied (each value was checked by
    /// [`apply_trait`] as it was set, whichever layer set it).
    pub fn validate(&self) -> Result<(), CliError> {
        if let Some(u) = self.unpacker {
            if u != self.packer {
                return Err(CliError("Session.packer and Session.unpacker must name the same format".into()));
            }
        }
        Ok(())
    }

    /// The store this configuration asks for; `profile_dir` is where the SQLite file
    /// goes unless `--SQLiteDB.location` says otherwise (stock's default too).
    pub fn store_config(&self, profile_dir: &Path, batch_seconds: prometheus_client::metrics::histogram::Histogram) -> crate::store::StoreConfig {
        use crate::store::{sqlite::SqliteConfig, StoreConfig};
        match self.db {
            DbBackend::Dict => StoreConfig::Memory(crate::records::Limits {
                record_limit: self.record_limit,
                size_limit: self.size_limit,
                cull_fraction: self.cull_fraction,
            }),
            DbBackend::None => StoreConfig::None,
            DbBackend::Sqlite => {
                let dir = self.sqlite_location.clone().unwrap_or_else(|| profile_dir.to_path_buf());
                let mut c = SqliteConfig::new(dir.join(&self.sqlite_filename));
                c.table.clone_from(&self.sqlite_table);
                c.max_age = (self.sqlite_max_age > 0.0).then(|| std::time::Duration::from_secs_f64(self.sqlite_max_age));
                c.max_records = (self.sqlite_max_records > 0).then_some(self.sqlite_max_records);
                c.max_bytes = (self.sqlite_max_bytes > 0).then_some(self.sqlite_max_bytes);
                c.synchronous = self.sqlite_synchronous;
                c.batch_seconds = Some(batch_seconds);
                StoreConfig::Sqlite(c)
            }
        }
    }
}

/// `host:port` with a numeric port, as `--metrics-addr` takes it.
pub fn parse_addr(name: &str, v: &str) -> Result<String, CliError> {
    let v = v.trim();
    match v.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(v.to_owned()),
        _ => Err(CliError(format!("--{name}: expected host:port such as 127.0.0.1:9810, got {v:?}"))),
    }
}

/// The scheduler child's metrics address (`--scheduler-mode=process`): only when given,
/// so that every port the controller listens on is named by a flag (issue 13). A
/// scheduler on a thread is served by the hub's own `/metrics`.
pub fn scheduler_metrics_addr(cfg: &HubConfig) -> Option<String> {
    cfg.scheduler_metrics_addr.clone()
}

/// `IPP_*` variables the stock controller reads (docs/protocol.md §7.2).
pub fn apply_env(cfg: &mut HubConfig, get: impl Fn(&str) -> Option<String>) {
    if let Some(v) = get("IPYTHONDIR").filter(|v| !v.is_empty()) {
        cfg.ipython_dir = Some(PathBuf::from(v));
    }
    if let Some(v) = get("IPP_PROFILE_DIR").filter(|v| !v.is_empty()) {
        cfg.profile_dir = Some(PathBuf::from(v));
    }
    if let Some(v) = get("IPP_CLUSTER_ID").filter(|v| !v.is_empty()) {
        cfg.cluster_id = v;
    }
    if let Some(v) = get("IPP_SESSION_KEY") {
        cfg.key = Some(v);
    }
    // As ipcontroller: only "1" turns it on.
    if get("IPP_ENABLE_CURVE").is_some_and(|v| v == "1") {
        cfg.enable_curve = true;
    }
    if let Some(v) = get("IPP_CURVE_PUBLICKEY").filter(|v| !v.is_empty()) {
        cfg.curve_publickey = Some(v);
    }
    if let Some(v) = get("IPP_CURVE_SECRETKEY").filter(|v| !v.is_empty()) {
        cfg.curve_secretkey = Some(v);
    }
}

/// A traitlets `Bytes` value as a config file or command line writes it: `b'...'` or plain.
fn unquote_bytes(v: &str) -> String {
    v.trim_start_matches("b'").trim_end_matches('\'').to_owned()
}

/// Applies simple `c.Class.trait = literal` lines of an `ipcontroller_config.py`.
/// Anything else in the file (imports, expressions) is reported and skipped.
pub fn apply_config_file(cfg: &mut HubConfig, path: &Path) -> Result<(), CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CliError(format!("{}: {e}", path.display()))),
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with("c = get_config") || line.starts_with("import ") || line.starts_with("from ") {
            continue;
        }
        let parsed = line
            .strip_prefix("c.")
            .and_then(|rest| rest.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(k, _)| k.matches('.').count() == 1);
        match parsed {
            Some((k, v)) => {
                let v = if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") { v.to_ascii_lowercase() } else { v.to_owned() };
                match apply_trait(cfg, k, &v) {
                    Ok(true) => {}
                    Ok(false) => cfg.warnings.push(format!("{}:{}: unknown setting {k} ignored", path.display(), n + 1)),
                    Err(e) => return Err(CliError(format!("{}:{}: {e}", path.display(), n + 1))),
                }
            }
            None => cfg.warnings.push(format!("{}:{}: not a simple `c.Class.trait = value` line; skipped", path.display(), n + 1)),
        }
    }
    Ok(())
}

/// Maps ipcontroller's numeric or named levels to a tracing filter.
pub fn tracing_level(level: &str) -> &'static str {
    match level.trim().to_ascii_uppercase().as_str() {
        "0" | "5" | "TRACE" => "trace",
        "10" | "DEBUG" => "debug",
        "20" | "INFO" => "info",
        "30" | "WARN" | "WARNING" => "warn",
        "40" | "ERROR" | "50" | "CRITICAL" | "FATAL" => "error",
        other => match other.parse::<u32>() {
            Ok(n) if n < 10 => "trace",
            Ok(n) if n < 20 => "debug",
            Ok(n) if n < 30 => "info",
            Ok(n) if n < 40 => "warn",
            _ => "error",
        },
    }
}

/// `--help`: [`HELP`] with the scheme names filled in from the scheme type.
pub fn help() -> String {
    HELP.replace("{schemes}", &TaskMode::names().join(", "))
}

const HELP: &str = "\
ippx-hub: a Rust IPython Parallel controller, command-line compatible with ipcontroller.

Usage: ippx-hub [options]

  --profile=NAME          profile name (default: default)
  --profile-dir=PATH      profile directory (or $IPP_PROFILE_DIR)
  --ipython-dir=PATH      IPython directory (or $IPYTHONDIR, default ~/.ipython)
  --cluster-id=ID         connection file infix (or $IPP_CLUSTER_ID)
  --ip=IP                 address to bind (default 127.0.0.1; use 0.0.0.0 for remote engines)
  --location=HOST         hostname peers use when --ip is 0.0.0.0
  --transport=tcp         zmq transport
  --port=N                registration port
  --ports=A-B|LIST        fixed ports for all sockets
  --ping=MS               heartbeat period in ms (default 3000)
  --log-level=N|NAME      10/DEBUG, 20/INFO, 30/WARN, 40/ERROR
  --dictdb | --sqlitedb | --nodb   result store (default: in memory)
  --DictDB.record_limit=N, --DictDB.size_limit=BYTES, --DictDB.cull_fraction=F
  --SQLiteDB.filename=NAME, --SQLiteDB.location=DIR   (default <profile>/tasks.db)
  --SQLiteDB.max_age=SECONDS, --SQLiteDB.max_records=N, --SQLiteDB.max_bytes=BYTES
                          SQLite retention (0 = off; max_bytes defaults to 1 GiB)
  --SQLiteDB.synchronous=off|normal|full   durability of commits (default normal)
  --scheme=NAME           {schemes}
  --hwm=N                 tasks an engine may hold (default 1, 0 = unlimited)
  --reuse, --restore      reuse connection files / restore engines after a crash
  --no-readmit            an engine declared dead stays out when its heart answers
                          again (stock); by default it is re-admitted under its id
  --Session.packer=NAME   msgpack (default) or json
  --Session.key=KEY, --keyfile=PATH, --no-secure
  --IPController.enable_curve=True   CurveZMQ on every socket (or $IPP_ENABLE_CURVE=1); the
                          public key goes in the connection files, messages are not signed
                          (unless a key is given); keys from $IPP_CURVE_PUBLICKEY and
                          $IPP_CURVE_SECRETKEY (or --IPController.curve_*key), else generated
  --Class.trait=VALUE     any ipcontroller trait; unknown ones are ignored with a warning
  --no-scheduler          do not start ippx-scheduler (run it yourself; needs --ports)
  --scheduler-mode=thread|process   run the scheduler on a thread of ippx-hub (default:
                          monitor copies stay in memory) or as an ippx-scheduler child
  --scheduler-cmd=PATH    ippx-scheduler binary for process mode (default: next to ippx-hub)
  --metrics-addr=H:P      serve Prometheus /metrics, /healthz, /readyz (off unless set)
  --scheduler-metrics-addr=H:P   with --scheduler-mode=process, the scheduler child's
                          /metrics (none unless set; on a thread, the hub's /metrics has them)
  --print-connection-info=engine|client   print the JSON for $IPP_CONNECTION_INFO or
                          Client(dict) and exit (needs fixed --ports and $IPP_SESSION_KEY/--keyfile)
  --probe=URL             exit 0 iff URL (e.g. http://127.0.0.1:9810/readyz) answers 200
                          (--probe-timeout=SECONDS, default 2); a healthcheck without curl
  --log-format=text|json  log lines as text (default) or JSON
  --config=PATH           an ippx.toml (default <profile>/ippx.toml) or an ipcontroller_config.py
  --print-config          print every setting and where it came from, then exit

Layers, lowest first: defaults, <profile>/ipcontroller_config.py, ippx.toml,
$IPP_* / $IPYTHONDIR, $IPPX_<SECTION>__<KEY> (e.g. IPPX_METRICS__ADDR), the command line.
  --version, --help

Config: simple `c.Class.trait = value` lines of <profile>/ipcontroller_config.py are read.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn test_suite_command_line() {
        let mut c = HubConfig::default();
        let a = parse_args(&mut c, &args(&["--profile=iptest", "--log-level=10", "--ping=250", "--dictdb"])).expect("ok");
        assert_eq!(a, Action::Run);
        assert_eq!((c.profile.as_str(), c.ping_ms, c.db), ("iptest", 250, DbBackend::Dict));
        assert_eq!(tracing_level(&c.log_level), "debug");
    }

    #[test]
    fn separate_values_session_flags_and_unknown_traits() {
        let mut c = HubConfig::default();
        parse_args(
            &mut c,
            &args(&["--ip", "0.0.0.0", "--Session.packer=json", "--Foo.bar=1", "--IPController.broadcast_scheduler_depth=2", "--nodb"]),
        )
        .expect("ok");
        assert_eq!(c.engine_ip, "0.0.0.0");
        assert_eq!(c.packer, Packer::Json);
        assert_eq!(c.broadcast_depth, 2);
        assert_eq!(c.db, DbBackend::None);
        assert!(c.warnings.iter().any(|w| w.contains("Foo.bar")));
    }

    #[test]
    fn bad_values_are_errors_not_panics() {
        let mut c = HubConfig::default();
        assert!(parse_args(&mut c, &args(&["--ping=fast"])).is_err());
        assert!(parse_args(&mut c, &args(&["--bogus"])).is_err());
        assert!(parse_args(&mut c, &args(&["--ping"])).is_err());
    }

    #[test]
    fn sqlite_traits() {
        let mut c = HubConfig::default();
        parse_args(
            &mut c,
            &args(&[
                "--sqlitedb",
                "--SQLiteDB.filename=t.db",
                "--SQLiteDB.location=/tmp/x",
                "--SQLiteDB.max_age=3600",
                "--SQLiteDB.max_records=1000",
                "--SQLiteDB.max_bytes=0",
                "--SQLiteDB.synchronous=full",
            ]),
        )
        .expect("ok");
        assert_eq!(c.db, DbBackend::Sqlite);
        assert_eq!((c.sqlite_filename.as_str(), c.sqlite_location.as_deref()), ("t.db", Some(Path::new("/tmp/x"))));
        assert_eq!((c.sqlite_max_age, c.sqlite_max_records, c.sqlite_max_bytes), (3600.0, 1000, 0));
        assert_eq!(c.sqlite_synchronous, crate::store::sqlite::Synchronous::Full);
        assert!(parse_args(&mut c, &args(&["--SQLiteDB.synchronous=sometimes"])).is_err());
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn ports_forms() {
        assert_eq!(parse_ports("p", "10-12").ok(), Some(vec![10, 11, 12]));
        assert_eq!(parse_ports("p", "[10, 12]").ok(), Some(vec![10, 12]));
        assert!(parse_ports("p", "12-10").is_err());
    }

    #[test]
    fn config_file_lines_then_cli_wins() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("ipcontroller_config.py");
        std::fs::write(
            &p,
            "c = get_config()\nc.HeartMonitor.period = 200\nc.TaskScheduler.hwm = 0  # unlimited\nc.IPController.reuse_files = True\nprint('x')\n",
        )
        .expect("write");
        let mut c = HubConfig::default();
        apply_config_file(&mut c, &p).expect("ok");
        assert_eq!((c.ping_ms, c.hwm, c.reuse), (200, 0, true));
        assert!(c.warnings.iter().any(|w| w.contains(":5:")));
        parse_args(&mut c, &args(&["--ping=250"])).expect("ok");
        assert_eq!(c.ping_ms, 250);
    }

    #[test]
    fn env_sets_profile_dir_cluster_and_key() {
        let mut c = HubConfig::default();
        apply_env(&mut c, |k| match k {
            "IPP_PROFILE_DIR" => Some("/tmp/p".into()),
            "IPP_CLUSTER_ID" => Some("abc".into()),
            "IPP_SESSION_KEY" => Some("k".into()),
            _ => None,
        });
        assert_eq!(c.profile_dir.as_deref(), Some(Path::new("/tmp/p")));
        assert_eq!((c.cluster_id.as_str(), c.key.as_deref()), ("abc", Some("k")));
    }

    #[test]
    fn curve_is_on_only_for_ipp_enable_curve_1_and_takes_keys_from_env() {
        let mut c = HubConfig::default();
        apply_env(&mut c, |k| (k == "IPP_ENABLE_CURVE").then(|| "yes".into()));
        assert!(!c.enable_curve, "ipcontroller enables CURVE only for \"1\"");
        apply_env(&mut c, |k| match k {
            "IPP_ENABLE_CURVE" => Some("1".into()),
            "IPP_CURVE_PUBLICKEY" => Some("P".into()),
            "IPP_CURVE_SECRETKEY" => Some("S".into()),
            _ => None,
        });
        assert!(c.enable_curve);
        assert_eq!((c.curve_publickey.as_deref(), c.curve_secretkey.as_deref()), (Some("P"), Some("S")));
        let mut d = HubConfig::default();
        parse_args(&mut d, &args(&["--IPController.enable_curve=True", "--IPController.curve_secretkey=b'S'"])).expect("ok");
        assert!(d.enable_curve);
        assert_eq!(d.curve_secretkey.as_deref(), Some("S"));
        let shown = crate::settings::flatten(&d);
        assert_eq!(shown["session.curve_keys"], "<set>", "--print-config never shows a secret key");
    }
}
