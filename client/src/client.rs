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
use cart_proto::pb::cart_service_client::CartServiceClient;
use cart_proto::pb::{self, CartReply};
use cart_proto::{Consistency, MEMBERSHIP_HEADER};
use cart_ring::{Member, Ring};
use thiserror::Error;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

/// With [`ClientOptions::max_attempts`] = 0 (the default), a call makes one attempt per node it
/// may try, but at least this many…
pub const AUTO_ATTEMPTS_MIN: usize = 3;
/// …and at most this many.
pub const AUTO_ATTEMPTS_MAX: usize = 5;
/// Membership refreshes that calls trigger are at least this far apart, so replies from nodes
/// that disagree (during a rolling membership change) cannot make every call refresh.
pub const MEMBERSHIP_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(1);
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
        }
    }
}

impl ClientOptions {
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
        ClientError::Status {
            code: status.code(),
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
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for member in ring.walk(key, n) {
        if dialable(&member.addr) && seen.insert(uri_of(&member.addr)) {
            order.push(member.addr.clone());
        }
    }
    for endpoint in endpoints {
        if seen.insert(uri_of(endpoint)) {
            order.push(endpoint.clone());
        }
    }
    order
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

fn uri_of(address: &str) -> String {
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
    let endpoint = Endpoint::from_shared(uri_of(address)).map_err(|e| ClientError::InvalidEndpoint {
        endpoint: address.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(endpoint
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true))
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

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
    /// `None` until a membership is known (or when not ring-aware).
    routes: RwLock<Option<Arc<Routes>>>,
    /// The newest version a reply showed that differed from `routes` at the time.
    seen: Mutex<Option<Seen>>,
    /// Set when a call failed on every attempt.
    failed: AtomicBool,
    /// Held while refreshing (one refresh at a time); when the last call-triggered one started.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl Inner {
    fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        let uri = uri_of(address);
        let mut channels = lock(&self.channels);
        if let Some(channel) = channels.get(&uri) {
            return Ok(channel.clone());
        }
        let channel = (self.connect)(endpoint(address, &self.options)?);
        channels.insert(uri, channel.clone());
        Ok(channel)
    }

    fn routes(&self) -> Option<Arc<Routes>> {
        self.routes.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn version(&self) -> Option<u64> {
        self.routes().map(|r| r.membership.version)
    }

    /// The addresses to try for a cart, in order.
    fn route(&self, cart_id: &str) -> Vec<String> {
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
            let mut request = Request::new(GetMembershipRequest {});
            request.set_timeout(self.options.request_timeout);
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
    }
}

/// A cheap-to-share handle on a cartdb cluster (clone it or put it in an `Arc`).
#[derive(Clone)]
pub struct CartClient {
    inner: Arc<Inner>,
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
        let inner = Inner {
            endpoints,
            options,
            connect,
            channels: Mutex::default(),
            routes: RwLock::default(),
            seen: Mutex::default(),
            failed: AtomicBool::new(false),
            refresh: tokio::sync::Mutex::new(None),
        };
        for endpoint in &inner.endpoints {
            inner.channel(endpoint)?;
        }
        if inner.options.ring_aware {
            if let Err(e) = inner.fetch_and_install().await {
                tracing::debug!(error = %e, "no membership yet; sending calls to the configured endpoints");
            }
        }
        Ok(CartClient { inner: Arc::new(inner) })
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
        self.inner.route(cart_id)
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
        let req = pb::AddItemRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            quantity: i64::from(quantity),
            snapshot: Some(snapshot.into()),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
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
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.set_quantity(r).await
        })
        .await
    }

    /// Adds a signed `delta` to a line's quantity. Concurrent adjustments all count (a counter),
    /// unlike [`CartClient::set_quantity`], which a concurrent set may overrule.
    pub async fn adjust_quantity(&self, cart_id: &str, product_id: &str, delta: i64) -> Result<CartView, ClientError> {
        let req = pb::AdjustQuantityRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            delta,
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.adjust_quantity(r).await
        })
        .await
    }

    pub async fn remove_item(&self, cart_id: &str, product_id: &str) -> Result<CartView, ClientError> {
        let req = pb::RemoveItemRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.remove_item(r).await
        })
        .await
    }

    /// Removes every line and coupon; saved-for-later items stay.
    pub async fn clear_cart(&self, cart_id: &str) -> Result<CartView, ClientError> {
        let req = pb::ClearCartRequest {
            cart_id: cart_id.into(),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.clear_cart(r).await
        })
        .await
    }

    pub async fn save_for_later(&self, cart_id: &str, product_id: &str) -> Result<CartView, ClientError> {
        let req = pb::SaveForLaterRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.save_for_later(r).await
        })
        .await
    }

    pub async fn move_to_cart(&self, cart_id: &str, product_id: &str) -> Result<CartView, ClientError> {
        let req = pb::MoveToCartRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.move_to_cart(r).await
        })
        .await
    }

    pub async fn apply_coupon(&self, cart_id: &str, code: &str) -> Result<CartView, ClientError> {
        let req = pb::ApplyCouponRequest {
            cart_id: cart_id.into(),
            code: code.into(),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.apply_coupon(r).await
        })
        .await
    }

    pub async fn remove_coupon(&self, cart_id: &str, code: &str) -> Result<CartView, ClientError> {
        let req = pb::RemoveCouponRequest {
            cart_id: cart_id.into(),
            code: code.into(),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.remove_coupon(r).await
        })
        .await
    }

    fn consistency(&self) -> Option<pb::Consistency> {
        let c = self.inner.options.consistency;
        (c != Consistency::default()).then(|| c.into())
    }

    /// Runs one call with deadline, failover along the cart's route, and backoff.
    async fn call<Req, F, Fut>(&self, cart_id: &str, retry: Retry, req: Req, rpc: F) -> Result<CartView, ClientError>
    where
        Req: Clone,
        F: Fn(CartServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<CartReply>, Status>>,
    {
        let inner = &*self.inner;
        inner.maybe_refresh().await;
        let route = inner.route(cart_id);
        if route.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let attempts = inner.options.attempts(route.len()).max(1);
        let mut backoff = inner.options.backoff_initial;
        let mut attempt = 0;
        loop {
            let address = &route[attempt % route.len()];
            let mut request = Request::new(req.clone());
            request.set_timeout(inner.options.request_timeout);
            let status = match rpc(CartServiceClient::new(inner.channel(address)?), request).await {
                Ok(reply) => {
                    inner.observe(reply.metadata(), address);
                    return reply
                        .into_inner()
                        .cart
                        .map(CartView::from)
                        .ok_or(ClientError::EmptyReply);
                }
                Err(status) => {
                    inner.observe(status.metadata(), address);
                    status
                }
            };
            attempt += 1;
            let retryable = retry.allows(status.code()) && !cart_proto::outcome_unknown(&status);
            if attempt >= attempts || !retryable {
                if retryable || status.code() == Code::Unavailable {
                    // No node gave an answer: the membership may have moved on.
                    inner.failed.store(true, Ordering::Release);
                }
                return Err(ClientError::status(&status, address));
            }
            tracing::debug!(endpoint = %address, code = ?status.code(), attempt, "retrying on the next node");
            let jitter: f64 = rand::random_range(0.5..1.0);
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
            backoff = (backoff * 2).min(inner.options.backoff_max);
        }
    }
}

#[derive(Clone, Copy)]
enum Retry {
    /// Safe to repeat anywhere (reads).
    Idempotent,
    /// Repeat only when the node was not reached (or refused before acting).
    OnlyUnreached,
}

impl Retry {
    fn allows(self, code: Code) -> bool {
        match self {
            Retry::Idempotent => matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Unknown),
            Retry::OnlyUnreached => code == Code::Unavailable,
        }
    }
}

fn sticky_index(cart_id: &str, n: usize) -> usize {
    let mut h = DefaultHasher::new();
    cart_id.hash(&mut h);
    (h.finish() % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: usize, addr: &str) -> Member {
        Member {
            node_id: format!("n{i}"),
            addr: addr.to_owned(),
            weight: 1,
            zone: String::new(),
        }
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
