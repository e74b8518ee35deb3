//! Helpers shared by the `cart-crdt` integration tests: ids, snapshots and a tiny replica.
//!
//! Each test file uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::BTreeMap;

use cart_crdt::validate::{self, SnapshotInput};
use cart_crdt::{
    codec, Actor, Cart, CartDelta, CartError, CartId, CartOp, CartView, CouponCode, ItemSnapshot, Limits, ProductId,
    WriteCtx,
};

pub const LIMITS: Limits = Limits::DEFAULT;

pub fn pid(raw: &str) -> ProductId {
    ProductId::parse(raw, &LIMITS).expect("valid product id")
}

pub fn code(raw: &str) -> CouponCode {
    CouponCode::parse(raw, &LIMITS).expect("valid coupon code")
}

pub fn cart_id() -> CartId {
    CartId::parse("user:42", &LIMITS).expect("valid cart id")
}

/// A snapshot built through the same validation the server uses.
pub fn snap(name: &str, unit_price_minor: i64, currency: &str) -> ItemSnapshot {
    validate::snapshot(
        SnapshotInput {
            name: name.into(),
            unit_price_minor,
            currency: currency.into(),
            image_url: String::new(),
            attributes: BTreeMap::new(),
        },
        &LIMITS,
    )
    .expect("valid snapshot")
}

pub fn add(product: &str, quantity: u64) -> CartOp {
    CartOp::AddItem {
        product_id: pid(product),
        quantity,
        snapshot: snap(&format!("Item {product}"), 1299, "EUR"),
    }
}

pub fn set(product: &str, quantity: u64) -> CartOp {
    CartOp::SetQuantity {
        product_id: pid(product),
        quantity,
    }
}

pub fn adjust(product: &str, delta: i64) -> CartOp {
    CartOp::AdjustQuantity {
        product_id: pid(product),
        delta,
    }
}

pub fn remove(product: &str) -> CartOp {
    CartOp::RemoveItem {
        product_id: pid(product),
    }
}

/// Canonical stored bytes of a cart.
pub fn enc(cart: &Cart) -> Vec<u8> {
    codec::encode(cart).expect("a cart in memory always encodes")
}

/// `a ⊔ b` without touching the inputs.
pub fn merged(a: &Cart, b: &Cart) -> Cart {
    let mut out = a.clone();
    out.merge(b.clone());
    out
}

/// One node's copy of the cart: an actor, a clock and the state.
#[derive(Debug, Clone)]
pub struct Replica {
    pub actor: Actor,
    pub now_ms: u64,
    pub cart: Cart,
}

impl Replica {
    pub fn new(actor: u64) -> Self {
        Replica {
            actor: Actor(actor),
            now_ms: 1_700_000_000_000,
            cart: Cart::default(),
        }
    }

    /// Applies `op` with a clock that ticks 1 ms per write.
    pub fn apply(&mut self, op: &CartOp) -> Result<CartDelta, CartError> {
        self.apply_with(&LIMITS, op)
    }

    pub fn apply_with(&mut self, limits: &Limits, op: &CartOp) -> Result<CartDelta, CartError> {
        self.apply_request(limits, op, None)
    }

    /// Applies `op` carrying a request id, as a node does: a request this replica has seen is
    /// not applied again (`Ok(None)`).
    pub fn apply_request(
        &mut self,
        limits: &Limits,
        op: &CartOp,
        request: Option<cart_crdt::RequestId>,
    ) -> Result<CartDelta, CartError> {
        self.now_ms += 1;
        let ctx = WriteCtx {
            actor: self.actor,
            now_ms: self.now_ms,
            limits,
            request,
        };
        self.cart.apply(&ctx, op)
    }

    /// Applies an op that must succeed.
    pub fn ok(&mut self, op: CartOp) -> &mut Self {
        if let Err(e) = self.apply(&op) {
            panic!("{op:?} on {:?} failed: {e}", self.actor);
        }
        self
    }

    pub fn merge_from(&mut self, other: &Replica) {
        self.cart.merge(other.cart.clone());
    }

    pub fn view(&self) -> CartView {
        self.cart.view(&cart_id())
    }

    /// The visible quantity of a line, `None` when the line is not shown.
    pub fn quantity(&self, product: &str) -> Option<u64> {
        quantity_of(&self.view(), product)
    }
}

pub fn quantity_of(view: &CartView, product: &str) -> Option<u64> {
    view.lines.iter().find(|l| l.product_id == product).map(|l| l.quantity)
}

/// Lower-case hex of bytes (no extra dev-dependency needed).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// A small deterministic PRNG (splitmix64) for tests that want fixed pseudo-random schedules.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
