//! `ipengine`'s command line: traitlets-style `--name=value` / `--name value` options,
//! `--Class.trait=value` settings and a few flags. Hand-parsed rather than with clap
//! because traitlets' grammar (any `--Class.trait=value`, `-c`/`--c` aliases, options given
//! by the launcher we do not know in advance) is not clap's; unknown settings must warn
//! and be ignored, as ipengine does, not fail.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct EngineArgs {
    pub profile: String,
    pub profile_dir: Option<PathBuf>,
    pub ipython_dir: Option<PathBuf>,
    pub cluster_id: String,
    pub url_file: Option<PathBuf>,
    /// Seconds to wait for the registration reply (`IPEngine.timeout`).
    pub reg_timeout: Duration,
    /// How long to wait for the connection file to appear (`IPEngine.wait_for_url_file`).
    pub wait_for_url_file: Duration,
    pub id: Option<i64>,
    pub location: Option<String>,
    pub log_level: tracing::Level,
    pub max_heartbeat_misses: u32,
    pub startup_command: Vec<String>,
    pub startup_script: Vec<String>,
    /// `InteractiveShell.*` / `ZMQInteractiveShell.*` settings, as (trait, python literal).
    pub shell_config: Vec<(String, String)>,
    pub restart_on_crash: bool,
    pub in_process: bool,
    pub python: Option<PathBuf>,
    /// Settings we do not handle, warned about at start.
    pub ignored: Vec<String>,
}

impl Default for EngineArgs {
    fn default() -> Self {
        EngineArgs {
            profile: "default".into(),
            profile_dir: None,
            ipython_dir: None,
            cluster_id: String::new(),
            url_file: None,
            reg_timeout: Duration::from_secs(5),
            wait_for_url_file: Duration::from_secs(10),
            id: None,
            location: None,
            log_level: tracing::Level::INFO,
            max_heartbeat_misses: 50,
            startup_command: Vec::new(),
            startup_script: Vec::new(),
            shell_config: Vec::new(),
            restart_on_crash: false,
            in_process: false,
            python: None,
            ignored: Vec::new(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run,
    Help,
    Version,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    #[error("option {0} needs a value")]
    MissingValue(String),
    #[error("bad value for {name}: {value:?} ({why})")]
    BadValue { name: String, value: String, why: &'static str },
    #[error("unrecognized argument {0:?} (see --help)")]
    Unknown(String),
}

pub const HELP: &str = "\
ippx-engine: a native IPython Parallel engine (a drop-in for `ipengine`).

Usage: ippx-engine [options]

Connection info comes from $IPP_CONNECTION_INFO (the engine connection JSON), --file, or
<profile_dir>/security/ipcontroller[-<cluster_id>]-engine.json.

Options (ipengine's names; --Class.trait=value forms are accepted too):
  --profile=NAME            IPython profile (default: default)
  --profile-dir=DIR         profile directory (also $IPP_PROFILE_DIR)
  --ipython-dir=DIR         IPython directory (also $IPYTHONDIR; default ~/.ipython)
  --cluster-id=ID           cluster id (also $IPP_CLUSTER_ID)
  --file=PATH               the engine connection file (IPEngine.url_file)
  --timeout=S               seconds to wait for the registration reply (default 5)
  --IPEngine.wait_for_url_file=S
                            seconds to wait for the connection file (default 10)
  --id=N, --IPEngine.id=N   request engine id N
  --location=ADDR           the controller's address, when its files say 0.0.0.0
  --log-level=LEVEL         10/20/30/40/50 or DEBUG/INFO/WARN/ERROR/CRITICAL
  --IPEngine.max_heartbeat_misses=N
                            unregister after N missed ping checks (0: never; default 50)
  -c CODE, --c=CODE         code to run at startup
  -s FILE, --s=FILE         script to run at startup
  --InteractiveShell.X=V    passed to the engine's shell
  --restart-on-crash        respawn the Python worker when a signal kills it, keeping the
                            engine's id and heartbeat (the namespace is lost)
  --in-process              run Python inside this process (for MPI, where the rank must be
                            the main process); no crash isolation
  --python=PATH             the Python (a venv's bin/python) to embed (also $IPPX_PYTHON)
  --help, --version
";

fn parse_level(v: &str) -> Option<tracing::Level> {
    use tracing::Level;
    Some(match v.to_ascii_uppercase().as_str() {
        "0" | "10" | "DEBUG" => Level::DEBUG,
        "20" | "INFO" => Level::INFO,
        "30" | "WARN" | "WARNING" => Level::WARN,
        "40" | "50" | "ERROR" | "CRITICAL" => Level::ERROR,
        n => {
            let n: i64 = n.parse().ok()?;
            match n {
                ..=10 => Level::DEBUG,
                11..=20 => Level::INFO,
                21..=30 => Level::WARN,
                _ => Level::ERROR,
            }
        }
    })
}

/// Strips one level of Python quoting from a traitlets value (`--c='print(1)'` arrives
/// with the quotes when a launcher quoted it for a shell that was not there).
fn unquote(v: &str) -> String {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        v[1..v.len() - 1].to_owned()
    } else {
        v.to_owned()
    }
}

fn secs(name: &str, v: &str) -> Result<Duration, ArgError> {
    v.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64).ok_or_else(|| ArgError::BadValue {
        name: name.into(),
        value: v.into(),
        why: "seconds",
    })
}

/// Options that take a value (so `--name value` consumes the next argument).
const VALUED: &[&str] = &[
    "profile",
    "profile-dir",
    "ipython-dir",
    "cluster-id",
    "file",
    "timeout",
    "id",
    "location",
    "log-level",
    "c",
    "s",
    "python",
    "url",
    "ssh",
    "sshkey",
    "ident",
    "user",
    "keyfile",
    "log-to-file",
    "work-dir",
];
const FLAGS: &[&str] = &["restart-on-crash", "in-process", "help", "help-all", "version", "mpi", "debug", "quiet", "secure", "no-secure"];

pub fn parse<I: IntoIterator<Item = String>>(argv: I) -> Result<(Command, EngineArgs), ArgError> {
    let mut a = EngineArgs::default();
    let mut cmd = Command::Run;
    let mut it = argv.into_iter().peekable();
    while let Some(arg) = it.next() {
        let body = if let Some(b) = arg.strip_prefix("--") {
            b.to_owned()
        } else if let Some(b) = arg.strip_prefix('-').filter(|b| *b == "c" || *b == "s" || b.starts_with("c=") || b.starts_with("s=")) {
            b.to_owned()
        } else {
            return Err(ArgError::Unknown(arg));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (body.clone(), None),
        };
        let canonical = name.replace('_', "-");
        let is_setting = name.contains('.');
        if inline.is_none() && !is_setting && FLAGS.contains(&canonical.as_str()) {
            match canonical.as_str() {
                "help" | "help-all" => cmd = Command::Help,
                "version" => cmd = Command::Version,
                "restart-on-crash" => a.restart_on_crash = true,
                "in-process" => a.in_process = true,
                "debug" => a.log_level = tracing::Level::DEBUG,
                "quiet" => a.log_level = tracing::Level::WARN,
                other => a.ignored.push(format!("--{other}")),
            }
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None if is_setting || VALUED.contains(&canonical.as_str()) => it.next().ok_or_else(|| ArgError::MissingValue(arg.clone()))?,
            None => return Err(ArgError::Unknown(arg)),
        };
        let value = unquote(&value);
        let key = match name.as_str() {
            "IPEngine.url_file" => "file",
            "IPEngine.timeout" => "timeout",
            "IPEngine.id" => "id",
            "IPEngine.location" => "location",
            "IPEngine.startup_command" => "c",
            "IPEngine.startup_script" => "s",
            "BaseIPythonApplication.profile" => "profile",
            "ProfileDir.location" => "profile-dir",
            "BaseIPythonApplication.ipython_dir" => "ipython-dir",
            "BaseParallelApplication.cluster_id" | "IPEngine.cluster_id" => "cluster-id",
            "Application.log_level" | "IPEngine.log_level" => "log-level",
            _ => canonical.as_str(),
        }
        .to_owned();
        match key.as_str() {
            "profile" => a.profile = value,
            "profile-dir" => a.profile_dir = Some(value.into()),
            "ipython-dir" => a.ipython_dir = Some(value.into()),
            "cluster-id" => a.cluster_id = value,
            "file" => a.url_file = Some(value.into()),
            "timeout" => a.reg_timeout = secs(&arg, &value)?,
            "IPEngine.wait-for-url-file" => a.wait_for_url_file = secs(&arg, &value)?,
            "id" => a.id = Some(value.parse().map_err(|_| ArgError::BadValue { name: arg.clone(), value: value.clone(), why: "an integer" })?),
            "location" => a.location = Some(value),
            "log-level" => a.log_level = parse_level(&value).ok_or(ArgError::BadValue { name: arg.clone(), value, why: "a log level" })?,
            "IPEngine.max-heartbeat-misses" => {
                a.max_heartbeat_misses =
                    value.parse().map_err(|_| ArgError::BadValue { name: arg.clone(), value: value.clone(), why: "an integer" })?
            }
            "c" => a.startup_command.push(value),
            "s" => a.startup_script.push(value),
            "python" => a.python = Some(value.into()),
            _ if name.starts_with("InteractiveShell.") || name.starts_with("ZMQInteractiveShell.") => {
                let t = name.split_once('.').map(|(_, t)| t.to_owned()).unwrap_or_default();
                a.shell_config.push((t, value));
            }
            _ => a.ignored.push(format!("--{name}={value}")),
        }
    }
    Ok((cmd, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> EngineArgs {
        parse(args.iter().map(|s| s.to_string())).expect("parse").1
    }

    #[test]
    fn test_suite_and_cluster_command_lines() {
        let a = p(&["--profile=iptest", "--InteractiveShell.colors=nocolor", "--log-level=10"]);
        assert_eq!(a.profile, "iptest");
        assert_eq!(a.log_level, tracing::Level::DEBUG);
        assert_eq!(a.shell_config, vec![("colors".to_owned(), "nocolor".to_owned())]);
        let a = p(&["--profile-dir", "/tmp/p", "--cluster-id=abc", "--IPEngine.id=3", "--timeout=2.5"]);
        assert_eq!(a.profile_dir.as_deref(), Some(std::path::Path::new("/tmp/p")));
        assert_eq!(a.cluster_id, "abc");
        assert_eq!(a.id, Some(3));
        assert_eq!(a.reg_timeout, Duration::from_millis(2500));
    }

    #[test]
    fn unknown_settings_are_kept_for_a_warning_and_flags_work() {
        let a = p(&["--Foo.bar=1", "--restart-on-crash", "-c", "import os", "--mpi"]);
        assert_eq!(a.ignored, vec!["--Foo.bar=1".to_owned(), "--mpi".to_owned()]);
        assert!(a.restart_on_crash);
        assert_eq!(a.startup_command, vec!["import os".to_owned()]);
        assert_eq!(parse(["--help".to_string()]).expect("help").0, Command::Help);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(parse(["stray".to_string()]), Err(ArgError::Unknown(_))));
        assert!(matches!(parse(["--id=x".to_string()]), Err(ArgError::BadValue { .. })));
        assert!(matches!(parse(["--profile".to_string()]), Err(ArgError::MissingValue(_))));
        assert!(matches!(parse(["--log-level=LOUD".to_string()]), Err(ArgError::BadValue { .. })));
    }
}
