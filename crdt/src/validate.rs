//! Checks of untrusted input, shared by the server (authoritative) and the client (early, kind
//! errors). Every error names the field as the public API spells it.

use std::collections::BTreeMap;

use crate::error::CartError;
use crate::limits::Limits;
use crate::snapshot::ItemSnapshot;

/// A quantity for AddItem / MoveToCart: at least 1, at most `max_quantity`.
pub fn add_quantity(quantity: i64, limits: &Limits) -> Result<u64, CartError> {
    if quantity < 1 {
        return Err(CartError::invalid("quantity", format!("{quantity} must be at least 1")));
    }
    bounded_quantity(quantity, limits)
}

/// A quantity for SetQuantity: 0 removes the line.
pub fn set_quantity(quantity: i64, limits: &Limits) -> Result<u64, CartError> {
    if quantity < 0 {
        return Err(CartError::invalid(
            "quantity",
            format!("{quantity} must not be negative"),
        ));
    }
    bounded_quantity(quantity, limits)
}

/// A delta for AdjustQuantity: non-zero, at most `max_quantity` either way.
pub fn adjust_delta(delta: i64, limits: &Limits) -> Result<i64, CartError> {
    if delta == 0 {
        return Err(CartError::invalid("delta", "must not be 0"));
    }
    if delta.unsigned_abs() > limits.max_quantity {
        return Err(CartError::invalid(
            "delta",
            format!("{delta} exceeds the limit of ±{}", limits.max_quantity),
        ));
    }
    Ok(delta)
}

fn bounded_quantity(quantity: i64, limits: &Limits) -> Result<u64, CartError> {
    let q = quantity as u64;
    if q > limits.max_quantity {
        return Err(CartError::invalid(
            "quantity",
            format!("{quantity} exceeds the limit of {}", limits.max_quantity),
        ));
    }
    Ok(q)
}

/// The raw parts of a snapshot as they arrive on the wire.
pub struct SnapshotInput {
    pub name: String,
    pub unit_price_minor: i64,
    pub currency: String,
    pub image_url: String,
    pub attributes: BTreeMap<String, String>,
}

/// Builds a valid [`ItemSnapshot`] or names the first bad field (`snapshot.<field>`).
pub fn snapshot(input: SnapshotInput, limits: &Limits) -> Result<ItemSnapshot, CartError> {
    let snapshot = ItemSnapshot {
        name: input.name,
        unit_price_minor: 0,
        currency: input.currency,
        image_url: (!input.image_url.is_empty()).then_some(input.image_url),
        attributes: input.attributes,
    };
    // Size first: a 1 MiB snapshot is refused as too big, whatever else is wrong with it.
    let bytes = snapshot.text_bytes();
    if bytes > limits.max_snapshot_bytes {
        return Err(CartError::invalid(
            "snapshot",
            format!("is {bytes} bytes; the limit is {}", limits.max_snapshot_bytes),
        ));
    }
    if snapshot.name.trim().is_empty() {
        return Err(CartError::invalid("snapshot.name", "must not be empty"));
    }
    if snapshot.name.chars().any(char::is_control) {
        return Err(CartError::invalid(
            "snapshot.name",
            "must not contain control characters",
        ));
    }
    let price = input.unit_price_minor;
    if price < 0 {
        return Err(CartError::invalid(
            "snapshot.unit_price_minor",
            format!("{price} must not be negative"),
        ));
    }
    if price as u64 > limits.max_unit_price_minor {
        return Err(CartError::invalid(
            "snapshot.unit_price_minor",
            format!("{price} exceeds the limit of {}", limits.max_unit_price_minor),
        ));
    }
    currency(&snapshot.currency)?;
    if let Some(url) = &snapshot.image_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains(char::is_whitespace) {
            return Err(CartError::invalid(
                "snapshot.image_url",
                "must be an http(s) URL without spaces",
            ));
        }
    }
    if snapshot.attributes.len() > limits.max_attributes {
        return Err(CartError::invalid(
            "snapshot.attributes",
            format!(
                "has {} entries; the limit is {}",
                snapshot.attributes.len(),
                limits.max_attributes
            ),
        ));
    }
    if snapshot.attributes.keys().any(|k| k.trim().is_empty()) {
        return Err(CartError::invalid("snapshot.attributes", "keys must not be empty"));
    }
    Ok(ItemSnapshot {
        unit_price_minor: price as u64,
        ..snapshot
    })
}

/// An ISO 4217 alphabetic code in upper case (`EUR`, `JPY`).
pub fn currency(code: &str) -> Result<(), CartError> {
    let field = "snapshot.currency";
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(CartError::invalid(
            field,
            format!("{code:?} must be three upper-case letters (ISO 4217)"),
        ));
    }
    if iso_currency::Currency::from_code(code).is_none() {
        return Err(CartError::invalid(
            field,
            format!("{code:?} is not an ISO 4217 currency"),
        ));
    }
    Ok(())
}
