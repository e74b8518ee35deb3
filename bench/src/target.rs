//! What the bench sends load to.
//!
//! A target is named on the command line as `KIND=ENDPOINT,ENDPOINT…` (`cartdb=127.0.0.1:7001`).
//! [`TargetSpec`] is the parsed form, [`AnyTarget`] the connected one. The runner only needs the
//! [`Target`] trait, so a new system under test is a new [`TargetKind`] variant, a struct
//! implementing [`Target`] and one arm in [`AnyTarget`]; nothing else changes.
//!
//! Kinds: `cartdb=HOST:PORT[,HOST:PORT…]` (a cluster, any of its nodes) and
//! `redis=redis://HOST:PORT[?wait=N[&wait_timeout_ms=T]]` (one server, the primary when it has
//! replicas; the `redis://` may be left out; `?wait=N`: every write also waits, in its round trip,
//! until N replicas have it, see [`RedisWait`]). The Redis data model is in
//! [`crate::redis_target`].

use std::fmt;
use std::future::Future;

use cart_client::{CartClient, ClientOptions, ItemSnapshot};
use tonic::Code;

use crate::error::BenchError;
use crate::redis_target::{self, RedisTarget, RedisWait};
use crate::workload::Op;

/// The result of one operation as the report counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target applied the operation (or returned the cart).
    Ok,
    /// The operation named a line or coupon the cart does not hold: an expected answer in a random
    /// workload, counted as completed but reported apart.
    NotFound,
    /// Anything else; `code` groups errors in the report, `message` is kept as an example.
    Error { code: String, message: String },
}

impl Outcome {
    /// The error of an operation still running when the run's drain timeout expired.
    pub fn abandoned() -> Self {
        Outcome::Error {
            code: "ABANDONED".into(),
            message: "still in flight when the drain timeout expired".into(),
        }
    }
}

/// A system the bench can load. Implementations must be cheap to call concurrently.
pub trait Target: Send + Sync + 'static {
    /// Issues one operation and waits for its answer.
    fn execute(&self, op: Op) -> impl Future<Output = Outcome> + Send;

    /// Calls made and hedges sent, for targets whose client hedges (cartdb).
    fn hedge_stats(&self) -> Option<cart_client::HedgeStats> {
        None
    }
}

/// Kinds of system under test the `--target` flag accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A cartdb cluster, reached through `cart-client` over gRPC.
    CartDb,
    /// One Redis server, reached through `redis-rs` (see [`crate::redis_target`]).
    Redis,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::CartDb => "cartdb",
            TargetKind::Redis => "redis",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "cartdb" => Some(TargetKind::CartDb),
            "redis" => Some(TargetKind::Redis),
            _ => None,
        }
    }
}

/// A parsed `--target KIND=HOST:PORT,HOST:PORT…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub kind: TargetKind,
    pub endpoints: Vec<String>,
    /// Redis only: writes wait for replicas (`?wait=N`).
    pub redis_wait: Option<RedisWait>,
}

impl TargetSpec {
    pub fn parse(raw: &str) -> Result<Self, BenchError> {
        let invalid = |reason: &str| BenchError::InvalidTarget {
            spec: raw.to_owned(),
            reason: reason.to_owned(),
        };
        let (kind, list) = raw
            .split_once('=')
            .ok_or_else(|| invalid("expected KIND=HOST:PORT[,HOST:PORT…]"))?;
        let kind = TargetKind::parse(kind.trim()).ok_or_else(|| invalid("unknown kind (supported: cartdb, redis)"))?;
        let endpoints: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            return Err(invalid("no endpoints"));
        }
        if kind == TargetKind::Redis {
            let [endpoint] = endpoints.as_slice() else {
                return Err(invalid("a redis target is one server: redis=redis://HOST:PORT"));
            };
            let (endpoint, query) = match endpoint.split_once('?') {
                Some((endpoint, query)) => (endpoint, Some(query)),
                None => (endpoint.as_str(), None),
            };
            let (host, port) = redis_target::parse_endpoint(endpoint)
                .ok_or_else(|| invalid("expected redis=redis://HOST:PORT[?wait=N[&wait_timeout_ms=T]]"))?;
            let redis_wait = query
                .map(|q| RedisWait::parse_query(q).map_err(|reason| invalid(&reason)))
                .transpose()?;
            return Ok(TargetSpec {
                kind,
                endpoints: vec![format!("redis://{host}:{port}")],
                redis_wait,
            });
        }
        for endpoint in &endpoints {
            let (host, port) = endpoint
                .rsplit_once(':')
                .ok_or_else(|| invalid("an endpoint lacks :PORT"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(invalid("an endpoint is not HOST:PORT"));
            }
        }
        Ok(TargetSpec {
            kind,
            endpoints,
            redis_wait: None,
        })
    }
}

impl fmt::Display for TargetSpec {
    /// The canonical `KIND=HOST:PORT,…[?QUERY]` form, used as the target's label in reports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.kind.name(), self.endpoints.join(","))?;
        match &self.redis_wait {
            Some(wait) => write!(f, "?{wait}"),
            None => Ok(()),
        }
    }
}

/// cartdb through `cart-client` (each cart sticks to one endpoint; retries on UNAVAILABLE).
pub struct CartDbTarget {
    client: CartClient,
}

impl CartDbTarget {
    pub async fn connect(endpoints: &[String], options: ClientOptions) -> Result<Self, BenchError> {
        let client = CartClient::connect_with(endpoints, options)
            .await
            .map_err(|e| BenchError::Unreachable {
                target: endpoints.join(","),
                reason: e.to_string(),
            })?;
        Ok(CartDbTarget { client })
    }
}

impl Target for CartDbTarget {
    fn hedge_stats(&self) -> Option<cart_client::HedgeStats> {
        Some(self.client.hedge_stats())
    }

    async fn execute(&self, op: Op) -> Outcome {
        let c = &self.client;
        let result = match &op {
            Op::GetCart { cart_id } => c.get_cart(cart_id).await,
            Op::AddItem { cart_id, sku, quantity } => {
                let snapshot = ItemSnapshot::new(sku.name(), sku.unit_price_minor(), "EUR");
                c.add_item(cart_id, &sku.product_id(), *quantity, snapshot).await
            }
            Op::SetQuantity { cart_id, sku, quantity } => c.set_quantity(cart_id, &sku.product_id(), *quantity).await,
            Op::RemoveItem { cart_id, sku } => c.remove_item(cart_id, &sku.product_id()).await,
            Op::ApplyCoupon { cart_id, code } => c.apply_coupon(cart_id, code).await,
            Op::RemoveCoupon { cart_id, code } => c.remove_coupon(cart_id, code).await,
        };
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) if e.code() == Some(Code::NotFound) => Outcome::NotFound,
            Err(e) => Outcome::Error {
                code: e.code().map_or_else(|| "CLIENT".to_owned(), code_name),
                message: e.to_string(),
            },
        }
    }
}

/// gRPC code in the canonical upper-case form (`UNAVAILABLE`, `DEADLINE_EXCEEDED`).
fn code_name(code: Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// How targets are connected (beyond their endpoints).
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Multiplexed connections a Redis target opens and uses round robin.
    pub redis_connections: usize,
    /// cartdb: the client hedges slow calls (its default).
    pub hedge: bool,
    /// cartdb: and writes too (not its default).
    pub hedge_writes: bool,
    /// cartdb: calls on the client's pipeline streams (its default), or a unary call each.
    pub pipeline: bool,
    /// cartdb: TLS and the bearer token (`--tls-ca`, `--token`).
    pub credentials: cart_client::Credentials,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            redis_connections: redis_target::DEFAULT_REDIS_CONNECTIONS,
            hedge: true,
            hedge_writes: false,
            pipeline: true,
            credentials: cart_client::Credentials::default(),
        }
    }
}

/// Every supported target, connected. Add a variant per new [`TargetKind`].
pub enum AnyTarget {
    CartDb(CartDbTarget),
    Redis(RedisTarget),
}

impl AnyTarget {
    pub async fn connect(spec: &TargetSpec) -> Result<Self, BenchError> {
        Self::connect_with(spec, ConnectOptions::default()).await
    }

    pub async fn connect_with(spec: &TargetSpec, options: ConnectOptions) -> Result<Self, BenchError> {
        match spec.kind {
            TargetKind::CartDb => Ok(AnyTarget::CartDb(
                CartDbTarget::connect(
                    &spec.endpoints,
                    ClientOptions {
                        hedge: options.hedge,
                        hedge_writes: options.hedge_writes,
                        pipeline: options.pipeline,
                        credentials: options.credentials,
                        ..ClientOptions::default()
                    },
                )
                .await?,
            )),
            TargetKind::Redis => {
                let url = spec.endpoints.first().ok_or_else(|| BenchError::InvalidTarget {
                    spec: spec.to_string(),
                    reason: "no endpoint".into(),
                })?;
                Ok(AnyTarget::Redis(
                    RedisTarget::connect(url, options.redis_connections, spec.redis_wait).await?,
                ))
            }
        }
    }
}

impl Target for AnyTarget {
    async fn execute(&self, op: Op) -> Outcome {
        match self {
            AnyTarget::CartDb(t) => t.execute(op).await,
            AnyTarget::Redis(t) => t.execute(op).await,
        }
    }

    fn hedge_stats(&self) -> Option<cart_client::HedgeStats> {
        match self {
            AnyTarget::CartDb(t) => t.hedge_stats(),
            AnyTarget::Redis(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cartdb_with_several_endpoints() {
        let spec = TargetSpec::parse("cartdb=127.0.0.1:7001, 127.0.0.1:7002").expect("parses");
        assert_eq!(spec.kind, TargetKind::CartDb);
        assert_eq!(spec.endpoints, ["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert_eq!(spec.to_string(), "cartdb=127.0.0.1:7001,127.0.0.1:7002");
    }

    #[test]
    fn parses_redis_with_or_without_the_scheme() {
        for raw in [
            "redis=redis://127.0.0.1:6379",
            "redis=127.0.0.1:6379",
            "redis= redis://127.0.0.1:6379/",
        ] {
            let spec = TargetSpec::parse(raw).expect("parses");
            assert_eq!(spec.kind, TargetKind::Redis);
            assert_eq!(spec.endpoints, ["redis://127.0.0.1:6379"]);
            assert_eq!(spec.to_string(), "redis=redis://127.0.0.1:6379");
        }
    }

    #[test]
    fn redis_wait_is_part_of_the_target() {
        let spec = TargetSpec::parse("redis=redis://127.0.0.1:17621?wait=1").expect("parses");
        assert_eq!(
            spec.endpoints,
            ["redis://127.0.0.1:17621"],
            "the query is no part of the URL"
        );
        assert_eq!(
            spec.redis_wait,
            Some(RedisWait {
                replicas: 1,
                timeout_ms: redis_target::DEFAULT_WAIT_TIMEOUT_MS
            })
        );
        assert_eq!(
            spec.to_string(),
            "redis=redis://127.0.0.1:17621?wait=1&wait_timeout_ms=1000"
        );
        let spec = TargetSpec::parse("redis=127.0.0.1:17621?wait_timeout_ms=250&wait=2").expect("parses");
        assert_eq!(
            spec.redis_wait,
            Some(RedisWait {
                replicas: 2,
                timeout_ms: 250
            })
        );
        assert_eq!(TargetSpec::parse(&spec.to_string()).expect("round trip"), spec);
        assert_eq!(
            TargetSpec::parse("redis=127.0.0.1:6379").expect("parses").redis_wait,
            None
        );
        for bad in [
            "redis=redis://127.0.0.1:6379?",
            "redis=redis://127.0.0.1:6379?wait=0",
            "redis=redis://127.0.0.1:6379?wait=x",
            "redis=redis://127.0.0.1:6379?wait_timeout_ms=100",
            "redis=redis://127.0.0.1:6379?wait=1&wait_timeout_ms=0",
            "redis=redis://127.0.0.1:6379?wait=1&wait_timeout_ms=2000",
            "redis=redis://127.0.0.1:6379?wait=1&fsync=1",
            "cartdb=127.0.0.1:7001?wait=1",
        ] {
            assert!(TargetSpec::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn refuses_malformed_targets() {
        for bad in [
            "127.0.0.1:7001",
            "memcached=127.0.0.1:11211",
            "redis=",
            "redis=redis://127.0.0.1",
            "redis=redis://127.0.0.1:6379,redis://127.0.0.1:6380",
            "redis=redis://127.0.0.1:6379/3",
            "cartdb=",
            "cartdb=localhost",
            "cartdb=host:notaport",
            "cartdb=:7001",
        ] {
            assert!(TargetSpec::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn code_names_are_grpc_style() {
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
