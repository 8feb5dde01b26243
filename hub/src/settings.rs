//! Layered configuration, lowest to highest:
//!
//! 1. built-in defaults;
//! 2. `ipcontroller_config.py` in the profile (simple `c.Class.trait = value` lines);
//! 3. `ippx.toml` in the profile, or the file given with `--config=PATH.toml`;
//! 4. the stock `IPP_*` / `IPYTHONDIR` environment;
//! 5. `IPPX_<SECTION>__<KEY>` environment variables (e.g. `IPPX_METRICS__ADDR`);
//! 6. the command line.
//!
//! Layers 3 and 5 go through the `config` crate. Its environment source splits the
//! prefix with the same separator as nested keys unless told otherwise, so the prefix
//! separator is set to `_` explicitly (a test covers it).
//!
//! `--print-config` shows every setting with the layer that last changed it.

use crate::cli::{self, Action, CliError, DbBackend, HubConfig};
use crate::profile::Profile;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `ippx.toml`. Unknown keys are errors, so a typo cannot pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLayer {
    #[serde(default)]
    pub controller: ControllerSection,
    #[serde(default)]
    pub heartbeat: HeartbeatSection,
    #[serde(default)]
    pub session: SessionSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub metrics: MetricsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    pub ip: Option<String>,
    pub engine_ip: Option<String>,
    pub client_ip: Option<String>,
    pub location: Option<String>,
    pub transport: Option<String>,
    pub ports: Option<Ports>,
    pub engine_ports: Option<Ports>,
    pub client_ports: Option<Ports>,
    pub scheme: Option<String>,
    pub hwm: Option<usize>,
    pub broadcast_depth: Option<u32>,
    pub registration_timeout: Option<f64>,
    pub no_scheduler: Option<bool>,
    pub scheduler_mode: Option<String>,
}

/// `"21000-21017"`, `"21000,21001"` or `[21000, 21001]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Ports {
    Text(String),
    List(Vec<u16>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatSection {
    pub period_ms: Option<u64>,
    pub max_misses: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    pub packer: Option<String>,
    pub signature_scheme: Option<String>,
    pub key: Option<String>,
    pub keyfile: Option<PathBuf>,
    /// CurveZMQ; the keys come from the environment or `--IPController.curve_*key` only,
    /// so a secret key is never in a file meant to be shared.
    pub enable_curve: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// dict, sqlite or none.
    pub backend: Option<String>,
    pub record_limit: Option<usize>,
    pub size_limit: Option<usize>,
    pub cull_fraction: Option<f64>,
    pub sqlite_filename: Option<String>,
    pub sqlite_max_age: Option<f64>,
    pub sqlite_max_records: Option<u64>,
    pub sqlite_max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub level: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub addr: Option<String>,
    pub scheduler_addr: Option<String>,
}

/// Parser errors can span several lines (TOML shows the offending source line); keep
/// the message lines and drop the excerpt, so the error is one line.
fn one_line(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.split_once('|').is_some_and(|(n, _)| n.trim().chars().all(|c| c.is_ascii_digit())))
        .collect();
    parts.join(": ")
}

fn err(key: &str, reason: impl std::fmt::Display) -> CliError {
    CliError(format!("invalid config: {key}: {reason}"))
}

/// Sets `key` (a TOML key, for the error) through the trait `name`, so the file, the
/// environment and the command line share every parse and check ([`cli::apply_trait`]).
fn put(cfg: &mut HubConfig, key: &str, name: &str, v: Option<impl ToString>) -> Result<(), CliError> {
    if let Some(v) = v {
        cli::apply_trait(cfg, name, &v.to_string()).map_err(|e| err(key, e.0.split_once(": ").map_or(e.0.as_str(), |(_, r)| r)))?;
    }
    Ok(())
}

impl FileLayer {
    /// Applies every value present onto `cfg`, checking each as the command line would.
    pub fn apply(self, cfg: &mut HubConfig) -> Result<(), CliError> {
        let c = self.controller;
        put(cfg, "controller.ip", "IPController.ip", c.ip)?;
        put(cfg, "controller.engine_ip", "IPController.engine_ip", c.engine_ip)?;
        put(cfg, "controller.client_ip", "IPController.client_ip", c.client_ip)?;
        put(cfg, "controller.location", "IPController.location", c.location)?;
        put(cfg, "controller.transport", "IPController.transport", c.transport)?;
        for (key, name, ports) in [
            ("controller.ports", "IPController.ports", c.ports),
            ("controller.engine_ports", "IPController.engine_ports", c.engine_ports),
            ("controller.client_ports", "IPController.client_ports", c.client_ports),
        ] {
            let text = ports.map(|p| match p {
                Ports::Text(t) => t,
                Ports::List(l) => l.iter().map(u16::to_string).collect::<Vec<_>>().join(","),
            });
            put(cfg, key, name, text)?;
        }
        put(cfg, "controller.scheme", "TaskScheduler.scheme_name", c.scheme)?;
        put(cfg, "controller.hwm", "TaskScheduler.hwm", c.hwm)?;
        put(cfg, "controller.broadcast_depth", "IPController.broadcast_scheduler_depth", c.broadcast_depth)?;
        put(cfg, "controller.registration_timeout", "IPController.registration_timeout", c.registration_timeout)?;
        set(&mut cfg.no_scheduler, c.no_scheduler);
        put(cfg, "controller.scheduler_mode", "IPPX.scheduler_mode", c.scheduler_mode)?;

        put(cfg, "heartbeat.period_ms", "HeartMonitor.period", self.heartbeat.period_ms)?;
        put(cfg, "heartbeat.max_misses", "HeartMonitor.max_heartmonitor_misses", self.heartbeat.max_misses)?;

        let s = self.session;
        put(cfg, "session.packer", "Session.packer", s.packer)?;
        put(cfg, "session.signature_scheme", "Session.signature_scheme", s.signature_scheme)?;
        put(cfg, "session.key", "Session.key", s.key)?;
        put(cfg, "session.keyfile", "Session.keyfile", s.keyfile.map(|p| p.display().to_string()))?;
        put(cfg, "session.enable_curve", "IPController.enable_curve", s.enable_curve)?;

        let st = self.store;
        if let Some(b) = st.backend {
            cfg.db = match b.to_ascii_lowercase().as_str() {
                "dict" | "dictdb" | "memory" => DbBackend::Dict,
                "sqlite" | "sqlitedb" => DbBackend::Sqlite,
                "none" | "nodb" => DbBackend::None,
                other => return Err(err("store.backend", format!("{other:?} is not one of dict, sqlite, none"))),
            };
        }
        put(cfg, "store.record_limit", "DictDB.record_limit", st.record_limit)?;
        put(cfg, "store.size_limit", "DictDB.size_limit", st.size_limit)?;
        put(cfg, "store.cull_fraction", "DictDB.cull_fraction", st.cull_fraction)?;
        put(cfg, "store.sqlite_filename", "SQLiteDB.filename", st.sqlite_filename)?;
        put(cfg, "store.sqlite_max_age", "SQLiteDB.max_age", st.sqlite_max_age)?;
        put(cfg, "store.sqlite_max_records", "SQLiteDB.max_records", st.sqlite_max_records)?;
        put(cfg, "store.sqlite_max_bytes", "SQLiteDB.max_bytes", st.sqlite_max_bytes)?;

        put(cfg, "log.level", "Application.log_level", self.log.level)?;
        put(cfg, "log.format", "IPPX.log_format", self.log.format)?;
        put(cfg, "metrics.addr", "IPPX.metrics_addr", self.metrics.addr)?;
        put(cfg, "metrics.scheduler_addr", "IPPX.scheduler_metrics_addr", self.metrics.scheduler_addr)?;
        Ok(())
    }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

/// One config file, through the `config` crate. A missing file is an empty layer.
pub fn read_file(path: &Path) -> Result<FileLayer, CliError> {
    if !path.exists() {
        return Ok(FileLayer::default());
    }
    let text = std::fs::read_to_string(path).map_err(|e| CliError(format!("invalid config: {}: {e}", path.display())))?;
    parse_toml(&text).map_err(|e| CliError(format!("invalid config: {}: {}", path.display(), e.0)))
}

/// One config file's text (TOML), as [`read_file`] reads it.
pub fn parse_toml(text: &str) -> Result<FileLayer, CliError> {
    let c =
        config::Config::builder().add_source(config::File::from_str(text, config::FileFormat::Toml)).build().map_err(|e| CliError(one_line(e)))?;
    c.try_deserialize().map_err(|e| CliError(one_line(e)))
}

/// The `IPPX_<SECTION>__<KEY>` variables among `vars`. Only names with the section
/// separator are settings: `IPPX_SESSION_KEY` (the key handed to the scheduler) and
/// other single-level names are not.
pub fn read_env(vars: &[(String, String)]) -> Result<FileLayer, CliError> {
    let map: config::Map<String, String> = vars.iter().filter(|(k, _)| k.starts_with("IPPX_") && k.contains("__")).cloned().collect();
    if map.is_empty() {
        return Ok(FileLayer::default());
    }
    let env = config::Environment::with_prefix("IPPX").prefix_separator("_").separator("__").try_parsing(true).source(Some(map));
    let c = config::Config::builder().add_source(env).build().map_err(|e| CliError(format!("invalid config: environment: {}", one_line(e))))?;
    c.try_deserialize().map_err(|e| CliError(format!("invalid config: environment (IPPX_*): {}", one_line(e))))
}

/// Every setting as `section.key` → value, for `--print-config` and source tracking.
pub fn flatten(c: &HubConfig) -> BTreeMap<&'static str, String> {
    let ports = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut m = BTreeMap::new();
    m.insert("profile.name", c.profile.clone());
    m.insert("profile.dir", c.profile_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
    m.insert("profile.ipython_dir", c.ipython_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
    m.insert("controller.cluster_id", c.cluster_id.clone());
    m.insert("controller.engine_ip", c.engine_ip.clone());
    m.insert("controller.client_ip", c.client_ip.clone());
    m.insert("controller.location", opt(&c.location));
    m.insert("controller.transport", c.transport.clone());
    m.insert("controller.ports", ports(&c.ports));
    m.insert("controller.engine_ports", ports(&c.engine_ports));
    m.insert("controller.client_ports", ports(&c.client_ports));
    m.insert("controller.scheme", c.scheme.to_string());
    m.insert("controller.hwm", c.hwm.to_string());
    m.insert("controller.broadcast_depth", c.broadcast_depth.to_string());
    m.insert("controller.registration_timeout", c.registration_timeout.map(|t| t.to_string()).unwrap_or_default());
    m.insert("controller.no_scheduler", c.no_scheduler.to_string());
    m.insert("controller.scheduler_mode", c.scheduler_mode.to_string());
    m.insert("controller.reuse", c.reuse.to_string());
    m.insert("controller.restore", c.restore.to_string());
    m.insert("heartbeat.period_ms", c.ping_ms.to_string());
    m.insert("heartbeat.max_misses", c.max_misses.to_string());
    m.insert("session.packer", c.packer.to_string());
    m.insert("session.signature_scheme", c.signature_scheme.clone());
    m.insert("session.key", if c.key.as_deref().is_some_and(|k| !k.is_empty()) { "<set>".into() } else { String::new() });
    m.insert("session.keyfile", c.keyfile.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
    m.insert("session.secure", c.secure.to_string());
    m.insert("session.enable_curve", c.enable_curve.to_string());
    m.insert("session.curve_keys", if c.curve_secretkey.is_some() { "<set>".into() } else { String::new() });
    let backend = match c.db {
        DbBackend::Dict => "dict",
        DbBackend::Sqlite => "sqlite",
        DbBackend::None => "none",
    };
    m.insert("store.backend", backend.into());
    m.insert("store.record_limit", c.record_limit.to_string());
    m.insert("store.size_limit", c.size_limit.to_string());
    m.insert("store.cull_fraction", c.cull_fraction.to_string());
    m.insert("store.sqlite_filename", c.sqlite_filename.clone());
    m.insert("store.sqlite_max_age", c.sqlite_max_age.to_string());
    m.insert("store.sqlite_max_records", c.sqlite_max_records.to_string());
    m.insert("store.sqlite_max_bytes", c.sqlite_max_bytes.to_string());
    m.insert("log.level", c.log_level.clone());
    m.insert("log.format", c.log_format.to_string());
    m.insert("metrics.addr", opt(&c.metrics_addr));
    m.insert("metrics.scheduler_addr", cli::scheduler_metrics_addr(c).unwrap_or_default());
    m
}

/// The effective configuration and where each value came from.
#[derive(Debug)]
pub struct Loaded {
    pub cfg: HubConfig,
    pub action: Action,
    pub print_config: bool,
    pub sources: BTreeMap<&'static str, String>,
}

/// Builds the configuration from every layer. `vars` is the process environment.
pub fn load(args: &[String], vars: &[(String, String)]) -> Result<Loaded, CliError> {
    let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let print_config = args.iter().any(|a| a == "--print-config");
    let args: Vec<String> = args.iter().filter(|a| *a != "--print-config").cloned().collect();
    // A first pass finds the profile (and --config), which locate the files.
    let mut pre = HubConfig::default();
    cli::apply_env(&mut pre, get);
    let action = cli::parse_args(&mut pre, &args)?;
    if action != Action::Run {
        return Ok(Loaded { cfg: pre, action, print_config, sources: BTreeMap::new() });
    }
    let home = get("HOME").map(PathBuf::from);
    let profile = Profile::resolve(&pre, home);
    let toml_path = pre.config_file.clone().filter(|p| p.extension().is_some_and(|e| e == "toml")).unwrap_or_else(|| profile.dir.join("ippx.toml"));
    let py_path = pre.config_file.clone().filter(|p| p.extension().is_some_and(|e| e == "py")).unwrap_or_else(|| profile.config_file());

    let mut sources: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut cfg = HubConfig::default();
    let mut last = flatten(&cfg);
    for k in last.keys() {
        sources.insert(k, "default".into());
    }
    let mut mark = |cfg: &HubConfig, layer: &str, sources: &mut BTreeMap<&'static str, String>| {
        let now = flatten(cfg);
        for (k, v) in &now {
            if last.get(k) != Some(v) {
                sources.insert(k, layer.to_owned());
            }
        }
        last = now;
    };
    cli::apply_config_file(&mut cfg, &py_path)?;
    mark(&cfg, &format!("file {}", py_path.display()), &mut sources);
    read_file(&toml_path)?.apply(&mut cfg)?;
    mark(&cfg, &format!("file {}", toml_path.display()), &mut sources);
    cli::apply_env(&mut cfg, get);
    mark(&cfg, "env IPP_*", &mut sources);
    read_env(vars)?.apply(&mut cfg)?;
    mark(&cfg, "env IPPX_*", &mut sources);
    cli::parse_args(&mut cfg, &args)?;
    mark(&cfg, "command line", &mut sources);
    cfg.validate()?;
    Ok(Loaded { cfg, action, print_config, sources })
}

/// `--print-config`: one `key = value  # source` line per setting.
pub fn render(loaded: &Loaded) -> String {
    let mut out = String::new();
    for (k, v) in flatten(&loaded.cfg) {
        let src = loaded.sources.get(k).map(String::as_str).unwrap_or("default");
        out.push_str(&format!("{k} = {v:?}  # {src}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn profile_with(toml: &str) -> (tempfile::TempDir, Vec<(String, String)>) {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("ippx.toml"), toml).expect("write");
        let vars = vec![("IPP_PROFILE_DIR".to_owned(), dir.path().display().to_string())];
        (dir, vars)
    }

    #[test]
    fn scheduler_mode_defaults_to_thread_and_layers() {
        use crate::cli::SchedulerMode;
        let (_d, mut vars) = profile_with("[controller]\nscheduler_mode = \"process\"\n");
        assert_eq!(load(&[], &[]).expect("load").cfg.scheduler_mode, SchedulerMode::Thread);
        assert_eq!(load(&[], &vars).expect("load").cfg.scheduler_mode, SchedulerMode::Process);
        vars.push(("IPPX_CONTROLLER__SCHEDULER_MODE".into(), "thread".into()));
        assert_eq!(load(&[], &vars).expect("load").cfg.scheduler_mode, SchedulerMode::Thread);
        let l = load(&args(&["--scheduler-mode=process"]), &vars).expect("load");
        assert_eq!(l.cfg.scheduler_mode, SchedulerMode::Process);
        let e = load(&args(&["--scheduler-mode=fork"]), &[]).expect_err("bad mode");
        assert!(e.to_string().contains("scheduler-mode"), "{e}");
    }

    #[test]
    fn env_overrides_file_including_nested_keys() {
        let (_d, mut vars) = profile_with("[heartbeat]\nperiod_ms = 200\n[metrics]\naddr = \"127.0.0.1:9000\"\n");
        let l = load(&[], &vars).expect("load");
        assert_eq!(l.cfg.ping_ms, 200);
        assert_eq!(l.cfg.metrics_addr.as_deref(), Some("127.0.0.1:9000"));
        vars.push(("IPPX_HEARTBEAT__PERIOD_MS".into(), "300".into()));
        vars.push(("IPPX_METRICS__ADDR".into(), "127.0.0.1:9100".into()));
        // Not a setting: the scheduler's key variable must not trip the parser.
        vars.push(("IPPX_SESSION_KEY".into(), "k".into()));
        let l = load(&[], &vars).expect("load");
        assert_eq!(l.cfg.ping_ms, 300);
        assert_eq!(l.cfg.metrics_addr.as_deref(), Some("127.0.0.1:9100"));
        assert_eq!(l.sources.get("heartbeat.period_ms").map(String::as_str), Some("env IPPX_*"));
        // and the command line beats both
        let l = load(&args(&["--ping=400"]), &vars).expect("load");
        assert_eq!(l.cfg.ping_ms, 400);
        assert_eq!(l.sources.get("heartbeat.period_ms").map(String::as_str), Some("command line"));
    }

    #[test]
    fn print_config_names_each_source() {
        let (d, mut vars) = profile_with("[store]\nbackend = \"sqlite\"\n");
        std::fs::write(d.path().join("ipcontroller_config.py"), "c.TaskScheduler.hwm = 0\n").expect("write");
        vars.push(("IPP_CLUSTER_ID".into(), "abc".into()));
        let l = load(&args(&["--print-config", "--scheme=lru"]), &vars).expect("load");
        assert!(l.print_config);
        let text = render(&l);
        assert!(text.contains("store.backend = \"sqlite\"  # file "), "{text}");
        assert!(text.contains("ippx.toml"), "{text}");
        assert!(text.contains("controller.hwm = \"0\"  # file "), "{text}");
        assert!(text.contains("controller.cluster_id = \"abc\"  # env IPP_*"), "{text}");
        assert!(text.contains("controller.scheme = \"lru\"  # command line"), "{text}");
        assert!(text.contains("heartbeat.period_ms = \"3000\"  # default"), "{text}");
    }

    #[test]
    fn invalid_config_is_one_clear_line_naming_the_key() {
        for (toml, key) in [
            ("[heartbeat]\nperiod_ms = \"fast\"\n", "period_ms"),
            ("[heartbeat]\nperiod = 200\n", "period"),
            ("[store]\nbackend = \"mongo\"\n", "store.backend"),
            ("[metrics]\naddr = \"nowhere\"\n", "metrics.addr"),
            ("[controller]\nscheme = \"fastest\"\n", "controller.scheme"),
            ("not toml at all [", "ippx.toml"),
        ] {
            let (_d, vars) = profile_with(toml);
            let e = load(&[], &vars).expect_err(toml).0;
            assert!(e.starts_with("invalid config: "), "{e}");
            assert!(e.contains(key), "{key} not in {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let (_d, mut vars) = profile_with("");
        vars.push(("IPPX_HEARTBEAT__PERIOD_MS".into(), "soon".into()));
        let e = load(&[], &vars).expect_err("env").0;
        assert!(e.contains("period_ms"), "{e}");
    }

    #[test]
    fn explicit_toml_path_with_config_flag() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("mine.toml");
        std::fs::write(&p, "[controller]\nhwm = 4\n").expect("write");
        let vars = vec![("IPP_PROFILE_DIR".to_owned(), dir.path().display().to_string())];
        let l = load(&args(&[&format!("--config={}", p.display())]), &vars).expect("load");
        assert_eq!(l.cfg.hwm, 4);
    }
}
