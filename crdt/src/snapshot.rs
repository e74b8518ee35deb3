use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the storefront showed when the item was added: the cart keeps it so a cart can be
/// rendered without the catalogue. Built only through [`crate::validate::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemSnapshot {
    pub name: String,
    /// Unit price in the currency's minor units (cents for EUR).
    pub unit_price_minor: u64,
    /// ISO 4217 alphabetic code, upper case.
    pub currency: String,
    pub image_url: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

impl ItemSnapshot {
    /// A snapshot with no image and no attributes. Nodes validate it when it arrives.
    pub fn new(name: impl Into<String>, unit_price_minor: u64, currency: impl Into<String>) -> Self {
        ItemSnapshot {
            name: name.into(),
            unit_price_minor,
            currency: currency.into(),
            image_url: None,
            attributes: BTreeMap::new(),
        }
    }

    pub fn with_image_url(mut self, url: impl Into<String>) -> Self {
        self.image_url = Some(url.into());
        self
    }

    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Bytes the snapshot's text takes, the measure `max_snapshot_bytes` bounds.
    pub fn text_bytes(&self) -> usize {
        self.name.len()
            + self.currency.len()
            + self.image_url.as_ref().map_or(0, String::len)
            + self.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// An amount in minor units of one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub currency: String,
    pub amount_minor: i64,
}

impl Money {
    /// `2598 EUR` → `"25.98 EUR"`, using the currency's ISO 4217 exponent.
    pub fn display(&self) -> String {
        format_money(self.amount_minor, &self.currency)
    }
}

/// Formats minor units with the currency's ISO 4217 exponent (2 when unknown).
pub fn format_money(amount_minor: i64, currency: &str) -> String {
    let exponent = iso_currency::Currency::from_code(currency)
        .and_then(|c| c.exponent())
        .unwrap_or(2) as u32;
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{abs} {currency}");
    }
    let scale = 10u64.pow(exponent);
    format!(
        "{sign}{}.{:0width$} {currency}",
        abs / scale,
        abs % scale,
        width = exponent as usize
    )
}
