//! Node configuration: parsed from TOML and validated once, then handed down as typed values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cart_crdt::Limits;
use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path} is not valid TOML for cartd: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A validated node configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Stable operator-facing name of the node (`n1`).
    pub node_id: String,
    /// Where the public API listens; port 0 picks a free port (printed at start).
    pub listen_addr: SocketAddr,
    /// Where sled keeps this node's data.
    pub data_dir: PathBuf,
    pub limits: Limits,
    /// Writes in flight on this node beyond this are refused with `RESOURCE_EXHAUSTED`.
    pub max_inflight_writes: usize,
    /// How long shutdown waits for in-flight requests before giving up on them.
    pub shutdown_grace: Duration,
    /// HTTP/2 keepalive ping interval on every connection.
    pub keepalive_interval: Duration,
}

/// The file's shape; every key but the first three has a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node_id: String,
    listen_addr: String,
    data_dir: PathBuf,
    #[serde(default)]
    limits: Limits,
    #[serde(default = "default_max_inflight_writes")]
    max_inflight_writes: usize,
    #[serde(default = "default_shutdown_grace_ms")]
    shutdown_grace_ms: u64,
    #[serde(default = "default_keepalive_interval_ms")]
    keepalive_interval_ms: u64,
}

fn default_max_inflight_writes() -> usize {
    4096
}
fn default_shutdown_grace_ms() -> u64 {
    10_000
}
fn default_keepalive_interval_ms() -> u64 {
    10_000
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `origin` only names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        if raw.node_id.is_empty()
            || raw.node_id.len() > 64
            || !raw
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(format!(
                "node_id = {:?} must be 1-64 characters of letters, digits, '-' or '_'",
                raw.node_id
            )));
        }
        let listen_addr: SocketAddr = raw.listen_addr.parse().map_err(|e| {
            invalid(format!(
                "listen_addr = {:?} is not HOST:PORT with an IP host: {e}",
                raw.listen_addr
            ))
        })?;
        if raw.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir must not be empty".into()));
        }
        raw.limits.check().map_err(invalid)?;
        if !(1..=1_000_000).contains(&raw.max_inflight_writes) {
            return Err(invalid(format!(
                "max_inflight_writes = {} must be between 1 and 1000000",
                raw.max_inflight_writes
            )));
        }
        if raw.keepalive_interval_ms < 100 {
            return Err(invalid(format!(
                "keepalive_interval_ms = {} must be at least 100",
                raw.keepalive_interval_ms
            )));
        }
        Ok(NodeConfig {
            node_id: raw.node_id,
            listen_addr,
            data_dir: raw.data_dir,
            limits: raw.limits,
            max_inflight_writes: raw.max_inflight_writes,
            shutdown_grace: Duration::from_millis(raw.shutdown_grace_ms),
            keepalive_interval: Duration::from_millis(raw.keepalive_interval_ms),
        })
    }

    /// The TOML a launcher writes for a node: just the required keys, defaults for the rest.
    pub fn minimal_toml(node_id: &str, listen_addr: SocketAddr, data_dir: &Path) -> String {
        format!(
            "node_id = {}\nlisten_addr = \"{listen_addr}\"\ndata_dir = {}\n",
            toml_string(node_id),
            toml_string(&data_dir.display().to_string())
        )
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let text = NodeConfig::minimal_toml("n1", "127.0.0.1:7001".parse().unwrap(), Path::new("/tmp/x y"));
        let c = parse(&text).unwrap();
        assert_eq!(c.node_id, "n1");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x y"));
        assert_eq!(c.limits, Limits::DEFAULT);
        assert_eq!(c.max_inflight_writes, 4096);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let base = "node_id = \"n1\"\nlisten_addr = \"127.0.0.1:1\"\ndata_dir = \"d\"\n";
        let cases = [
            ("node_id = \"n1\"\n", "listen_addr"),
            (&format!("{base}bogus = 1\n"), "bogus"),
            (&base.replace("127.0.0.1:1", "localhost"), "listen_addr"),
            (&base.replace("\"n1\"", "\"n 1\""), "node_id"),
            (
                &format!("{base}[limits]\nmax_lines_per_cart = 0\n"),
                "max_lines_per_cart",
            ),
            (&format!("{base}[limits]\nmax_quantity = 99999999999\n"), "max_quantity"),
            (&format!("{base}[limits]\nmax_lines = 3\n"), "max_lines"),
            ("node_id = ", "TOML"),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "error for {text:?} should mention {needle}: {err}"
            );
        }
    }

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("node-"))
            {
                NodeConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen > 0, "no node-*.toml example found in {}", dir.display());
    }
}
