//! Finding and reading a controller's connection files.

use anyhow::{bail, Context, Result};
use ippx_protocol::connection::{self, ClientConnectionFile, EngineConnectionFile};
use ippx_protocol::{Packer, SessionConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything the synthetic peers need: URLs and session settings.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub engine: EngineConnectionFile,
    pub client: ClientConnectionFile,
}

impl Endpoints {
    pub fn engine_url(&self, port: u16) -> String {
        connection::url(&self.engine.interface, port)
    }

    pub fn client_url(&self, port: u16) -> String {
        connection::url(&self.client.interface, port)
    }

    pub fn session_config(&self) -> Result<SessionConfig> {
        let pack: Packer = self.client.pack.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let unpack: Packer = self.client.unpack.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut cfg = SessionConfig::new(self.client.key.as_bytes().to_vec(), pack);
        cfg.unpacker = unpack;
        cfg.signature_scheme = self.client.signature_scheme.clone();
        Ok(cfg)
    }
}

/// Waits (up to `wait`) for both files to exist and parse, then reads them.
pub fn load(
    profile_dir: Option<&Path>,
    cluster_id: &str,
    engine_file: Option<&Path>,
    client_file: Option<&Path>,
    wait: Duration,
) -> Result<Endpoints> {
    let (ef, cf): (PathBuf, PathBuf) = match (engine_file, client_file, profile_dir) {
        (Some(e), Some(c), _) => (e.into(), c.into()),
        (None, None, Some(dir)) => {
            let (e, c) = connection::file_names(cluster_id);
            (dir.join("security").join(e), dir.join("security").join(c))
        }
        _ => bail!("give --profile-dir DIR (and --cluster-id), or both --engine-file and --client-file"),
    };
    let start = Instant::now();
    loop {
        let got = connection::read::<EngineConnectionFile>(&ef).and_then(|e| connection::read::<ClientConnectionFile>(&cf).map(|c| (e, c)));
        match got {
            Ok((engine, client)) => return Ok(Endpoints { engine, client }),
            Err(e) if start.elapsed() >= wait => return Err(e).context("connection files did not appear"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
