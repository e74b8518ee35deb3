use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use cart_crdt::{CartView, ItemSnapshot};
use cart_proto::admin_pb::admin_service_client::AdminServiceClient;
use cart_proto::admin_pb::{self, GetMembershipRequest};
use cart_proto::hedge::{HedgeBudget, HedgeDelay, Outliers};
use cart_proto::pb::cart_service_client::CartServiceClient;
use cart_proto::pb::{self, CartReply};
use cart_proto::{Consistency, OrderView, MEMBERSHIP_HEADER};
use cart_ring::{Member, Ring};
use futures::stream::{FuturesUnordered, StreamExt};
use thiserror::Error;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::pipe::{Answer, Pipe, Pipelined};

/// With [`ClientOptions::max_attempts`] = 0 (the default), a call makes one attempt per node it
/// may try, but at least this many…
pub const AUTO_ATTEMPTS_MIN: usize = 3;
/// …and at most this many.
pub const AUTO_ATTEMPTS_MAX: usize = 5;
/// Membership refreshes that calls trigger are at least this far apart, so replies from nodes
/// that disagree (during a rolling membership change) cannot make every call refresh.
pub const MEMBERSHIP_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`ClientOptions::hedge_budget`]: at most 4% more requests (plus a burst of
/// [`HEDGE_BURST`]).
pub const HEDGE_BUDGET: f64 = 0.04;
/// Hedges that may be sent at once beyond the budget's rate (when a node stops answering, the
/// calls already waiting on it each need one).
pub const HEDGE_BURST: f64 = 50.0;
/// A call out of hedge budget asks again after 2, 4 … up to this many hedge delays.
const HEDGE_WAIT_MAX: u32 = 64;
/// The hedge delay until the client has seen enough answers to know their p95.
const HEDGE_DELAY_INITIAL: Duration = Duration::from_millis(20);
/// The median write time until the client has seen enough answers.
const WRITE_MEDIAN_INITIAL: Duration = Duration::from_millis(2);
/// A write unanswered after this many median write times (and [`SLOW_WRITE_MIN`]) is slow: three
/// in a row from one node set it aside for writes (its disk is slow, or it is paused).
const SLOW_WRITE_FACTOR: u32 = 10;
const SLOW_WRITE_MIN: Duration = Duration::from_millis(100);
/// HTTP/2 keepalive of every channel: without it a channel can stay stuck after a partition heals.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Tuning for a [`CartClient`]. The defaults suit a storefront on the same network.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one attempt, sent to the server as `grpc-timeout`.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts per call, across nodes. 0 (the default) means one per node the call may try,
    /// between [`AUTO_ATTEMPTS_MIN`] and [`AUTO_ATTEMPTS_MAX`].
    pub max_attempts: usize,
    /// First retry delay; doubles per attempt up to `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Quorum override sent with every request (`None` = cluster default).
    pub consistency: Consistency,
    /// Learn the cluster's membership and send each call to the cart's owners first (saves the
    /// hop a non-owner needs to forward a write). When false, or until a membership is known,
    /// calls go to the configured endpoints, the same cart to the same endpoint.
    pub ring_aware: bool,
    /// Retry a write whose outcome is unknown (timeout, lost connection, a quorum missed after
    /// the write was applied) on the next node, with the same request id: the cluster applies a
    /// request id at most once, so the retry cannot count twice. When false, only writes that
    /// certainly did not happen are retried.
    pub retry_writes: bool,
    /// Request ids of this client's writes: `PREFIX-1`, `PREFIX-2`… instead of random ones
    /// (deterministic simulations; the prefix must be unique per client).
    pub request_id_prefix: Option<String>,
    /// Hedge reads (and writes with `hedge_writes`): when a node has not answered within the
    /// p99 of recent answer times (within `hedge_delay_min` and `hedge_delay_max`), the call is
    /// also sent to the next node of its route; the first answer wins and the others are
    /// cancelled. Nodes that keep losing hedges or failing are tried last for a while (outlier
    /// ejection, also off when this is off).
    pub hedge: bool,
    /// Hedge writes too (with their request id), not only reads; never checkouts. Off by
    /// default: both attempts of a hedged write may be applied, by two owners that did not yet
    /// have each other's record of the id; it then counts once, but a remove or checkout that
    /// saw only one of the two leaves the other (the simulation ordered items twice that way).
    /// When off, a write goes to the next node only after its attempt failed, and the failed
    /// attempt's deadline keeps it from being applied after that.
    pub hedge_writes: bool,
    /// Extra requests hedging may add, as a fraction of calls (a token bucket).
    pub hedge_budget: f64,
    pub hedge_delay_min: Duration,
    pub hedge_delay_max: Duration,
    /// Wall clock of the write deadlines, ms since the Unix epoch (the system clock; a
    /// simulation passes its own). Every write attempt carries its deadline (now +
    /// `request_timeout`, [`cart_proto::DEADLINE_HEADER`]); no node begins a write after it.
    pub clock: fn() -> u64,
    /// How far the nodes' clocks may be behind this client's. A write attempt that never
    /// answered is taken as not applied once its deadline plus this has passed — only when
    /// another attempt of the same write was refused (the refusal is then the answer); the
    /// residual case is an attempt a node began before its deadline and then stalled, which
    /// would have seen the same acknowledged state as the refusing node's quorum read.
    pub clock_skew: Duration,
    /// TLS towards the nodes (endpoints are dialled over `https`) and the bearer token every call
    /// carries; the default: plain HTTP/2, no token.
    pub credentials: crate::security::Credentials,
    /// Calls travel on one `Pipeline` stream per node (README "Pipelined calls"); off: a unary
    /// call each. A node that does not serve `Pipeline` gets unary calls either way.
    pub pipeline: bool,
}

/// The system's wall clock, ms since the Unix epoch (the default [`ClientOptions::clock`]).
pub fn system_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            max_attempts: 0,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            consistency: Consistency::default(),
            ring_aware: true,
            retry_writes: true,
            request_id_prefix: None,
            hedge: true,
            hedge_writes: false,
            hedge_budget: HEDGE_BUDGET,
            hedge_delay_min: Duration::from_millis(1),
            hedge_delay_max: Duration::from_millis(500),
            clock: system_clock_ms,
            clock_skew: Duration::from_millis(500),
            credentials: crate::security::Credentials::default(),
            pipeline: true,
        }
    }
}

impl ClientOptions {
    /// A request with the options' deadline and token.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.request_timeout);
        self.credentials.authorize(&mut request);
        request
    }

    /// Attempts for a call that may try `candidates` distinct nodes (always at least 1).
    pub fn attempts(&self, candidates: usize) -> usize {
        if self.max_attempts == 0 {
            candidates.clamp(AUTO_ATTEMPTS_MIN, AUTO_ATTEMPTS_MAX)
        } else {
            self.max_attempts
        }
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The server answered with an error status; `message` names the offending field.
    #[error("{code:?}: {message}")]
    Status {
        code: Code,
        message: String,
        endpoint: String,
    },
    #[error("the server sent a reply without a cart")]
    EmptyReply,
    #[error("cannot format output: {reason}")]
    Output { reason: String },
    /// A command was asked for something it cannot do as given (`cartctl`).
    #[error("{reason}")]
    Usage { reason: String },
}

impl ClientError {
    /// The gRPC code, when the error came from a server or the transport.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn status(status: &Status, endpoint: &str) -> Self {
        // A connection closed under the call is no verdict on the request: not the
        // RESOURCE_EXHAUSTED a node gives for what a cart holds.
        let code = match status.code() {
            Code::ResourceExhausted if no_answer(status) => Code::Unavailable,
            code => code,
        };
        ClientError::Status {
            code,
            message: status.message().to_owned(),
            endpoint: endpoint.to_owned(),
        }
    }
}

/// The cluster as a node described it (`GetMembership`); the client routes by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Sorted by node id.
    pub members: Vec<Member>,
    /// Replicas per cart: the length of a preference list.
    pub n: usize,
    /// The cluster's default read and write quorums.
    pub r: usize,
    pub w: usize,
    /// Changes whenever the member list changes, or which members are degraded; every cart
    /// reply carries the answering node's version in [`MEMBERSHIP_HEADER`].
    pub version: u64,
    /// Members whose storage takes no writes now (the asked node's view): tried last.
    pub degraded: Vec<String>,
}

/// A membership with its ring. Immutable: a refresh replaces it whole.
struct Routes {
    membership: Membership,
    ring: Ring,
}

impl Routes {
    fn new(reply: admin_pb::Membership) -> Result<Routes, String> {
        let members: Vec<Member> = reply
            .members
            .into_iter()
            .map(|m| Member {
                node_id: m.node_id,
                addr: m.addr,
                weight: m.weight,
                zone: m.zone,
            })
            .collect();
        let ring = Ring::new(members).map_err(|e| e.to_string())?;
        let count = ring.members().len();
        let n = match reply.n as usize {
            0 => count.min(3),
            n => n.min(count),
        };
        Ok(Routes {
            membership: Membership {
                members: ring.members().to_vec(),
                n,
                r: reply.r as usize,
                w: reply.w as usize,
                version: reply.version,
                degraded: reply.degraded,
            },
            ring,
        })
    }

    /// [`route_order`], with degraded members moved to the end (they would hand a write on).
    fn route(&self, cart_id: &str, endpoints: &[String]) -> Vec<String> {
        let mut order = route_order(&self.ring, self.membership.n, cart_id.as_bytes(), endpoints);
        if !self.membership.degraded.is_empty() {
            let sick: HashSet<String> = self
                .membership
                .members
                .iter()
                .filter(|m| self.membership.degraded.contains(&m.node_id))
                .map(|m| uri_of(&m.addr))
                .collect();
            // Stable: the healthy keep their order, then the degraded keep theirs.
            order.sort_by_key(|addr| sick.contains(&uri_of(addr)));
        }
        order
    }
}

/// The addresses a call for `key` tries, in order: the key's owners in preference-list order,
/// then the other members in the order the ring offers them (where a sloppy quorum looks too),
/// then the configured `endpoints` that are no member's address (a last resort in case the
/// members' addresses are not reachable from this client). Members whose address cannot be
/// dialled (port 0, unspecified IP) are left out; each address appears once.
pub(crate) fn route_order(ring: &Ring, n: usize, key: &[u8], endpoints: &[String]) -> Vec<String> {
    // `walk` offers every member once: its first `n` are the preference list, the rest follow in
    // ring order, which is what "owners first, then anyone" needs.
    debug_assert!(ring.walk(key, n).take(n).eq(ring.preference_list(key, n)));
    // A handful of addresses: a linear search, no hashing or URI strings (this runs per call).
    let mut order: Vec<String> = Vec::with_capacity(ring.members().len() + endpoints.len());
    for member in ring.walk(key, n) {
        if dialable(&member.addr) && !order.iter().any(|a| same_uri(a, &member.addr)) {
            order.push(member.addr.clone());
        }
    }
    for endpoint in endpoints {
        if !order.iter().any(|a| same_uri(a, endpoint)) {
            order.push(endpoint.clone());
        }
    }
    order
}

/// `uri_of(a) == uri_of(b)`, without building either.
fn same_uri(a: &str, b: &str) -> bool {
    match (a.contains("://"), b.contains("://")) {
        (true, false) => a.strip_prefix("http://") == Some(b),
        (false, true) => b.strip_prefix("http://") == Some(a),
        _ => a == b,
    }
}

/// Whether a member's address can be dialled from elsewhere.
fn dialable(addr: &str) -> bool {
    match addr.parse::<SocketAddr>() {
        Ok(a) => a.port() != 0 && !a.ip().is_unspecified(),
        // A host name: needs a non-zero port and must make a valid URI.
        Err(_) => {
            addr.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
                && uri_of(addr).parse::<tonic::transport::Uri>().is_ok()
        }
    }
}

pub(crate) fn uri_of(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

/// Turns an endpoint (address, timeouts, keepalive already set) into a channel: the transport
/// seam. [`tcp_connect`] dials real TCP lazily; a simulation dials its own network.
pub type Connect = Arc<dyn Fn(Endpoint) -> Channel + Send + Sync>;

/// The real transport: a lazily connected TCP channel.
pub fn tcp_connect() -> Connect {
    Arc::new(|endpoint: Endpoint| endpoint.connect_lazy())
}

/// The endpoint for `address` (`HOST:PORT` or a full URI) with the options' timeouts,
/// TCP_NODELAY and HTTP/2 keepalive.
fn endpoint(address: &str, options: &ClientOptions) -> Result<Endpoint, ClientError> {
    let mut endpoint = options.credentials.endpoint(address)?;
    endpoint = endpoint
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true);
    Ok(endpoint)
}

/// A lazily connecting TCP channel to `address` (`HOST:PORT` or a full URI) with the options'
/// timeouts, TCP_NODELAY and HTTP/2 keepalive.
pub(crate) fn lazy_channel(address: &str, options: &ClientOptions) -> Result<Channel, ClientError> {
    Ok(endpoint(address, options)?.connect_lazy())
}

/// The membership version a reply carries, if any.
fn header_version(metadata: &MetadataMap) -> Option<u64> {
    let text = metadata.get(MEMBERSHIP_HEADER)?.to_str().ok()?;
    u64::from_str_radix(text, 16).ok()
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A pipeline stream being opened or open (`None`: the node does not serve `Pipeline`).
type PipeCell = Arc<tokio::sync::OnceCell<Option<Arc<Pipe>>>>;

/// A version a reply showed that differs from ours, and who sent it.
struct Seen {
    version: u64,
    reporter: String,
}

struct Inner {
    /// The configured endpoints, as given (trimmed).
    endpoints: Vec<String>,
    options: ClientOptions,
    /// Makes every channel this client uses.
    connect: Connect,
    /// One channel per address (keyed by URI), created on first use; pruned on refresh.
    channels: Mutex<HashMap<String, Channel>>,
    /// One pipeline stream per address (keyed by URI), opened on first use and again after it
    /// ends; `None` inside: the node does not serve `Pipeline`. Pruned with the channels.
    pipes: Mutex<HashMap<String, PipeCell>>,
    /// `None` until a membership is known (or when not ring-aware).
    routes: RwLock<Option<Arc<Routes>>>,
    /// The newest version a reply showed that differed from `routes` at the time.
    seen: Mutex<Option<Seen>>,
    /// Set when a call failed on every attempt.
    failed: AtomicBool,
    /// Held while refreshing (one refresh at a time); when the last call-triggered one started.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    /// Writes sent so far (numbers the request ids when they have a prefix).
    requests: std::sync::atomic::AtomicU64,
    hedge_delay: HedgeDelay,
    hedge_budget: HedgeBudget,
    /// Addresses set aside for being slow (keyed by URI).
    outliers: Outliers,
    /// Addresses whose writes are slow (a slow disk: reads there stay fast), set aside for
    /// writes; and the median write answer time, what "slow" is measured against.
    write_outliers: Outliers,
    write_median: HedgeDelay,
    calls: std::sync::atomic::AtomicU64,
    hedges: std::sync::atomic::AtomicU64,
}

impl Inner {
    fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        self.channel_at(address, &uri_of(address))
    }

    /// [`Inner::channel`] when the caller has `uri_of(address)` at hand.
    fn channel_at(&self, address: &str, uri: &str) -> Result<Channel, ClientError> {
        let mut channels = lock(&self.channels);
        if let Some(channel) = channels.get(uri) {
            return Ok(channel.clone());
        }
        let channel = (self.connect)(endpoint(address, &self.options)?);
        channels.insert(uri.to_owned(), channel.clone());
        Ok(channel)
    }

    /// The open pipeline stream to `address`, opened if there is none (or it ended); `None`:
    /// the node does not serve `Pipeline`.
    async fn pipe(&self, address: &str, uri: &str, channel: Channel) -> Result<Option<Arc<Pipe>>, Status> {
        for _ in 0..2 {
            let cell = {
                let mut pipes = lock(&self.pipes);
                match pipes.get(uri) {
                    Some(cell) => cell.clone(),
                    None => pipes.entry(uri.to_owned()).or_default().clone(),
                }
            };
            let pipe = cell
                .get_or_try_init(|| Pipe::open(channel.clone(), &self.options))
                .await?;
            match pipe {
                Some(pipe) if !pipe.is_open() => {
                    // Ended (the node restarted, the connection broke): open another.
                    let mut pipes = lock(&self.pipes);
                    if pipes.get(uri).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                        pipes.remove(uri);
                    }
                }
                pipe => return Ok(pipe.clone()),
            }
        }
        Err(Status::unavailable(format!(
            "the pipeline stream to {address} ended as it opened"
        )))
    }

    /// One attempt of a call on one node: on its pipeline stream, or as a unary call (pipelining
    /// off, or a node without it), within the request timeout either way.
    async fn attempt<Req, Resp, F, Fut>(
        &self,
        address: &str,
        uri: &str,
        channel: Channel,
        message: Req,
        deadline_ms: Option<u64>,
        rpc: &F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Pipelined,
        Resp: Answer,
        F: Fn(CartServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let timeout = self.options.request_timeout;
        if self.options.pipeline {
            let until = Instant::now() + timeout;
            let pipe = tokio::time::timeout_at(until, self.pipe(address, uri, channel.clone()))
                .await
                .unwrap_or_else(expired)?;
            if let Some(pipe) = pipe {
                return tokio::time::timeout_at(until, pipe.call(message, timeout, deadline_ms))
                    .await
                    .unwrap_or_else(expired);
            }
            // The node does not serve Pipeline: a unary call.
        }
        let mut request = self.options.request(message);
        if let Some(ms) = deadline_ms {
            request
                .metadata_mut()
                .insert(cart_proto::DEADLINE_HEADER, tonic::metadata::MetadataValue::from(ms));
        }
        rpc(CartServiceClient::new(channel), request).await
    }

    fn routes(&self) -> Option<Arc<Routes>> {
        self.routes.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn version(&self) -> Option<u64> {
        self.routes().map(|r| r.membership.version)
    }

    /// The addresses to try for a cart, in order; with hedging on, addresses set aside for
    /// being slow go last (outlier ejection is part of it; after the period, one call at a
    /// time tries them first until one answers well), for a `write` also those whose writes
    /// are slow.
    fn route(&self, cart_id: &str, write: bool) -> Vec<String> {
        let mut order = self.route_by_membership(cart_id);
        if self.options.hedge {
            // Stable: the others keep their order, then the slow keep theirs.
            order.sort_by_cached_key(|addr| {
                let uri = uri_of(addr);
                self.outliers.try_later(&uri) || (write && self.write_outliers.try_later(&uri))
            });
        }
        order
    }

    /// A write attempt still unanswered after this long counts against its node as slow: ten
    /// times the median write, and at least [`SLOW_WRITE_MIN`].
    fn slow_write_after(&self) -> Duration {
        (self.write_median.delay() * SLOW_WRITE_FACTOR).max(SLOW_WRITE_MIN)
    }

    fn route_by_membership(&self, cart_id: &str) -> Vec<String> {
        match self.routes().filter(|_| self.options.ring_aware) {
            Some(routes) => routes.route(cart_id, &self.endpoints),
            None => {
                let start = sticky_index(cart_id, self.endpoints.len());
                (0..self.endpoints.len())
                    .map(|i| self.endpoints[(start + i) % self.endpoints.len()].clone())
                    .collect()
            }
        }
    }

    /// Notes the membership version a reply from `address` carried.
    fn observe(&self, metadata: &MetadataMap, address: &str) {
        if !self.options.ring_aware {
            return;
        }
        let Some(version) = header_version(metadata) else {
            return;
        };
        if self.version() != Some(version) {
            let mut seen = lock(&self.seen);
            if seen.as_ref().is_none_or(|s| s.version != version) {
                tracing::debug!(
                    endpoint = address,
                    version = format!("{version:016x}"),
                    "membership changed"
                );
                *seen = Some(Seen {
                    version,
                    reporter: address.to_owned(),
                });
            }
        }
    }

    fn needs_refresh(&self) -> bool {
        if !self.options.ring_aware {
            return false;
        }
        if self.failed.load(Ordering::Acquire) {
            return true;
        }
        let current = self.version();
        lock(&self.seen).as_ref().is_some_and(|s| Some(s.version) != current)
    }

    /// Refreshes the membership before a call if a reply showed another version or a call
    /// failed on every attempt. One task refreshes; calls that find a refresh under way go on
    /// with what is known (routing only saves a hop), and refreshes are rate-limited.
    async fn maybe_refresh(&self) {
        if !self.needs_refresh() {
            return;
        }
        let Ok(mut last) = self.refresh.try_lock() else { return };
        if !self.needs_refresh() || last.is_some_and(|t| t.elapsed() < MEMBERSHIP_REFRESH_MIN_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        self.failed.store(false, Ordering::Release);
        if let Err(e) = self.fetch_and_install().await {
            tracing::debug!(error = %e, "membership refresh failed; keeping the current routes");
        }
    }

    /// Asks for the membership — first the node that reported a new version, then the
    /// configured endpoints, then the known members — and installs the first good answer.
    async fn fetch_and_install(&self) -> Result<Membership, ClientError> {
        let reporter = lock(&self.seen).as_ref().map(|s| s.reporter.clone());
        let members: Vec<String> = self
            .routes()
            .map(|r| {
                r.membership
                    .members
                    .iter()
                    .map(|m| m.addr.clone())
                    .filter(|a| dialable(a))
                    .collect()
            })
            .unwrap_or_default();
        let mut asked = HashSet::new();
        let mut last_error = ClientError::NoEndpoints;
        for address in reporter.iter().chain(&self.endpoints).chain(&members) {
            if !asked.insert(uri_of(address)) {
                continue;
            }
            let channel = match self.channel(address) {
                Ok(channel) => channel,
                Err(e) => {
                    last_error = e;
                    continue;
                }
            };
            let request = self.options.request(GetMembershipRequest {});
            let reply = match AdminServiceClient::new(channel).get_membership(request).await {
                Ok(reply) => reply.into_inner(),
                Err(status) => {
                    tracing::debug!(endpoint = %address, code = ?status.code(), "no membership from this node");
                    last_error = ClientError::status(&status, address);
                    continue;
                }
            };
            match Routes::new(reply) {
                Ok(routes) => {
                    let membership = routes.membership.clone();
                    self.install(routes);
                    return Ok(membership);
                }
                Err(reason) => {
                    tracing::warn!(endpoint = %address, %reason, "ignoring an invalid membership");
                    last_error = ClientError::Status {
                        code: Code::Internal,
                        message: format!("invalid membership: {reason}"),
                        endpoint: address.clone(),
                    };
                }
            }
        }
        Err(last_error)
    }

    fn install(&self, routes: Routes) {
        let keep: HashSet<String> = routes
            .membership
            .members
            .iter()
            .map(|m| uri_of(&m.addr))
            .chain(self.endpoints.iter().map(|e| uri_of(e)))
            .collect();
        tracing::debug!(
            version = format!("{:016x}", routes.membership.version),
            members = routes.membership.members.len(),
            "membership installed"
        );
        *self.routes.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(routes));
        lock(&self.channels).retain(|uri, _| keep.contains(uri));
        lock(&self.pipes).retain(|uri, _| keep.contains(uri));
        self.outliers.retain(|uri| keep.contains(uri));
        self.write_outliers.retain(|uri| keep.contains(uri));
    }
}

/// A cheap-to-share handle on a cartdb cluster (clone it or put it in an `Arc`).
#[derive(Clone)]
pub struct CartClient {
    inner: Arc<Inner>,
    /// Every cart reply priced for this context ([`CartClient::priced`]).
    pricing: Option<pb::PricingContext>,
}

impl CartClient {
    /// Connects lazily to `HOST:PORT` endpoints (or full `http://` URIs) with default options.
    pub async fn connect<I, S>(endpoints: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_with(endpoints, ClientOptions::default()).await
    }

    /// Checks the endpoints and, when ring-aware, asks them in turn for the membership. A client
    /// is created even if none answers (the cluster may be down): it then sends calls to the
    /// endpoints and learns the membership from the first reply that carries a version.
    pub async fn connect_with<I, S>(endpoints: I, options: ClientOptions) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_with_connector(endpoints, options, tcp_connect()).await
    }

    /// [`CartClient::connect_with`] over another transport: `connect` makes every channel the
    /// client uses, to the configured endpoints and to the members it learns (simulation).
    pub async fn connect_with_connector<I, S>(
        endpoints: I,
        options: ClientOptions,
        connect: Connect,
    ) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let endpoints: Vec<String> = endpoints.into_iter().map(|e| e.as_ref().trim().to_owned()).collect();
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let (delay_min, delay_max, budget) = (options.hedge_delay_min, options.hedge_delay_max, options.hedge_budget);
        let inner = Inner {
            endpoints,
            options,
            connect,
            channels: Mutex::default(),
            pipes: Mutex::default(),
            routes: RwLock::default(),
            seen: Mutex::default(),
            failed: AtomicBool::new(false),
            refresh: tokio::sync::Mutex::new(None),
            requests: std::sync::atomic::AtomicU64::new(0),
            hedge_delay: HedgeDelay::new(HEDGE_DELAY_INITIAL, delay_min, delay_max),
            hedge_budget: HedgeBudget::new(budget, HEDGE_BURST),
            outliers: Outliers::default(),
            write_outliers: Outliers::default(),
            write_median: HedgeDelay::at_quantile(0.5, WRITE_MEDIAN_INITIAL, delay_min, delay_max),
            calls: std::sync::atomic::AtomicU64::new(0),
            hedges: std::sync::atomic::AtomicU64::new(0),
        };
        for endpoint in &inner.endpoints {
            inner.channel(endpoint)?;
        }
        if inner.options.ring_aware {
            if let Err(e) = inner.fetch_and_install().await {
                tracing::debug!(error = %e, "no membership yet; sending calls to the configured endpoints");
            }
        }
        Ok(CartClient {
            inner: Arc::new(inner),
            pricing: None,
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The membership the client routes by, if it knows one.
    pub fn membership(&self) -> Option<Membership> {
        self.inner.routes().map(|r| r.membership.clone())
    }

    /// The addresses a call for `cart_id` would try now, in order (owners first when the
    /// membership is known).
    pub fn route(&self, cart_id: &str) -> Vec<String> {
        self.inner.route(cart_id, false)
    }

    /// Asks for the membership now (waiting for a refresh under way) and, when ring-aware,
    /// routes by the answer.
    pub async fn refresh_membership(&self) -> Result<Membership, ClientError> {
        let mut last = self.inner.refresh.lock().await;
        *last = Some(Instant::now());
        self.inner.fetch_and_install().await
    }

    /// The cart; a cart never written reads as empty.
    pub async fn get_cart(&self, cart_id: &str) -> Result<CartView, ClientError> {
        let req = pb::GetCartRequest {
            cart_id: cart_id.into(),
            consistency: self.consistency(),
            pricing: self.pricing.clone(),
        };
        self.call(cart_id, Retry::Idempotent, req, |mut c, r| async move {
            c.get_cart(r).await
        })
        .await
    }

    /// Adds `quantity` (≥ 1) of a product, with what the storefront shows for it.
    pub async fn add_item(
        &self,
        cart_id: &str,
        product_id: &str,
        quantity: u32,
        snapshot: ItemSnapshot,
    ) -> Result<CartView, ClientError> {
        self.add_item_with_id(&self.next_request_id(), cart_id, product_id, quantity, snapshot)
            .await
    }

    /// [`CartClient::add_item`] under a request id the caller chose: calling again with the same
    /// id (within the window the cluster remembers ids, 1 hour) adds nothing more.
    pub async fn add_item_with_id(
        &self,
        request_id: &str,
        cart_id: &str,
        product_id: &str,
        quantity: u32,
        snapshot: ItemSnapshot,
    ) -> Result<CartView, ClientError> {
        let req = pb::AddItemRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            quantity: i64::from(quantity),
            snapshot: Some(snapshot.into()),
            consistency: self.consistency(),
            request_id: request_id.into(),
            pricing: self.pricing.clone(),
        };
        self.call(cart_id, self.write_retry(), req, |mut c, r| async move {
            c.add_item(r).await
        })
        .await
    }

    /// Sets a line's quantity; 0 removes the line.
    pub async fn set_quantity(&self, cart_id: &str, product_id: &str, quantity: u32) -> Result<CartView, ClientError> {
        let req = pb::SetQuantityRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            quantity: i64::from(quantity),
            consistency: self.consistency(),
            request_id: self.next_request_id(),
            pricing: self.pricing.clone(),
        };
        self.call(cart_id, self.write_retry(), req, |mut c, r| async move {
            c.set_quantity(r).await
        })
        .await
    }

    /// Adds a signed `delta` to a line's quantity. Concurrent adjustments all count (a counter),
    /// unlike [`CartClient::set_quantity`], which a concurrent set may overrule.
    pub async fn adjust_quantity(&self, cart_id: &str, product_id: &str, delta: i64) -> Result<CartView, ClientError> {
        self.adjust_quantity_with_id(&self.next_request_id(), cart_id, product_id, delta)
            .await
    }

    /// [`CartClient::adjust_quantity`] under a request id the caller chose (applied once per id).
    pub async fn adjust_quantity_with_id(
        &self,
        request_id: &str,
        cart_id: &str,
        product_id: &str,
        delta: i64,
    ) -> Result<CartView, ClientError> {
        let req = pb::AdjustQuantityRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            delta,
            consistency: self.consistency(),
            request_id: request_id.into(),
            pricing: self.pricing.clone(),
        };
        self.call(cart_id, self.write_retry(), req, |mut c, r| async move {
            c.adjust_quantity(r).await
        })
        .await
    }

    pub async fn remove_item(&self, cart_id: &str, product_id: &str) -> Result<CartView, ClientError> {
        let req = pb::RemoveItemRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            consistency: self.consistency(),
            request_id: self.next_request_id(),
            pricing: self.pricing.clone(),
        };
        self.call(cart_id, self.write_retry(), req, |mut c, r| async move {
            c.remove_item(r).await
        })
        .await
    }

    /// Removes every line and coupon; saved-for-later items stay.
    pub async fn clear_cart(&self, cart_id: &str) -> Result<CartView, ClientError> {
        let req = pb::ClearCartRequest {
            cart_id: cart_id.into(),
            consistency: self.consistency(),
            request_id: self.next_request_id(),
            pricing: self.pricing.clone(),
        };
        self.call(cart_id, self.write_retry(), req, |mut c, r| async move {
            c.clear_cart(r).await
        })
        .await
    }

    pub async fn save_for_later(&self, cart_id: &str, product_id: &str) -> Result<CartView, ClientError> {
        let req = pb::SaveForLaterRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            consistency: self.consistency(),
            request_id: self.next_request_id(),
            pricing: self.pricing.clone(),
        };
        self.call(cart_id, self.write_retry(), req, |mut c, r| async move {
            c.save_for_later(r).await
        })
        .await
    }

    pub async fn move_to_cart(&self, cart_id: &str, product_id: &str) -> Result<CartView, ClientError> {
        let req = pb::MoveToCartRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            consistency: self.consistency(),
            request_id: self.next_request_id(),
            pricing: self.pricing.clone(),
        };
        self.call(cart_id, self.write_retry(), req, |mut c, r| async move {
            c.move_to_cart(r).await
        })
        .await
    }

    pub async fn apply_coupon(&self, cart_id: &str, code: &str) -> Result<CartView, ClientError> {
        let req = pb::ApplyCouponRequest {
            cart_id: cart_id.into(),
            code: code.into(),
            consistency: self.consistency(),
            request_id: self.next_request_id(),
            pricing: self.pricing.clone(),
        };
        self.call(cart_id, self.write_retry(), req, |mut c, r| async move {
            c.apply_coupon(r).await
        })
        .await
    }

    /// Pushes current product data into a cart (README "Pricing"): each line or saved item of
    /// these products then shows it beside its add-time snapshot (`LineView::current`), and the
    /// totals use it; an unavailable one stays but is not counted. The highest catalogue version
    /// wins on every replica; products the cart does not hold are skipped.
    pub async fn refresh_items(
        &self,
        cart_id: &str,
        items: Vec<crate::RefreshedItem>,
    ) -> Result<CartView, ClientError> {
        let req = pb::RefreshItemsRequest {
            cart_id: cart_id.into(),
            items: items
                .into_iter()
                .map(|i| pb::RefreshedItem {
                    product_id: i.product_id,
                    snapshot: Some(i.snapshot.into()),
                    available: i.available,
                    catalog_version: i.catalog_version,
                })
                .collect(),
            consistency: self.consistency(),
            request_id: self.next_request_id(),
            pricing: self.pricing.clone(),
        };
        self.call(cart_id, self.write_retry(), req, |mut c, r| async move {
            c.refresh_items(r).await
        })
        .await
    }

    pub async fn remove_coupon(&self, cart_id: &str, code: &str) -> Result<CartView, ClientError> {
        let req = pb::RemoveCouponRequest {
            cart_id: cart_id.into(),
            code: code.into(),
            consistency: self.consistency(),
            request_id: self.next_request_id(),
            pricing: self.pricing.clone(),
        };
        self.call(cart_id, self.write_retry(), req, |mut c, r| async move {
            c.remove_coupon(r).await
        })
        .await
    }

    /// Merges a guest cart into a user cart at login (commercetools' `merge` or `replace`
    /// mode); returns (user cart, guest cart). Safe to retry and to run from two tabs at once.
    pub async fn merge_carts(
        &self,
        guest_cart_id: &str,
        user_cart_id: &str,
        mode: pb::MergeMode,
    ) -> Result<(CartView, CartView), ClientError> {
        let req = pb::MergeCartsRequest {
            guest_cart_id: guest_cart_id.into(),
            user_cart_id: user_cart_id.into(),
            mode: mode as i32,
            consistency: self.consistency(),
        };
        // Every step is idempotent: retried like a read.
        let reply = self
            .call_raw(user_cart_id, Retry::Idempotent, req, |mut c, r| async move {
                c.merge_carts(r).await
            })
            .await?;
        match (reply.cart, reply.guest) {
            (Some(user), Some(guest)) => Ok((CartView::from(user), CartView::from(guest))),
            _ => Err(ClientError::EmptyReply),
        }
    }

    /// Checks out the lines `version` (a reply's `CartView::version`) showed; returns the order
    /// and the cart after it. `request_id` makes it once-only: a retry returns the same order.
    pub async fn checkout(
        &self,
        cart_id: &str,
        version: &str,
        request_id: &str,
    ) -> Result<(OrderView, CartView), ClientError> {
        let req = pb::CheckoutRequest {
            cart_id: cart_id.into(),
            version: version.into(),
            request_id: request_id.into(),
            consistency: self.consistency(),
        };
        let reply = self
            .call_raw(cart_id, self.write_retry().unhedged(), req, |mut c, r| async move {
                c.checkout(r).await
            })
            .await?;
        match (reply.order, reply.cart) {
            (Some(order), Some(cart)) => Ok((OrderView::from(order), CartView::from(cart))),
            _ => Err(ClientError::EmptyReply),
        }
    }

    /// The id of this client's next write (see [`ClientOptions::request_id_prefix`]).
    pub fn next_request_id(&self) -> String {
        let n = self.inner.requests.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.inner.options.request_id_prefix {
            Some(prefix) => format!("{prefix}-{n}"),
            None => new_request_id(),
        }
    }

    /// How a write is retried: with the same request id wherever its outcome is unknown, unless
    /// the options turned that off.
    fn write_retry(&self) -> Retry {
        match self.inner.options.retry_writes {
            true => Retry::SameRequestId {
                hedge: self.inner.options.hedge_writes,
            },
            false => Retry::OnlyUnreached,
        }
    }

    /// This client with every cart reply priced for `region` (README "Pricing"): each
    /// [`CartView::pricing`] then holds the summary — per currency the subtotal, discounts, tax,
    /// shipping and total, and the coupons that do not apply with why. `""` prices without tax
    /// and shipping; a region the cluster's rules do not define is refused (`INVALID_ARGUMENT`).
    pub fn priced(&self, region: &str) -> CartClient {
        self.priced_at(region, 0)
    }

    /// [`CartClient::priced`] with coupons checked at `now_ms` (ms since the Unix epoch; 0: the
    /// node's clock).
    pub fn priced_at(&self, region: &str, now_ms: u64) -> CartClient {
        CartClient {
            inner: self.inner.clone(),
            pricing: Some(pb::PricingContext {
                region: region.into(),
                now_ms,
            }),
        }
    }

    fn consistency(&self) -> Option<pb::Consistency> {
        let c = self.inner.options.consistency;
        (c != Consistency::default()).then(|| c.into())
    }

    /// Runs one call that answers with a cart.
    async fn call<Req, F, Fut>(&self, cart_id: &str, retry: Retry, req: Req, rpc: F) -> Result<CartView, ClientError>
    where
        Req: Clone + Pipelined,
        F: Fn(CartServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<CartReply>, Status>>,
    {
        let reply = self.call_raw(cart_id, retry, req, rpc).await?;
        reply.cart.map(CartView::from).ok_or(ClientError::EmptyReply)
    }

    /// Runs one call with deadline, failover along the cart's route, backoff, and hedging.
    async fn call_raw<Req, Resp, F, Fut>(
        &self,
        cart_id: &str,
        retry: Retry,
        req: Req,
        rpc: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone + Pipelined,
        Resp: Answer,
        F: Fn(CartServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let inner = &*self.inner;
        inner.maybe_refresh().await;
        let write = !matches!(retry, Retry::Idempotent);
        let route = inner.route(cart_id, write);
        if route.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        inner.calls.fetch_add(1, Ordering::Relaxed);
        let call_began = Instant::now();
        let mut hedging = inner.options.hedge
            && match retry {
                Retry::Idempotent => true,
                Retry::SameRequestId { hedge } => hedge,
                Retry::OnlyUnreached => false,
            };
        if hedging {
            inner.hedge_budget.earn();
        }
        let attempts = inner.options.attempts(route.len()).max(1);
        let mut backoff = inner.options.backoff_initial;
        // Attempts started so far, and those still running: (address, when it started, reply).
        let mut started = 0;
        let mut running = FuturesUnordered::new();
        let mut inflight: Vec<(String, Instant)> = Vec::new();
        let rpc = &rpc;
        let launch = |i: usize| -> Result<_, ClientError> {
            let address = route[i % route.len()].clone();
            // Writes carry their deadline: a node does not begin one after it.
            let deadline_ms =
                write.then(|| (inner.options.clock)().saturating_add(inner.options.request_timeout.as_millis() as u64));
            let uri = uri_of(&address);
            let channel = inner.channel_at(&address, &uri)?;
            let message = req.clone();
            let began = Instant::now();
            Ok((uri.clone(), began, async move {
                let result = inner.attempt(&address, &uri, channel, message, deadline_ms, rpc).await;
                (address, uri, began, deadline_ms, result)
            }))
        };
        let start = |i: usize, running: &mut FuturesUnordered<_>, inflight: &mut Vec<(String, Instant)>| {
            let (uri, began, attempt) = launch(i)?;
            inflight.push((uri, began));
            running.push(attempt);
            Ok::<(), ClientError>(())
        };
        start(started, &mut running, &mut inflight)?;
        started += 1;
        // The first attempt whose outcome is unknown: a later refusal elsewhere does not make
        // the call's outcome known (that attempt may still have been applied).
        let mut unknown: Option<ClientError> = None;
        // The latest deadline of the attempts that ended without an answer: past it (plus the
        // clock skew) no node begins them any more.
        let mut settled_after: Option<u64> = None;
        let mut unanswered: Option<ClientError> = None;
        // The first refusal a node gave (it ran the call and said no): the answer, once every
        // attempt still running has ended.
        let mut refused: Option<(Status, String)> = None;
        // Hedges wait this many hedge delays; doubled while the budget says no.
        let mut hedge_wait = 1u32;
        // A write still unanswered after `slow_after` counts against the nodes it waits on (once
        // a call); reads do not pay for the median's lock.
        let slow_after = (write && inner.options.hedge).then(|| inner.slow_write_after());
        let mut slow_at = slow_after.map(|after| call_began + after);
        loop {
            let hedge_at = hedging.then(|| Instant::now() + inner.hedge_delay.delay() * hedge_wait);
            let (address, uri, began, deadline_ms, result) = tokio::select! {
                biased; // fixed branch order: deterministic under simulation
                done = running.next() => match done {
                    Some(done) => done,
                    None => return Err(ClientError::NoEndpoints), // unreachable: one always runs here
                },
                () = sleep_until_opt(hedge_at), if hedging && started < attempts => {
                    if inner.hedge_budget.spend() {
                        inner.hedges.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(endpoint = %route[started % route.len()], "hedging on the next node");
                        start(started, &mut running, &mut inflight)?;
                        started += 1;
                        hedge_wait = 1;
                    } else if hedge_wait < HEDGE_WAIT_MAX {
                        tracing::debug!(hedge_wait, "no hedge budget");
                        hedge_wait *= 2; // out of budget: ask again later
                    } else {
                        hedging = false;
                    }
                    continue;
                }
                () = sleep_until_opt(slow_at), if slow_at.is_some() => {
                    for (node, _) in &inflight {
                        inner.write_outliers.slow(node, route.len());
                    }
                    slow_at = None;
                    continue;
                }
            };
            inflight.retain(|(u, b)| !(u == &uri && *b == began));
            let status = match result {
                Ok(reply) => {
                    inner.observe(reply.metadata(), &address);
                    let took = began.elapsed();
                    inner.hedge_delay.record(took);
                    inner.outliers.good(&uri);
                    if let Some(after) = slow_after {
                        inner.write_median.record(took);
                        if took < after {
                            inner.write_outliers.good(&uri);
                        }
                    }
                    // Attempts still running that started before this one lost to it (they
                    // are cancelled when `running` drops).
                    for (loser, _) in inflight.iter().filter(|(_, b)| *b < began) {
                        inner.outliers.slow(loser, route.len());
                    }
                    return Ok(reply.into_inner());
                }
                Err(status) => {
                    inner.observe(status.metadata(), &address);
                    status
                }
            };
            if no_answer(&status) {
                inner.outliers.slow(&uri, route.len());
            }
            if outcome_unknown(&status) {
                match deadline_ms {
                    // No answer: not applied, or applied before its deadline.
                    Some(ms) if !cart_proto::outcome_unknown(&status) => {
                        settled_after = settled_after.max(Some(ms));
                        unanswered.get_or_insert_with(|| ClientError::status(&status, &address));
                    }
                    // The node applied it and missed its quorum, or a read: unknown for good.
                    _ if unknown.is_none() => unknown = Some(ClientError::status(&status, &address)),
                    _ => {}
                }
            }
            let (status, address) =
                match retry.after(status, !running.is_empty(), started < attempts, &mut refused, &address) {
                    Next::Wait => continue,
                    Next::Retry(status) => (status, address),
                    Next::Stop(status, refusal_at) => {
                        let refused_here = refusal_at.is_some();
                        let address = refusal_at.unwrap_or(address);
                        match settled_after {
                            // A refusal while attempts that never answered may still be
                            // begun: past their deadline and the skew, none will be, so the
                            // refusal is the answer.
                            Some(ms) if refused_here && unknown.is_none() => {
                                let wait_ms = ms
                                    .saturating_add(inner.options.clock_skew.as_millis() as u64)
                                    .saturating_sub((inner.options.clock)());
                                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                            }
                            // No node answered: those attempts may have been applied.
                            _ => unknown = unknown.or(unanswered),
                        }
                        if no_answer(&status) {
                            // No node gave an answer: the membership may have moved on.
                            inner.failed.store(true, Ordering::Release);
                        }
                        return Err(match (unknown, matches!(retry, Retry::SameRequestId { .. })) {
                            (
                                Some(ClientError::Status {
                                    code,
                                    message,
                                    endpoint,
                                }),
                                true,
                            ) => ClientError::Status {
                                code,
                                message: format!(
                                    "{message}; then {address}: {:?}: {}",
                                    status.code(),
                                    status.message()
                                ),
                                endpoint,
                            },
                            _ => ClientError::status(&status, &address),
                        });
                    }
                };
            tracing::debug!(endpoint = %address, code = ?status.code(), attempt = started, elapsed_ms = call_began.elapsed().as_millis() as u64, "retrying on the next node");
            let jitter: f64 = rand::random_range(0.5..1.0);
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
            backoff = (backoff * 2).min(inner.options.backoff_max);
            start(started, &mut running, &mut inflight)?;
            started += 1;
        }
    }

    /// Calls made and hedges sent by this client so far.
    pub fn hedge_stats(&self) -> HedgeStats {
        HedgeStats {
            calls: self.inner.calls.load(Ordering::Relaxed),
            hedges: self.inner.hedges.load(Ordering::Relaxed),
        }
    }
}

/// What hedging cost: extra requests = `hedges` ÷ `calls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HedgeStats {
    pub calls: u64,
    pub hedges: u64,
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[derive(Clone, Copy)]
enum Retry {
    /// Safe to repeat anywhere (reads).
    Idempotent,
    /// Repeat only when the node was not reached (or refused before acting).
    OnlyUnreached,
    /// A write carrying a request id: repeated wherever its outcome is unknown too (the cluster
    /// applies an id once); hedged when `hedge` (`ClientOptions::hedge_writes`).
    SameRequestId { hedge: bool },
}

impl Retry {
    /// The same, never hedged: a checkout must not run on two owners at once (its stale-version
    /// check is one coordinator's; two concurrent attempts could both order). Failing over after
    /// a timeout is safe: the first attempt's deadline keeps it from being applied late.
    fn unhedged(self) -> Retry {
        match self {
            Retry::SameRequestId { .. } => Retry::SameRequestId { hedge: false },
            other => other,
        }
    }
}

/// What a call does after one of its attempts failed.
#[derive(Debug)]
enum Next {
    /// Another attempt is still running: its answer decides.
    Wait,
    /// Start another attempt.
    Retry(Status),
    /// Answer with this error (a refusal, from the node that gave it when known).
    Stop(Status, Option<String>),
}

impl Retry {
    /// The step after an attempt ended with `status`. `refused` keeps the first refusal a node
    /// gave (it ran the call and said no): that is the answer once every attempt still
    /// running has ended, and no later attempt's "not reached" hides it. A write's refusal by
    /// one node does not end the call while another attempt runs: that attempt may be applied
    /// (cancelling it would not undo it), so its answer decides.
    fn after(
        self,
        status: Status,
        running: bool,
        may_retry: bool,
        refused: &mut Option<(Status, String)>,
        at: &str,
    ) -> Next {
        let retryable = self.allows(&status);
        if !retryable && !no_answer(&status) && refused.is_none() {
            *refused = Some((status.clone(), at.to_owned()));
        }
        if running && (retryable || no_answer(&status) || matches!(self, Retry::SameRequestId { .. })) {
            return Next::Wait;
        }
        match refused.take() {
            Some((refusal, at)) => Next::Stop(refusal, Some(at)),
            None if retryable && may_retry => Next::Retry(status),
            None => Next::Stop(status, None),
        }
    }

    fn allows(self, status: &Status) -> bool {
        match self {
            Retry::Idempotent | Retry::SameRequestId { .. } => no_answer(status),
            Retry::OnlyUnreached => status.code() == Code::Unavailable && !cart_proto::outcome_unknown(status),
        }
    }
}

/// Whether an attempt ended without the node's answer: not reached, refused before acting,
/// timed out (tonic reports its own deadline as `CANCELLED`), or the connection broke.
/// A connection the node closed with an HTTP/2 GOAWAY (e.g. `ENHANCE_YOUR_CALM`) surfaces as
/// `RESOURCE_EXHAUSTED` with an "h2 protocol error" message: no answer either.
fn no_answer(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    ) || (status.code() == Code::ResourceExhausted && status.message().starts_with("h2 protocol error"))
}

/// Whether a failed attempt may nevertheless have been applied (a node's "deadline passed, not
/// applied" is not such an attempt).
fn outcome_unknown(status: &Status) -> bool {
    (matches!(status.code(), Code::DeadlineExceeded | Code::Unknown | Code::Cancelled)
        && !cart_proto::outcome_none(status))
        || (status.code() == Code::ResourceExhausted && no_answer(status))
        || cart_proto::outcome_unknown(status)
}

/// What tonic answers when a unary call's timeout passes.
fn expired<T>(_: tokio::time::error::Elapsed) -> Result<T, Status> {
    Err(Status::cancelled("Timeout expired"))
}

/// A fresh request id: 128 random bits in hex.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn sticky_index(cart_id: &str, n: usize) -> usize {
    let mut h = DefaultHasher::new();
    cart_id.hash(&mut h);
    (h.finish() % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write with a request id, not hedged.
    const WRITE: Retry = Retry::SameRequestId { hedge: false };

    fn member(i: usize, addr: &str) -> Member {
        Member {
            node_id: format!("n{i}"),
            addr: addr.to_owned(),
            weight: 1,
            zone: String::new(),
        }
    }

    fn step(retry: Retry, code: Code, running: bool, refused: &mut Option<(Status, String)>) -> Next {
        retry.after(Status::new(code, "x"), running, true, refused, "n2")
    }

    #[test]
    fn a_writes_refusal_waits_for_the_attempts_still_running() {
        let mut refused = None;
        // The hedge is refused while the first attempt runs: that attempt may be applied.
        let next = step(WRITE, Code::NotFound, true, &mut refused);
        assert!(matches!(next, Next::Wait), "{next:?}");
        // The first attempt then finds no node: the refusal is the answer, not a retry.
        let next = step(WRITE, Code::Unavailable, false, &mut refused);
        match next {
            Next::Stop(status, at) => assert_eq!((status.code(), at.as_deref()), (Code::NotFound, Some("n2"))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reads_refusal_answers_at_once_and_no_answer_retries() {
        let mut refused = None;
        let next = step(Retry::Idempotent, Code::NotFound, true, &mut refused);
        assert!(
            matches!(next, Next::Stop(ref s, _) if s.code() == Code::NotFound),
            "{next:?}"
        );
        let mut refused = None;
        assert!(matches!(
            step(Retry::Idempotent, Code::Unavailable, true, &mut refused),
            Next::Wait
        ));
        let next = step(WRITE, Code::DeadlineExceeded, false, &mut refused);
        assert!(
            matches!(next, Next::Retry(ref s) if s.code() == Code::DeadlineExceeded),
            "{next:?}"
        );
        // Out of attempts: the last status is the answer.
        let next = WRITE.after(Status::unavailable("down"), false, false, &mut refused, "n3");
        assert!(
            matches!(next, Next::Stop(ref s, None) if s.code() == Code::Unavailable),
            "{next:?}"
        );
    }

    #[test]
    fn a_closed_connection_is_no_verdict() {
        let closed = Status::resource_exhausted("h2 protocol error: ENHANCE_YOUR_CALM");
        assert!(outcome_unknown(&closed));
        assert_eq!(ClientError::status(&closed, "n1").code(), Some(Code::Unavailable));
        let full = Status::resource_exhausted("lines: the cart has 200 lines");
        assert_eq!(ClientError::status(&full, "n1").code(), Some(Code::ResourceExhausted));
    }

    fn five() -> Ring {
        Ring::new((1..=5).map(|i| member(i, &format!("10.0.0.{i}:7001")))).unwrap()
    }

    #[test]
    fn owners_come_first_in_preference_order_then_every_other_member() {
        let ring = five();
        for k in 0..300 {
            let key = format!("user:{k}");
            let order = route_order(&ring, 3, key.as_bytes(), &[]);
            let owners: Vec<String> = ring
                .preference_list(key.as_bytes(), 3)
                .iter()
                .map(|m| m.addr.clone())
                .collect();
            assert_eq!(order[..3], owners[..], "{key}");
            let rest: HashSet<&String> = order[3..].iter().collect();
            let others: HashSet<String> = ring
                .members()
                .iter()
                .map(|m| m.addr.clone())
                .filter(|a| !owners.contains(a))
                .collect();
            assert_eq!(rest, others.iter().collect(), "{key}");
            // The others follow in the ring's fallback order.
            let walk: Vec<String> = ring.walk(key.as_bytes(), 3).map(|m| m.addr.clone()).collect();
            assert_eq!(order, walk, "{key}");
        }
    }

    #[test]
    fn owners_differ_between_carts() {
        let ring = five();
        let firsts: HashSet<String> = (0..100)
            .map(|k| route_order(&ring, 3, format!("guest:session-{k}-x").as_bytes(), &[])[0].clone())
            .collect();
        assert_eq!(firsts.len(), 5, "every node is first owner of some carts");
    }

    #[test]
    fn configured_endpoints_that_are_not_members_come_last_and_once() {
        let ring = five();
        let endpoints = ["http://10.0.0.2:7001".to_owned(), "lb.example:7000".to_owned()];
        let order = route_order(&ring, 3, b"user:alice", &endpoints);
        assert_eq!(order.len(), 6);
        assert_eq!(order[5], "lb.example:7000");
        assert_eq!(order.iter().filter(|a| a.contains("10.0.0.2")).count(), 1);
    }

    #[test]
    fn same_uri_is_equality_of_uri_of() {
        let addrs = [
            "10.0.0.1:7001",
            "http://10.0.0.1:7001",
            "https://10.0.0.1:7001",
            "10.0.0.1:7002",
            "http://x",
        ];
        for a in addrs {
            for b in addrs {
                assert_eq!(same_uri(a, b), uri_of(a) == uri_of(b), "{a} {b}");
            }
        }
    }

    #[test]
    fn members_that_cannot_be_dialled_are_skipped() {
        let ring = Ring::new([
            member(1, "127.0.0.1:0"),
            member(2, "0.0.0.0:7002"),
            member(3, "10.0.0.3:7003"),
            member(4, "bad host:7004"),
        ])
        .unwrap();
        let endpoints = ["127.0.0.1:7001".to_owned()];
        for k in 0..50 {
            let order = route_order(&ring, 3, format!("user:{k}").as_bytes(), &endpoints);
            assert_eq!(order, ["10.0.0.3:7003", "127.0.0.1:7001"]);
        }
        assert!(dialable("node-1.cart.svc:7001"));
        assert!(dialable("[::1]:7001"));
        assert!(!dialable("node-1:0") && !dialable("[::]:7001") && !dialable("7001"));
    }

    #[test]
    fn default_attempts_cover_every_candidate_up_to_five() {
        let auto = ClientOptions::default();
        assert_eq!(auto.max_attempts, 0);
        assert_eq!([1, 2, 3, 4, 5, 9].map(|c| auto.attempts(c)), [3, 3, 3, 4, 5, 5]);
        let one = ClientOptions {
            max_attempts: 1,
            ..ClientOptions::default()
        };
        assert_eq!(one.attempts(5), 1);
    }

    #[test]
    fn the_membership_header_is_sixteen_hex_digits() {
        let mut metadata = MetadataMap::new();
        assert_eq!(header_version(&metadata), None);
        metadata.insert(MEMBERSHIP_HEADER, "00000000000000ff".parse().unwrap());
        assert_eq!(header_version(&metadata), Some(255));
        metadata.insert(MEMBERSHIP_HEADER, "not-hex".parse().unwrap());
        assert_eq!(header_version(&metadata), None);
    }

    fn wire(members: &[(&str, &str)], n: u32) -> admin_pb::Membership {
        admin_pb::Membership {
            members: members
                .iter()
                .map(|(id, addr)| admin_pb::Member {
                    node_id: (*id).into(),
                    addr: (*addr).into(),
                    weight: 1,
                    zone: String::new(),
                })
                .collect(),
            n,
            layout_version: 1,
            r: 2,
            w: 2,
            version: 7,
            degraded: Vec::new(),
        }
    }

    #[test]
    fn degraded_members_are_tried_last() {
        let members = [("a", "10.0.0.1:1"), ("b", "10.0.0.2:1"), ("c", "10.0.0.3:1")];
        let healthy = Routes::new(wire(&members, 3)).unwrap();
        let mut reply = wire(&members, 3);
        reply.degraded = vec!["b".into()];
        let sick = Routes::new(reply).unwrap();
        for k in 0..50 {
            let id = format!("user:{k}");
            let before = healthy.route(&id, &[]);
            let after = sick.route(&id, &[]);
            assert_eq!(after.last().map(String::as_str), Some("10.0.0.2:1"), "{after:?}");
            let others: Vec<_> = before.iter().filter(|a| *a != "10.0.0.2:1").collect();
            assert_eq!(
                after[..2].iter().collect::<Vec<_>>(),
                others,
                "the healthy keep their order"
            );
        }
    }

    #[test]
    fn a_membership_reply_becomes_routes_or_is_refused() {
        let routes = Routes::new(wire(&[("b", "10.0.0.2:1"), ("a", "10.0.0.1:1")], 3)).unwrap();
        assert_eq!(routes.membership.n, 2, "n is at most the member count");
        assert_eq!(routes.membership.members[0].node_id, "a", "sorted by node id");
        assert_eq!(routes.membership.version, 7);
        assert_eq!(Routes::new(wire(&[("a", "10.0.0.1:1")], 0)).unwrap().membership.n, 1);
        assert!(Routes::new(wire(&[], 3)).is_err());
        assert!(Routes::new(wire(&[("a", "10.0.0.1:1"), ("a", "10.0.0.2:1")], 3)).is_err());
    }

    #[tokio::test]
    async fn without_a_membership_a_cart_sticks_to_one_endpoint_then_tries_the_others() {
        let endpoints = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let options = ClientOptions {
            ring_aware: false,
            ..ClientOptions::default()
        };
        let client = CartClient::connect_with(endpoints, options).await.unwrap();
        assert!(client.membership().is_none());
        let mut firsts = HashSet::new();
        for k in 0..50 {
            let id = format!("user:{k}");
            let route = client.route(&id);
            assert_eq!(route, client.route(&id), "sticky");
            assert_eq!(route.iter().collect::<HashSet<_>>().len(), 3);
            firsts.insert(route[0].clone());
        }
        assert_eq!(firsts.len(), 3, "carts spread over the endpoints");
    }

    #[tokio::test]
    async fn bad_endpoints_are_refused_at_connect() {
        let err = CartClient::connect(["http://bad host:1"]).await.err().unwrap();
        assert!(matches!(err, ClientError::InvalidEndpoint { .. }), "{err}");
        let none: [&str; 0] = [];
        assert!(matches!(CartClient::connect(none).await, Err(ClientError::NoEndpoints)));
    }
}
