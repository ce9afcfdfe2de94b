//! The node's config file and the small files `hivemesh run` keeps in the data directory.
//!
//! `DATA_DIR/config.toml` (or `--config FILE`) may set any of `hivemesh run`'s options; flags
//! and `HIVEMESH_*` environment variables take precedence. Unknown keys are errors.
//!
//! ```toml
//! listen = ["/ip4/0.0.0.0/tcp/4077", "/ip4/0.0.0.0/udp/4077/quic-v1"]
//! bootstrap = ["/ip4/203.0.113.7/tcp/4077/p2p/12D3KooW…"]
//! jobs = 2                      # or: devices = ["cpu", "cuda:0", "cuda:1"]
//! audit = false
//! http = "127.0.0.1:8077"
//! http_public = false
//! sync_interval_ms = 5000
//! blob_quota_mb = 32768         # disk for blobs; unneeded fetched ones are evicted
//!
//! [accept]            # what this node runs (see `hivemesh::admission`); all optional
//! kinds = ["nas", "loss"]
//! max_job_memory_mb = 4096
//! max_job_flops = 2e14
//! max_job_time_s = 7200
//! max_dataset_mb = 16384
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use serde::Deserialize;

/// The config file's name in the data directory.
pub const CONFIG_FILE: &str = "config.toml";
/// Where `hivemesh run` writes the bearer token for `POST /campaigns` (mode 0600).
pub const API_TOKEN_FILE: &str = "api.token";
/// Where `hivemesh run` writes the address its API is bound to.
pub const API_ADDR_FILE: &str = "api.addr";

/// Why the config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("config {path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
}

/// `hivemesh run`'s options as a config file gives them (all optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listen addresses.
    pub listen: Option<Vec<Multiaddr>>,
    /// Bootstrap peers.
    pub bootstrap: Option<Vec<Multiaddr>>,
    /// Jobs at once.
    pub jobs: Option<u16>,
    /// Devices to train on, one job each (`cpu`, `cuda`, `cuda:N`); excludes `jobs`.
    pub devices: Option<Vec<String>>,
    /// Audit mode.
    pub audit: Option<bool>,
    /// HTTP API address.
    pub http: Option<SocketAddr>,
    /// Allow a non-loopback API address.
    pub http_public: Option<bool>,
    /// Sync interval.
    pub sync_interval_ms: Option<u64>,
    /// Most disk space for blobs, MiB.
    pub blob_quota_mb: Option<u64>,
    /// What the node follows and the limits of its jobs (see [`crate::admission`]).
    pub accept: Option<crate::admission::AcceptFile>,
}

/// Reads `explicit`, or `DATA_DIR/config.toml` if it exists, or nothing.
pub fn load(data_dir: &Path, explicit: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let p = data_dir.join(CONFIG_FILE);
            if !p.exists() {
                return Ok(FileConfig::default());
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
        path: path.clone(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Toml {
        path,
        source: Box::new(source),
    })
}

/// The API token in `DATA_DIR/api.token`, created (32 random bytes, hex, mode 0600) if missing.
pub fn api_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(API_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 32 => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token = crate::hex(&bytes);
    std::fs::create_dir_all(data_dir)?;
    crate::identity::write_private(&path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_parse_and_refuse_unknown_keys() {
        let c: FileConfig = toml::from_str(
            "listen = [\"/ip4/127.0.0.1/tcp/0\"]\njobs = 2\nhttp = \"127.0.0.1:9000\"\n",
        )
        .expect("valid");
        assert_eq!(c.jobs, Some(2));
        assert_eq!(c.listen.map(|l| l.len()), Some(1));
        assert!(toml::from_str::<FileConfig>("jbos = 2\n").is_err());
        assert!(toml::from_str::<FileConfig>("listen = [\"not an addr\"]\n").is_err());
        let d: FileConfig = toml::from_str("devices = [\"cpu\", \"cuda:0\"]\n").expect("valid");
        assert_eq!(
            d.devices,
            Some(vec!["cpu".to_string(), "cuda:0".to_string()])
        );
        // The shipped example parses, with its commented-out devices line switched on too.
        let example = include_str!("../../examples/node.toml");
        toml::from_str::<FileConfig>(example).expect("examples/node.toml parses");
        let on = example
            .replace("jobs = 1 ", "# jobs = 1 ")
            .replace("# devices = ", "devices = ");
        let c = toml::from_str::<FileConfig>(&on).expect("with devices");
        assert!(c.devices.is_some() && c.jobs.is_none());
    }
}
