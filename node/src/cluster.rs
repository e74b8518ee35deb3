//! The cluster as one node sees it: the live layout versions and their rings, a channel to every
//! peer, and the failure detector's up/down verdicts. [`Cluster::plan`] turns a cart id into the
//! nodes to contact (sloppy quorum).
//!
//! Layouts change at run time ([`Cluster::install`]): while carts move into a new version, two
//! versions are live. Reads, coordination and sloppy-quorum fallbacks follow the *read* version
//! (the previous one, whose owners hold everything); writes also reach the new version's owners
//! ([`Plan::extras`]). Heartbeats carry each node's layout and synced versions
//! ([`Peer::layout_version`], [`Peer::synced_version`]); a newer version seen wakes
//! [`Cluster::newer_layout`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cart_crdt::CartId;
use cart_proto::replica_pb::replica_service_client::ReplicaServiceClient;
use cart_proto::replica_pb::{PingRequest, ReadReply, ReadRequest, ReplicateRequest};
use cart_proto::SECRET_HEADER;
use cart_ring::layout::Layout;
use cart_ring::{Member, Ring};
use tokio::sync::{mpsc, oneshot, Notify};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::batcher::{self, batched, BatchItem, Reads, Replicates, BATCH_QUEUE_MAX};
use crate::config::ClusterConfig;
use crate::config::NodeConfig;
use crate::error::NodeError;

/// Adds the cluster secret to every internal call.
#[derive(Clone)]
pub struct SecretInterceptor(MetadataValue<Ascii>);

impl SecretInterceptor {
    pub fn new(secret: MetadataValue<Ascii>) -> Self {
        SecretInterceptor(secret)
    }
}

impl Interceptor for SecretInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(SECRET_HEADER, self.0.clone());
        Ok(request)
    }
}

pub type PeerClient = ReplicaServiceClient<InterceptedService<Channel, SecretInterceptor>>;

/// The transport seam: turns a peer's configured endpoint (address, timeouts, keepalive) into a
/// channel. Real nodes dial TCP lazily ([`tcp_connect`]); a simulation dials its own network
/// (e.g. `Endpoint::connect_with_connector_lazy` over simulated streams).
pub type Connect = Arc<dyn Fn(Endpoint) -> Channel + Send + Sync>;

/// The real transport: a lazily connected TCP channel per peer.
pub fn tcp_connect() -> Connect {
    Arc::new(|endpoint: Endpoint| endpoint.connect_lazy())
}

/// One other node.
pub struct Peer {
    pub member: Member,
    client: PeerClient,
    replicates: mpsc::Sender<BatchItem<ReplicateRequest, ()>>,
    reads: mpsc::Sender<BatchItem<ReadRequest, ReadReply>>,
    up: AtomicBool,
    failures: AtomicU32,
    /// What the peer's last heartbeat answer said: its newest layout version, and the version it
    /// has handed over all its carts for (0: not heard yet).
    pub layout_version: AtomicU64,
    pub synced_version: AtomicU64,
    /// The peer's read version (it has dropped every version before it).
    pub finished_version: AtomicU64,
    /// The peer's pricing rules version, from its heartbeats.
    pub pricing_version: AtomicU64,
    /// Why the peer's storage takes no writes (empty: it does), from its heartbeats and its
    /// refusals.
    degraded: std::sync::Mutex<String>,
    /// Whether `degraded` is not empty (read on every reply's membership version).
    degraded_flag: AtomicBool,
}

impl Peer {
    /// Replicates one cart state through this peer's batcher: requests queued while earlier
    /// batches are in flight go together in one call and one flush on the peer.
    pub async fn replicate(&self, request: ReplicateRequest) -> Result<(), Status> {
        batched(&self.replicates, request).await
    }

    /// Queues a replicate request without waiting (for callers holding a lock); `None` when
    /// the queue is full or closed (the caller then sends it the usual way).
    pub fn try_replicate(&self, request: ReplicateRequest) -> Option<oneshot::Receiver<Result<(), Status>>> {
        let (done, result) = oneshot::channel();
        self.replicates.try_send(BatchItem { request, done }).ok()?;
        Some(result)
    }

    /// Whether the peer's storage takes no writes, as it said last (one atomic load).
    pub fn is_degraded(&self) -> bool {
        self.degraded_flag.load(Ordering::Relaxed)
    }

    /// Why the peer's storage takes no writes, if it said so last.
    pub fn degraded(&self) -> Option<String> {
        let reason = self.degraded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (!reason.is_empty()).then(|| reason.clone())
    }

    fn set_degraded(&self, reason: &str) {
        let mut current = self.degraded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.degraded_flag.store(!reason.is_empty(), Ordering::Relaxed);
        if *current != reason {
            match reason {
                "" => tracing::info!(peer = %self.member.node_id, "peer takes writes again"),
                _ => tracing::warn!(peer = %self.member.node_id, reason, "peer storage degraded: no writes go to it"),
            }
            reason.clone_into(&mut current);
        }
    }

    /// Reads one cart through this peer's read batcher (one call for what queued meanwhile).
    pub async fn read(&self, request: ReadRequest) -> Result<ReadReply, Status> {
        batched(&self.reads, request).await
    }

    /// A client for one call (cheap clone of the shared channel).
    pub fn client(&self) -> PeerClient {
        self.client.clone()
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
}

/// Where one request for a cart goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node_id: String,
    /// Set when `node_id` stands in for this down owner (a sloppy-quorum fallback).
    pub hint_for: Option<String>,
}

/// The nodes for one cart: its owners, and the targets chosen now from who is up.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The preference list (first N distinct nodes on the ring).
    pub owners: Vec<String>,
    /// One target per owner: the owner itself when up, else the next healthy fallback, else
    /// (no fallback free) the owner anyway: the detector may be stale, and a call to a dead node
    /// fails fast; the coordinator then keeps a hint for it.
    pub targets: Vec<Target>,
    /// Owners in the newest layout version that the read version does not list, while carts move
    /// into it: they get every write too, but do not count towards W.
    pub extras: Vec<String>,
    /// Owners the detector says are down (or take no writes) that stay their own target for
    /// want of a free fallback.
    pub down: Vec<String>,
    /// Down owners a write does not call ([`Plan::skip_down`]): it keeps a hint for each.
    pub hinted: Vec<String>,
}

impl Plan {
    /// For a write of quorum `w`: when the usable targets alone make `w`, the down owners are
    /// not called but hinted at once. A call to a stopped or cut-off process waits out the peer
    /// timeout, and the hints of every write of that second then land together (a burst that
    /// stalled the healthy nodes each second of a pause). With too few usable targets they are
    /// still called (the detector may be stale).
    pub fn skip_down(&mut self, w: usize) {
        if self.down.is_empty() || self.targets.len() - self.down.len() < w {
            return;
        }
        let down = std::mem::take(&mut self.down);
        self.targets
            .retain(|t| t.hint_for.is_some() || !down.contains(&t.node_id));
        self.hinted = down;
    }
}

/// One live layout version and its ring.
pub struct Version {
    pub layout: Layout,
    pub ring: Ring,
}

impl Version {
    pub fn new(layout: Layout) -> Result<Self, NodeError> {
        let ring = Ring::new(layout.members.clone()).map_err(|e| NodeError::Config {
            reason: format!("layout version {}: {e}", layout.version),
        })?;
        Ok(Version { layout, ring })
    }

    /// The preference list of `key` in this version.
    pub fn owners(&self, key: &[u8]) -> Vec<String> {
        self.ring
            .preference_list(key, self.layout.n as usize)
            .into_iter()
            .map(|m| m.node_id.clone())
            .collect()
    }
}

/// The live layout versions: the newest, and while carts still move into it, the one before.
pub struct Topology {
    pub current: Version,
    pub previous: Option<Version>,
    /// The membership fingerprint clients follow (of the read version).
    pub fingerprint: u64,
}

impl Topology {
    /// The version reads, coordination and fallbacks follow: the one whose owners hold
    /// everything (the previous one until the move into the current one is done).
    pub fn read(&self) -> &Version {
        self.previous.as_ref().unwrap_or(&self.current)
    }

    /// Every member of a live version.
    pub fn members(&self) -> BTreeMap<&str, &Member> {
        let mut all: BTreeMap<&str, &Member> = BTreeMap::new();
        for v in self.previous.iter().chain([&self.current]) {
            for m in &v.layout.members {
                all.insert(&m.node_id, m);
            }
        }
        all
    }
}

/// How this node dials peers (fixed for its lifetime).
struct Dialer {
    connect: Connect,
    secret: MetadataValue<Ascii>,
    keepalive: Duration,
    max_message_bytes: usize,
    peer_timeout: Duration,
    /// `[tls]`: peers are dialled over https.
    tls: Option<crate::security::TlsSettings>,
}

impl Dialer {
    fn peer(&self, member: &Member) -> Result<Peer, NodeError> {
        let endpoint = crate::security::peer_endpoint(&member.addr, self.tls.as_ref())
            .map_err(|e| NodeError::Config {
                reason: format!("address of {}: {e}", member.node_id),
            })?
            .connect_timeout(self.peer_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive)
            .keep_alive_while_idle(true);
        let channel = (self.connect)(endpoint);
        let client = ReplicaServiceClient::with_interceptor(channel, SecretInterceptor(self.secret.clone()))
            .max_decoding_message_size(self.max_message_bytes * 4)
            .max_encoding_message_size(self.max_message_bytes * 4);
        let (replicates, queue) = mpsc::channel(BATCH_QUEUE_MAX);
        tokio::spawn(batcher::run::<Replicates>(client.clone(), queue, self.peer_timeout));
        let (reads, queue) = mpsc::channel(BATCH_QUEUE_MAX);
        tokio::spawn(batcher::run::<Reads>(client.clone(), queue, self.peer_timeout));
        Ok(Peer {
            member: member.clone(),
            client,
            replicates,
            reads,
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            layout_version: AtomicU64::new(0),
            synced_version: AtomicU64::new(0),
            finished_version: AtomicU64::new(0),
            pricing_version: AtomicU64::new(0),
            degraded: std::sync::Mutex::new(String::new()),
            degraded_flag: AtomicBool::new(false),
        })
    }
}

pub struct Cluster {
    pub config: ClusterConfig,
    pub self_id: String,
    dialer: Dialer,
    topology: RwLock<Arc<Topology>>,
    /// Ordered by node id, so every iteration over peers is deterministic (simulation).
    peers: RwLock<BTreeMap<String, Arc<Peer>>>,
    /// The version this node has handed over all its carts for (see `membership::rebalance`).
    pub synced_version: AtomicU64,
    /// Woken when a heartbeat shows a peer with a newer layout version (who: `newer_from`) or
    /// newer pricing rules (who: `newer_pricing_from`).
    pub newer_layout: Notify,
    pub newer_from: std::sync::Mutex<Option<String>>,
    pub newer_pricing_from: std::sync::Mutex<Option<String>>,
    /// The cluster's pricing rules as this node holds them (version 0: none yet). A reply is
    /// priced with one snapshot of it, never a mix of two versions.
    pricing: RwLock<Arc<cart_crdt::pricing::PricingRules>>,
    /// This node's own storage verdict (carried on heartbeats).
    pub health: Arc<crate::faults::StorageHealth>,
}

/// A node's contribution to the membership version while its storage is degraded.
fn node_mix(node_id: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(b"degraded\0");
    h.write(node_id.as_bytes());
    h.finish()
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Cluster {
    /// Builds the rings of the live layout versions and a channel to every member, made by
    /// `connect` (lazily connecting: no peer needs to be up).
    pub fn new(
        config: &NodeConfig,
        connect: &Connect,
        current: Layout,
        previous: Option<Layout>,
        synced_version: u64,
        health: Arc<crate::faults::StorageHealth>,
    ) -> Result<Self, NodeError> {
        let cluster = &config.cluster;
        let secret: MetadataValue<Ascii> = cluster.secret.parse().map_err(|_| NodeError::Config {
            reason: "[cluster] secret must be printable ASCII".into(),
        })?;
        let dialer = Dialer {
            connect: connect.clone(),
            secret,
            keepalive: config.keepalive_interval,
            max_message_bytes: config.limits.max_message_bytes,
            peer_timeout: cluster.peer_timeout,
            tls: config.tls.clone(),
        };
        let me = Cluster {
            config: cluster.clone(),
            self_id: config.node_id.clone(),
            dialer,
            topology: RwLock::new(Arc::new(Topology {
                fingerprint: current.fingerprint(),
                current: Version::new(current.clone())?,
                previous: None,
            })),
            peers: RwLock::new(BTreeMap::new()),
            synced_version: AtomicU64::new(synced_version),
            newer_layout: Notify::new(),
            newer_from: std::sync::Mutex::new(None),
            newer_pricing_from: std::sync::Mutex::new(None),
            pricing: RwLock::new(Arc::default()),
            health,
        };
        me.install(current, previous)?;
        Ok(me)
    }

    /// Makes `current` (and `previous`, while carts move out of it) the live versions: channels
    /// to new members are made, those to nodes in neither version dropped.
    pub fn install(&self, current: Layout, previous: Option<Layout>) -> Result<(), NodeError> {
        let fingerprint = previous.as_ref().unwrap_or(&current).fingerprint();
        let topology = Topology {
            current: Version::new(current)?,
            previous: previous.map(Version::new).transpose()?,
            fingerprint,
        };
        let mut peers = write_lock(&self.peers);
        let members: BTreeMap<String, Member> = topology
            .members()
            .into_iter()
            .filter(|(id, _)| *id != self.self_id)
            .map(|(id, m)| (id.to_owned(), m.clone()))
            .collect();
        peers.retain(|id, peer| members.get(id).is_some_and(|m| m.addr == peer.member.addr));
        for (id, member) in members {
            if let std::collections::btree_map::Entry::Vacant(slot) = peers.entry(id) {
                slot.insert(Arc::new(self.dialer.peer(&member)?));
            }
        }
        *write_lock(&self.topology) = Arc::new(topology);
        Ok(())
    }

    /// The live layout versions now.
    pub fn topology(&self) -> Arc<Topology> {
        read_lock(&self.topology).clone()
    }

    /// The fingerprint clients follow (`x-cartdb-membership`): of the read version's members, and
    /// of which nodes' storage is degraded (so clients refresh and send those requests last).
    pub fn version(&self) -> u64 {
        let mut version = self.topology().fingerprint;
        for peer in read_lock(&self.peers).values() {
            if peer.is_degraded() {
                version ^= node_mix(&peer.member.node_id);
            }
        }
        if self.health.is_degraded() {
            version ^= node_mix(&self.self_id);
        }
        version
    }

    /// Whether this node is a member of a live layout version (a node started with `--join`
    /// is not until an operator adds it).
    pub fn is_member(&self) -> bool {
        self.topology().members().contains_key(self.self_id.as_str())
    }

    pub fn peer(&self, node_id: &str) -> Option<Arc<Peer>> {
        read_lock(&self.peers).get(node_id).cloned()
    }

    /// Every peer, in node id order.
    pub fn peers(&self) -> Vec<Arc<Peer>> {
        read_lock(&self.peers).values().cloned().collect()
    }

    /// Whether `node_id` is believed up (this node always is).
    pub fn is_up(&self, node_id: &str) -> bool {
        node_id == self.self_id || read_lock(&self.peers).get(node_id).is_some_and(|p| p.is_up())
    }

    /// The cart's preference list in the read version.
    pub fn owners(&self, id: &CartId) -> Vec<String> {
        self.topology().read().owners(id.as_str().as_bytes())
    }

    pub fn is_owner(&self, id: &CartId) -> bool {
        self.owners(id).contains(&self.self_id)
    }

    /// Owners that are up serve themselves; each down owner is replaced by the next healthy node
    /// on the ring beyond the preference list (which then holds a hint for it).
    pub fn plan(&self, id: &CartId) -> Plan {
        self.plan_by(id, |node| self.is_up(node))
    }

    /// [`Cluster::plan`] for a write: an owner whose storage is degraded is replaced by a
    /// fallback too (it would refuse the write).
    pub fn write_plan(&self, id: &CartId) -> Plan {
        self.plan_by(id, |node| self.takes_writes(node))
    }

    /// Whether a node is up and its storage takes writes (this node: its own verdict is the
    /// coordinator's business).
    pub fn takes_writes(&self, node_id: &str) -> bool {
        node_id == self.self_id
            || read_lock(&self.peers)
                .get(node_id)
                .is_some_and(|p| p.is_up() && !p.is_degraded())
    }

    /// Why a node's storage takes no writes, as far as this node knows.
    pub fn degraded(&self, node_id: &str) -> Option<String> {
        if node_id == self.self_id {
            return self.health.degraded();
        }
        self.peer(node_id).and_then(|p| p.degraded())
    }

    fn plan_by(&self, id: &CartId, usable: impl Fn(&str) -> bool) -> Plan {
        let topology = self.topology();
        let read = topology.read();
        let n = read.layout.n as usize;
        let walk: Vec<&Member> = read.ring.walk(id.as_str().as_bytes(), n).collect();
        let n = n.min(walk.len());
        let owners: Vec<String> = walk[..n].iter().map(|m| m.node_id.clone()).collect();
        let mut fallbacks = walk[n..].iter().filter(|m| usable(&m.node_id));
        let (mut targets, mut down) = (Vec::new(), Vec::new());
        for owner in &owners {
            let fallback = if usable(owner) { None } else { fallbacks.next() };
            targets.push(match fallback {
                Some(f) => Target {
                    node_id: f.node_id.clone(),
                    hint_for: Some(owner.clone()),
                },
                None => {
                    if !usable(owner) {
                        down.push(owner.clone());
                    }
                    Target {
                        node_id: owner.clone(),
                        hint_for: None,
                    }
                }
            });
        }
        let extras = match &topology.previous {
            Some(_) => topology
                .current
                .owners(id.as_str().as_bytes())
                .into_iter()
                .filter(|o| !owners.contains(o))
                .collect(),
            None => Vec::new(),
        };
        Plan {
            owners,
            targets,
            extras,
            down,
            hinted: Vec::new(),
        }
    }

    /// The first healthy node beyond the cart's preference list that is not in `taken`: where a
    /// copy goes when a call to an owner the detector still thought up has just failed.
    pub fn fallback_for(&self, id: &CartId, taken: &[String]) -> Option<String> {
        // Prefer a node believed up; a stale "down" verdict should not leave the request short.
        let topology = self.topology();
        let read = topology.read();
        let n = read.layout.n as usize;
        let spare: Vec<&Member> = read
            .ring
            .walk(id.as_str().as_bytes(), n)
            .skip(n)
            .filter(|m| !taken.contains(&m.node_id) && m.node_id != self.self_id)
            .collect();
        spare
            .iter()
            .find(|m| self.takes_writes(&m.node_id))
            .or(spare.first())
            .map(|m| m.node_id.clone())
    }

    /// Records the outcome of a call to a peer: a success marks it up; a failure that says the
    /// peer is unreachable marks it down at once (the heartbeat probes it back).
    pub fn record(&self, node_id: &str, outcome: Result<(), &Status>) {
        let Some(peer) = self.peer(node_id) else { return };
        match outcome {
            Ok(()) => {
                peer.failures.store(0, Ordering::SeqCst);
                if !peer.up.swap(true, Ordering::SeqCst) {
                    tracing::info!(peer = node_id, "peer is up");
                }
            }
            // Its storage refused: alive, but no more writes go to it until it says otherwise.
            Err(status) if status.message().starts_with(crate::error::DEGRADED) => {
                // The same words as its heartbeats carry (its own verdict, without the prefix).
                let reason = status.message()[crate::error::DEGRADED.len()..].trim_start_matches(": ");
                peer.set_degraded(reason);
            }
            // An answer refusing the request (overloaded, invalid) says the peer is alive.
            Err(status)
                if !matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
                ) => {}
            Err(status) => {
                let failures = peer.failures.fetch_add(1, Ordering::SeqCst) + 1;
                let unreachable = status.code() == Code::Unavailable;
                if (unreachable || failures >= self.config.down_after_failures) && peer.up.swap(false, Ordering::SeqCst)
                {
                    tracing::warn!(peer = node_id, failures, code = ?status.code(), "peer is down");
                }
            }
        }
    }

    /// Runs a peer call with a client-side deadline: `grpc-timeout` alone is enforced by the
    /// server, which a stopped or cut-off peer never does.
    pub async fn within<T>(
        &self,
        limit: Duration,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded(format!("no answer within {limit:?}"))))
    }

    /// A request with the peer-call deadline.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.config.peer_timeout);
        request
    }

    /// This node's heartbeat: who it is, its newest layout version and its synced version.
    pub fn ping(&self) -> PingRequest {
        let topology = self.topology();
        PingRequest {
            from_node: self.self_id.clone(),
            layout_version: topology.current.layout.version,
            synced_version: self.synced_version.load(Ordering::SeqCst),
            finished_version: topology.read().layout.version,
            degraded: self.health.degraded().unwrap_or_default(),
            pricing_version: self.pricing().version,
        }
    }

    /// The pricing rules now (one snapshot: price a whole reply with it).
    pub fn pricing(&self) -> Arc<cart_crdt::pricing::PricingRules> {
        read_lock(&self.pricing).clone()
    }

    /// Installs pricing rules if newer than the ones held; whether it did.
    pub fn set_pricing(&self, rules: Arc<cart_crdt::pricing::PricingRules>) -> bool {
        let mut held = write_lock(&self.pricing);
        if rules.version <= held.version {
            return false;
        }
        *held = rules;
        true
    }

    /// Notes the versions a peer reported (a ping or its answer); a newer layout than ours wakes
    /// the membership task.
    pub fn heard(&self, peer: &Peer, ping: &PingRequest) {
        let layout_version = ping.layout_version;
        peer.layout_version.store(layout_version, Ordering::SeqCst);
        peer.synced_version.store(ping.synced_version, Ordering::SeqCst);
        peer.finished_version.store(ping.finished_version, Ordering::SeqCst);
        peer.pricing_version.store(ping.pricing_version, Ordering::SeqCst);
        peer.set_degraded(&ping.degraded);
        if ping.pricing_version > self.pricing().version {
            *self
                .newer_pricing_from
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(peer.member.node_id.clone());
            self.newer_layout.notify_one();
        }
        if layout_version > self.topology().current.layout.version {
            *self
                .newer_from
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(peer.member.node_id.clone());
            self.newer_layout.notify_one();
        }
    }

    /// Probes every peer once per `heartbeat_interval` until `stop` fires.
    pub async fn run_failure_detector(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        // The first probe waits one interval: peers of a cluster starting together get a chance to
        // come up before anyone is marked down.
        let period = self.config.heartbeat_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased; // fixed branch order: deterministic under simulation
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            let probes = self.peers().into_iter().map(|peer| {
                let me = self.clone();
                async move {
                    let request = me.request(me.ping());
                    let outcome = tokio::time::timeout(
                        me.config.peer_timeout + Duration::from_millis(50),
                        peer.client().ping(request),
                    )
                    .await;
                    match outcome {
                        Ok(Ok(reply)) => {
                            let reply = reply.into_inner();
                            let versions = PingRequest {
                                from_node: reply.node_id,
                                layout_version: reply.layout_version,
                                synced_version: reply.synced_version,
                                finished_version: reply.finished_version,
                                degraded: reply.degraded,
                                pricing_version: reply.pricing_version,
                            };
                            me.heard(&peer, &versions);
                            me.record(&peer.member.node_id, Ok(()))
                        }
                        Ok(Err(status)) => me.record(&peer.member.node_id, Err(&status)),
                        Err(_) => me.record(&peer.member.node_id, Err(&Status::deadline_exceeded("ping timed out"))),
                    }
                }
            });
            futures::future::join_all(probes).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(node: &str) -> Target {
        Target {
            node_id: node.into(),
            hint_for: None,
        }
    }

    fn plan(down: &[&str]) -> Plan {
        Plan {
            owners: vec!["a".into(), "b".into(), "c".into()],
            targets: vec![owner("a"), owner("b"), owner("c")],
            extras: Vec::new(),
            down: down.iter().map(|d| d.to_string()).collect(),
            hinted: Vec::new(),
        }
    }

    #[test]
    fn a_write_skips_down_owners_only_when_the_others_make_w() {
        let mut p = plan(&["b"]);
        p.skip_down(2);
        assert_eq!(p.targets, vec![owner("a"), owner("c")]);
        assert_eq!(p.hinted, vec!["b".to_string()]);

        let mut p = plan(&["b", "c"]);
        p.skip_down(2);
        assert_eq!(p.targets.len(), 3, "one usable target cannot make W = 2: call them all");
        assert!(p.hinted.is_empty());

        let mut p = plan(&["b", "c"]);
        p.skip_down(1);
        assert_eq!(p.targets, vec![owner("a")]);
        assert_eq!(p.hinted.len(), 2);
    }
}
