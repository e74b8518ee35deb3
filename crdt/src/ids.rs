use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::CartError;
use crate::limits::Limits;

/// A writer identity: one node incarnation. A node draws a fresh random actor when it starts on
/// an empty data directory, so a node that lost its disk never reuses dots it handed out before.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor(pub u64);

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Who owns a cart, read from the cart id's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerKind {
    User,
    Guest,
}

/// A validated cart id: `user:<id>` or `guest:<session>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CartId(String);

impl CartId {
    pub fn parse(raw: &str, limits: &Limits) -> Result<Self, CartError> {
        let field = "cart_id";
        let rest = raw
            .strip_prefix("user:")
            .or_else(|| raw.strip_prefix("guest:"))
            .ok_or_else(|| {
                if raw.is_empty() {
                    CartError::invalid(field, "must not be empty")
                } else {
                    CartError::invalid(field, format!("{raw:?} must start with \"user:\" or \"guest:\""))
                }
            })?;
        if rest.is_empty() {
            return Err(CartError::invalid(field, "the part after the prefix must not be empty"));
        }
        check_token(field, raw, limits.max_id_bytes)?;
        Ok(CartId(raw.to_owned()))
    }

    pub fn owner(&self) -> OwnerKind {
        if self.0.starts_with("user:") {
            OwnerKind::User
        } else {
            OwnerKind::Guest
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CartId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated product id (SKU): printable ASCII without spaces, at most `max_id_bytes`.
///
/// Shared text: a cart repeats its product ids in many entries (each line's snapshot, running
/// totals and resets, and a request record per write), and a write to a cart a reader still
/// holds copies the whole cart, so a copy is a reference count, not an allocation. Encoded as
/// the text itself, like a `String` (the storage and wire formats do not change).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProductId(Arc<str>);

impl ProductId {
    pub fn parse(raw: &str, limits: &Limits) -> Result<Self, CartError> {
        check_token("product_id", raw, limits.max_id_bytes)?;
        Ok(ProductId(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for ProductId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct("ProductId", &*self.0)
    }
}

impl<'de> Deserialize<'de> for ProductId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Takes the text as borrowed or owned, whichever the format gives, or the newtype.
        struct Text;

        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = ProductId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a product id")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ProductId, E> {
                Ok(ProductId(Arc::from(v)))
            }

            fn visit_newtype_struct<D: Deserializer<'de>>(self, inner: D) -> Result<ProductId, D::Error> {
                inner.deserialize_str(Text)
            }
        }

        deserializer.deserialize_newtype_struct("ProductId", Text)
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated coupon code: printable ASCII without spaces, at most `max_id_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CouponCode(String);

impl CouponCode {
    pub fn parse(raw: &str, limits: &Limits) -> Result<Self, CartError> {
        check_token("code", raw, limits.max_id_bytes)?;
        Ok(CouponCode(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CouponCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ids are opaque tokens: non-empty, bounded, printable ASCII with no whitespace, so they are
/// safe to print, log and use as storage keys.
fn check_token(field: &'static str, raw: &str, max_bytes: usize) -> Result<(), CartError> {
    if raw.is_empty() {
        return Err(CartError::invalid(field, "must not be empty"));
    }
    if raw.len() > max_bytes {
        return Err(CartError::invalid(
            field,
            format!("is {} bytes; the limit is {max_bytes}", raw.len()),
        ));
    }
    if let Some(bad) = raw.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(CartError::invalid(
            field,
            format!("contains {bad:?}; only printable ASCII without spaces is allowed"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared text encodes exactly as the `String` it replaced (stored carts and peer
    /// messages stay readable both ways), and decodes from it.
    #[test]
    fn a_product_id_encodes_as_its_text_did() {
        #[derive(Serialize, Deserialize)]
        struct Before(String);
        let id = ProductId::parse("sku-42", &Limits::DEFAULT).unwrap();
        let config = bincode::config::standard();
        let now = bincode::serde::encode_to_vec(&id, config).unwrap();
        let before = bincode::serde::encode_to_vec(Before("sku-42".into()), config).unwrap();
        assert_eq!(now, before);
        let (back, _): (ProductId, usize) = bincode::serde::decode_from_slice(&before, config).unwrap();
        assert_eq!(back, id);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"sku-42\"");
        assert_eq!(serde_json::from_str::<ProductId>("\"sku-42\"").unwrap(), id);
        assert!(serde_json::from_str::<ProductId>("42").is_err());
        // Ordered and hashed as the text.
        let other = ProductId::parse("sku-5", &Limits::DEFAULT).unwrap();
        assert_eq!(id.cmp(&other), "sku-42".cmp("sku-5"));
    }
}
