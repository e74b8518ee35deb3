//! The node's Prometheus metrics (OpenMetrics text from `prometheus-client`), served at
//! `GET /metrics` on the node's HTTP address (`http_addr`, see [`crate::http`]). Counters and
//! histograms are updated where things happen; gauges of state (hints held, storage size, carts cached) are read when
//! scraped. Every metric is documented in the README ("Metrics").

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::coordinator::Coordinator;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The public API method (`get_cart`, `add_item`, …).
    pub op: &'static str,
    /// The gRPC status code's name (`OK`, `UNAVAILABLE`, …).
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Which credential a refused call lacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The cluster secret of internal and operator calls.
    ClusterSecret,
    /// A bearer token of the public and admin APIs.
    Token,
    /// A peer's client certificate (`[tls] peer_mtls`).
    PeerCertificate,
}

impl Credential {
    fn label(self) -> &'static str {
        match self {
            Credential::ClusterSecret => "cluster_secret",
            Credential::Token => "token",
            Credential::PeerCertificate => "peer_certificate",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub credential: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OwnerLabels {
    pub owner: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, 100 µs to ~6.5 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Counts, 1 to 4,096.
fn sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// Seconds one bucket of [`Recent`] covers, and buckets kept (five minutes).
const BUCKET_SECS: u64 = 10;
const BUCKETS: usize = 30;

/// The public requests of the last minutes, in buckets of [`BUCKET_SECS`] (for the status page:
/// Prometheus histograms have no window of their own).
#[derive(Default)]
struct Recent {
    buckets: std::collections::VecDeque<Bucket>,
}

struct Bucket {
    /// Unix time (s) the bucket starts at.
    start_s: u64,
    count: u64,
    not_ok: u64,
    /// Microseconds.
    latency: hdrhistogram::Histogram<u64>,
}

/// One bucket of the recent requests, as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentBucket {
    pub start_unix_s: u64,
    pub seconds: u64,
    pub requests: u64,
    pub not_ok: u64,
    pub p99_ms: f64,
}

impl Recent {
    fn record(&mut self, ok: bool, took: Duration) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let start_s = now - now % BUCKET_SECS;
        if self.buckets.back().is_none_or(|b| b.start_s != start_s) {
            let Ok(latency) = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2) else {
                return;
            };
            self.buckets.push_back(Bucket {
                start_s,
                count: 0,
                not_ok: 0,
                latency,
            });
            while self.buckets.len() > BUCKETS {
                self.buckets.pop_front();
            }
        }
        if let Some(b) = self.buckets.back_mut() {
            b.count += 1;
            b.not_ok += u64::from(!ok);
            b.latency.saturating_record(took.as_micros().max(1) as u64);
        }
    }

    fn snapshot(&self) -> Vec<RecentBucket> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.buckets
            .iter()
            .map(|b| RecentBucket {
                start_unix_s: b.start_s,
                // The newest bucket is still filling: its rate is over the seconds it has seen.
                seconds: now.saturating_sub(b.start_s).clamp(1, BUCKET_SECS),
                requests: b.count,
                not_ok: b.not_ok,
                p99_ms: b.latency.value_at_quantile(0.99) as f64 / 1000.0,
            })
            .collect()
    }
}

pub struct Metrics {
    registry: Registry,
    recent: std::sync::Mutex<Recent>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Histograms<OpLabels>,
    pub quorum_failures: Family<KindLabels, Counter>,
    pub forwarded: Counter,
    pub handoffs: Counter,
    pub read_repairs: Counter,
    pub read_versions: Histogram,
    pub anti_entropy_differing: Counter,
    pub anti_entropy_repaired: Counter,
    pub commit_batch: Histogram,
    pub flush_seconds: Histogram,
    unauthenticated: Family<CredentialLabels, Counter>,
    hints_held: Family<OwnerLabels, Gauge>,
    hint_oldest_seconds: Gauge<f64, AtomicU64>,
    storage_bytes: Gauge,
    carts_cached: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cartdb");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Public API requests answered, by method and gRPC status code",
            requests.clone(),
        );
        let request_seconds = Histograms::<OpLabels>::new_with_constructor(latency);
        registry.register_with_unit(
            "request_duration",
            "Time from a public API request's arrival to its answer, by method",
            Unit::Seconds,
            request_seconds.clone(),
        );
        let quorum_failures = Family::<KindLabels, Counter>::default();
        registry.register(
            "quorum_failures",
            "Requests this node coordinated that did not reach their quorum (kind: read, write)",
            quorum_failures.clone(),
        );
        let forwarded = Counter::default();
        registry.register(
            "forwarded",
            "Writes this node passed to another owner (it owns no replica, or its storage refused)",
            forwarded.clone(),
        );
        let handoffs = Counter::default();
        registry.register(
            "handoffs",
            "Hints this node delivered to their owner and dropped (hinted handoff)",
            handoffs.clone(),
        );
        let read_repairs = Counter::default();
        registry.register(
            "read_repairs",
            "Replicas a read found lacking and sent the merged cart to",
            read_repairs.clone(),
        );
        let read_versions = sizes();
        registry.register(
            "read_versions",
            "Distinct versions of the cart one coordinated read found among the replicas it heard",
            read_versions.clone(),
        );
        let anti_entropy_differing = Counter::default();
        registry.register(
            "anti_entropy_differing_carts",
            "Carts anti-entropy found different between this node and a peer",
            anti_entropy_differing.clone(),
        );
        let anti_entropy_repaired = Counter::default();
        registry.register(
            "anti_entropy_repaired_carts",
            "Carts anti-entropy merged and pushed back",
            anti_entropy_repaired.clone(),
        );
        let commit_batch = sizes();
        registry.register(
            "group_commit_batch",
            "Writers one storage flush made durable at once (group commit)",
            commit_batch.clone(),
        );
        let flush_seconds = latency();
        registry.register_with_unit(
            "storage_flush_duration",
            "Time of one storage flush (fdatasync on fjall)",
            Unit::Seconds,
            flush_seconds.clone(),
        );
        let unauthenticated = Family::<CredentialLabels, Counter>::default();
        registry.register(
            "unauthenticated",
            "Calls refused UNAUTHENTICATED, by the credential missing or wrong (cluster_secret, token, peer_certificate)",
            unauthenticated.clone(),
        );
        let hints_held = Family::<OwnerLabels, Gauge>::default();
        registry.register(
            "hints_held",
            "Hints this node holds for another owner, by owner",
            hints_held.clone(),
        );
        let hint_oldest_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "hint_oldest_age",
            "How long this node has held hints without a pause (0: none held)",
            Unit::Seconds,
            hint_oldest_seconds.clone(),
        );
        let storage_bytes = Gauge::default();
        registry.register_with_unit(
            "storage",
            "Bytes of the node's data directory on disk",
            Unit::Bytes,
            storage_bytes.clone(),
        );
        let carts_cached = Gauge::default();
        registry.register(
            "carts_cached",
            "Decoded carts in the node's cache",
            carts_cached.clone(),
        );
        Metrics {
            registry,
            recent: std::sync::Mutex::new(Recent::default()),
            requests,
            request_seconds,
            quorum_failures,
            forwarded,
            handoffs,
            read_repairs,
            read_versions,
            anti_entropy_differing,
            anti_entropy_repaired,
            commit_batch,
            flush_seconds,
            unauthenticated,
            hints_held,
            hint_oldest_seconds,
            storage_bytes,
            carts_cached,
        }
    }

    /// One answered public request.
    pub fn request(&self, op: &'static str, code: tonic::Code, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                op,
                code: code_name(code),
            })
            .inc();
        self.request_seconds
            .get_or_create(&OpLabels { op })
            .observe(took.as_secs_f64());
        if let Ok(mut recent) = self.recent.lock() {
            recent.record(code == tonic::Code::Ok, took);
        }
    }

    /// The requests of the last minutes, oldest first.
    pub fn recent(&self) -> Vec<RecentBucket> {
        self.recent.lock().map(|r| r.snapshot()).unwrap_or_default()
    }

    /// Counts a call refused `UNAUTHENTICATED` for lacking `credential`.
    pub fn refused(&self, credential: Credential) {
        self.unauthenticated
            .get_or_create(&CredentialLabels {
                credential: credential.label(),
            })
            .inc();
    }

    pub fn quorum_failed(&self, kind: &'static str) {
        self.quorum_failures.get_or_create(&KindLabels { kind }).inc();
    }

    /// The exposition text, with the state gauges read now.
    pub fn render(&self, coordinator: &Coordinator, data_dir: &Path) -> String {
        let store = &coordinator.store;
        self.hints_held.clear();
        for (owner, n) in store.hint_counts() {
            self.hints_held.get_or_create(&OwnerLabels { owner }).set(n as i64);
        }
        self.hint_oldest_seconds
            .set(store.hints_held_for().map_or(0.0, |d| d.as_secs_f64()));
        self.storage_bytes.set(dir_bytes(data_dir) as i64);
        self.carts_cached.set(store.carts_cached() as i64);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// The upper-case name of a gRPC code, as the gRPC docs spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Bytes of the files under `dir` (bounded walk: at most 100,000 entries).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_owned()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            seen += 1;
            if seen > 100_000 {
                return total;
            }
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
