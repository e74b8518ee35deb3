//! Node configuration: parsed from TOML and validated once, then handed down as typed values.
//!
//! Two shapes of file:
//! - one node: top-level `node_id`, `listen_addr`, `data_dir` (a cluster of one);
//! - a whole cluster: `[[nodes]]` entries and a `[cluster]` table, the same file on every node;
//!   `cartd run --config FILE --node ID` picks the node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cart_crdt::Limits;
use cart_ring::Member;
use serde::Deserialize;
use thiserror::Error;

/// The most request-serving threads a node may be given (`worker_threads`).
pub const WORKER_THREADS_MAX: usize = 1024;

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
    /// Where the node listens (public, admin and replica APIs); port 0 picks a free port, which
    /// only a cluster of one may do.
    pub listen_addr: SocketAddr,
    /// Where the storage engine keeps this node's data.
    pub data_dir: PathBuf,
    /// Where the node serves HTTP (`GET /metrics`); none when the file names no `http_addr`.
    pub http_addr: Option<SocketAddr>,
    /// `[storage] engine`: `"fjall"` (default; flushes end in fdatasync) or `"sled"`.
    pub storage_engine: crate::storage::Engine,
    /// `[storage] commit_window_ms` (2 by default, 0 turns it off): how long a storage flush
    /// waits for more writers to share it while writes come at least one per window (see
    /// `crate::commit`).
    pub commit_window: Duration,
    /// `[storage] cache_mb` (128 by default): memory for decoded carts, in bytes.
    pub cache_bytes: u64,
    pub limits: Limits,
    /// Writes in flight on this node beyond this are refused with `RESOURCE_EXHAUSTED`.
    pub max_inflight_writes: usize,
    /// How long shutdown waits for in-flight requests before giving up on them.
    pub shutdown_grace: Duration,
    /// How long a node asked to stop keeps serving while its health check already answers
    /// `NOT_SERVING` (`shutdown_delay_ms`, 0 by default): time for load balancers and
    /// Kubernetes to stop sending it requests.
    pub shutdown_delay: Duration,
    /// HTTP/2 keepalive ping interval on every connection, served and dialled.
    pub keepalive_interval: Duration,
    /// `worker_threads` (0 by default: one per core): the threads serving requests. Nodes
    /// sharing a machine spend less CPU per request on fewer threads (fewer hand-offs and
    /// wake-ups between them), but recover more slowly from a burst (bench/README.md).
    pub worker_threads: usize,
    /// Below this much free space on the data directory's file system the node takes no new
    /// writes (degraded, with the reason in `cartctl status`) until space returns.
    pub min_free_disk_bytes: u64,
    pub cluster: ClusterConfig,
    /// `HOST:PORT` of a cluster node to learn the layout from on first start (`cartd run
    /// --join`); the node then waits as a non-member until an operator adds it.
    pub join: Option<String>,
    /// `[tls]`: TLS on the gRPC port and towards peers; none: plain HTTP/2.
    pub tls: Option<crate::security::TlsSettings>,
    /// `[auth]` (or the environment): bearer tokens the public and admin APIs need; none: open.
    pub api_tokens: crate::security::ApiTokens,
}

/// Replication settings, the same on every node.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Every node, this one included.
    pub members: Vec<Member>,
    /// Shared secret peers present on internal calls (empty only for a cluster of one).
    pub secret: String,
    /// Replicas per cart (N), read quorum (R), write quorum (W).
    pub n: usize,
    pub r: usize,
    pub w: usize,
    /// Deadline of one call to a peer.
    pub peer_timeout: Duration,
    /// How long a coordinator waits for its quorum.
    pub request_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Consecutive failed heartbeats after which a peer is marked down.
    pub down_after_failures: u32,
    /// How often hints are offered to owners that are up.
    pub hint_interval: Duration,
    /// Hints this node holds at most; beyond, a hint is refused (and the write counts one ack less).
    pub hints_max: usize,
    pub anti_entropy_interval: Duration,
    /// Carts repaired per anti-entropy round at most.
    pub anti_entropy_keys_per_round: usize,
    /// Carts a node hands over per second at most while a layout change moves carts.
    pub transfer_carts_per_sec: usize,
    /// Carts the digest rebuild (at start, after a layout change) counts per second at most; it
    /// also never takes more than half of one core.
    pub digest_rebuild_carts_per_sec: usize,
    /// How long carts live after their last change (`guest_ttl`, `user_ttl`; 0 = forever) and
    /// the clock skew tolerated between nodes (`clock_skew`).
    pub expiry: cart_crdt::Expiry,
    /// How often each node sweeps its expired carts.
    pub sweep_interval: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node_id: Option<String>,
    listen_addr: Option<String>,
    advertise_addr: Option<String>,
    http_addr: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    nodes: Vec<RawNode>,
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    limits: Limits,
    #[serde(default = "defaults::max_inflight_writes")]
    max_inflight_writes: usize,
    #[serde(default = "defaults::shutdown_grace_ms")]
    shutdown_grace_ms: u64,
    #[serde(default = "defaults::keepalive_interval_ms")]
    keepalive_interval_ms: u64,
    #[serde(default)]
    shutdown_delay_ms: u64,
    #[serde(default)]
    worker_threads: usize,
    #[serde(default = "defaults::min_free_disk_mb")]
    min_free_disk_mb: u64,
    #[serde(default)]
    storage: RawStorage,
    tls: Option<RawTls>,
    #[serde(default)]
    auth: RawAuth,
}

/// `[tls]`: PEM files; `{node_id}` in a path is replaced by the node's id (one table serves
/// every node of a cluster file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: String,
    key_file: String,
    ca_file: String,
    #[serde(default)]
    peer_mtls: bool,
}

/// `[auth]`: the public and admin APIs' bearer tokens, listed or in a file (one per line).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    tokens: Option<Vec<String>>,
    tokens_file: Option<PathBuf>,
}

/// `[storage]`: which engine keeps this node's data.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    #[serde(default)]
    engine: crate::storage::Engine,
    #[serde(default = "defaults::commit_window_ms")]
    commit_window_ms: u64,
    #[serde(default = "defaults::cache_mb")]
    cache_mb: u64,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            engine: Default::default(),
            commit_window_ms: defaults::commit_window_ms(),
            cache_mb: defaults::cache_mb(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    node_id: String,
    listen_addr: String,
    /// `HOST:PORT` peers and clients dial (a DNS name in Kubernetes); `listen_addr` when absent.
    advertise_addr: Option<String>,
    /// `IP:PORT` of the node's HTTP endpoint (`/metrics`); none when absent.
    http_addr: Option<String>,
    data_dir: PathBuf,
    #[serde(default = "defaults::weight")]
    weight: u32,
    /// Failure domain (rack, availability zone).
    #[serde(default)]
    zone: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    secret: Option<String>,
    n: Option<usize>,
    r: Option<usize>,
    w: Option<usize>,
    peer_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    heartbeat_interval_ms: Option<u64>,
    down_after_failures: Option<u32>,
    hint_interval_ms: Option<u64>,
    hints_max: Option<usize>,
    anti_entropy_interval_ms: Option<u64>,
    anti_entropy_keys_per_round: Option<usize>,
    transfer_carts_per_sec: Option<usize>,
    digest_rebuild_carts_per_sec: Option<usize>,
    /// Durations as text: "7d", "90d", "5m", "1h"; "0" for a ttl means carts never expire.
    guest_ttl: Option<String>,
    user_ttl: Option<String>,
    clock_skew: Option<String>,
    sweep_interval: Option<String>,
}

mod defaults {
    pub fn min_free_disk_mb() -> u64 {
        64
    }
    pub fn max_inflight_writes() -> usize {
        4096
    }
    pub fn shutdown_grace_ms() -> u64 {
        10_000
    }
    pub fn commit_window_ms() -> u64 {
        2
    }
    pub fn cache_mb() -> u64 {
        crate::store::CART_CACHE_BYTES_DEFAULT >> 20
    }
    pub fn keepalive_interval_ms() -> u64 {
        10_000
    }
    pub fn weight() -> u32 {
        1
    }
}

impl NodeConfig {
    /// Loads `path`; `node` picks the node of a cluster file (optional when it lists one node).
    pub fn load(path: &Path, node: Option<&str>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, node)
    }

    /// Parses and validates `text`; `origin` only names the file in errors. Settings the
    /// environment may give instead of the file (the cluster secret, API tokens) are read from
    /// the process environment.
    pub fn parse(text: &str, origin: &Path, node: Option<&str>) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, origin, node, &crate::security::process_env)
    }

    /// [`NodeConfig::parse`] with the environment given (tests).
    pub fn parse_with_env(
        text: &str,
        origin: &Path,
        node: Option<&str>,
        env: crate::security::Env,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let nodes = nodes_of(&raw).map_err(invalid)?;
        let me = pick_node(&nodes, node).map_err(invalid)?;
        raw.limits.check().map_err(invalid)?;
        if !(1..=1_000_000).contains(&raw.max_inflight_writes) {
            return Err(invalid(format!(
                "max_inflight_writes = {} must be between 1 and 1000000",
                raw.max_inflight_writes
            )));
        }
        // Without keepalive a connection stuck behind a healed partition is never noticed and
        // replicas stop converging (the simulation showed it): bound it both ways.
        if !(100..=60_000).contains(&raw.keepalive_interval_ms) {
            return Err(invalid(format!(
                "keepalive_interval_ms = {} must be between 100 and 60000",
                raw.keepalive_interval_ms
            )));
        }
        if raw.worker_threads > WORKER_THREADS_MAX {
            return Err(invalid(format!(
                "worker_threads = {} must be at most {WORKER_THREADS_MAX} (0: one per core)",
                raw.worker_threads
            )));
        }
        if raw.storage.commit_window_ms > 100 {
            return Err(invalid(format!(
                "[storage] commit_window_ms = {} must be at most 100",
                raw.storage.commit_window_ms
            )));
        }
        if !(1..=65_536).contains(&raw.storage.cache_mb) {
            return Err(invalid(format!(
                "[storage] cache_mb = {} must be between 1 and 65536",
                raw.storage.cache_mb
            )));
        }
        if raw.shutdown_delay_ms > 120_000 {
            return Err(invalid(format!(
                "shutdown_delay_ms = {} must be at most 120000",
                raw.shutdown_delay_ms
            )));
        }
        let cluster = cluster_of(&raw.cluster, &nodes, env).map_err(invalid)?;
        let tls = match &raw.tls {
            None => None,
            Some(t) => {
                let path = |p: &str| PathBuf::from(p.replace("{node_id}", &me.node_id));
                let settings = crate::security::TlsSettings::load(
                    &path(&t.cert_file),
                    &path(&t.key_file),
                    &path(&t.ca_file),
                    t.peer_mtls,
                );
                Some(settings.map_err(invalid)?)
            }
        };
        if raw.auth.tokens.is_some() && raw.auth.tokens_file.is_some() {
            return Err(invalid("[auth] has both tokens and tokens_file: use one".into()));
        }
        let api_tokens =
            crate::security::ApiTokens::from_config(raw.auth.tokens.as_deref(), raw.auth.tokens_file.as_deref(), env)
                .map_err(invalid)?;
        Ok(NodeConfig {
            node_id: me.node_id.clone(),
            listen_addr: me.addr,
            http_addr: me.http_addr,
            data_dir: me.data_dir.clone(),
            storage_engine: raw.storage.engine,
            commit_window: Duration::from_millis(raw.storage.commit_window_ms),
            cache_bytes: raw.storage.cache_mb << 20,
            limits: raw.limits,
            max_inflight_writes: raw.max_inflight_writes,
            shutdown_grace: Duration::from_millis(raw.shutdown_grace_ms),
            shutdown_delay: Duration::from_millis(raw.shutdown_delay_ms),
            keepalive_interval: Duration::from_millis(raw.keepalive_interval_ms),
            worker_threads: raw.worker_threads,
            min_free_disk_bytes: raw.min_free_disk_mb.saturating_mul(1 << 20),
            cluster,
            join: None,
            tls,
            api_tokens,
        })
    }
}

struct ParsedNode {
    node_id: String,
    addr: SocketAddr,
    /// What the others dial: `advertise_addr`, else `listen_addr`.
    advertise: String,
    http_addr: Option<SocketAddr>,
    data_dir: PathBuf,
    weight: u32,
    zone: String,
}

fn nodes_of(raw: &RawConfig) -> Result<Vec<ParsedNode>, String> {
    let single = [
        &raw.node_id.is_some(),
        &raw.listen_addr.is_some(),
        &raw.data_dir.is_some(),
    ];
    let top_level: Vec<RawNode> = match (&raw.node_id, &raw.listen_addr, &raw.data_dir) {
        (Some(node_id), Some(listen_addr), Some(data_dir)) => vec![RawNode {
            node_id: node_id.clone(),
            listen_addr: listen_addr.clone(),
            advertise_addr: raw.advertise_addr.clone(),
            http_addr: raw.http_addr.clone(),
            data_dir: data_dir.clone(),
            weight: 1,
            zone: String::new(),
        }],
        (None, None, None) => Vec::new(),
        _ => {
            return Err(format!(
                "node_id, listen_addr and data_dir go together (found {} of 3)",
                single.iter().filter(|b| ***b).count()
            ))
        }
    };
    let raw_nodes: Vec<&RawNode> = match (top_level.is_empty(), raw.nodes.is_empty()) {
        (false, false) => {
            return Err("use either top-level node_id/listen_addr/data_dir or [[nodes]], not both".into())
        }
        (true, true) => return Err("no node: add node_id, listen_addr and data_dir, or [[nodes]] entries".into()),
        (false, true) => top_level.iter().collect(),
        (true, false) => raw.nodes.iter().collect(),
    };
    let mut nodes = Vec::new();
    for n in raw_nodes {
        if n.node_id.is_empty()
            || n.node_id.len() > 64
            || !n
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "node_id = {:?} must be 1-64 characters of letters, digits, '-' or '_'",
                n.node_id
            ));
        }
        let addr: SocketAddr = n.listen_addr.parse().map_err(|e| {
            format!(
                "listen_addr = {:?} of node {} is not IP:PORT: {e}",
                n.listen_addr, n.node_id
            )
        })?;
        if n.data_dir.as_os_str().is_empty() {
            return Err(format!("data_dir of node {} must not be empty", n.node_id));
        }
        let http_addr = match &n.http_addr {
            None => None,
            Some(raw) => Some(
                raw.parse::<SocketAddr>()
                    .map_err(|e| format!("http_addr = {raw:?} of node {} is not IP:PORT: {e}", n.node_id))?,
            ),
        };
        let advertise = match &n.advertise_addr {
            None => addr.to_string(),
            Some(raw) => {
                let ok = raw
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
                if !ok {
                    return Err(format!(
                        "advertise_addr = {raw:?} of node {} is not HOST:PORT with a port above 0",
                        n.node_id
                    ));
                }
                raw.clone()
            }
        };
        nodes.push(ParsedNode {
            node_id: n.node_id.clone(),
            addr,
            advertise,
            http_addr,
            data_dir: n.data_dir.clone(),
            weight: n.weight,
            zone: n.zone.clone(),
        });
    }
    Ok(nodes)
}

fn pick_node<'a>(nodes: &'a [ParsedNode], wanted: Option<&str>) -> Result<&'a ParsedNode, String> {
    match (wanted, nodes) {
        (None, [only]) => Ok(only),
        (None, _) => Err(format!("the file lists {} nodes; choose one with --node", nodes.len())),
        (Some(id), _) => nodes.iter().find(|n| n.node_id == id).ok_or_else(|| {
            let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
            format!("--node {id:?} is not in the file (nodes: {})", ids.join(", "))
        }),
    }
}

/// The cluster secret from the environment (instead of `[cluster] secret`).
pub const SECRET_ENV: &str = "CARTDB_CLUSTER_SECRET";
/// A file holding the cluster secret (instead of `[cluster] secret`).
pub const SECRET_FILE_ENV: &str = "CARTDB_CLUSTER_SECRET_FILE";

fn cluster_of(raw: &RawCluster, nodes: &[ParsedNode], env: crate::security::Env) -> Result<ClusterConfig, String> {
    let members: Vec<Member> = nodes
        .iter()
        .map(|n| Member {
            node_id: n.node_id.clone(),
            addr: n.advertise.clone(),
            weight: n.weight,
            zone: n.zone.clone(),
        })
        .collect();
    cart_ring::Ring::new(members.clone()).map_err(|e| e.to_string())?;
    if members.len() > 1 && nodes.iter().any(|n| n.addr.port() == 0) {
        return Err("listen_addr port 0 is only allowed for a cluster of one node".into());
    }
    // The secret may stay out of the file: the environment, or a file the environment names
    // (a Kubernetes Secret mounted as a file), wins over `[cluster] secret`.
    let secret = match crate::security::from_env(env, SECRET_ENV, SECRET_FILE_ENV)? {
        Some((secret, SECRET_ENV)) => secret,
        Some((contents, _)) => contents.trim_end_matches(['\n', '\r']).to_owned(),
        None => raw.secret.clone().unwrap_or_default(),
    };
    if members.len() > 1 && secret.len() < 8 {
        return Err("[cluster] secret must be set (8 characters or more) when there are several nodes".into());
    }
    let n = raw.n.unwrap_or(members.len().min(3));
    let majority = n / 2 + 1;
    let (r, w) = (raw.r.unwrap_or(majority), raw.w.unwrap_or(majority));
    if n == 0 || n > members.len() {
        return Err(format!(
            "[cluster] n = {n} must be between 1 and the number of nodes ({})",
            members.len()
        ));
    }
    for (name, q) in [("r", r), ("w", w)] {
        if q == 0 || q > n {
            return Err(format!("[cluster] {name} = {q} must be between 1 and n = {n}"));
        }
    }
    let ms = |v: Option<u64>, default: u64, min: u64, name: &str| -> Result<Duration, String> {
        let v = v.unwrap_or(default);
        if v < min {
            return Err(format!("[cluster] {name} = {v} must be at least {min}"));
        }
        Ok(Duration::from_millis(v))
    };
    let count = |v: Option<usize>, default: usize, name: &str| -> Result<usize, String> {
        let v = v.unwrap_or(default);
        if !(1..=10_000_000).contains(&v) {
            return Err(format!("[cluster] {name} = {v} must be between 1 and 10000000"));
        }
        Ok(v)
    };
    Ok(ClusterConfig {
        members,
        secret,
        n,
        r,
        w,
        peer_timeout: ms(raw.peer_timeout_ms, 1_000, 10, "peer_timeout_ms")?,
        request_timeout: ms(raw.request_timeout_ms, 2_000, 10, "request_timeout_ms")?,
        heartbeat_interval: ms(raw.heartbeat_interval_ms, 500, 10, "heartbeat_interval_ms")?,
        down_after_failures: raw.down_after_failures.unwrap_or(2).max(1),
        hint_interval: ms(raw.hint_interval_ms, 500, 10, "hint_interval_ms")?,
        hints_max: count(raw.hints_max, 1_000_000, "hints_max")?,
        anti_entropy_interval: ms(raw.anti_entropy_interval_ms, 10_000, 10, "anti_entropy_interval_ms")?,
        anti_entropy_keys_per_round: count(raw.anti_entropy_keys_per_round, 512, "anti_entropy_keys_per_round")?,
        transfer_carts_per_sec: count(raw.transfer_carts_per_sec, 1_000, "transfer_carts_per_sec")?,
        digest_rebuild_carts_per_sec: count(
            raw.digest_rebuild_carts_per_sec,
            200_000,
            "digest_rebuild_carts_per_sec",
        )?,
        expiry: cart_crdt::Expiry {
            guest_ttl_ms: text_ms(
                raw.guest_ttl.as_deref(),
                cart_crdt::Expiry::DEFAULT.guest_ttl_ms,
                "guest_ttl",
            )?,
            user_ttl_ms: text_ms(
                raw.user_ttl.as_deref(),
                cart_crdt::Expiry::DEFAULT.user_ttl_ms,
                "user_ttl",
            )?,
            skew_ms: text_ms(
                raw.clock_skew.as_deref(),
                cart_crdt::Expiry::DEFAULT.skew_ms,
                "clock_skew",
            )?,
        },
        sweep_interval: match text_ms(raw.sweep_interval.as_deref(), 60 * 60 * 1000, "sweep_interval")? {
            0 => return Err("[cluster] sweep_interval must be more than 0".into()),
            ms => Duration::from_millis(ms),
        },
    })
}

/// A duration written as text (`"7d"`, `"90 days"`, `"500ms"`, or `"0"`), in milliseconds.
fn text_ms(v: Option<&str>, default: u64, name: &str) -> Result<u64, String> {
    match v.map(str::trim) {
        None => Ok(default),
        Some("0") => Ok(0),
        Some(text) => humantime::parse_duration(text)
            .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
            .map_err(|e| format!("[cluster] {name} = {text:?} is not a duration like \"7d\" or \"90m\": {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses with an empty environment (the test process's own must not leak in).
    fn parse(text: &str, node: Option<&str>) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse_with_env(text, Path::new("test.toml"), node, &|_| None)
    }

    const SINGLE: &str = "node_id = \"n1\"\nlisten_addr = \"127.0.0.1:1\"\ndata_dir = \"d\"\n";

    fn three() -> String {
        let mut s = String::from("[cluster]\nsecret = \"0123456789\"\n");
        for i in 1..=3 {
            s += &format!("[[nodes]]\nnode_id = \"n{i}\"\nlisten_addr = \"127.0.0.1:700{i}\"\ndata_dir = \"d{i}\"\n");
        }
        s
    }

    #[test]
    fn a_single_node_is_a_cluster_of_one() {
        let c = parse(SINGLE, None).unwrap();
        assert_eq!(c.node_id, "n1");
        assert_eq!(c.worker_threads, 0, "one worker per core unless set");
        assert_eq!(
            parse(&format!("worker_threads = 1\n{SINGLE}"), None)
                .unwrap()
                .worker_threads,
            1
        );
        assert_eq!((c.cluster.n, c.cluster.r, c.cluster.w), (1, 1, 1));
        assert_eq!(c.limits, Limits::DEFAULT);
        assert_eq!(c.cluster.members.len(), 1);
    }

    #[test]
    fn the_storage_engine_defaults_to_fjall_and_sled_can_be_chosen() {
        use crate::storage::Engine;
        assert_eq!(parse(SINGLE, None).unwrap().storage_engine, Engine::Fjall);
        let sled = format!("{SINGLE}[storage]\nengine = \"sled\"\n");
        assert_eq!(parse(&sled, None).unwrap().storage_engine, Engine::Sled);
        // The commit window: 2 ms unless set; 0 turns it off.
        assert_eq!(parse(SINGLE, None).unwrap().commit_window, Duration::from_millis(2));
        assert_eq!(parse(&sled, None).unwrap().commit_window, Duration::from_millis(2));
        let off = format!("{SINGLE}[storage]\ncommit_window_ms = 0\n");
        assert_eq!(parse(&off, None).unwrap().commit_window, Duration::ZERO);
        // The cart cache: 128 MiB unless set.
        assert_eq!(parse(SINGLE, None).unwrap().cache_bytes, 128 << 20);
        let small = format!("{SINGLE}[storage]\ncache_mb = 4\n");
        assert_eq!(parse(&small, None).unwrap().cache_bytes, 4 << 20);
    }

    #[test]
    fn a_cluster_file_defaults_to_n3_majorities() {
        let c = parse(&three(), Some("n2")).unwrap();
        assert_eq!(c.node_id, "n2");
        assert_eq!(c.listen_addr, "127.0.0.1:7002".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("d2"));
        assert_eq!((c.cluster.n, c.cluster.r, c.cluster.w), (3, 2, 2));
    }

    #[test]
    fn bad_files_name_the_problem() {
        let t = three();
        let cases: Vec<(String, Option<&str>, &str)> = vec![
            ("node_id = \"n1\"\n".into(), None, "go together"),
            (format!("{SINGLE}bogus = 1\n"), None, "bogus"),
            (SINGLE.replace("127.0.0.1:1", "localhost"), None, "listen_addr"),
            (SINGLE.replace("\"n1\"", "\"n 1\""), None, "node_id"),
            (
                format!("{SINGLE}[limits]\nmax_lines_per_cart = 0\n"),
                None,
                "max_lines_per_cart",
            ),
            (format!("{SINGLE}[storage]\nengine = \"rocks\"\n"), None, "engine"),
            (
                format!("{SINGLE}[storage]\ncommit_window_ms = 500\n"),
                None,
                "commit_window_ms",
            ),
            (format!("{SINGLE}[storage]\ncache_mb = 0\n"), None, "cache_mb"),
            (format!("worker_threads = 5000\n{SINGLE}"), None, "worker_threads"),
            (
                format!("{SINGLE}[limits]\nmax_quantity = 99999999999\n"),
                None,
                "max_quantity",
            ),
            (format!("{SINGLE}[limits]\nmax_lines = 3\n"), None, "max_lines"),
            (
                format!("keepalive_interval_ms = 3600000\n{SINGLE}"),
                None,
                "keepalive_interval_ms",
            ),
            ("node_id = ".into(), None, "TOML"),
            (t.clone(), None, "--node"),
            (t.clone(), Some("n9"), "n9"),
            (t.replace("secret = \"0123456789\"", ""), Some("n1"), "secret"),
            (t.replace("[cluster]\n", "[cluster]\nw = 4\n"), Some("n1"), "w = 4"),
            (t.replace("[cluster]\n", "[cluster]\nn = 5\n"), Some("n1"), "n = 5"),
            (t.replace("\"n3\"", "\"n1\""), Some("n1"), "more than once"),
            (format!("{SINGLE}{t}"), Some("n1"), "not both"),
        ];
        for (text, node, needle) in cases {
            let err = parse(&text, node).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "error for {text:?} should mention {needle}: {err}"
            );
        }
    }

    #[test]
    fn lifecycle_settings_parse_as_durations_and_are_checked() {
        let config = parse(&three(), Some("n1")).unwrap();
        assert_eq!(config.cluster.expiry, cart_crdt::Expiry::DEFAULT);
        assert_eq!(config.cluster.sweep_interval, Duration::from_secs(3600));
        let text = three().replace(
            "[cluster]\n",
            "[cluster]\nguest_ttl = \"2d\"\nuser_ttl = \"0\"\nclock_skew = \"30s\"\nsweep_interval = \"10m\"\n",
        );
        let config = parse(&text, Some("n1")).unwrap();
        let day = 24 * 60 * 60 * 1000;
        assert_eq!(
            config.cluster.expiry,
            cart_crdt::Expiry {
                guest_ttl_ms: 2 * day,
                user_ttl_ms: 0,
                skew_ms: 30_000,
            }
        );
        assert_eq!(config.cluster.sweep_interval, Duration::from_secs(600));
        for (setting, needle) in [
            ("guest_ttl = \"soon\"", "guest_ttl"),
            ("sweep_interval = \"0\"", "sweep_interval"),
        ] {
            let text = three().replace("[cluster]\n", &format!("[cluster]\n{setting}\n"));
            let err = parse(&text, Some("n1")).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn tls_files_are_per_node_and_tokens_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::security::write_dev_pki(dir.path(), &["n1", "n2", "n3"], &["127.0.0.1"]).unwrap();
        let text = format!("{}\n{}", three(), pki.tls_toml(true));
        let c = parse(&text, Some("n2")).unwrap();
        let tls = c.tls.expect("[tls] read");
        assert!(tls.peer_mtls);
        assert_eq!(tls.cert_file, dir.path().join("n2.pem"), "{{node_id}} is the node's id");
        assert!(c.api_tokens.is_empty());
        let with_tokens = format!("{text}[auth]\ntokens = [\"storefront-token-0001\"]\n");
        assert!(parse(&with_tokens, Some("n1"))
            .unwrap()
            .api_tokens
            .admits(b"storefront-token-0001"));
        let cases = [
            (format!("{text}[auth]\ntokens = [\"short\"]\n"), "at least 16"),
            (format!("{text}[auth]\ntokens = []\n"), "gives no token"),
            (
                format!("{text}[auth]\ntokens = [\"storefront-token-0001\"]\ntokens_file = \"t\"\n"),
                "both tokens and tokens_file",
            ),
            (
                format!("{text}[auth]\ntokens_file = \"/nonexistent/tokens\"\n"),
                "tokens_file",
            ),
            (
                text.replace("n2.pem", "nope.pem").replace("{node_id}.pem", "nope.pem"),
                "cert_file",
            ),
            (format!("{}\n[tls]\ncert_file = \"a\"\n", three()), "key_file"),
        ];
        for (text, expected) in cases {
            let err = parse(&text, Some("n2")).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected:?} not in {err}");
        }
    }

    #[test]
    fn the_secret_comes_from_the_environment_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-the-file-0001\n").unwrap();
        let path = file.display().to_string();
        let both = |name: &str| match name {
            SECRET_ENV => Some("from-the-variable-01".into()),
            SECRET_FILE_ENV => Some(path.clone().into()),
            _ => None,
        };
        let only_file = |name: &str| (name == SECRET_FILE_ENV).then(|| path.clone().into());
        let at = Path::new("test.toml");
        let secret = |env: crate::security::Env| {
            NodeConfig::parse_with_env(&three(), at, Some("n1"), env).map(|c| c.cluster.secret)
        };
        assert_eq!(secret(&both).unwrap(), "from-the-variable-01");
        assert_eq!(
            secret(&only_file).unwrap(),
            "from-the-file-0001",
            "trailing newline dropped"
        );
        assert_eq!(
            secret(&|_| None).unwrap(),
            "0123456789",
            "else the file's [cluster] secret"
        );
        let missing = |name: &str| (name == SECRET_FILE_ENV).then(|| "/nonexistent/secret".into());
        assert!(secret(&missing).unwrap_err().to_string().contains(SECRET_FILE_ENV));
    }

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = match path.extension().is_some_and(|e| e == "toml") {
                true => std::fs::read_to_string(&path).unwrap(),
                false => continue,
            };
            // The pricing rules are no node config: `cartctl pricing set` takes them.
            if path.file_name().is_some_and(|n| n == "pricing.toml") {
                cart_crdt::pricing::PricingRules::parse(&text).unwrap_or_else(|e| panic!("{e}"));
                continue;
            }
            let node = text.contains("[[nodes]]").then_some("n1");
            NodeConfig::load(&path, node).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
        assert!(seen >= 4, "expected the example configs in {}", dir.display());
    }

    #[test]
    fn members_are_dialled_at_their_advertised_address() {
        let text = "[cluster]\nsecret = \"0123456789\"\n[[nodes]]\nnode_id = \"a\"\nlisten_addr = \"0.0.0.0:7001\"\n\
                    advertise_addr = \"cartdb-0.cartdb:7001\"\nhttp_addr = \"0.0.0.0:8001\"\ndata_dir = \"d\"\n\
                    [[nodes]]\nnode_id = \"b\"\nlisten_addr = \"10.0.0.2:7001\"\ndata_dir = \"d\"\n";
        let config = parse(text, Some("a")).unwrap();
        assert_eq!(config.listen_addr, "0.0.0.0:7001".parse().unwrap());
        assert_eq!(config.http_addr, Some("0.0.0.0:8001".parse().unwrap()));
        let addrs: Vec<&str> = config.cluster.members.iter().map(|m| m.addr.as_str()).collect();
        assert_eq!(addrs, ["cartdb-0.cartdb:7001", "10.0.0.2:7001"]);
        for bad in ["cartdb-0", ":7001", "host:0", "host:x"] {
            let err = parse(&text.replace("cartdb-0.cartdb:7001", bad), Some("a")).unwrap_err();
            assert!(err.to_string().contains("advertise_addr"), "{bad}: {err}");
        }
        let err = parse(&text.replace("0.0.0.0:8001", "nowhere"), Some("a")).unwrap_err();
        assert!(err.to_string().contains("http_addr"), "{err}");
    }
}
