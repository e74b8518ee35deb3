//! The storage and wire encoding: `[FORMAT_V2] ++ bincode2(cart)`.
//!
//! A [`Cart`] keeps every set and its context sorted, so its encoding is canonical: equal states
//! encode to equal bytes, which anti-entropy digests and the golden test rely on.
//!
//! Format 1 (carts kept as `crdts::Orswot`s, before this format shipped) is refused with
//! [`CartError::UnsupportedFormat`]: no released build ever wrote it.

use bincode::config::{self, Config};
use serde::de::DeserializeOwned;

use crate::cart::Cart;
use crate::error::CartError;

/// The first byte of every stored cart.
pub const FORMAT_V2: u8 = 2;

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
    out.push(FORMAT_V2);
    bincode::serde::encode_into_std_write(cart, &mut out, bincode_config()).map_err(encode_error)?;
    Ok(out)
}

/// Decodes bytes written by [`encode`]; refuses unknown versions and trailing bytes.
pub fn decode(bytes: &[u8]) -> Result<Cart, CartError> {
    match bytes.split_first() {
        Some((&FORMAT_V2, body)) => {
            let cart: Cart = decode_exact(body)?;
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
