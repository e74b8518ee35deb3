use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;

use crdts::orswot::Op;
use crdts::{CmRDT, CvRDT, OrdDot, Orswot, VClock};
use serde::{Deserialize, Serialize};

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
    pub dot: OrdDot<Actor>,
    pub kind: LineKind,
}

/// An item saved for later, with the quantity it had in the cart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SavedEntry {
    pub product_id: ProductId,
    pub dot: OrdDot<Actor>,
    pub snapshot: ItemSnapshot,
    pub quantity: u64,
}

/// The cart CRDT. Field order is part of the storage format (see [`crate::codec`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    pub(crate) lines: Orswot<LineEntry, Actor>,
    pub(crate) saved: Orswot<SavedEntry, Actor>,
    pub(crate) coupons: Orswot<CouponCode, Actor>,
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

/// One primitive change inside a [`CartDelta`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaOp {
    Lines(Op<LineEntry, Actor>),
    Saved(Op<SavedEntry, Actor>),
    Coupons(Op<CouponCode, Actor>),
    Touch(u64),
}

/// The primitive changes one [`Cart::apply`] made, in order. Delivering every delta of an actor
/// in order (per-actor FIFO) reaches the same state as merging the whole cart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartDelta {
    pub ops: Vec<DeltaOp>,
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

    /// Applies `op` as `ctx.actor`. Preconditions are all checked before anything changes, so an
    /// error leaves the cart exactly as it was.
    pub fn apply(&mut self, ctx: &WriteCtx<'_>, op: &CartOp) -> Result<CartDelta, CartError> {
        self.check(ctx.limits, op)?;
        let self_touched = self.touched_at_ms;
        let mut w = Writer {
            cart: self,
            actor: ctx.actor,
            now_ms: ctx.now_ms,
            delta: CartDelta::default(),
        };
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
        Ok(w.delta)
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
        self.lines.merge(other.lines);
        self.saved.merge(other.saved);
        self.coupons.merge(other.coupons);
        self.touched_at_ms = self.touched_at_ms.max(other.touched_at_ms);
    }

    /// Applies a delta produced by [`Cart::apply`] on another replica (per-actor FIFO).
    pub fn apply_delta(&mut self, delta: &CartDelta) {
        for op in &delta.ops {
            match op {
                DeltaOp::Lines(op) => self.lines.apply(op.clone()),
                DeltaOp::Saved(op) => self.saved.apply(op.clone()),
                DeltaOp::Coupons(op) => self.coupons.apply(op.clone()),
                DeltaOp::Touch(at) => self.touched_at_ms = self.touched_at_ms.max(*at),
            }
        }
    }

    /// The read model: visible lines sorted by product id, saved items, coupons, subtotals.
    pub fn view(&self, cart_id: &CartId) -> CartView {
        view::build(self, cart_id)
    }

    pub(crate) fn line_entries(&self) -> impl Iterator<Item = &LineEntry> {
        self.lines.iter().map(|ctx| ctx.val)
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
        view::line_accs(self)
            .into_iter()
            .filter(|(_, acc)| acc.snapshot().is_some())
            .map(|(p, acc)| (p.to_string(), acc.quantity()))
            .collect()
    }

    fn products_with_snapshot(&self) -> Vec<ProductId> {
        view::line_accs(self)
            .into_iter()
            .filter(|(_, acc)| acc.snapshot().is_some())
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn visible_line_count(&self) -> usize {
        view::line_accs(self).values().filter(|acc| acc.visible()).count()
    }

    pub(crate) fn saved_products(&self) -> BTreeMap<&ProductId, &SavedEntry> {
        let mut winners: BTreeMap<&ProductId, &SavedEntry> = BTreeMap::new();
        for ctx in self.saved.iter() {
            let entry = ctx.val;
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
        let mut codes: Vec<&CouponCode> = self.coupons.iter().map(|ctx| ctx.val).collect();
        codes.sort();
        codes
    }

    fn has_coupon(&self, code: &CouponCode) -> bool {
        self.coupons.contains(code).val
    }
}

/// Deterministic "latest" among concurrent write-once entries: higher counter, then actor.
pub(crate) fn newer(a: &OrdDot<Actor>, b: &OrdDot<Actor>) -> bool {
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
    delta: CartDelta,
}

impl Writer<'_> {
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
        let stale: Vec<ProductId> = view::line_accs(self.cart)
            .into_iter()
            .filter(|(_, acc)| acc.snapshot().is_none())
            .filter(|(_, acc)| {
                acc.last_reset_ms()
                    .is_none_or(|at| at.saturating_add(RESIDUE_GRACE_MS) < self.now_ms)
            })
            .map(|(p, _)| p.clone())
            .collect();
        for product_id in stale {
            self.remove_lines(|e| e.product_id == product_id);
        }
    }

    fn add_line(&mut self, product_id: &ProductId, kind: LineKind) {
        let op = add_entry(&mut self.cart.lines, self.actor, |dot| LineEntry {
            product_id: product_id.clone(),
            dot,
            kind,
        });
        self.delta.ops.push(DeltaOp::Lines(op));
    }

    fn add_saved(&mut self, product_id: &ProductId, snapshot: ItemSnapshot, quantity: u64) {
        let op = add_entry(&mut self.cart.saved, self.actor, |dot| SavedEntry {
            product_id: product_id.clone(),
            dot,
            snapshot,
            quantity,
        });
        self.delta.ops.push(DeltaOp::Saved(op));
    }

    fn add_coupon(&mut self, code: &CouponCode) {
        let op = add_entry(&mut self.cart.coupons, self.actor, |_| code.clone());
        self.delta.ops.push(DeltaOp::Coupons(op));
    }

    fn remove_lines(&mut self, pred: impl Fn(&LineEntry) -> bool) {
        if let Some(op) = remove_entries(&mut self.cart.lines, pred) {
            self.delta.ops.push(DeltaOp::Lines(op));
        }
    }

    fn remove_saved(&mut self, pred: impl Fn(&SavedEntry) -> bool) {
        if let Some(op) = remove_entries(&mut self.cart.saved, pred) {
            self.delta.ops.push(DeltaOp::Saved(op));
        }
    }

    fn remove_coupons(&mut self, pred: impl Fn(&CouponCode) -> bool) {
        if let Some(op) = remove_entries(&mut self.cart.coupons, pred) {
            self.delta.ops.push(DeltaOp::Coupons(op));
        }
    }

    fn touch(&mut self, now_ms: u64) {
        self.cart.touched_at_ms = self.cart.touched_at_ms.max(now_ms);
        self.delta.ops.push(DeltaOp::Touch(now_ms));
    }
}

/// Adds a member built from its own fresh dot and applies the op locally.
fn add_entry<M>(set: &mut Orswot<M, Actor>, actor: Actor, make: impl FnOnce(OrdDot<Actor>) -> M) -> Op<M, Actor>
where
    M: Clone + Hash + Eq + Debug,
{
    let ctx = set.read_ctx().derive_add_ctx(actor);
    let member = make(OrdDot::from(ctx.dot));
    let op = set.add(member, ctx);
    set.apply(op.clone());
    op
}

/// Removes the observed members matching `pred`. The remove clock is the union of those
/// members' own dots, not the set's whole clock, so it removes nothing it did not observe.
fn remove_entries<M>(set: &mut Orswot<M, Actor>, pred: impl Fn(&M) -> bool) -> Option<Op<M, Actor>>
where
    M: Clone + Hash + Eq + Debug,
{
    let mut clock: VClock<Actor> = VClock::new();
    let mut members = Vec::new();
    for ctx in set.iter() {
        if pred(ctx.val) {
            clock.merge(ctx.rm_clock);
            members.push(ctx.val.clone());
        }
    }
    if members.is_empty() {
        return None;
    }
    let op = Op::Rm { clock, members };
    set.apply(op.clone());
    Some(op)
}
