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

/// The encoded `FileDescriptorSet` of the public API (`cart.proto`), for gRPC server reflection.
pub const CART_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cart_descriptor.bin"));

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
/// Metadata header carrying an API token (`Bearer TOKEN`) on public and admin calls.
pub const AUTHORIZATION_HEADER: &str = "authorization";
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

/// [`OUTCOME_HEADER`] value on an error status whose operation was certainly not applied and
/// never will be (its deadline passed before any node began it): `none`.
pub const OUTCOME_NONE: &str = "none";

/// Whether `status` carries [`OUTCOME_HEADER`] = [`OUTCOME_NONE`].
pub fn outcome_none(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get(OUTCOME_HEADER)
        .is_some_and(|v| v.as_bytes() == OUTCOME_NONE.as_bytes())
}

/// Metadata header a client puts on a write attempt: its deadline, wall-clock milliseconds since
/// the Unix epoch (decimal). A node does not begin to apply a write whose deadline has passed by
/// its clock, so once the deadline (plus the clock skew between client and nodes) has passed, an
/// attempt that never answered was either applied before it or never will be.
pub const DEADLINE_HEADER: &str = "x-cartdb-deadline-ms";

/// The [`DEADLINE_HEADER`] of a request, if any; a value that is not a decimal number of
/// milliseconds is refused naming the header.
pub fn deadline_ms(metadata: &tonic::metadata::MetadataMap) -> Result<Option<u64>, cart_crdt::CartError> {
    let Some(value) = metadata.get(DEADLINE_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| cart_crdt::CartError::InvalidArgument {
            field: DEADLINE_HEADER,
            reason: "must be wall-clock milliseconds since the Unix epoch, in decimal".into(),
        })
}

/// Metadata header a node adds to replies with its membership version (hex), so clients notice
/// membership changes.
pub const MEMBERSHIP_HEADER: &str = "x-cartdb-membership";

pub use convert::{
    request_id, CartRequest, CheckoutRequest, Consistency, GetRequest, IntoDomain, MergeRequest, OrderView, Priced,
};
