//! A cart's life beyond add and remove: request ids (exactly-once writes), versions (what a
//! reader saw, for checkout and merge at login), orders, the merge mark, and expiry. All of it
//! is part of the cart's replicated state or a pure function of it.
//!
//! **Exactly-once.** Every op that carries a [`RequestId`] leaves a [`RequestEntry`] in the
//! cart (with a dot of its own, when, and its effect on a counter). A replica that holds the entry answers a
//! retry with the cart, applying nothing. A retry that reaches another owner before the first
//! attempt did can still apply twice; the merge then holds two entries of one id, and the effect
//! of every entry but the one with the lowest dot is taken back: at once in every view (the
//! quantity is shown without it) and for good by the entry's own writer, which subtracts it from
//! its running total and drops the entry in one delta. An entry is kept [`REQUEST_WINDOW_MS`]
//! and among the newest [`REQUESTS_PER_CART_MAX`] of its cart (up to [`REQUESTS_PRUNE_SLACK`]
//! more are held before the oldest go); entries of an id applied twice
//! stay until that is settled. A retry is safe within that window; a retry whose first attempt
//! reached only replicas that then stayed cut off for longer than the window may count twice.
//!
//! **Versions.** [`Version`] is what a reader saw: the cart's context and, per visible line, its
//! quantity, snapshot and the writers' running totals. Releasing a version (checkout, or the
//! guest side of a merge) removes the line entries that version saw and resets each line to
//! "what was added since": a line added or raised concurrently stays with what was added.
//!
//! **Expiry** is `touched_at + ttl + skew <= now`, from the cart's own merged state, so every
//! replica decides it alike and a stale copy can never revive a cart: it is expired too. The
//! sweeper deletes a cart with its history one skew bound later still.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::context::{Context, Dot};
use crate::error::CartError;
use crate::ids::{Actor, CartId, CouponCode, OwnerKind, ProductId};
use crate::snapshot::{ItemSnapshot, Money};

/// How long a request id is remembered: a retry within this window is answered, not applied.
pub const REQUEST_WINDOW_MS: u64 = 60 * 60 * 1000;
/// Request ids remembered per cart at most (the oldest go first). A first attempt can be applied
/// late (a node resuming from a pause, a partition's buffered connection), after its retry was
/// answered elsewhere: it must still find its record. The harness's hot carts take ~80 writes/s
/// and its faults last up to ~12 s, which 256 did not cover (an add applied 361 requests later
/// brought back an item removed meanwhile). A record is ~70 bytes: 1,024 are ~70 KiB, and only
/// a cart that takes that many requests within the hour holds them.
pub const REQUESTS_PER_CART_MAX: usize = 1024;
/// Request records a cart may hold beyond [`REQUESTS_PER_CART_MAX`] before the oldest are
/// forgotten, all at once, down to the bound: pruning sorts the records, so it runs once per
/// this many writes to a full cart rather than on every one.
pub const REQUESTS_PRUNE_SLACK: usize = REQUESTS_PER_CART_MAX / 8;
/// Checkouts remembered per cart beyond the request window (for refusing stale versions).
pub const ORDERS_KEPT: usize = 16;
/// Bytes of a request id's text.
pub const REQUEST_ID_MAX_BYTES: usize = 128;

/// A client-chosen request id, kept as a 128-bit hash of its text (fixed size in the cart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u128);

impl RequestId {
    /// Parses a request id: 1 to [`REQUEST_ID_MAX_BYTES`] bytes of printable ASCII. `field` is
    /// the field name reported on error.
    pub fn parse(raw: &str, field: &'static str) -> Result<Self, CartError> {
        if raw.is_empty() || raw.len() > REQUEST_ID_MAX_BYTES {
            return Err(CartError::invalid(
                field,
                format!("must be 1 to {REQUEST_ID_MAX_BYTES} bytes, got {}", raw.len()),
            ));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CartError::invalid(field, "must be printable ASCII without spaces"));
        }
        Ok(RequestId(xxhash_rust::xxh3::xxh3_128(raw.as_bytes())))
    }

    /// An id derived from several parts (the steps of a merge derive theirs from what they read).
    pub fn derived(parts: &[&[u8]]) -> Self {
        let mut bytes = Vec::new();
        for part in parts {
            bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
            bytes.extend_from_slice(part);
        }
        RequestId(xxhash_rust::xxh3::xxh3_128(&bytes))
    }
}

/// What an applied request did that a second application would repeat.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Effect {
    None,
    /// Added `n` (signed) to the writer's running total of the line, in the `Total` entry with
    /// counter `total`.
    Added {
        product_id: ProductId,
        n: i64,
        total: u64,
    },
    /// A checkout, and the order it returned.
    Order(Order),
}

/// One applied request: its id, its own dot (never the op's), when, and its effect.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestEntry {
    pub id: RequestId,
    pub dot: Dot,
    pub at_ms: u64,
    pub effect: Effect,
}

impl crate::cart::Dotted for RequestEntry {
    fn dot(&self) -> Dot {
        self.dot
    }

    fn key(&self) -> (u128, Dot) {
        (self.id.0, self.dot)
    }
}

/// A line of an order, as the customer saw it at the version checked out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderLine {
    pub product_id: ProductId,
    pub quantity: u64,
    pub snapshot: ItemSnapshot,
}

/// What a checkout took out of the cart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Order {
    /// Sorted by product id.
    pub lines: Vec<OrderLine>,
    pub coupons: Vec<CouponCode>,
    /// The cart's last change at the version checked out.
    pub version_at_ms: u64,
}

impl Order {
    /// Σ quantity × unit price per currency, sorted by currency code.
    pub fn totals(&self) -> Vec<Money> {
        let mut totals: BTreeMap<&str, i128> = BTreeMap::new();
        for line in &self.lines {
            *totals.entry(&line.snapshot.currency).or_default() +=
                i128::from(line.quantity) * i128::from(line.snapshot.unit_price_minor);
        }
        totals
            .into_iter()
            .map(|(currency, amount)| Money {
                currency: currency.to_owned(),
                amount_minor: i64::try_from(amount).unwrap_or(i64::MAX),
            })
            .collect()
    }
}

/// A visible line as a reader saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionLine {
    pub product_id: ProductId,
    pub quantity: u64,
    pub snapshot: ItemSnapshot,
    /// Each writer's running total of the line then: what "added since" is measured from.
    pub totals: BTreeMap<Actor, i64>,
    /// The counters of those totals' entries.
    pub seen: BTreeMap<Actor, u64>,
}

/// A saved-for-later item as a reader saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSaved {
    pub product_id: ProductId,
    pub quantity: u64,
    pub snapshot: ItemSnapshot,
}

/// What a reader saw of one cart (see the module doc). Encoded as an opaque token with
/// [`crate::codec::encode_version`]; its size grows with the cart's lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// xxh3 of the cart id: a version of another cart is refused.
    pub cart: u64,
    /// The cart's last change at that version (`touched_at_ms`).
    pub at_ms: u64,
    pub context: Context,
    pub lines: Vec<VersionLine>,
    pub saved: Vec<VersionSaved>,
    pub coupons: Vec<CouponCode>,
}

impl Version {
    pub fn cart_hash(id: &CartId) -> u64 {
        xxhash_rust::xxh3::xxh3_64(id.as_str().as_bytes())
    }

    /// Whether the reader saw nothing to take (no line, saved item or coupon).
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.saved.is_empty() && self.coupons.is_empty()
    }

    /// The order a checkout of this version returns.
    pub fn order(&self) -> Order {
        Order {
            lines: self
                .lines
                .iter()
                .map(|l| OrderLine {
                    product_id: l.product_id.clone(),
                    quantity: l.quantity,
                    snapshot: l.snapshot.clone(),
                })
                .collect(),
            coupons: self.coupons.clone(),
            version_at_ms: self.at_ms,
        }
    }
}

/// How a guest cart joins the user's at login (commercetools' modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MergeMode {
    /// Guest lines join the user's; a product in both takes the larger quantity; saved items and
    /// coupons are carried over.
    Merge,
    /// The guest cart's lines and coupons replace the user's (saved items are carried over).
    Replace,
}

/// The guest cart was merged into `into` at `at_ms` (the latest merge wins).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MergedInto {
    pub at_ms: u64,
    pub into: CartId,
}

/// How long carts live after their last change, and the clock skew tolerated between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiry {
    pub guest_ttl_ms: u64,
    pub user_ttl_ms: u64,
    /// Nodes' clocks may differ by this much: a cart expires this long after its ttl, so a node
    /// whose clock is ahead by less never expires a cart another node still writes to.
    pub skew_ms: u64,
}

impl Expiry {
    pub const DEFAULT: Expiry = Expiry {
        guest_ttl_ms: 7 * 24 * 60 * 60 * 1000,
        user_ttl_ms: 90 * 24 * 60 * 60 * 1000,
        skew_ms: 5 * 60 * 1000,
    };

    /// Never expires (tests of other things, and `ttl = 0` in the config).
    pub const NEVER: Expiry = Expiry {
        guest_ttl_ms: 0,
        user_ttl_ms: 0,
        skew_ms: 0,
    };

    /// The ttl of a cart id's kind; 0 means its carts never expire.
    pub fn ttl_ms(&self, owner: OwnerKind) -> u64 {
        match owner {
            OwnerKind::Guest => self.guest_ttl_ms,
            OwnerKind::User => self.user_ttl_ms,
        }
    }

    /// When the cart reads as empty from: `touched_at + ttl + skew`; `None` for a cart never
    /// written or a kind without ttl.
    pub fn expires_at_ms(&self, id: &CartId, touched_at_ms: u64) -> Option<u64> {
        let ttl = self.ttl_ms(id.owner());
        (ttl > 0 && touched_at_ms > 0).then(|| touched_at_ms.saturating_add(ttl).saturating_add(self.skew_ms))
    }

    /// Whether a cart last touched at `touched_at_ms` has expired at `now_ms`: a pure function
    /// of the cart's merged state and the clock.
    pub fn expired(&self, id: &CartId, touched_at_ms: u64, now_ms: u64) -> bool {
        self.expires_at_ms(id, touched_at_ms).is_some_and(|at| at <= now_ms)
    }

    /// Whether an expired cart may be deleted with its history (the sweeper): one more skew
    /// bound later, when every node whose clock is within the bound reads it as expired too.
    pub fn forgettable(&self, id: &CartId, touched_at_ms: u64, now_ms: u64) -> bool {
        self.expires_at_ms(id, touched_at_ms)
            .is_some_and(|at| at.saturating_add(self.skew_ms) <= now_ms)
    }
}
