//! The storage and wire encoding: `[FORMAT_V3] ++ bincode2(cart)`.
//!
//! A [`Cart`] keeps every set and its context sorted, so its encoding is canonical: equal states
//! encode to equal bytes, which anti-entropy digests and the golden test rely on.
//!
//! Format 2 (before request records and the merge mark) is read and migrated: the same fields
//! without the two that format 3 appends. Format 1 (carts kept as `crdts::Orswot`s, before
//! format 2 shipped) is refused with [`CartError::UnsupportedFormat`]: no released build ever
//! wrote it.

use bincode::config::{self, Config};
use serde::de::DeserializeOwned;

use crate::cart::Cart;
use crate::error::CartError;

/// The first byte of a cart stored before request records (still read).
pub const FORMAT_V2: u8 = 2;
/// The first byte of every cart written now.
pub const FORMAT_V3: u8 = 3;
/// The first byte of a version token's bytes ([`encode_version`]).
pub const VERSION_TOKEN_V1: u8 = 1;

/// A format-2 cart: format 3 without its last two fields, and resets without `seen`.
#[derive(serde::Deserialize)]
struct CartV2 {
    context: crate::Context,
    lines: Vec<LineEntryV2>,
    saved: Vec<crate::SavedEntry>,
    coupons: Vec<crate::CouponEntry>,
    touched_at_ms: u64,
}

#[derive(serde::Deserialize)]
struct LineEntryV2 {
    product_id: crate::ProductId,
    dot: crate::Dot,
    kind: LineKindV2,
}

#[derive(serde::Deserialize)]
enum LineKindV2 {
    Snapshot(crate::ItemSnapshot),
    Total(i64),
    Reset {
        value: u64,
        base: std::collections::BTreeMap<crate::Actor, i64>,
        at_ms: u64,
    },
}

impl From<LineEntryV2> for crate::LineEntry {
    fn from(e: LineEntryV2) -> Self {
        let kind = match e.kind {
            LineKindV2::Snapshot(s) => crate::LineKind::Snapshot(s),
            LineKindV2::Total(t) => crate::LineKind::Total(t),
            // Format 2 had no request ids, so no request applied twice for `seen` to sort out.
            LineKindV2::Reset { value, base, at_ms } => crate::LineKind::Reset {
                value,
                base,
                at_ms,
                seen: Default::default(),
            },
        };
        crate::LineEntry {
            product_id: e.product_id,
            dot: e.dot,
            kind,
        }
    }
}

/// The first byte of a forwarded operation ([`encode_op`]).
pub const OP_FORMAT_V1: u8 = 1;

/// Decoding refuses anything that would allocate more than this (a corrupt length prefix).
pub const MAX_DECODE_BYTES: usize = 16 * 1024 * 1024;

fn bincode_config() -> impl Config {
    config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Encodes a cart to its canonical stored bytes, version byte first.
pub fn encode(cart: &Cart) -> Result<Vec<u8>, CartError> {
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT_V3);
    bincode::serde::encode_into_std_write(cart, &mut out, bincode_config()).map_err(encode_error)?;
    Ok(out)
}

/// Decodes bytes written by [`encode`]; refuses unknown versions and trailing bytes.
pub fn decode(bytes: &[u8]) -> Result<Cart, CartError> {
    match bytes.split_first() {
        Some((&version @ (FORMAT_V2 | FORMAT_V3), body)) => {
            let cart: Cart = if version == FORMAT_V2 {
                let old: CartV2 = decode_exact(body)?;
                let lines = old.lines.into_iter().map(crate::LineEntry::from).collect();
                Cart::from_v2(old.context, lines, old.saved, old.coupons, old.touched_at_ms)
            } else {
                decode_exact(body)?
            };
            // Merge relies on sorted containers; bytes that decode but are not sorted are corrupt.
            if !cart.is_well_formed() {
                return Err(CartError::Decode {
                    reason: "entries or context not in canonical order".into(),
                });
            }
            Ok(cart)
        }
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

/// The first byte of a catch-up's bytes ([`encode_catch_up`]).
pub const CATCH_UP_V1: u8 = 1;

/// Encodes a catch-up (a read's reply to a reader whose copy differs, see [`crate::catchup`]).
pub fn encode_catch_up(catch_up: &crate::catchup::CatchUp) -> Result<Vec<u8>, CartError> {
    let mut out = Vec::with_capacity(256);
    out.push(CATCH_UP_V1);
    bincode::serde::encode_into_std_write(catch_up, &mut out, bincode_config()).map_err(encode_error)?;
    Ok(out)
}

/// Decodes bytes written by [`encode_catch_up`]; refuses other versions, trailing bytes, unsorted
/// sets and dots beyond the catch-up's context.
pub fn decode_catch_up(bytes: &[u8]) -> Result<crate::catchup::CatchUp, CartError> {
    // Deserializing checks the form (sorted sets, dots within the context).
    match bytes.split_first() {
        Some((&CATCH_UP_V1, body)) => decode_exact(body),
        _ => Err(CartError::Decode {
            reason: "not a catch-up".into(),
        }),
    }
}

/// Encodes a cart's context (what a digest read sends and compares; sorted, so canonical).
pub fn encode_context(context: &crate::Context) -> Result<Vec<u8>, CartError> {
    bincode::serde::encode_to_vec(context, bincode_config()).map_err(encode_error)
}

/// Decodes a context written by [`encode_context`]; refuses one that is not in canonical order.
pub fn decode_context(bytes: &[u8]) -> Result<crate::Context, CartError> {
    let context: crate::Context = decode_exact(bytes)?;
    if !context.is_well_formed() {
        return Err(CartError::Decode {
            reason: "context not in canonical order".into(),
        });
    }
    Ok(context)
}

fn encode_error(e: bincode::error::EncodeError) -> CartError {
    CartError::Encode { reason: e.to_string() }
}

/// Encodes an operation for forwarding between nodes: `[OP_FORMAT_V1] ++ bincode2(op)`.
pub fn encode_op(op: &crate::CartOp) -> Result<Vec<u8>, CartError> {
    let mut out = vec![OP_FORMAT_V1];
    bincode::serde::encode_into_std_write(op, &mut out, bincode_config()).map_err(encode_error)?;
    Ok(out)
}

/// Decodes an operation written by [`encode_op`].
pub fn decode_op(bytes: &[u8]) -> Result<crate::CartOp, CartError> {
    match bytes.split_first() {
        Some((&OP_FORMAT_V1, body)) => decode_exact(body),
        Some((&version, _)) => Err(CartError::UnsupportedFormat { version }),
        None => Err(CartError::Decode {
            reason: "empty op".into(),
        }),
    }
}

/// Encodes a [`crate::Version`] as the opaque token `GetCart` returns: URL-safe base64 of
/// `[VERSION_TOKEN_V1] ++ bincode2(version)`.
pub fn encode_version(version: &crate::Version) -> Result<String, CartError> {
    use base64::Engine;
    let mut out = vec![VERSION_TOKEN_V1];
    bincode::serde::encode_into_std_write(version, &mut out, bincode_config()).map_err(encode_error)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
}

/// Decodes a version token of cart `id`; a malformed token, or one of another cart, is an
/// `INVALID_ARGUMENT` naming `field`.
pub fn decode_version(token: &str, id: &crate::CartId, field: &'static str) -> Result<crate::Version, CartError> {
    use base64::Engine;
    let bad = |reason: String| CartError::InvalidArgument { field, reason };
    if token.is_empty() {
        return Err(bad("must not be empty (take it from GetCart's cart.version)".into()));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| bad(format!("not a version token: {e}")))?;
    let version: crate::Version = match bytes.split_first() {
        Some((&VERSION_TOKEN_V1, body)) => decode_exact(body).map_err(|e| bad(format!("not a version token: {e}")))?,
        _ => return Err(bad("not a version token".into())),
    };
    if !version.context.is_well_formed() {
        return Err(bad("not a version token: context not in canonical order".into()));
    }
    if version.cart != crate::Version::cart_hash(id) {
        return Err(bad(format!("is a version of another cart, not of {id}")));
    }
    Ok(version)
}
