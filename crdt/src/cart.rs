use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::context::{Context, Dot};
use crate::error::CartError;
use crate::ids::{Actor, CartId, CouponCode, ProductId};
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
    },
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

/// The cart CRDT: three add-wins sets of write-once dotted entries (each sorted by dot) sharing
/// one causal [`Context`], plus a max-register `touched_at_ms`. An entry is present until an
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
        }
    }
}

/// Who writes and when; the limits the write must respect.
#[derive(Debug, Clone, Copy)]
pub struct WriteCtx<'a> {
    pub actor: Actor,
    pub now_ms: u64,
    pub limits: &'a Limits,
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
            entries.windows(2).all(|w| w[0].dot() < w[1].dot())
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
            delta: Cart::default(),
        };
        // The op's own dot: even an op that adds no entry (a coupon removal) changes the context,
        // so equal contexts always mean equal states.
        w.mint();
        match op {
            CartOp::AddItem {
                product_id,
                quantity,
                snapshot,
            } => w.add_to_line(product_id, *quantity as i64, snapshot.clone()),
            CartOp::SetQuantity {
                product_id,
                quantity: 0,
            }
            | CartOp::RemoveItem { product_id } => w.remove_line(product_id),
            CartOp::SetQuantity { product_id, quantity } => w.reset(product_id, *quantity),
            CartOp::AdjustQuantity { product_id, delta } => w.add_delta(product_id, *delta),
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
                }
            }
            CartOp::ApplyCoupon { code } => w.add_coupon(code),
            CartOp::RemoveCoupon { code } => w.remove_coupons(|c| c == code),
            CartOp::Touch => {}
        }
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
        }
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
        self.context.merge(&other.context);
        self.touched_at_ms = self.touched_at_ms.max(other.touched_at_ms);
    }

    /// Merges a delta produced by [`Cart::apply`] on another replica (in any order).
    pub fn apply_delta(&mut self, delta: &CartDelta) {
        self.merge(delta.state.clone());
    }

    /// The read model: visible lines sorted by product id, saved items, coupons, subtotals.
    pub fn view(&self, cart_id: &CartId) -> CartView {
        view::build(self, cart_id)
    }

    pub(crate) fn line_entries(&self) -> impl Iterator<Item = &LineEntry> {
        self.lines.iter()
    }

    fn line_state(&self, product_id: &ProductId) -> LineState {
        let acc = view::LineAcc::from_entries(self.line_entries().filter(|e| &e.product_id == product_id));
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
        let acc = view::LineAcc::from_entries(self.cart.line_entries().filter(|e| &e.product_id == product_id));
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
                        LineKind::Reset { .. } => false,
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
        let base =
            view::LineAcc::from_entries(self.cart.line_entries().filter(|e| &e.product_id == product_id)).totals();
        self.remove_lines(|e| &e.product_id == product_id && matches!(e.kind, LineKind::Reset { .. }));
        self.add_line(
            product_id,
            LineKind::Reset {
                value,
                base,
                at_ms: self.now_ms,
            },
        );
    }

    /// Removes the snapshot (the line disappears) and resets the counter to 0.
    fn remove_line(&mut self, product_id: &ProductId) {
        self.remove_lines(|e| &e.product_id == product_id && matches!(e.kind, LineKind::Snapshot(_)));
        self.reset(product_id, 0);
    }

    /// Drops the counter entries of lines without a snapshot once [`RESIDUE_GRACE_MS`] has passed
    /// since their last reset (or at once when they have no reset at all).
    fn drop_residue(&mut self) {
        let mut stale: Vec<ProductId> = Vec::new();
        view::for_each_line(self.cart, |p, acc| {
            let expired = acc
                .last_reset_ms()
                .is_none_or(|at| at.saturating_add(RESIDUE_GRACE_MS) < self.now_ms);
            if acc.snapshot().is_none() && expired {
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

    fn touch(&mut self, now_ms: u64) {
        self.cart.touched_at_ms = self.cart.touched_at_ms.max(now_ms);
        self.delta.touched_at_ms = self.cart.touched_at_ms;
    }
}

fn insert_sorted<E: Dotted>(entries: &mut Vec<E>, entry: E) {
    let at = entries.partition_point(|e| e.dot() < entry.dot());
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
            (Some(x), Some(y)) => x.dot().cmp(&y.dot()),
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
    mine.retain(|e| !their_context.contains(e.dot()) || theirs.binary_search_by(|t| t.dot().cmp(&e.dot())).is_ok());
    for entry in theirs {
        // Seen here: held already (same dot, same write-once entry) or removed here.
        if my_context.contains(entry.dot()) {
            continue;
        }
        if let Err(at) = mine.binary_search_by(|m| m.dot().cmp(&entry.dot())) {
            mine.insert(at, entry);
        }
    }
}
