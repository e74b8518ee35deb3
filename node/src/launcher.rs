//! Starting and stopping real `cartd` processes: used by `cartd dev`, integration tests, the
//! partition harness and benchmarks.
//!
//! A [`ClusterSpec`] is written as one cluster file (`DIR/cluster.toml`); each node has a folder
//! `DIR/<node_id>/` with its log (`cartd.log`) and data (`data/`). A node is ready when its log
//! shows the `listening on` line.

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;

/// The line a node prints once its listener is bound; the address follows it.
pub const READY_MARKER: &str = "listening on ";

/// How long a node may take to bind and print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node {node_id} exited before it was ready ({status}); log {log}:\n{tail}")]
    Exited {
        node_id: String,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("node {node_id} not ready after {timeout:?}; log {log}:\n{tail}")]
    NotReady {
        node_id: String,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("signal to node {node_id}: {source}")]
    Signal { node_id: String, source: nix::Error },
    #[error("no node {node_id} in this cluster")]
    NoSuchNode { node_id: String },
    #[error("TLS certificates: {reason}")]
    Tls { reason: String },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LaunchError + 'a {
    move |source| LaunchError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A local cluster to write as one config file.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub dir: PathBuf,
    /// `(node_id, address)` of every node.
    pub nodes: Vec<(String, SocketAddr)>,
    pub secret: String,
    /// Extra lines for the `[cluster]` table (`n = 3`, `anti_entropy_interval_ms = 500`, …).
    pub cluster_toml: String,
    /// Extra top-level lines (limits, tuning), written before any table.
    pub top_toml: String,
    /// Extra tables (`[tls]`, `[auth]`), written after `[cluster]`.
    pub tables_toml: String,
    /// Each node's HTTP address (`/metrics`), in node order; empty: none.
    pub http: Vec<SocketAddr>,
}

impl ClusterSpec {
    /// `count` nodes `n1…` on consecutive ports from `base_port` (0: free ports picked now).
    pub fn loopback(dir: &Path, count: usize, base_port: u16) -> Result<Self, LaunchError> {
        let mut nodes = Vec::new();
        for i in 1..=count {
            let port = if base_port == 0 {
                free_port()?
            } else {
                base_port + (i as u16 - 1)
            };
            nodes.push((format!("n{i}"), SocketAddr::from(([127, 0, 0, 1], port))));
        }
        Ok(ClusterSpec {
            dir: dir.to_owned(),
            nodes,
            secret: "local-cluster-secret".into(),
            cluster_toml: String::new(),
            top_toml: String::new(),
            tables_toml: String::new(),
            http: Vec::new(),
        })
    }

    /// Gives every node an HTTP address: port `base_port + 1000 + K − 1` for node K (`cartd
    /// dev`: 7001 → 8001), or free ports when `base_port` is 0.
    pub fn with_http(mut self, base_port: u16) -> Result<Self, LaunchError> {
        self.http = Vec::new();
        for i in 0..self.nodes.len() {
            let port = match base_port {
                0 => free_port()?,
                base => base.saturating_add(1000).saturating_add(i as u16),
            };
            self.http.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        Ok(self)
    }

    /// TLS on every node, with a throwaway CA and node certificates made now under `DIR/tls`
    /// (valid for 127.0.0.1 and localhost); `peer_mtls`: peers present their certificates too.
    pub fn with_tls(mut self, peer_mtls: bool) -> Result<Self, LaunchError> {
        let ids: Vec<&str> = self.nodes.iter().map(|(id, _)| id.as_str()).collect();
        let pki = crate::security::write_dev_pki(&self.dir.join("tls"), &ids, &["127.0.0.1", "localhost"])
            .map_err(|reason| LaunchError::Tls { reason })?;
        self.tables_toml.push_str(&pki.tls_toml(peer_mtls));
        Ok(self)
    }

    /// The CA file of [`ClusterSpec::with_tls`] (what clients trust).
    pub fn tls_ca_file(&self) -> PathBuf {
        self.dir.join("tls").join("ca.pem")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("cluster.toml")
    }

    pub fn node_dir(&self, node_id: &str) -> PathBuf {
        self.dir.join(node_id)
    }

    /// The cluster file's text.
    pub fn to_toml(&self) -> String {
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let mut out = self.top_toml.clone();
        let _ = write!(
            out,
            "\n[cluster]\nsecret = {}\n{}\n\n{}\n",
            quote(&self.secret),
            self.cluster_toml,
            self.tables_toml
        );
        for (i, (id, addr)) in self.nodes.iter().enumerate() {
            let data = self.node_dir(id).join("data");
            let _ = write!(
                out,
                "\n[[nodes]]\nnode_id = {}\nlisten_addr = \"{addr}\"\ndata_dir = {}\n",
                quote(id),
                quote(&data.display().to_string())
            );
            if let Some(http) = self.http.get(i) {
                let _ = writeln!(out, "http_addr = \"{http}\"");
            }
        }
        out
    }

    pub fn write(&self) -> Result<PathBuf, LaunchError> {
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let path = self.config_path();
        std::fs::write(&path, self.to_toml()).map_err(io("write", &path))?;
        Ok(path)
    }
}

/// A port nothing listens on right now (bound, noted, closed).
///
/// Ports come from below the kernel's ephemeral range: a port the kernel handed out by `bind(0)`
/// can be taken, between this check and the node's own bind, as the local port of any outgoing
/// connection on the machine (seen in CI: a node failed with `Address already in use`). Within one
/// process ports are never handed out twice (a cursor walks the range from a random start), so
/// tests running side by side in one test binary cannot pick each other's ports either.
pub fn free_port() -> Result<u16, LaunchError> {
    free_ports(1)
}

/// The first of `count` consecutive ports nothing listens on right now (see [`free_port`]).
pub fn free_ports(count: u16) -> Result<u16, LaunchError> {
    static CURSOR: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let (low, high) = port_range();
    let span = high - low;
    let mut cursor = CURSOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut next = cursor.unwrap_or_else(|| low + rand::random_range(0..span));
    for _ in 0..span / count.max(1) {
        if next + count > high {
            next = low;
        }
        let base = next;
        next += count;
        let all_free = (base..base + count).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if all_free {
            *cursor = Some(next);
            return Ok(base);
        }
    }
    Err(LaunchError::Io {
        what: "find free ports below the ephemeral range",
        path: PathBuf::from(format!("127.0.0.1:{low}-{high}")),
        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
    })
}

/// `[low, high)`: the ports under the kernel's ephemeral range (`ip_local_port_range`), at most
/// 20,000 of them and none under 10,000.
fn port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|low| low.parse::<u16>().ok()))
        .unwrap_or(32768);
    let high = ephemeral_low.max(12_000);
    let low = high.saturating_sub(20_000).max(10_000).min(high - 1_000);
    (low, high)
}

/// A running `cartd run` child process. Dropping it kills the process.
pub struct NodeProcess {
    pub node_id: String,
    /// The address the node actually bound.
    pub addr: SocketAddr,
    pub dir: PathBuf,
    child: Child,
}

impl NodeProcess {
    /// Starts `cartd_bin run --config CONFIG --node ID` with its log in `dir`, waiting until ready.
    pub fn start(cartd_bin: &Path, config: &Path, node_id: &str, dir: &Path) -> Result<Self, LaunchError> {
        let mut command = Command::new(cartd_bin);
        command.args(["run", "--node", node_id, "--config"]).arg(config);
        Self::start_command(command, node_id, dir)
    }

    /// Starts a prepared `cartd run` command line, possibly behind wrappers that exec into it
    /// (`ip netns exec NS env VAR=… cartd run …`), so the child's pid is cartd's own.
    pub fn start_command(mut command: Command, node_id: &str, dir: &Path) -> Result<Self, LaunchError> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let log_path = dir.join("cartd.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io("open", &log_path))?;
        let start_len = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log.try_clone().map_err(io("clone", &log_path))?;
        let program = PathBuf::from(command.get_program());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io("spawn", &program))?;
        match wait_ready(node_id, &log_path, start_len, &mut child) {
            Ok(addr) => Ok(NodeProcess {
                node_id: node_id.to_owned(),
                addr,
                dir: dir.to_owned(),
                child,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("cartd.log")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no shutdown path runs.
    pub fn kill9(&mut self) -> Result<ExitStatus, LaunchError> {
        self.signal(Signal::SIGKILL)?;
        self.child.wait().map_err(io("wait", &self.dir))
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit (SIGKILL after that).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, LaunchError> {
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return self.kill9();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, LaunchError> {
        self.child.try_wait().map_err(io("wait", &self.dir))
    }

    /// Sends a signal (SIGSTOP/SIGCONT for pauses, …) unless the process has exited.
    pub fn signal(&mut self, signal: Signal) -> Result<(), LaunchError> {
        if self.child.try_wait().ok().flatten().is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.child.id() as i32), signal).map_err(|source| LaunchError::Signal {
            node_id: self.node_id.clone(),
            source,
        })?;
        if signal == Signal::SIGSTOP {
            // The signal is delivered asynchronously: wait (bounded) until the process shows as
            // stopped, so what the caller does next happens while it is.
            let stat = format!("/proc/{}/stat", self.child.id());
            for _ in 0..200 {
                let state = std::fs::read_to_string(&stat).ok().and_then(|s| {
                    // `pid (comm) STATE …`: the state follows the last ')'.
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.trim_start().chars().next())
                });
                if matches!(state, Some('T' | 't') | None) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every node of a [`ClusterSpec`] as a process; stopped nodes are `None`.
pub struct LocalCluster {
    pub spec: ClusterSpec,
    bin: PathBuf,
    nodes: Vec<Option<NodeProcess>>,
    /// Nodes started with a node file of their own and `--join`: (id, file, seed address).
    joined: Vec<(String, PathBuf, String)>,
}

impl LocalCluster {
    /// Writes the cluster file and starts every node.
    pub fn start(cartd_bin: &Path, spec: ClusterSpec) -> Result<Self, LaunchError> {
        spec.write()?;
        let mut cluster = LocalCluster {
            bin: cartd_bin.to_owned(),
            nodes: spec.nodes.iter().map(|_| None).collect(),
            spec,
            joined: Vec::new(),
        };
        for i in 0..cluster.nodes.len() {
            cluster.restart(i)?;
        }
        Ok(cluster)
    }

    /// Starts node `i` (again) with extra environment variables (`LD_PRELOAD` and `FAKETIME`
    /// for libfaketime: the node then lives at another time).
    pub fn restart_with_env(&mut self, i: usize, env: &[(&str, &str)]) -> Result<&NodeProcess, LaunchError> {
        let (id, _) = self
            .spec
            .nodes
            .get(i)
            .ok_or_else(|| LaunchError::NoSuchNode {
                node_id: format!("#{i}"),
            })?
            .clone();
        let mut command = Command::new(&self.bin);
        match self.joined.iter().find(|(j, _, _)| *j == id) {
            Some((_, file, seed)) => command.arg("run").arg("--config").arg(file).arg("--join").arg(seed),
            None => command
                .args(["run", "--node", &id, "--config"])
                .arg(self.spec.config_path()),
        };
        command.envs(env.iter().copied());
        let node = NodeProcess::start_command(command, &id, &self.spec.node_dir(&id))?;
        self.nodes[i] = Some(node);
        Ok(self.nodes[i].as_ref().expect("just set"))
    }

    /// Starts node `i` (again).
    pub fn restart(&mut self, i: usize) -> Result<&NodeProcess, LaunchError> {
        self.restart_with_env(i, &[])
    }

    /// Starts a new node `node_id` on `port` (0: a free one) from a node file of its own
    /// (`DIR/<node_id>.toml`), joining through node `seed`: it learns the layout and waits as a
    /// non-member until an operator adds it (`cartctl cluster join`). Returns its index.
    pub fn start_joining(&mut self, node_id: &str, port: u16, seed: usize) -> Result<usize, LaunchError> {
        let port = if port == 0 { free_port()? } else { port };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let seed = self
            .endpoints()
            .get(seed)
            .cloned()
            .ok_or_else(|| LaunchError::NoSuchNode {
                node_id: format!("#{seed}"),
            })?;
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        // Timing keys of the cluster table carry over; N/R/W come from the layout it learns.
        let cluster_toml: String = self
            .spec
            .cluster_toml
            .lines()
            .filter(|l| !["n", "r", "w"].contains(&l.split('=').next().unwrap_or("").trim()))
            .map(|l| format!("{l}\n"))
            .collect();
        let data = self.spec.node_dir(node_id).join("data");
        let text = format!(
            "{}\nnode_id = {}\nlisten_addr = \"{addr}\"\ndata_dir = {}\n\n[cluster]\nsecret = {}\n{cluster_toml}\n{}\n",
            self.spec.top_toml,
            quote(node_id),
            quote(&data.display().to_string()),
            quote(&self.spec.secret),
            self.spec.tables_toml,
        );
        let file = self.spec.dir.join(format!("{node_id}.toml"));
        std::fs::write(&file, text).map_err(io("write", &file))?;
        self.spec.nodes.push((node_id.to_owned(), addr));
        self.nodes.push(None);
        self.joined.push((node_id.to_owned(), file, seed));
        let i = self.nodes.len() - 1;
        self.restart(i)?;
        Ok(i)
    }

    /// The running node `i`, if it is running.
    pub fn node(&mut self, i: usize) -> Option<&mut NodeProcess> {
        self.nodes.get_mut(i).and_then(Option::as_mut)
    }

    /// Addresses of every node, running or not, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.spec.nodes.iter().map(|(_, a)| a.to_string()).collect()
    }

    pub fn kill9(&mut self, i: usize) -> Result<ExitStatus, LaunchError> {
        let mut node = self.take(i)?;
        node.kill9()
    }

    pub fn terminate(&mut self, i: usize, timeout: Duration) -> Result<ExitStatus, LaunchError> {
        let mut node = self.take(i)?;
        node.terminate(timeout)
    }

    /// Stops every running node with SIGTERM; returns `(node_id, status)` of each.
    pub fn terminate_all(&mut self, timeout: Duration) -> Result<Vec<(String, ExitStatus)>, LaunchError> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_some() {
                let id = self.spec.nodes[i].0.clone();
                out.push((id, self.terminate(i, timeout)?));
            }
        }
        Ok(out)
    }

    /// A running node that has exited on its own, with its status (reported once: it no longer
    /// counts as running).
    pub fn exited(&mut self) -> Result<Option<(String, ExitStatus)>, LaunchError> {
        for slot in self.nodes.iter_mut() {
            let Some(node) = slot else { continue };
            if let Some(status) = node.try_wait()? {
                let id = node.node_id.clone();
                *slot = None;
                return Ok(Some((id, status)));
            }
        }
        Ok(None)
    }

    fn take(&mut self, i: usize) -> Result<NodeProcess, LaunchError> {
        self.nodes
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| LaunchError::NoSuchNode {
                node_id: format!("#{i} (not running)"),
            })
    }
}

fn wait_ready(node_id: &str, log: &Path, from: u64, child: &mut Child) -> Result<SocketAddr, LaunchError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read(log).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default()).into_owned();
        if let Some(addr) = parse_ready(&text) {
            return Ok(addr);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LaunchError::Exited {
                node_id: node_id.into(),
                status,
                log: log.into(),
                tail: tail(&text),
            });
        }
        if Instant::now() >= deadline {
            return Err(LaunchError::NotReady {
                node_id: node_id.into(),
                timeout: READY_TIMEOUT,
                log: log.into(),
                tail: tail(&text),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bound address from a node's log, if its ready line is there.
pub fn parse_ready(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let rest = &line[line.find(READY_MARKER)? + READY_MARKER.len()..];
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_gives_the_bound_address() {
        let log = "starting\ncartd n1 listening on 127.0.0.1:40123 (actor 00ff)\n";
        assert_eq!(parse_ready(log), Some("127.0.0.1:40123".parse().unwrap()));
        assert_eq!(parse_ready("starting\n"), None);
    }

    #[test]
    fn a_cluster_spec_writes_a_valid_cluster_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ClusterSpec::loopback(dir.path(), 3, 17001).unwrap();
        spec.cluster_toml = "anti_entropy_interval_ms = 200".into();
        let path = spec.write().unwrap();
        let config = crate::NodeConfig::load(&path, Some("n3")).unwrap();
        assert_eq!(config.listen_addr, "127.0.0.1:17003".parse().unwrap());
        assert_eq!(config.cluster.members.len(), 3);
        assert_eq!(config.cluster.anti_entropy_interval, Duration::from_millis(200));
        assert_eq!(config.data_dir, dir.path().join("n3").join("data"));
    }

    #[test]
    fn free_ports_lie_under_the_ephemeral_range_and_never_repeat() {
        let (low, high) = port_range();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let base = free_ports(3).unwrap();
            assert!(low <= base && base + 3 <= high, "{base} outside {low}..{high}");
            for port in base..base + 3 {
                assert!(seen.insert(port), "port {port} handed out twice");
            }
        }
    }
}
