//! Deterministic simulation: a whole cartdb cluster in one process under turmoil.
//!
//! [`SimCluster::new`] registers one turmoil host per node (`n1`…`nN`), each running the real
//! `cartd` code ([`cart_node::Node`]) over turmoil TCP ([`sim_connector`], [`incoming`]), on a
//! [`MemoryStorage`] and a [`SimClock`]. The storage of each node is created once, outside its
//! host, so it survives [`SimCluster::crash`] + [`SimCluster::bounce`] the way a disk survives
//! `kill -9`; every (re)start gets a fresh actor id drawn from the seeded rng (a crash is a new
//! incarnation). Clients run in `sim.client(...)` closures and connect with [`sim_client`] (or
//! [`sim_client_connector`]).
//!
//! Determinism: turmoil's latencies and the actor ids come from the seed, the epoch is fixed, and
//! faults go through [`SimCluster`]'s methods (a bare `sim.crash` is not reproducible, see
//! [`SimCluster::crash`]). The client's retry jitter comes from an unseeded rng, so
//! [`sim_client_options`] turns backoff off. Not covered by the seed: tokio's `select!` branch
//! order (seeded only with `--cfg tokio_unstable`); no run has shown it to matter.
//!
//! It never touches real sockets, files or the wall clock.

mod clock;
mod net;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cart_client::{CartClient, ClientError, ClientOptions};
use cart_node::config::ConfigError;
use cart_node::faults::FaultyStorage;
use cart_node::storage::{MemoryStorage, Storage, StorageError};
use cart_node::{Node, NodeConfig};
use thiserror::Error;

pub use clock::{SimClock, SIM_EPOCH_MS};
pub use net::{incoming, sim_client_connector, sim_connector, SimConnect, SimConnectInfo, SimStream};

/// Port every simulated node listens on.
pub const SIM_PORT: u16 = 7000;

/// What can go wrong building or inspecting a simulated cluster.
#[derive(Debug, Error)]
pub enum SimError {
    #[error("a simulated cluster needs at least one node")]
    NoNodes,
    #[error("node config for {host}: {source}")]
    Config { host: String, source: ConfigError },
    #[error("no node named {host}")]
    UnknownHost { host: String },
    #[error("storage of {host}: {source}")]
    Storage { host: String, source: StorageError },
    #[error("stored cart {cart_id} on {host} does not decode: {reason}")]
    Decode {
        host: String,
        cart_id: String,
        reason: String,
    },
}

/// Settings of a simulated cluster: turmoil's network and the cartdb cluster config. The
/// defaults suit simulation (short timeouts, fast background loops, keepalive on).
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Simulated time after which `sim.step()` fails if clients are still running.
    pub simulation_duration: Duration,
    /// Simulated time per `sim.step()`.
    pub tick: Duration,
    /// Shortest latency of one message on a link (each latency is drawn from the seeded rng).
    pub min_message_latency: Duration,
    /// Longest latency of one message on a link.
    pub max_message_latency: Duration,
    /// turmoil's per-host TCP buffer capacity.
    pub tcp_capacity: usize,
    /// Replicas per cart; `None` = the cartdb default, min(3, nodes).
    pub n: Option<usize>,
    /// Read quorum; `None` = the cartdb default, a majority of N.
    pub r: Option<usize>,
    /// Write quorum; `None` = the cartdb default, a majority of N.
    pub w: Option<usize>,
    /// Deadline of one call to a peer.
    pub peer_timeout: Duration,
    /// How long a coordinator waits for its quorum.
    pub request_timeout: Duration,
    /// Failure detector period.
    pub heartbeat_interval: Duration,
    /// Consecutive failed heartbeats after which a peer is marked down.
    pub down_after_failures: u32,
    /// How often hints are offered to owners that are up.
    pub hint_interval: Duration,
    /// Period of the anti-entropy exchange.
    pub anti_entropy_interval: Duration,
    /// HTTP/2 keepalive on every node connection, served and dialled (at least 100 ms).
    pub keepalive_interval: Duration,
    /// Guest carts expire this long after their last change (user carts never do here), with
    /// this clock-skew bound; each node sweeps every `sweep_interval`.
    pub guest_ttl: Duration,
    pub clock_skew: Duration,
    pub sweep_interval: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            simulation_duration: Duration::from_secs(120),
            tick: Duration::from_millis(1),
            min_message_latency: Duration::from_millis(1),
            max_message_latency: Duration::from_millis(10),
            tcp_capacity: 1024,
            n: None,
            r: None,
            w: None,
            peer_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(1_000),
            heartbeat_interval: Duration::from_millis(200),
            down_after_failures: 2,
            hint_interval: Duration::from_millis(200),
            anti_entropy_interval: Duration::from_millis(500),
            keepalive_interval: Duration::from_millis(1_000),
            guest_ttl: Duration::from_secs(3),
            clock_skew: Duration::from_millis(200),
            sweep_interval: Duration::from_millis(500),
        }
    }
}

impl SimOptions {
    /// The cluster file every node parses (the real parser validates it), with `addrs` in host order.
    fn cluster_toml(&self, hosts: &[String], addrs: &[SocketAddr]) -> String {
        let ms = |d: Duration| d.as_millis();
        let mut toml = format!(
            "keepalive_interval_ms = {}\nshutdown_grace_ms = 1000\n\n[cluster]\nsecret = \"{SIM_SECRET}\"\n",
            ms(self.keepalive_interval)
        );
        for (key, value) in [("n", self.n), ("r", self.r), ("w", self.w)] {
            if let Some(value) = value {
                toml += &format!("{key} = {value}\n");
            }
        }
        toml += &format!(
            "peer_timeout_ms = {}\nrequest_timeout_ms = {}\nheartbeat_interval_ms = {}\n\
             down_after_failures = {}\nhint_interval_ms = {}\nanti_entropy_interval_ms = {}\n",
            ms(self.peer_timeout),
            ms(self.request_timeout),
            ms(self.heartbeat_interval),
            self.down_after_failures,
            ms(self.hint_interval),
            ms(self.anti_entropy_interval),
        );
        toml += &format!(
            "guest_ttl = \"{}ms\"\nuser_ttl = \"0\"\nclock_skew = \"{}ms\"\nsweep_interval = \"{}ms\"\n",
            ms(self.guest_ttl),
            ms(self.clock_skew),
            ms(self.sweep_interval),
        );
        for (host, addr) in hosts.iter().zip(addrs) {
            toml +=
                &format!("\n[[nodes]]\nnode_id = \"{host}\"\nlisten_addr = \"{addr}\"\ndata_dir = \"sim/{host}\"\n");
        }
        toml
    }
}

/// The cluster secret of simulated clusters.
pub const SIM_SECRET: &str = "simulated-cluster-secret";

/// SplitMix64: a tiny seeded generator for actor ids (no dependency on a `rand` version).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One simulated node: its host name, address, config and the storage that outlives crashes.
struct SimNode {
    host: String,
    addr: SocketAddr,
    config: NodeConfig,
    storage: Arc<MemoryStorage>,
    /// What the node's software opens: `storage` behind faults the disk nemesis switches.
    faulty: Arc<FaultyStorage>,
}

/// A cartdb cluster inside a turmoil simulation. Register clients and `step()` through
/// [`SimCluster::sim`]; inject faults with [`SimCluster::partition`], [`SimCluster::repair`],
/// [`SimCluster::crash`] and [`SimCluster::bounce`] (not `sim.crash`: see [`SimCluster::crash`]).
pub struct SimCluster {
    /// The simulation (hosts `n1`…`nN` are registered; add clients with `sim.client`).
    pub sim: turmoil::Sim<'static>,
    seed: u64,
    hosts: Vec<String>,
    nodes: Vec<SimNode>,
    /// Directed links cut by [`SimCluster::partition`] and not repaired since.
    cut: BTreeSet<(IpAddr, IpAddr)>,
}

impl SimCluster {
    /// Builds a seeded simulation of `node_count` nodes (`n1`…, port [`SIM_PORT`]), each serving
    /// from the start.
    pub fn new(seed: u64, node_count: usize, options: SimOptions) -> Result<Self, SimError> {
        if node_count == 0 {
            return Err(SimError::NoNodes);
        }
        let mut sim = turmoil::Builder::new()
            .rng_seed(seed)
            .epoch(SystemTime::UNIX_EPOCH + Duration::from_millis(SIM_EPOCH_MS))
            .simulation_duration(options.simulation_duration)
            .tick_duration(options.tick)
            .min_message_latency(options.min_message_latency)
            .max_message_latency(options.max_message_latency)
            .tcp_capacity(options.tcp_capacity)
            .build();
        let hosts: Vec<String> = (1..=node_count).map(|i| format!("n{i}")).collect();
        // Names resolve to addresses in registration order; the config needs them all up front.
        let addrs: Vec<SocketAddr> = hosts
            .iter()
            .map(|h| SocketAddr::new(sim.lookup(h.as_str()), SIM_PORT))
            .collect();
        let toml = options.cluster_toml(&hosts, &addrs);
        let mut nodes = Vec::new();
        for (host, addr) in hosts.iter().zip(&addrs) {
            let config = NodeConfig::parse(&toml, Path::new("sim-cluster.toml"), Some(host)).map_err(|source| {
                SimError::Config {
                    host: host.clone(),
                    source,
                }
            })?;
            let storage = Arc::new(MemoryStorage::default());
            nodes.push(SimNode {
                host: host.clone(),
                addr: *addr,
                config,
                faulty: Arc::new(FaultyStorage::new(storage.clone())),
                storage,
            });
        }
        // One stream for every (re)start of every host: draws happen in simulation order.
        let actors = Rc::new(RefCell::new(SplitMix64(seed ^ 0x5EED_CA27_D8A7_AB1E)));
        for node in &nodes {
            let config = node.config.clone();
            let storage: Arc<dyn Storage> = node.faulty.clone();
            let actors = actors.clone();
            sim.host(node.host.as_str(), move || {
                let fresh_actor = actors.borrow_mut().next();
                run_node(config.clone(), storage.clone(), fresh_actor)
            });
        }
        Ok(SimCluster {
            sim,
            seed,
            hosts,
            nodes,
            cut: BTreeSet::new(),
        })
    }

    /// Cuts the link between hosts `a` and `b` (nodes or clients) both ways; messages in flight
    /// on it are lost.
    pub fn partition(&mut self, a: &str, b: &str) {
        let (a, b) = (self.sim.lookup(a), self.sim.lookup(b));
        self.sim.partition(a, b);
        self.cut.extend([(a, b), (b, a)]);
    }

    /// Heals the link between `a` and `b` both ways.
    pub fn repair(&mut self, a: &str, b: &str) {
        let (a, b) = (self.sim.lookup(a), self.sim.lookup(b));
        self.sim.repair(a, b);
        self.cut.remove(&(a, b));
        self.cut.remove(&(b, a));
    }

    /// Kills `host`'s software at once, like a machine that loses power: its storage stays, its
    /// connections die without a word, and what it had sent but not yet delivered is lost.
    ///
    /// Deterministic, unlike a bare `sim.crash`: dropping the host's runtime closes its sockets
    /// in tokio's task-list order, which depends on a process-wide task id counter, and each
    /// closing FIN/RST would draw a latency from the seeded rng in that order, so two runs of one
    /// seed could diverge. Here the host's outgoing links are cut for the crash (dropped messages
    /// draw nothing) and healed right after, except those cut by [`SimCluster::partition`].
    pub fn crash(&mut self, host: &str) {
        let me = self.sim.lookup(host);
        let mut others = Vec::new();
        self.sim.links(|links| {
            for link in links {
                match link.pair() {
                    (a, b) if a == me => others.push(b),
                    (a, b) if b == me => others.push(a),
                    _ => {}
                }
            }
        });
        for other in &others {
            self.sim.partition_oneway(me, *other);
        }
        self.sim.crash(me);
        for other in others.iter().filter(|o| !self.cut.contains(&(me, **o))) {
            self.sim.repair_oneway(me, *other);
        }
    }

    /// Restarts `host`'s software on its surviving storage, as a new incarnation (fresh actor).
    pub fn bounce(&mut self, host: &str) {
        self.sim.bounce(host);
    }

    /// Whether `host`'s software is running (not crashed).
    pub fn is_running(&mut self, host: &str) -> bool {
        self.sim.is_host_running(host)
    }

    /// The seed this simulation was built with (print it on failure).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The nodes' host names, `n1`…`nN`.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Every node's `IP:PORT`, in host order: the endpoints for [`sim_client`].
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.to_string()).collect()
    }

    /// A node's validated config.
    pub fn config(&self, host: &str) -> Result<&NodeConfig, SimError> {
        Ok(&self.node(host)?.config)
    }

    /// The fault switch in front of a node's storage (the disk nemesis).
    pub fn disk(&self, host: &str) -> Result<Arc<FaultyStorage>, SimError> {
        Ok(self.node(host)?.faulty.clone())
    }

    /// A node's storage: it outlives crashes, and a checker reads replicas from it after a run.
    pub fn storage(&self, host: &str) -> Result<Arc<MemoryStorage>, SimError> {
        Ok(self.node(host)?.storage.clone())
    }

    /// The newest layout version any node has stored (1 before any membership change).
    pub fn layout_version(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| cart_node::membership::stored_layouts(n.storage.as_ref()).ok().flatten())
            .map(|(current, _)| current.version)
            .max()
            .unwrap_or(1)
    }

    /// The cart's preference list (its N owners' host names) in the read version of the newest
    /// layout any node has stored: the version whose owners hold everything (the previous one
    /// while carts still move; the cluster file's members before any change).
    pub fn owners(&self, cart_id: &str) -> Vec<String> {
        let cluster = &self.nodes[0].config.cluster;
        let newest = self
            .nodes
            .iter()
            .filter_map(|n| cart_node::membership::stored_layouts(n.storage.as_ref()).ok().flatten())
            .max_by_key(|(current, previous)| (current.version, previous.is_none()));
        let (members, n) = match newest {
            Some((current, previous)) => {
                let read = previous.unwrap_or(current);
                (read.members, read.n as usize)
            }
            None => (cluster.members.clone(), cluster.n),
        };
        match cart_ring::Ring::new(members) {
            Ok(ring) => ring
                .preference_list(cart_id.as_bytes(), n)
                .into_iter()
                .map(|m| m.node_id.clone())
                .collect(),
            // Layouts are validated before they are stored.
            Err(_) => Vec::new(),
        }
    }

    /// `host`'s replica of `cart_id` in the canonical encoding (`cart_crdt::codec::encode`):
    /// equal states give equal bytes.
    pub fn canonical_cart(&self, host: &str, cart_id: &str) -> Result<Option<Vec<u8>>, SimError> {
        match self.replica(host, cart_id)? {
            Some(cart) => cart_crdt::codec::encode(&cart)
                .map(Some)
                .map_err(|e| self.decode_error(host, cart_id, e)),
            None => Ok(None),
        }
    }

    /// `host`'s replica of `cart_id`, decoded.
    pub fn replica(&self, host: &str, cart_id: &str) -> Result<Option<cart_crdt::Cart>, SimError> {
        // Base and deltas, as the node itself would load them.
        cart_node::store::read_stored(self.node(host)?.storage.as_ref(), cart_id).map_err(|e| SimError::Decode {
            host: host.to_owned(),
            cart_id: cart_id.to_owned(),
            reason: e.to_string(),
        })
    }

    fn decode_error(&self, host: &str, cart_id: &str, e: cart_crdt::CartError) -> SimError {
        SimError::Decode {
            host: host.to_owned(),
            cart_id: cart_id.to_owned(),
            reason: e.to_string(),
        }
    }

    fn node(&self, host: &str) -> Result<&SimNode, SimError> {
        self.nodes
            .iter()
            .find(|n| n.host == host)
            .ok_or_else(|| SimError::UnknownHost { host: host.to_owned() })
    }
}

/// One node's software: open on the shared storage, listen on [`SIM_PORT`], serve until crashed.
async fn run_node(config: NodeConfig, storage: Arc<dyn Storage>, fresh_actor: u64) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), SIM_PORT)).await?;
    let node = Node::open_with_connector(
        config,
        storage,
        Arc::new(SimClock::default()),
        fresh_actor,
        sim_connector(),
    )
    .await?;
    node.serve(incoming(listener), std::future::pending::<()>()).await?;
    Ok(())
}

/// Client options for simulation: deadlines that fit the sim's timeouts and no retry backoff
/// (the client draws its jitter from an unseeded rng, which would leak into the timeline).
pub fn sim_client_options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
        backoff_initial: Duration::ZERO,
        backoff_max: Duration::ZERO,
        clock: clock::sim_now_ms,
        ..ClientOptions::default()
    }
}

/// A `CartClient` over turmoil TCP; call it inside a `sim.client(...)` closure.
pub async fn sim_client(endpoints: &[String], options: ClientOptions) -> Result<CartClient, ClientError> {
    CartClient::connect_with_connector(endpoints, options, sim_client_connector()).await
}
