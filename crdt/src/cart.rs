use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::context::{Context, Dot};
use crate::error::CartError;
use crate::ids::{Actor, CartId, CouponCode, ProductId};
use crate::lifecycle::{
    Effect, MergeMode, MergedInto, Order, RequestEntry, RequestId, Version, ORDERS_KEPT, REQUESTS_PER_CART_MAX,
    REQUESTS_PRUNE_SLACK, REQUEST_WINDOW_MS,
};
use crate::limits::Limits;
use crate::snapshot::ItemSnapshot;
use crate::view::{self, CartView};

/// A removed line leaves its counter entries behind (a few dozen bytes per writing node) so that
/// a concurrent add on another replica still counts from the right base. After this long without
/// a snapshot they are dropped, like Cassandra's `gc_grace_seconds`: only a replica partitioned
/// for longer than this could then bring back quantity it had added before the remove.
pub const RESIDUE_GRACE_MS: u64 = 24 * 60 * 60 * 1000;

/// How often (in a cart's clock) a write looks for residue to drop.
const RESIDUE_SCAN_MS: u64 = 60 * 60 * 1000;

/// What one line entry says. Entries are write-once: a change adds a new entry and removes the
/// observed ones it supersedes.
///
/// The quantity is a counter with observed resets: each node keeps one running `Total` of the
/// quantity it added (replacing its own previous `Total` on each write), and a set or remove
/// writes a `Reset` recording the totals it observed. Then
/// `quantity = max over Resets of (value + Σ_node (total − base))`, or `Σ total` with no Reset,
/// shown clamped at 0. The size is bounded by the number of writing nodes, not of operations.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LineKind {
    Snapshot(ItemSnapshot),
    /// The writing node's (`dot.actor`) running total of quantity changes to this line.
    Total(i64),
    /// The quantity was set to `value` (0 for a remove) having observed these totals.
    Reset {
        value: u64,
        base: BTreeMap<Actor, i64>,
        at_ms: u64,
        /// The counter of each writer's `Total` entry observed (what `base` holds): a request
        /// applied twice is counted against the resets that observed each application.
        seen: BTreeMap<Actor, u64>,
    },
    /// What the catalogue says of the product now (`RefreshItems`); the line keeps its add-time
    /// snapshot beside it. Of concurrent ones, the highest catalogue version shows.
    Refresh(Refresh),
}

/// A product's current data pushed by the storefront or catalogue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Refresh {
    /// The catalogue's version of this data: a refresh never replaces a newer one.
    pub catalog_version: u64,
    pub snapshot: ItemSnapshot,
    /// False: the line is kept but out of the totals.
    pub available: bool,
}

/// One product of a `RefreshItems`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshItem {
    pub product_id: ProductId,
    pub refresh: Refresh,
}

/// One write-once entry of a line, carrying the dot it was added with so that two entries with
/// equal content are still distinct members.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LineEntry {
    pub product_id: ProductId,
    pub dot: Dot,
    pub kind: LineKind,
}

/// An item saved for later, with the quantity it had in the cart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SavedEntry {
    pub product_id: ProductId,
    pub dot: Dot,
    pub snapshot: ItemSnapshot,
    pub quantity: u64,
}

/// An applied coupon code (one entry per assertion; the code shows while any entry is present).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CouponEntry {
    pub code: CouponCode,
    pub dot: Dot,
}

/// An entry of one of the cart's add-wins sets: write-once, identified by its own dot.
pub(crate) trait Dotted {
    fn dot(&self) -> Dot;
    /// The order entries are kept in: by dot, unless a set needs another (request records are
    /// kept by request id, so the applications of one id sit together). Equal dots give equal
    /// keys (entries are write-once).
    fn key(&self) -> (u128, Dot) {
        (0, self.dot())
    }
}

impl Dotted for LineEntry {
    fn dot(&self) -> Dot {
        self.dot
    }
}

impl Dotted for SavedEntry {
    fn dot(&self) -> Dot {
        self.dot
    }
}

impl Dotted for CouponEntry {
    fn dot(&self) -> Dot {
        self.dot
    }
}

/// The cart CRDT: four add-wins sets of write-once dotted entries (sorted by dot; requests by id
/// then dot) sharing
/// one causal [`Context`] (lines, saved, coupons, and the requests applied, see
/// [`crate::lifecycle`]), plus max-registers `touched_at_ms` and `merged_into`. An entry is present until an
/// operation that observed it removes it; a merge keeps an entry unless the other side has seen
/// its dot without keeping it (then it was removed there). Every container is sorted, so equal
/// states are equal values with equal encodings. Field order is part of the storage format
/// (see [`crate::codec`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    pub(crate) context: Context,
    pub(crate) lines: Vec<LineEntry>,
    pub(crate) saved: Vec<SavedEntry>,
    pub(crate) coupons: Vec<CouponEntry>,
    pub(crate) touched_at_ms: u64,
    pub(crate) requests: Vec<RequestEntry>,
    pub(crate) merged_into: Option<MergedInto>,
}

/// A user-level cart operation, already validated (see [`crate::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CartOp {
    AddItem {
        product_id: ProductId,
        quantity: u64,
        snapshot: ItemSnapshot,
    },
    SetQuantity {
        product_id: ProductId,
        quantity: u64,
    },
    /// Adds a signed delta to an existing line (the counter operation; no snapshot needed).
    AdjustQuantity {
        product_id: ProductId,
        delta: i64,
    },
    RemoveItem {
        product_id: ProductId,
    },
    /// Removes every observed line and coupon; saved-for-later stays.
    Clear,
    SaveForLater {
        product_id: ProductId,
    },
    MoveToCart {
        product_id: ProductId,
    },
    ApplyCoupon {
        code: CouponCode,
    },
    RemoveCoupon {
        code: CouponCode,
    },
    Touch,
    /// Takes out the lines and coupons the version saw (see [`crate::lifecycle`]) and records
    /// the order; refused if a checkout the version did not see happened since (stale).
    Checkout {
        version: Box<Version>,
    },
    /// The user side of a merge at login: the guest cart's version joins this cart.
    Absorb {
        mode: MergeMode,
        from: Box<Version>,
    },
    /// The guest side of a merge at login: releases what the version saw (like a checkout) and
    /// marks the cart merged into `into`.
    Release {
        into: CartId,
        from: Box<Version>,
    },
    /// Current product data for lines and saved items (products not in the cart are skipped;
    /// data older than what the cart shows is ignored).
    RefreshItems {
        items: Vec<RefreshItem>,
    },
}

impl CartOp {
    pub fn name(&self) -> &'static str {
        match self {
            CartOp::AddItem { .. } => "add_item",
            CartOp::SetQuantity { .. } => "set_quantity",
            CartOp::AdjustQuantity { .. } => "adjust_quantity",
            CartOp::RemoveItem { .. } => "remove_item",
            CartOp::Clear => "clear_cart",
            CartOp::SaveForLater { .. } => "save_for_later",
            CartOp::MoveToCart { .. } => "move_to_cart",
            CartOp::ApplyCoupon { .. } => "apply_coupon",
            CartOp::RemoveCoupon { .. } => "remove_coupon",
            CartOp::Touch => "touch",
            CartOp::Checkout { .. } => "checkout",
            CartOp::Absorb { .. } => "merge_absorb",
            CartOp::Release { .. } => "merge_release",
            CartOp::RefreshItems { .. } => "refresh_items",
        }
    }
}

/// Who writes and when; the limits the write must respect.
#[derive(Debug, Clone, Copy)]
pub struct WriteCtx<'a> {
    pub actor: Actor,
    pub now_ms: u64,
    pub limits: &'a Limits,
    /// The client's request id: recorded in the cart (see [`crate::lifecycle`]).
    pub request: Option<RequestId>,
}

/// What one [`Cart::apply`] changed, as a small cart state (a δ-state): the entries it added,
/// and in its context the op's dot, the added entries' dots and the dots of the entries it
/// removed. Merging it into any replica is an ordinary [`Cart::merge`], so deltas may arrive in
/// any order, twice, or interleaved with whole states; a replica that got every delta of an
/// operation history reaches the same state as one that merged the whole cart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartDelta {
    state: Cart,
}

impl CartDelta {
    /// The delta as a cart state (what a replica merges; encode it with [`crate::codec`]).
    pub fn as_cart(&self) -> &Cart {
        &self.state
    }

    pub fn into_cart(self) -> Cart {
        self.state
    }

    /// Entries the operation added (lines, saved, coupons).
    pub fn added(&self) -> usize {
        self.state.lines.len() + self.state.saved.len() + self.state.coupons.len()
    }

    /// Line entries the operation added.
    pub fn added_lines(&self) -> &[LineEntry] {
        &self.state.lines
    }

    /// Whether the operation removed the entry with this dot (it is in the delta's context but
    /// not among its entries).
    pub fn removes(&self, dot: Dot) -> bool {
        self.state.context.contains(dot) && !self.state.lines.iter().any(|e| e.dot == dot)
    }
}

/// The entries of one product's line as seen now.
struct LineState {
    snapshot: Option<ItemSnapshot>,
    quantity: i64,
}

impl LineState {
    fn visible(&self) -> bool {
        self.snapshot.is_some() && self.quantity >= 1
    }
}

impl Cart {
    /// A cart read in storage format 2 (see [`crate::codec`]).
    pub(crate) fn from_v2(
        context: Context,
        lines: Vec<LineEntry>,
        saved: Vec<SavedEntry>,
        coupons: Vec<CouponEntry>,
        touched_at_ms: u64,
    ) -> Cart {
        Cart {
            context,
            lines,
            saved,
            coupons,
            touched_at_ms,
            requests: Vec::new(),
            merged_into: None,
        }
    }

    /// About how many bytes the cart takes in memory: each entry's own size plus the text it
    /// owns, orders included (a budget's estimate, for the node's cart cache; O(entries)).
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        fn text(s: &ItemSnapshot) -> usize {
            s.name.len()
                + s.currency.len()
                + s.image_url.as_ref().map_or(0, String::len)
                + s.attributes.iter().map(|(k, v)| k.len() + v.len() + 64).sum::<usize>()
        }
        let line = |l: &LineEntry| {
            size_of::<LineEntry>()
                + l.product_id.as_str().len()
                + match &l.kind {
                    LineKind::Snapshot(s) => text(s),
                    LineKind::Refresh(r) => text(&r.snapshot),
                    LineKind::Reset { base, seen, .. } => (base.len() + seen.len()) * 48,
                    LineKind::Total(_) => 0,
                }
        };
        size_of::<Cart>()
            + self.context.entries() * size_of::<Dot>()
            + self.lines.iter().map(line).sum::<usize>()
            + self
                .saved
                .iter()
                .map(|s| size_of::<SavedEntry>() + s.product_id.as_str().len() + text(&s.snapshot))
                .sum::<usize>()
            + self
                .coupons
                .iter()
                .map(|c| size_of::<CouponEntry>() + c.code.as_str().len())
                .sum::<usize>()
            + self
                .requests
                .iter()
                .map(|r| {
                    size_of::<RequestEntry>()
                        + match &r.effect {
                            Effect::Added { product_id, .. } => product_id.as_str().len(),
                            Effect::Order(order) => {
                                order
                                    .lines
                                    .iter()
                                    .map(|l| {
                                        size_of::<crate::lifecycle::OrderLine>()
                                            + l.product_id.as_str().len()
                                            + text(&l.snapshot)
                                    })
                                    .sum::<usize>()
                                    + order.coupons.iter().map(|c| 24 + c.as_str().len()).sum::<usize>()
                            }
                            Effect::None => 0,
                        }
                })
                .sum::<usize>()
            + self.merged_into.as_ref().map_or(0, |m| m.into.as_str().len())
    }

    pub fn touched_at_ms(&self) -> u64 {
        self.touched_at_ms
    }

    /// Every dot this state has seen: its version. Equal contexts mean equal states (every
    /// operation mints its own dot), so replicas compare contexts instead of whole carts.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Every line entry, sorted by dot (for checkers and tests; the view folds them into lines).
    pub fn lines(&self) -> &[LineEntry] {
        &self.lines
    }

    /// Whether every container is strictly sorted (what [`crate::codec::decode`] checks).
    pub(crate) fn is_well_formed(&self) -> bool {
        fn sorted<E: Dotted>(entries: &[E]) -> bool {
            entries.windows(2).all(|w| w[0].key() < w[1].key())
        }
        // Every entry's dot is in the context: a receiver must never hold an entry whose dot it
        // could issue again.
        let seen = |d: Dot| self.context.contains(d);
        self.context.is_well_formed()
            && sorted(&self.lines)
            && sorted(&self.saved)
            && sorted(&self.coupons)
            && self.lines.iter().all(|e| seen(e.dot))
            && self.saved.iter().all(|e| seen(e.dot))
            && self.coupons.iter().all(|e| seen(e.dot))
            && sorted(&self.requests)
            && self.requests.iter().all(|e| seen(e.dot))
    }

    /// Whether merging `other` into this state would change nothing.
    pub fn covers(&self, other: &Cart) -> bool {
        self.context.covers(&other.context)
    }

    /// Applies `op` as `ctx.actor`. Preconditions are all checked before anything changes, so an
    /// error leaves the cart exactly as it was.
    pub fn apply(&mut self, ctx: &WriteCtx<'_>, op: &CartOp) -> Result<CartDelta, CartError> {
        self.check(ctx.limits, op)?;
        let self_touched = self.touched_at_ms;
        let mut w = Writer {
            cart: self,
            actor: ctx.actor,
            now_ms: ctx.now_ms,
            limits: ctx.limits,
            delta: Cart::default(),
        };
        // The op's own dot: even an op that adds no entry (a coupon removal) changes the context,
        // so equal contexts always mean equal states.
        w.mint();
        let mut effect = Effect::None;
        match op {
            CartOp::AddItem {
                product_id,
                quantity,
                snapshot,
            } => {
                w.add_to_line(product_id, *quantity as i64, snapshot.clone());
                effect = Effect::Added {
                    product_id: product_id.clone(),
                    n: *quantity as i64,
                    total: w.own_total(product_id),
                };
            }
            CartOp::SetQuantity {
                product_id,
                quantity: 0,
            }
            | CartOp::RemoveItem { product_id } => w.remove_line(product_id),
            CartOp::SetQuantity { product_id, quantity } => w.reset(product_id, *quantity),
            CartOp::AdjustQuantity { product_id, delta } => {
                w.add_delta(product_id, *delta);
                effect = Effect::Added {
                    product_id: product_id.clone(),
                    n: *delta,
                    total: w.own_total(product_id),
                };
            }
            CartOp::Clear => {
                let present: Vec<ProductId> = w.cart.products_with_snapshot();
                for product_id in &present {
                    w.remove_line(product_id);
                }
                w.remove_coupons(|_| true);
            }
            CartOp::SaveForLater { product_id } => {
                let line = w.cart.line_state(product_id);
                let snapshot = line.snapshot.unwrap_or_else(|| unreachable_snapshot(product_id));
                w.remove_line(product_id);
                w.remove_saved(|e| &e.product_id == product_id);
                w.add_saved(product_id, snapshot, line.quantity.max(1) as u64);
            }
            CartOp::MoveToCart { product_id } => {
                if let Some(saved) = w.cart.saved_winner(product_id) {
                    w.remove_saved(|e| &e.product_id == product_id);
                    w.add_to_line(product_id, saved.quantity as i64, saved.snapshot);
                    effect = Effect::Added {
                        product_id: product_id.clone(),
                        n: saved.quantity as i64,
                        total: w.own_total(product_id),
                    };
                }
            }
            CartOp::ApplyCoupon { code } => w.add_coupon(code),
            CartOp::RemoveCoupon { code } => w.remove_coupons(|c| c == code),
            CartOp::Touch => {}
            CartOp::Checkout { version } => {
                w.release(version);
                effect = Effect::Order(version.order());
            }
            CartOp::Absorb { mode, from } => w.absorb(*mode, from),
            CartOp::Release { into, from } => {
                w.release(from);
                w.release_saved(from);
                w.mark_merged(into.clone());
            }
            CartOp::RefreshItems { items } => {
                for item in items {
                    w.refresh(item);
                }
            }
        }
        if let Some(id) = ctx.request {
            // The record has a dot of its own, never the op's: a later op may remove the record,
            // and the op's dot must stay a pure marker of the op (a delta whose op dot is seen
            // is merged already, see `merge`'s fast path).
            let dot = w.mint();
            w.record(RequestEntry {
                id,
                dot,
                at_ms: ctx.now_ms,
                effect,
            });
        }
        w.settle_duplicates();
        w.prune_requests();
        // Residue ages in hours: looking for it once per hour of a cart's life is enough.
        if ctx.now_ms / RESIDUE_SCAN_MS != self_touched / RESIDUE_SCAN_MS {
            w.drop_residue();
        }
        w.touch(ctx.now_ms);
        Ok(CartDelta { state: w.delta })
    }

    /// Refuses an op that names something absent or would pass a limit.
    fn check(&self, limits: &Limits, op: &CartOp) -> Result<(), CartError> {
        match op {
            CartOp::AddItem {
                product_id, quantity, ..
            } => self.check_line_room(limits, product_id, *quantity as i64),
            CartOp::SetQuantity { product_id, .. } | CartOp::SaveForLater { product_id } => {
                if !self.line_state(product_id).visible() {
                    return Err(not_in_cart(product_id));
                }
                if let CartOp::SaveForLater { .. } = op {
                    let saved = self.saved_products();
                    if !saved.contains_key(product_id) && saved.len() >= limits.max_saved_per_cart {
                        return Err(CartError::limit(
                            "saved",
                            format!(
                                "{} items are saved for later; the limit is {}",
                                saved.len(),
                                limits.max_saved_per_cart
                            ),
                        ));
                    }
                }
                Ok(())
            }
            CartOp::AdjustQuantity { product_id, delta } => {
                let line = self.line_state(product_id);
                if line.snapshot.is_none() {
                    return Err(not_in_cart(product_id));
                }
                let quantity = line.quantity.saturating_add(*delta);
                if quantity < 0 {
                    return Err(CartError::invalid(
                        "delta",
                        format!("{delta} would take the line's quantity of {} below 0", line.quantity),
                    ));
                }
                check_quantity(limits, quantity)
            }
            CartOp::RemoveItem { product_id } => match self.line_state(product_id).snapshot {
                Some(_) => Ok(()),
                None => Err(not_in_cart(product_id)),
            },
            CartOp::MoveToCart { product_id } => match self.saved_winner(product_id) {
                Some(saved) => self.check_line_room(limits, product_id, saved.quantity as i64),
                None => Err(CartError::not_found(
                    "product_id",
                    format!("{product_id} is not saved for later"),
                )),
            },
            CartOp::ApplyCoupon { code } => {
                let count = self.coupon_codes().len();
                if !self.has_coupon(code) && count >= limits.max_coupons_per_cart {
                    return Err(CartError::limit(
                        "code",
                        format!(
                            "{count} coupons are applied; the limit is {}",
                            limits.max_coupons_per_cart
                        ),
                    ));
                }
                Ok(())
            }
            CartOp::RemoveCoupon { code } if !self.has_coupon(code) => {
                Err(CartError::not_found("code", format!("coupon {code} is not applied")))
            }
            CartOp::RemoveCoupon { .. } | CartOp::Clear | CartOp::Touch => Ok(()),
            CartOp::RefreshItems { items } => {
                let most = limits.max_lines_per_cart + limits.max_saved_per_cart;
                if items.is_empty() || items.len() > most {
                    return Err(CartError::invalid(
                        "items",
                        format!("{} items; between 1 and {most} (lines and saved items)", items.len()),
                    ));
                }
                Ok(())
            }
            CartOp::Checkout { version } => {
                self.check_seen(version)?;
                if version.lines.is_empty() {
                    return Err(CartError::Stale {
                        field: "version",
                        reason: "the cart had no lines at that version: nothing to check out".into(),
                    });
                }
                let unseen = self
                    .requests
                    .iter()
                    .find(|r| matches!(r.effect, Effect::Order(_)) && !version.context.contains(r.dot));
                if let Some(checkout) = unseen {
                    return Err(CartError::Stale {
                        field: "version",
                        reason: format!(
                            "the cart was checked out (at {} ms) after this version was read; read the cart again",
                            checkout.at_ms
                        ),
                    });
                }
                Ok(())
            }
            CartOp::Release { from, .. } => self.check_seen(from),
            CartOp::Absorb { mode, from } => {
                let mut lines = match mode {
                    MergeMode::Merge => self.visible_line_count(),
                    MergeMode::Replace => 0,
                };
                for line in &from.lines {
                    let present = matches!(mode, MergeMode::Merge) && self.line_state(&line.product_id).visible();
                    lines += usize::from(!present);
                }
                if lines > limits.max_lines_per_cart {
                    return Err(CartError::limit(
                        "lines",
                        format!(
                            "the merged cart would have {lines} lines; the limit is {}",
                            limits.max_lines_per_cart
                        ),
                    ));
                }
                Ok(())
            }
        }
    }

    /// A version this replica has not seen all of yet (it lags the reader): refused as
    /// `NotFound`, which makes the coordinator catch up from a read quorum and try again.
    fn check_seen(&self, version: &Version) -> Result<(), CartError> {
        if !self.context.covers(&version.context) {
            return Err(CartError::not_found(
                "version",
                "this replica has not yet seen everything that version saw",
            ));
        }
        Ok(())
    }

    fn check_line_room(&self, limits: &Limits, product_id: &ProductId, add: i64) -> Result<(), CartError> {
        let line = self.line_state(product_id);
        if !line.visible() {
            let count = self.visible_line_count();
            if count >= limits.max_lines_per_cart {
                return Err(CartError::limit(
                    "lines",
                    format!("the cart has {count} lines; the limit is {}", limits.max_lines_per_cart),
                ));
            }
        }
        let base = if line.snapshot.is_some() {
            line.quantity.max(0)
        } else {
            0
        };
        check_quantity(limits, base.saturating_add(add))
    }

    /// Merges another replica's state of the *same* cart.
    pub fn merge(&mut self, other: Cart) {
        #[cfg(feature = "test-broken-merge")]
        if crate::sabotage::lww() {
            // Deliberately wrong (last writer wins), for showing that the Jepsen checker catches it.
            if other.touched_at_ms > self.touched_at_ms {
                *self = other;
            }
            return;
        }
        if self.context.covers(&other.context) {
            return; // nothing new (the common case for a replica that is up to date)
        }
        join(&mut self.lines, &self.context, other.lines, &other.context);
        join(&mut self.saved, &self.context, other.saved, &other.context);
        join(&mut self.coupons, &self.context, other.coupons, &other.context);
        join(&mut self.requests, &self.context, other.requests, &other.context);
        self.context.merge(&other.context);
        self.touched_at_ms = self.touched_at_ms.max(other.touched_at_ms);
        self.merged_into = self.merged_into.take().max(other.merged_into);
    }

    /// Merges a delta produced by [`Cart::apply`] on another replica (in any order).
    pub fn apply_delta(&mut self, delta: &CartDelta) {
        self.merge(delta.state.clone());
    }

    /// Whether a request with this id was applied to this state (a retry is answered with the
    /// cart, not applied again).
    pub fn seen_request(&self, id: RequestId) -> bool {
        self.requests_of(id).next().is_some()
    }

    /// The records of one request id (kept together: the set is ordered by id).
    fn requests_of(&self, id: RequestId) -> impl Iterator<Item = &RequestEntry> {
        let from = self.requests.partition_point(|r| r.id < id);
        self.requests[from..].iter().take_while(move |r| r.id == id)
    }

    /// The order a checkout with this request id returned, while its record is kept.
    pub fn order_of(&self, id: RequestId) -> Option<&Order> {
        self.requests_of(id).find_map(|r| match &r.effect {
            Effect::Order(order) => Some(order),
            _ => None,
        })
    }

    /// The requests remembered (sorted by request id, then dot).
    pub fn requests(&self) -> &[RequestEntry] {
        &self.requests
    }

    /// The cart this guest cart was last merged into.
    pub fn merged_into(&self) -> Option<&MergedInto> {
        self.merged_into.as_ref()
    }

    /// What a reader sees now, as a [`Version`] (for checkout and merge). A function of the
    /// state alone: equal states give equal versions.
    pub fn version(&self, id: &CartId) -> Version {
        let mut lines = Vec::new();
        view::for_each_line(self, |product_id, acc| {
            if let (true, Some(snapshot)) = (acc.visible(), acc.snapshot()) {
                lines.push(view::version_line(product_id, acc.quantity(), snapshot, acc));
            }
        });
        view::version(self, id, lines)
    }

    /// An expired cart about to be written again: every entry goes, the context stays (so no
    /// dot is issued twice, and a stale copy merged in later adds nothing: its entries are all
    /// seen). Only ever followed by a write, which mints a dot: the stored state differs from
    /// the old one in context, as every two distinct states must.
    pub fn forget_expired(&mut self) {
        let context = std::mem::take(&mut self.context);
        *self = Cart {
            context,
            ..Cart::default()
        };
    }

    /// Replaces an expired state with `incoming` (a newer life of the cart), keeping this
    /// state's context: its dots stay seen, so they are never issued again from here.
    pub fn replace_expired(&mut self, incoming: Cart) {
        let seen = std::mem::take(&mut self.context);
        *self = incoming;
        self.context.merge(&seen);
    }

    /// Takes back, as `actor`, the effect of each of its requests that another replica had
    /// applied first (see [`crate::lifecycle`]); `None` when there is none. For a replica that
    /// learns of the duplicate by a merge rather than by its own next write.
    pub fn settle(&mut self, actor: Actor, now_ms: u64, limits: &Limits) -> Option<CartDelta> {
        if !self.duplicates().iter().any(|e| e.dot.actor == actor) {
            return None;
        }
        let mut w = Writer {
            cart: self,
            actor,
            now_ms,
            limits,
            delta: Cart::default(),
        };
        w.mint();
        w.settle_duplicates();
        // Not a change by a customer: the cart's age (its expiry) stays.
        w.delta.touched_at_ms = w.cart.touched_at_ms;
        Some(CartDelta { state: w.delta })
    }

    /// Every application of a request applied more than once except the one that stays: the
    /// first (by dot) that a reset of its line observed, else the first. The others' writers
    /// take theirs back ([`Writer::settle_duplicates`]).
    pub(crate) fn duplicates(&self) -> Vec<&RequestEntry> {
        if self.requests.len() < 2 {
            return Vec::new();
        }
        // Kept in (id, dot) order: one id's records are one run, by dot.
        let mut out = Vec::new();
        for group in self.requests.chunk_by(|a, b| a.id == b.id).filter(|g| g.len() > 1) {
            let kept = group.iter().position(|e| self.observed(e)).unwrap_or(0);
            out.extend(group.iter().enumerate().filter(|(i, _)| *i != kept).map(|(_, e)| e));
        }
        out
    }

    /// Whether a reset of the line observed this application (its value counts it).
    fn observed(&self, e: &RequestEntry) -> bool {
        match &e.effect {
            Effect::Added { product_id, total, .. } => self.observed_by_a_reset(product_id, e.dot.actor, *total),
            _ => false,
        }
    }

    /// Per line, the applications of every request applied more than once (see
    /// [`view::Dup`]).
    pub(crate) fn duplicate_applications(&self) -> BTreeMap<&ProductId, Vec<view::Dup>> {
        let mut out: BTreeMap<&ProductId, Vec<view::Dup>> = BTreeMap::new();
        if self.requests.len() < 2 {
            return out;
        }
        let twice: std::collections::BTreeSet<RequestId> = self.duplicates().iter().map(|r| r.id).collect();
        for e in self.requests.iter().filter(|r| twice.contains(&r.id)) {
            if let Effect::Added { product_id, n, total } = &e.effect {
                out.entry(product_id).or_default().push(view::Dup {
                    id: e.id,
                    actor: e.dot.actor,
                    total: *total,
                    n: *n,
                });
            }
        }
        // `view::excess` takes one request's applications as one run.
        for dups in out.values_mut() {
            dups.sort_by_key(|d| (d.id, d.actor, d.total));
        }
        out
    }

    /// Whether a reset of the line observed the `Total` entry (counter `total`) of `actor`.
    fn observed_by_a_reset(&self, product_id: &ProductId, actor: Actor, total: u64) -> bool {
        self.lines.iter().any(|l| {
            &l.product_id == product_id
                && matches!(&l.kind, LineKind::Reset { seen, .. } if seen.get(&actor).is_some_and(|c| *c >= total))
        })
    }

    /// One line's entries folded, duplicates taken back.
    pub(crate) fn line_acc(&self, product_id: &ProductId) -> view::LineAcc<'_> {
        let mut acc = view::LineAcc::from_entries(self.line_entries().filter(|e| &e.product_id == product_id));
        acc.dups = self.duplicate_applications().remove(product_id).unwrap_or_default();
        acc
    }

    /// The read model: visible lines sorted by product id, saved items, coupons, subtotals.
    pub fn view(&self, cart_id: &CartId) -> CartView {
        view::build(self, cart_id, None)
    }

    /// The view and the [`Version`] a reader of it sees, from one walk over the lines (equal to
    /// [`Cart::view`] and [`Cart::version`]).
    pub fn view_with_version(&self, cart_id: &CartId) -> (CartView, Version) {
        let mut lines = Vec::new();
        let view = view::build(self, cart_id, Some(&mut lines));
        (view, view::version(self, cart_id, lines))
    }

    pub(crate) fn line_entries(&self) -> impl Iterator<Item = &LineEntry> {
        self.lines.iter()
    }

    fn line_state(&self, product_id: &ProductId) -> LineState {
        let acc = self.line_acc(product_id);
        LineState {
            quantity: acc.quantity(),
            snapshot: acc.snapshot().cloned(),
        }
    }

    /// The raw counter value of every line that has an item snapshot, including lines whose
    /// quantity went to 0 or below (the view hides those). For checkers and debugging.
    pub fn raw_quantities(&self) -> BTreeMap<String, i64> {
        let mut quantities = BTreeMap::new();
        view::for_each_line(self, |p, acc| {
            if acc.snapshot().is_some() {
                quantities.insert(p.to_string(), acc.quantity());
            }
        });
        quantities
    }

    fn products_with_snapshot(&self) -> Vec<ProductId> {
        let mut products = Vec::new();
        view::for_each_line(self, |p, acc| {
            if acc.snapshot().is_some() {
                products.push(p.clone());
            }
        });
        products
    }

    fn visible_line_count(&self) -> usize {
        let mut count = 0;
        view::for_each_line(self, |_, acc| count += usize::from(acc.visible()));
        count
    }

    pub(crate) fn saved_products(&self) -> BTreeMap<&ProductId, &SavedEntry> {
        let mut winners: BTreeMap<&ProductId, &SavedEntry> = BTreeMap::new();
        for entry in &self.saved {
            let slot = winners.entry(&entry.product_id).or_insert(entry);
            if newer(&entry.dot, &slot.dot) {
                *slot = entry;
            }
        }
        winners
    }

    fn saved_winner(&self, product_id: &ProductId) -> Option<SavedEntry> {
        self.saved_products().get(product_id).map(|e| (*e).clone())
    }

    pub(crate) fn coupon_codes(&self) -> Vec<&CouponCode> {
        let mut codes: Vec<&CouponCode> = self.coupons.iter().map(|e| &e.code).collect();
        codes.sort();
        codes.dedup();
        codes
    }

    fn has_coupon(&self, code: &CouponCode) -> bool {
        self.coupons.iter().any(|e| &e.code == code)
    }
}

/// Deterministic "latest" among concurrent write-once entries: higher counter, then actor.
pub(crate) fn newer(a: &Dot, b: &Dot) -> bool {
    (a.counter, a.actor) > (b.counter, b.actor)
}

fn not_in_cart(product_id: &ProductId) -> CartError {
    CartError::not_found("product_id", format!("{product_id} is not in the cart"))
}

fn check_quantity(limits: &Limits, quantity: i64) -> Result<(), CartError> {
    if quantity > limits.max_quantity as i64 {
        return Err(CartError::limit(
            "quantity",
            format!("the line would hold {quantity}; the limit is {}", limits.max_quantity),
        ));
    }
    Ok(())
}

/// `check` guarantees a visible line has a snapshot; this only documents that.
fn unreachable_snapshot(product_id: &ProductId) -> ItemSnapshot {
    debug_assert!(false, "checked line {product_id} has no snapshot");
    ItemSnapshot {
        name: product_id.to_string(),
        unit_price_minor: 0,
        currency: "XXX".into(),
        image_url: None,
        attributes: Default::default(),
    }
}

/// Builds one op's delta while applying it to the cart.
struct Writer<'c> {
    cart: &'c mut Cart,
    actor: Actor,
    now_ms: u64,
    limits: &'c Limits,
    /// The δ-state: entries added, and every dot minted or removed.
    delta: Cart,
}

impl Writer<'_> {
    /// A fresh dot of this actor, recorded as seen by the cart and the delta.
    fn mint(&mut self) -> Dot {
        let dot = self.cart.context.next_dot(self.actor);
        self.cart.context.insert(dot);
        self.delta.context.insert(dot);
        dot
    }

    /// Add `quantity` to a line and re-assert its snapshot, so a concurrent remove of the line
    /// cannot leave the new quantity without a snapshot. A line that is not visible (removed, or
    /// driven to 0 or below) starts again from 0.
    fn add_to_line(&mut self, product_id: &ProductId, quantity: i64, snapshot: ItemSnapshot) {
        let acc = self.cart.line_acc(product_id);
        if !acc.visible() && acc.quantity() != 0 {
            self.reset(product_id, 0);
            self.add_delta(product_id, quantity);
            self.remove_lines(|e| &e.product_id == product_id && matches!(e.kind, LineKind::Snapshot(_)));
        } else {
            // The common case in one pass: replace this node's total and the snapshot together.
            let total = acc.totals().get(&self.actor).copied().unwrap_or(0);
            let actor = self.actor;
            self.remove_lines(|e| {
                &e.product_id == product_id
                    && match e.kind {
                        LineKind::Snapshot(_) => true,
                        LineKind::Total(_) => e.dot.actor == actor,
                        LineKind::Reset { .. } | LineKind::Refresh(_) => false,
                    }
            });
            self.add_line(product_id, LineKind::Total(total.saturating_add(quantity)));
        }
        self.add_line(product_id, LineKind::Snapshot(snapshot));
    }

    /// Replaces this node's running total of the line with `total + delta`. This node's writes to
    /// the cart are serialised and it always holds its own latest total, so there is one live
    /// `Total` per node.
    fn add_delta(&mut self, product_id: &ProductId, delta: i64) {
        let actor = self.actor;
        let own =
            |e: &LineEntry| &e.product_id == product_id && e.dot.actor == actor && matches!(e.kind, LineKind::Total(_));
        let totals =
            view::LineAcc::from_entries(self.cart.line_entries().filter(|e| &e.product_id == product_id)).totals();
        let total = totals.get(&actor).copied().unwrap_or(0);
        self.remove_lines(own);
        self.add_line(product_id, LineKind::Total(total.saturating_add(delta)));
    }

    /// Sets the line's quantity to `value` as of the totals observed now; supersedes observed resets.
    fn reset(&mut self, product_id: &ProductId, value: u64) {
        let acc = view::LineAcc::from_entries(self.cart.line_entries().filter(|e| &e.product_id == product_id));
        let (base, seen) = (acc.totals(), acc.seen());
        self.remove_lines(|e| &e.product_id == product_id && matches!(e.kind, LineKind::Reset { .. }));
        self.add_line(
            product_id,
            LineKind::Reset {
                value,
                base,
                at_ms: self.now_ms,
                seen,
            },
        );
    }

    /// The counter of this writer's `Total` entry of the line (after the op wrote it).
    fn own_total(&self, product_id: &ProductId) -> u64 {
        self.cart
            .lines
            .iter()
            .filter(|e| {
                &e.product_id == product_id && e.dot.actor == self.actor && matches!(e.kind, LineKind::Total(_))
            })
            .map(|e| e.dot.counter)
            .max()
            .unwrap_or(0)
    }

    /// Removes the snapshot (the line disappears) and resets the counter to 0.
    fn remove_line(&mut self, product_id: &ProductId) {
        self.remove_lines(|e| &e.product_id == product_id && matches!(e.kind, LineKind::Snapshot(_)));
        self.reset(product_id, 0);
    }

    /// Records a refresh of a product the cart holds (a line or a saved item) unless the cart
    /// shows a refresh of the same or a newer catalogue version; replaces the refreshes observed.
    fn refresh(&mut self, item: &RefreshItem) {
        let p = &item.product_id;
        let acc = self.cart.line_acc(p);
        if acc.snapshot().is_none() && self.cart.saved_winner(p).is_none() {
            return;
        }
        if acc
            .refresh()
            .is_some_and(|r| r.catalog_version >= item.refresh.catalog_version)
        {
            return;
        }
        self.remove_lines(|e| &e.product_id == p && matches!(e.kind, LineKind::Refresh(_)));
        self.add_line(p, LineKind::Refresh(item.refresh.clone()));
    }

    /// Drops the counter entries of lines without a snapshot once [`RESIDUE_GRACE_MS`] has passed
    /// since their last reset (or at once when they have no reset at all); a saved item's
    /// refresh stays.
    fn drop_residue(&mut self) {
        let mut stale: Vec<ProductId> = Vec::new();
        view::for_each_line(self.cart, |p, acc| {
            let expired = acc
                .last_reset_ms()
                .is_none_or(|at| at.saturating_add(RESIDUE_GRACE_MS) < self.now_ms);
            if acc.snapshot().is_none() && expired && self.cart.saved_winner(p).is_none() {
                stale.push(p.clone());
            }
        });
        for product_id in stale {
            self.remove_lines(|e| e.product_id == product_id);
        }
    }

    fn add_line(&mut self, product_id: &ProductId, kind: LineKind) {
        let dot = self.mint();
        let entry = LineEntry {
            product_id: product_id.clone(),
            dot,
            kind,
        };
        insert_sorted(&mut self.delta.lines, entry.clone());
        insert_sorted(&mut self.cart.lines, entry);
    }

    fn add_saved(&mut self, product_id: &ProductId, snapshot: ItemSnapshot, quantity: u64) {
        let dot = self.mint();
        let entry = SavedEntry {
            product_id: product_id.clone(),
            dot,
            snapshot,
            quantity,
        };
        insert_sorted(&mut self.delta.saved, entry.clone());
        insert_sorted(&mut self.cart.saved, entry);
    }

    /// Applies a coupon, replacing the observed entries of the same code (one entry per code).
    fn add_coupon(&mut self, code: &CouponCode) {
        self.remove_coupons(|c| c == code);
        let entry = CouponEntry {
            code: code.clone(),
            dot: self.mint(),
        };
        insert_sorted(&mut self.delta.coupons, entry.clone());
        insert_sorted(&mut self.cart.coupons, entry);
    }

    fn remove_lines(&mut self, pred: impl Fn(&LineEntry) -> bool) {
        remove_entries(
            &mut self.cart.lines,
            &mut self.delta.lines,
            &mut self.delta.context,
            pred,
        );
    }

    fn remove_saved(&mut self, pred: impl Fn(&SavedEntry) -> bool) {
        remove_entries(
            &mut self.cart.saved,
            &mut self.delta.saved,
            &mut self.delta.context,
            pred,
        );
    }

    fn remove_coupons(&mut self, pred: impl Fn(&CouponCode) -> bool) {
        remove_entries(
            &mut self.cart.coupons,
            &mut self.delta.coupons,
            &mut self.delta.context,
            |e| pred(&e.code),
        );
    }

    fn record(&mut self, entry: RequestEntry) {
        insert_sorted(&mut self.delta.requests, entry.clone());
        insert_sorted(&mut self.cart.requests, entry);
    }

    fn remove_requests(&mut self, pred: impl Fn(&RequestEntry) -> bool) {
        remove_entries(
            &mut self.cart.requests,
            &mut self.delta.requests,
            &mut self.delta.context,
            pred,
        );
    }

    /// Takes back the effect of this writer's requests that were applied first elsewhere
    /// (subtracted from its running total, unless a later reset of the line overruled it) and
    /// drops their entries: one delta, so every replica sees both or neither.
    fn settle_duplicates(&mut self) {
        let own: Vec<RequestEntry> = self
            .cart
            .duplicates()
            .into_iter()
            .filter(|e| e.dot.actor == self.actor)
            .cloned()
            .collect();
        for entry in own {
            if let Effect::Added { product_id, n, .. } = &entry.effect {
                // A reset that observed this application has counted it in its value already.
                if !self.cart.observed(&entry) {
                    self.add_delta(product_id, n.saturating_neg());
                }
            }
            self.remove_requests(|r| r.dot == entry.dot);
        }
    }

    /// Forgets requests older than the window, then (once the cart holds the slack beyond the
    /// per-cart bound) the oldest beyond the bound; an id
    /// applied twice is kept until its writer settled it (its effect would count again).
    fn prune_requests(&mut self) {
        let now = self.now_ms;
        let old = |r: &RequestEntry| r.at_ms.saturating_add(REQUEST_WINDOW_MS) < now;
        if self.cart.requests.len() <= REQUESTS_PER_CART_MAX + REQUESTS_PRUNE_SLACK
            && !self.cart.requests.iter().any(old)
        {
            return;
        }
        let twice: std::collections::BTreeSet<RequestId> = self.cart.duplicates().iter().map(|r| r.id).collect();
        // Orders stay beyond the window (the newest ORDERS_KEPT): a checkout of a version older
        // than one of them is refused as stale, however late it comes.
        let mut orders: Vec<(u64, Dot)> = self
            .cart
            .requests
            .iter()
            .filter(|r| matches!(r.effect, Effect::Order(_)))
            .map(|r| (r.at_ms, r.dot))
            .collect();
        orders.sort_unstable();
        let kept_orders: std::collections::BTreeSet<Dot> =
            orders.iter().rev().take(ORDERS_KEPT).map(|(_, dot)| *dot).collect();
        let mut prunable: Vec<(u64, Dot)> = self
            .cart
            .requests
            .iter()
            .filter(|r| !twice.contains(&r.id) && !kept_orders.contains(&r.dot))
            .map(|r| (r.at_ms, r.dot))
            .collect();
        prunable.sort_unstable();
        let excess = self.cart.requests.len().saturating_sub(REQUESTS_PER_CART_MAX);
        let cut: std::collections::BTreeSet<Dot> = prunable
            .iter()
            .enumerate()
            .take_while(|(i, (at_ms, _))| *i < excess || at_ms.saturating_add(REQUEST_WINDOW_MS) < now)
            .map(|(_, (_, dot))| *dot)
            .collect();
        self.remove_requests(|r| cut.contains(&r.dot));
    }

    /// Takes out what `version` saw of each of its lines and coupons: the line entries it saw
    /// go and the line restarts from "added since" (a reset to 0 against the totals it saw). A
    /// line raised since keeps what was added, and its snapshot.
    fn release(&mut self, version: &Version) {
        let seen = &version.context;
        for line in &version.lines {
            let p = &line.product_id;
            self.remove_lines(|e| &e.product_id == p && !matches!(e.kind, LineKind::Total(_)) && seen.contains(e.dot));
            self.add_line(
                p,
                LineKind::Reset {
                    value: 0,
                    base: line.totals.clone(),
                    at_ms: self.now_ms,
                    seen: line.seen.clone(),
                },
            );
            let acc = self.cart.line_acc(p);
            let (quantity, has_snapshot) = (acc.quantity(), acc.snapshot().is_some());
            if quantity >= 1 && !has_snapshot {
                self.add_line(p, LineKind::Snapshot(line.snapshot.clone()));
            } else if quantity < 1 && has_snapshot {
                self.remove_lines(|e| &e.product_id == p && matches!(e.kind, LineKind::Snapshot(_)));
            }
        }
        remove_entries(
            &mut self.cart.coupons,
            &mut self.delta.coupons,
            &mut self.delta.context,
            |e| seen.contains(e.dot),
        );
    }

    /// Takes out the saved-for-later items `version` saw (the guest side of a merge).
    fn release_saved(&mut self, version: &Version) {
        let seen = &version.context;
        self.remove_saved(|e| seen.contains(e.dot));
    }

    fn mark_merged(&mut self, into: CartId) {
        let mark = Some(MergedInto {
            at_ms: self.now_ms,
            into,
        });
        self.cart.merged_into = self.cart.merged_into.take().max(mark);
        self.delta.merged_into = self.cart.merged_into.clone();
    }

    /// The user side of a merge. Lines are set, not added (a line takes the larger of its
    /// quantity and the guest's): applying the same guest version twice, or concurrently on two
    /// owners, gives the same cart (concurrent resets keep the larger).
    fn absorb(&mut self, mode: MergeMode, from: &Version) {
        if mode == MergeMode::Replace {
            for product_id in self.cart.products_with_snapshot() {
                self.remove_line(&product_id);
            }
            self.remove_coupons(|_| true);
        }
        for line in &from.lines {
            let p = &line.product_id;
            let acc = self.cart.line_acc(p);
            let (visible, quantity) = (acc.visible(), acc.quantity());
            if visible && quantity >= line.quantity as i64 {
                continue;
            }
            self.reset(p, line.quantity);
            if !visible {
                self.remove_lines(|e| &e.product_id == p && matches!(e.kind, LineKind::Snapshot(_)));
                self.add_line(p, LineKind::Snapshot(line.snapshot.clone()));
            }
        }
        for saved in &from.saved {
            let products = self.cart.saved_products();
            if products.contains_key(&saved.product_id) || products.len() >= self.limits.max_saved_per_cart {
                continue;
            }
            self.add_saved(&saved.product_id, saved.snapshot.clone(), saved.quantity);
        }
        for code in &from.coupons {
            if !self.cart.has_coupon(code) && self.cart.coupon_codes().len() < self.limits.max_coupons_per_cart {
                self.add_coupon(code);
            }
        }
    }

    fn touch(&mut self, now_ms: u64) {
        self.cart.touched_at_ms = self.cart.touched_at_ms.max(now_ms);
        self.delta.touched_at_ms = self.cart.touched_at_ms;
    }
}

fn insert_sorted<E: Dotted>(entries: &mut Vec<E>, entry: E) {
    let at = entries.partition_point(|e| e.key() < entry.key());
    entries.insert(at, entry);
}

/// Removes the observed entries matching `pred`; the delta records their dots (so a replica
/// that merges it drops them too) and forgets them if this same op had added them.
fn remove_entries<E: Dotted>(entries: &mut Vec<E>, added: &mut Vec<E>, seen: &mut Context, pred: impl Fn(&E) -> bool) {
    entries.retain(|e| {
        if !pred(e) {
            return true;
        }
        seen.insert(e.dot());
        added.retain(|a| a.dot() != e.dot());
        false
    });
}

/// The add-wins join of one set: an entry both sides hold stays; an entry only one side holds
/// stays unless the other side has seen its dot (and so removed it). Both inputs are sorted by
/// dot and so is the result.
fn join<E: Dotted>(mine: &mut Vec<E>, my_context: &Context, theirs: Vec<E>, their_context: &Context) {
    if theirs.len() * 8 < mine.len() {
        // A few entries (a delta) into many: edited in place, so the entries that stay are not
        // moved into a new vector. Same outcome as the walk below.
        join_few(mine, my_context, theirs, their_context);
        return;
    }
    let ours = std::mem::take(mine);
    let mut out = Vec::with_capacity(ours.len().max(theirs.len()));
    let mut a = ours.into_iter().peekable();
    let mut b = theirs.into_iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.key().cmp(&y.key()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => break,
        };
        match order {
            std::cmp::Ordering::Equal => {
                out.extend(a.next());
                b.next();
            }
            std::cmp::Ordering::Less => {
                if let Some(e) = a.next().filter(|e| !their_context.contains(e.dot())) {
                    out.push(e);
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some(e) = b.next().filter(|e| !my_context.contains(e.dot())) {
                    out.push(e);
                }
            }
        }
    }
    *mine = out;
}

/// [`join`] for a short `theirs`: drop my entries they saw and no longer hold (removed there),
/// then insert each of theirs I have not seen at its place by dot. The binary searches need
/// both sides strictly sorted by dot, which every cart is (`codec::decode` refuses others).
fn join_few<E: Dotted>(mine: &mut Vec<E>, my_context: &Context, theirs: Vec<E>, their_context: &Context) {
    mine.retain(|e| !their_context.contains(e.dot()) || theirs.binary_search_by(|t| t.key().cmp(&e.key())).is_ok());
    for entry in theirs {
        // Seen here: held already (same dot, same write-once entry) or removed here.
        if my_context.contains(entry.dot()) {
            continue;
        }
        if let Err(at) = mine.binary_search_by(|m| m.key().cmp(&entry.key())) {
            mine.insert(at, entry);
        }
    }
}
