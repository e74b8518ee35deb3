//! `cart-client`: the async Rust client storefronts use to talk to cartdb, and the `cartctl` CLI.
//!
//! Contract:
//! - [`CartClient::connect`] takes one or more `HOST:PORT` endpoints and asks them in turn for
//!   the cluster's membership (`AdminService.GetMembership`). With it the client builds the same
//!   ring as the nodes ([`cart_ring::Ring`]) and sends each call for a cart first to the cart's
//!   owners in preference-list order, then to the other members in ring order, then to configured
//!   endpoints that are no member's address. Any node accepts any call and forwards writes to an
//!   owner itself, so routing only saves that hop; it is never needed for correctness.
//! - If no endpoint answers (the cluster is down), the client is created anyway and sends each
//!   call to the configured endpoints, the same cart to the same endpoint first, until it learns
//!   the membership. [`ClientOptions::ring_aware`] = false keeps this behaviour for good.
//! - Refresh: every reply carries the answering node's membership version
//!   ([`cart_proto::MEMBERSHIP_HEADER`]). When it differs from the client's, or when a call failed
//!   on every attempt, the next call first fetches the membership again (the node that reported
//!   the new version first). One task refreshes at a time, others go on with the routes they have,
//!   and such refreshes are at least [`MEMBERSHIP_REFRESH_MIN_INTERVAL`] apart. Channels are made
//!   lazily, one per address, with HTTP/2 keepalive, TCP_NODELAY and the options' timeouts.
//! - A call that gets no answer (`UNAVAILABLE`: not reached or refused before acting; a timeout;
//!   a broken connection) is retried on the next node of its route with exponential backoff and
//!   jitter, up to [`ClientOptions::max_attempts`] (by default one attempt per node, 3 to 5).
//!   Reads are retried always. Writes carry a request id (one per call, [`new_request_id`]) and
//!   are retried with the same id even when the outcome is unknown: the cluster applies an id
//!   once (within the window the README states), so a retry never counts twice.
//!   [`ClientOptions::retry_writes`] = false retries a write only when no node was reached.
//! - **Hedging** ([`ClientOptions::hedge`], on by default): when the first node has not answered
//!   a read within the p99 of recent answers (clamped to `hedge_delay_min..hedge_delay_max`),
//!   the read also goes to the next node; the first answer wins. Writes are hedged (with their
//!   request id) only with [`ClientOptions::hedge_writes`]: each hedge leaves a first attempt
//!   that may be applied late, safe only within the exactly-once window (README). Hedges spend
//!   a token budget (`hedge_budget`, 4% of calls, burst 50), so they add at most that much
//!   load. A node that loses 3 hedges or fails 3 calls in a row is tried last for 1 s,
//!   doubling to 30 s while it stays slow; at most a third of the nodes are set aside at once.
//!   A write's refusal by one node is the answer only once every attempt still running has
//!   ended (a cancelled attempt may still be applied). [`CartClient::hedge_stats`] counts them.
//! - Every call carries a deadline ([`ClientOptions::request_timeout`]) and, when set, the
//!   bearer token of [`ClientOptions::credentials`]; with TLS credentials every endpoint is
//!   dialled over `https` and the nodes' certificates checked against the given CA.
//! - Results are the domain read model ([`cart_crdt::CartView`]); errors keep the gRPC code and the
//!   server's message, which names the offending field. An error whose outcome is unknown (the
//!   write may have been applied) is `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `CANCELLED` or `UNKNOWN`;
//!   `INVALID_ARGUMENT`, `NOT_FOUND`, `FAILED_PRECONDITION` and `RESOURCE_EXHAUSTED` are refusals
//!   that changed nothing.
//!
//! [`cli`] is `cartctl`: `cart …` commands through a [`CartClient`], `status` (the cluster as one
//! node sees it) and `hints discard` (an operator action that needs the cluster secret).
//!
//! This crate holds no server logic.
//!
//! ```no_run
//! use cart_client::{CartClient, ItemSnapshot};
//!
//! # async fn demo() -> Result<(), cart_client::ClientError> {
//! let client = CartClient::connect(["127.0.0.1:7001", "127.0.0.1:7002"]).await?;
//! let mug = ItemSnapshot::new("Mug", 1299, "EUR");
//! let cart = client.add_item("user:alice", "sku-1", 2, mug).await?;
//! assert_eq!(cart.lines[0].quantity, 2);
//! println!("subtotal {}", cart.subtotals[0].display()); // 25.98 EUR
//! # Ok(()) }
//! ```

pub mod cli;
mod client;
pub mod cluster_cli;
mod pipe;
pub mod security;

pub use cart_crdt::pricing::{CurrencySummary, Discount, NotApplied, PricingSummary};
pub use cart_crdt::{CartView, Current, ItemSnapshot, LineView, Money, SavedView};

/// One product's current data for [`CartClient::refresh_items`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshedItem {
    pub product_id: String,
    pub snapshot: ItemSnapshot,
    /// False: kept in the cart, out of the totals.
    pub available: bool,
    /// The catalogue's version of this data (≥ 1): the highest wins.
    pub catalog_version: u64,
}
pub use cart_proto::pb::MergeMode;
pub use cart_proto::{Consistency, OrderView};
pub use cart_ring::Member;
pub use client::{
    new_request_id, system_clock_ms, tcp_connect, CartClient, ClientError, ClientOptions, Connect, HedgeStats,
    Membership, AUTO_ATTEMPTS_MAX, AUTO_ATTEMPTS_MIN, MEMBERSHIP_REFRESH_MIN_INTERVAL,
};
pub use security::{ClientTls, Credentials, SecurityArgs};
