//! `cart-client`: the async Rust client storefronts use to talk to cartdb, and the `cartctl` CLI.
//!
//! Contract:
//! - [`CartClient::connect`] takes one or more `HOST:PORT` endpoints. Each call goes to an
//!   endpoint chosen by the cart id (the same cart sticks to the same node) and, when that node
//!   answers `UNAVAILABLE` or cannot be reached, is retried on the next endpoint with exponential
//!   backoff and jitter, up to [`ClientOptions::max_attempts`].
//! - Every call carries a deadline ([`ClientOptions::request_timeout`]). Reads are retried after a
//!   timeout; writes are not, since their outcome is unknown (an add may have been applied).
//! - Results are the domain read model ([`cart_crdt::CartView`]); errors keep the gRPC code and the
//!   server's message, which names the offending field.
//!
//! A note on retries: `UNAVAILABLE` normally means the request never reached a node, but a
//! connection that breaks after the server applied an add also surfaces as `UNAVAILABLE`, so in
//! that rare case a retried AddItem can count twice.
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

pub use cart_crdt::{CartView, ItemSnapshot, LineView, Money, SavedView};
pub use cart_proto::Consistency;
pub use client::{CartClient, ClientError, ClientOptions};
