//! `cart-proto`: the wire contract of cartdb and the one place wire and domain types meet.
//!
//! - [`pb`] is generated from `proto/*.proto` at build time with `protox` (no system `protoc`).
//! - [`convert`] turns untrusted requests into validated domain requests ([`CartRequest`]) or a
//!   [`cart_crdt::CartError`] naming the bad field, and turns the domain read model back into
//!   wire messages.
//!
//! - [`hedge`] holds the tail-latency tools (hedge delay, hedge budget, outlier ejection) that
//!   `cart-client` and the node's coordinator share.
//!
//! This crate holds no business logic: what an operation *does* lives in `cart-crdt` and
//! `cart-node`.

pub mod convert;
pub mod hedge;

/// Generated protobuf messages and tonic services of the public API (`cartdb.v1`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("cartdb.v1");
}

/// The internal node-to-node API (`cartdb.replica.v1`).
pub mod replica_pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("cartdb.replica.v1");
}

/// The admin API (`cartdb.admin.v1`).
pub mod admin_pb {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/admin/cartdb.admin.v1.rs"));
}

/// Metadata header carrying the cluster secret on internal calls.
pub const SECRET_HEADER: &str = "x-cartdb-secret";
/// Metadata header on an error status whose operation may nevertheless have been applied (a write
/// that missed its quorum): value `unknown`. Such a write must not be retried elsewhere, or it
/// could count twice; without the header, `UNAVAILABLE` means the operation was not applied.
pub const OUTCOME_HEADER: &str = "x-cartdb-outcome";

/// Whether `status` carries [`OUTCOME_HEADER`] = `unknown`.
pub fn outcome_unknown(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get(OUTCOME_HEADER)
        .is_some_and(|v| v.as_bytes() == b"unknown")
}

/// Metadata header a node adds to replies with its membership version (hex), so clients notice
/// membership changes.
pub const MEMBERSHIP_HEADER: &str = "x-cartdb-membership";

pub use convert::{
    request_id, CartRequest, CheckoutRequest, Consistency, GetRequest, IntoDomain, MergeRequest, OrderView,
};
