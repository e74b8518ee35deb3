//! `cart-node`: the cartdb server (`cartd`).
//!
//! Contract:
//! - Serves the public `CartService` (see `proto/cart.proto`). Every request is validated once at
//!   the edge (`cart-proto`), gets a tracing span with cart id, op and coordinator, and maps its
//!   errors to a gRPC status in one place ([`error`]). Bad input changes nothing.
//! - A write is acknowledged only after it is durable: per-key serialised read-modify-write
//!   ([`store`]) and a group-committed flush ([`commit`]) shared by concurrent writers.
//! - Storage, clock and transport are parameters ([`storage::Storage`], [`clock::Clock`], the
//!   `incoming` stream of [`server::Node::serve`] and the peer connector [`cluster::Connect`] of
//!   [`server::Node::open_with_connector`]) so the same code runs under simulation.
//! - Every queue is bounded; overload is refused with `RESOURCE_EXHAUSTED`.
//! - With `[tls]` the port speaks only TLS and peers are dialled over TLS (with `peer_mtls`, the
//!   replica API needs a client certificate of the cluster's CA); with `[auth]` tokens every
//!   public and admin call needs one ([`security`]). Refusals are `UNAUTHENTICATED` and counted.
//! - The cluster layout is a versioned document every node stores and spreads ([`membership`]);
//!   versions are agreed by a majority of the current members, and carts move into a new version
//!   without loss (writes reach both versions' owners until every node has handed over).
//! - A replica whose storage fails (full disk, I/O errors) is degraded ([`faults`]): it applies no
//!   write, says so on heartbeats and in status, and the write goes to the other owners.
//!
//! It never panics on a request and never holds a cart lock across anything but its own write.

pub mod admin;
pub mod anti_entropy;
pub mod batcher;
pub mod clock;
pub mod cluster;
pub mod commit;
pub mod config;
pub mod coordinator;
pub mod digests;
pub mod error;
pub mod faults;
pub mod handoff;
pub mod http;
pub mod launcher;
pub mod lifecycle;
pub mod membership;
pub mod metrics;
pub mod replica;
pub mod security;
pub mod server;
pub mod service;
pub mod storage;
pub mod store;

pub use cluster::{tcp_connect, Connect};
pub use config::NodeConfig;
pub use error::NodeError;
pub use server::Node;
