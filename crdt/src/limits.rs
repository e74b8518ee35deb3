use serde::{Deserialize, Serialize};

/// Documented bounds on everything a request can make a node hold. Each has a default (used when
/// the config says nothing) and a hard ceiling (a config asking for more is refused), so a cart
/// and a request stay small enough to copy on every write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Distinct products in the cart's lines.
    pub max_lines_per_cart: usize,
    /// Distinct products saved for later.
    pub max_saved_per_cart: usize,
    /// Coupons applied at once.
    pub max_coupons_per_cart: usize,
    /// Bytes of a cart id, product id or coupon code.
    pub max_id_bytes: usize,
    /// Bytes of an item snapshot (name, currency, image url and attributes together).
    pub max_snapshot_bytes: usize,
    /// Attributes of one snapshot.
    pub max_attributes: usize,
    /// Quantity of one line.
    pub max_quantity: u64,
    /// Unit price in minor units (cents).
    pub max_unit_price_minor: u64,
    /// Bytes of one gRPC message, enforced by the transport.
    pub max_message_bytes: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_lines_per_cart: 200,
        max_saved_per_cart: 200,
        max_coupons_per_cart: 20,
        max_id_bytes: 128,
        max_snapshot_bytes: 8 * 1024,
        max_attributes: 32,
        max_quantity: 10_000,
        max_unit_price_minor: 1_000_000_000_000,
        max_message_bytes: 2 * 1024 * 1024,
    };

    /// The largest value a config may set for each limit.
    pub const CEILING: Limits = Limits {
        max_lines_per_cart: 2_000,
        max_saved_per_cart: 2_000,
        max_coupons_per_cart: 200,
        max_id_bytes: 1_024,
        max_snapshot_bytes: 64 * 1024,
        max_attributes: 256,
        max_quantity: 1_000_000,
        max_unit_price_minor: 1_000_000_000_000,
        max_message_bytes: 16 * 1024 * 1024,
    };

    /// Checks every limit is at least 1 and at most its ceiling; the error names the limit.
    pub fn check(&self) -> Result<(), String> {
        let c = &Self::CEILING;
        let pairs: [(&str, u64, u64); 9] = [
            (
                "max_lines_per_cart",
                self.max_lines_per_cart as u64,
                c.max_lines_per_cart as u64,
            ),
            (
                "max_saved_per_cart",
                self.max_saved_per_cart as u64,
                c.max_saved_per_cart as u64,
            ),
            (
                "max_coupons_per_cart",
                self.max_coupons_per_cart as u64,
                c.max_coupons_per_cart as u64,
            ),
            ("max_id_bytes", self.max_id_bytes as u64, c.max_id_bytes as u64),
            (
                "max_snapshot_bytes",
                self.max_snapshot_bytes as u64,
                c.max_snapshot_bytes as u64,
            ),
            ("max_attributes", self.max_attributes as u64, c.max_attributes as u64),
            ("max_quantity", self.max_quantity, c.max_quantity),
            (
                "max_unit_price_minor",
                self.max_unit_price_minor,
                c.max_unit_price_minor,
            ),
            (
                "max_message_bytes",
                self.max_message_bytes as u64,
                c.max_message_bytes as u64,
            ),
        ];
        for (name, value, ceiling) in pairs {
            if value == 0 || value > ceiling {
                return Err(format!("limits.{name} = {value} must be between 1 and {ceiling}"));
            }
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
