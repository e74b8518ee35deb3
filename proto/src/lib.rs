//! `cart-proto`: the wire contract of cartdb and the one place wire and domain types meet.
//!
//! - [`pb`] is generated from `proto/*.proto` at build time with `protox` (no system `protoc`).
//! - [`convert`] turns untrusted requests into validated domain requests ([`CartRequest`]) or a
//!   [`cart_crdt::CartError`] naming the bad field, and turns the domain read model back into
//!   wire messages.
//!
//! This crate holds no business logic: what an operation *does* lives in `cart-crdt` and
//! `cart-node`.

pub mod convert;

/// Generated protobuf messages and tonic services (`cartdb.v1`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("cartdb.v1");
}

pub use convert::{CartRequest, Consistency, GetRequest, IntoDomain};
