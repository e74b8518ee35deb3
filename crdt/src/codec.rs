//! The storage and wire encoding: `[FORMAT_V1] ++ bincode2(cart)`.
//!
//! `crdts` keeps members in `HashMap`s, so the same state can serialise to different bytes.
//! [`encode`] writes the canonical form, which sorts every map and set; bincode writes a sorted map
//! exactly as it writes the original, so canonical bytes are valid format-1 bytes too. Equal states
//! encode to equal canonical bytes, which anti-entropy digests and the golden test rely on.
//! [`encode_unordered`] skips the sorting (one serialisation instead of three) for the hot paths
//! that store or ship a cart; compare such carts with `==`, never by their bytes.

use std::collections::BTreeMap;

use bincode::config::{self, Config};
use crdts::VClock;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cart::{Cart, LineEntry, SavedEntry};
use crate::error::CartError;
use crate::ids::{Actor, CouponCode};

/// The first byte of every stored cart.
pub const FORMAT_V1: u8 = 1;

/// Decoding refuses anything that would allocate more than this (a corrupt length prefix).
pub const MAX_DECODE_BYTES: usize = 16 * 1024 * 1024;

fn bincode_config() -> impl Config {
    config::standard().with_limit::<MAX_DECODE_BYTES>()
}

#[derive(Serialize, Deserialize)]
struct CanonicalSet<M: Ord> {
    clock: VClock<Actor>,
    entries: BTreeMap<M, VClock<Actor>>,
    deferred: Vec<(VClock<Actor>, Vec<M>)>,
}

#[derive(Serialize, Deserialize)]
struct CanonicalCart {
    lines: CanonicalSet<LineEntry>,
    saved: CanonicalSet<SavedEntry>,
    coupons: CanonicalSet<CouponCode>,
    touched_at_ms: u64,
}

/// Encodes a cart to its canonical stored bytes, version byte first.
pub fn encode(cart: &Cart) -> Result<Vec<u8>, CartError> {
    let canonical = CanonicalCart {
        lines: canonical_set(&cart.lines)?,
        saved: canonical_set(&cart.saved)?,
        coupons: canonical_set(&cart.coupons)?,
        touched_at_ms: cart.touched_at_ms,
    };
    let mut out = vec![FORMAT_V1];
    bincode::serde::encode_into_std_write(&canonical, &mut out, bincode_config()).map_err(encode_error)?;
    Ok(out)
}

/// Encodes a cart in map order (not canonical): the same format, for storage and replication.
pub fn encode_unordered(cart: &Cart) -> Result<Vec<u8>, CartError> {
    let mut out = vec![FORMAT_V1];
    bincode::serde::encode_into_std_write(cart, &mut out, bincode_config()).map_err(encode_error)?;
    Ok(out)
}

/// Decodes bytes written by [`encode`] or [`encode_unordered`]; refuses unknown versions and
/// trailing bytes.
pub fn decode(bytes: &[u8]) -> Result<Cart, CartError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => decode_exact(body),
        Some((&version, _)) => Err(CartError::UnsupportedFormat { version }),
        None => Err(CartError::Decode {
            reason: "empty value".into(),
        }),
    }
}

fn decode_exact<T: DeserializeOwned>(body: &[u8]) -> Result<T, CartError> {
    let (value, used) = bincode::serde::decode_from_slice(body, bincode_config())
        .map_err(|e| CartError::Decode { reason: e.to_string() })?;
    if used != body.len() {
        return Err(CartError::Decode {
            reason: format!("{} trailing bytes", body.len() - used),
        });
    }
    Ok(value)
}

/// Sorts an `Orswot` by passing it through its own serde shape into sorted containers.
fn canonical_set<M>(set: &crdts::Orswot<M, Actor>) -> Result<CanonicalSet<M>, CartError>
where
    M: Ord + std::hash::Hash + Serialize + DeserializeOwned,
{
    let raw = bincode::serde::encode_to_vec(set, bincode_config()).map_err(encode_error)?;
    let mut canonical: CanonicalSet<M> = decode_exact(&raw)?;
    for (_, members) in canonical.deferred.iter_mut() {
        members.sort();
    }
    canonical
        .deferred
        .sort_by(|(a, _), (b, _)| a.dots.iter().cmp(b.dots.iter()));
    Ok(canonical)
}

fn encode_error(e: bincode::error::EncodeError) -> CartError {
    CartError::Encode { reason: e.to_string() }
}

/// Encodes an operation for forwarding between nodes: `[FORMAT_V1] ++ bincode2(op)`.
pub fn encode_op(op: &crate::CartOp) -> Result<Vec<u8>, CartError> {
    let mut out = vec![FORMAT_V1];
    bincode::serde::encode_into_std_write(op, &mut out, bincode_config()).map_err(encode_error)?;
    Ok(out)
}

/// Decodes an operation written by [`encode_op`].
pub fn decode_op(bytes: &[u8]) -> Result<crate::CartOp, CartError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => decode_exact(body),
        Some((&version, _)) => Err(CartError::UnsupportedFormat { version }),
        None => Err(CartError::Decode {
            reason: "empty op".into(),
        }),
    }
}
