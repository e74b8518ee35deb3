use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cart::{newer, Cart, LineEntry, LineKind};
use crate::context::Dot;
use crate::ids::{Actor, CartId, OwnerKind, ProductId};
use crate::snapshot::{ItemSnapshot, Money};

/// What a storefront renders: the cart's read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartView {
    pub cart_id: String,
    pub owner: OwnerKind,
    /// Lines with quantity ≥ 1, sorted by product id.
    pub lines: Vec<LineView>,
    /// Saved-for-later items, sorted by product id.
    pub saved: Vec<SavedView>,
    /// Applied coupon codes, sorted.
    pub coupons: Vec<String>,
    /// Σ quantity × unit price per currency, sorted by currency code.
    pub subtotals: Vec<Money>,
    pub touched_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineView {
    pub product_id: String,
    pub quantity: u64,
    pub snapshot: ItemSnapshot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedView {
    pub product_id: String,
    pub quantity: u64,
    pub snapshot: ItemSnapshot,
}

/// The entries of one line folded into quantity and winning snapshot.
#[derive(Default)]
pub(crate) struct LineAcc<'a> {
    /// Each node's latest running total (by dot, should there briefly be two). A few nodes
    /// write a line, so a vector searched linearly beats a map (this runs for every line of
    /// every reply).
    totals: Vec<(Actor, &'a Dot, i64)>,
    resets: Vec<(u64, &'a BTreeMap<Actor, i64>, u64)>,
    snapshot: Option<(&'a Dot, &'a ItemSnapshot)>,
}

impl<'a> LineAcc<'a> {
    pub(crate) fn from_entries(entries: impl Iterator<Item = &'a LineEntry>) -> Self {
        let mut acc = LineAcc::default();
        for e in entries {
            acc.push(e);
        }
        acc
    }

    fn clear(&mut self) {
        self.totals.clear();
        self.resets.clear();
        self.snapshot = None;
    }

    fn push(&mut self, e: &'a LineEntry) {
        match &e.kind {
            LineKind::Total(t) => match self.totals.iter_mut().find(|(a, _, _)| *a == e.dot.actor) {
                Some(slot) if newer(&e.dot, slot.1) => *slot = (e.dot.actor, &e.dot, *t),
                Some(_) => {}
                None => self.totals.push((e.dot.actor, &e.dot, *t)),
            },
            LineKind::Reset { value, base, at_ms } => self.resets.push((*value, base, *at_ms)),
            LineKind::Snapshot(s) => {
                if self.snapshot.is_none_or(|(dot, _)| newer(&e.dot, dot)) {
                    self.snapshot = Some((&e.dot, s));
                }
            }
        }
    }

    /// Each node's running total.
    pub(crate) fn totals(&self) -> BTreeMap<Actor, i64> {
        self.totals.iter().map(|(a, _, t)| (*a, *t)).collect()
    }

    /// `max over resets of (value + growth of totals since its base)`, or the sum of totals when
    /// nothing was ever reset. May be ≤ 0 after decrements.
    pub(crate) fn quantity(&self) -> i64 {
        let since = |base: Option<&BTreeMap<Actor, i64>>| -> i64 {
            self.totals
                .iter()
                .map(|(a, _, t)| t.saturating_sub(base.and_then(|b| b.get(a).copied()).unwrap_or(0)))
                .fold(0i64, i64::saturating_add)
        };
        self.resets
            .iter()
            .map(|(value, base, _)| {
                i64::try_from(*value)
                    .unwrap_or(i64::MAX)
                    .saturating_add(since(Some(base)))
            })
            .max()
            .unwrap_or_else(|| since(None))
    }

    pub(crate) fn last_reset_ms(&self) -> Option<u64> {
        self.resets.iter().map(|(_, _, at)| *at).max()
    }

    pub(crate) fn snapshot(&self) -> Option<&'a ItemSnapshot> {
        self.snapshot.map(|(_, s)| s)
    }

    pub(crate) fn visible(&self) -> bool {
        self.snapshot.is_some() && self.quantity() >= 1
    }
}

pub(crate) fn line_accs(cart: &Cart) -> BTreeMap<&ProductId, LineAcc<'_>> {
    let mut accs: BTreeMap<&ProductId, LineAcc<'_>> = BTreeMap::new();
    for e in cart.line_entries() {
        accs.entry(&e.product_id).or_default().push(e);
    }
    accs
}

/// Calls `f` with each product's entries folded, in product id order: what [`line_accs`] holds,
/// without building a map. One sort of entry references and one accumulator reused for every
/// line: this runs for every reply, so it allocates twice per cart, not per line.
pub(crate) fn for_each_line<'a>(cart: &'a Cart, mut f: impl FnMut(&'a ProductId, &LineAcc<'a>)) {
    let mut entries: Vec<&'a LineEntry> = cart.line_entries().collect();
    // Folding is order-independent (the newest dot wins, resets take the max), so unstable is fine.
    entries.sort_unstable_by(|a, b| a.product_id.cmp(&b.product_id));
    let mut acc = LineAcc::default();
    for group in entries.chunk_by(|a, b| a.product_id == b.product_id) {
        acc.clear();
        for e in group {
            acc.push(e);
        }
        f(&group[0].product_id, &acc);
    }
}

pub(crate) fn build(cart: &Cart, cart_id: &CartId) -> CartView {
    let mut lines: Vec<LineView> = Vec::new();
    for_each_line(cart, |product_id, acc| {
        let quantity = acc.quantity();
        if let (true, Some(snapshot)) = (quantity >= 1, acc.snapshot()) {
            lines.push(LineView {
                product_id: product_id.to_string(),
                quantity: quantity as u64,
                snapshot: snapshot.clone(),
            });
        }
    });
    let mut subtotals: BTreeMap<&str, i128> = BTreeMap::new();
    for line in &lines {
        *subtotals.entry(&line.snapshot.currency).or_default() +=
            i128::from(line.quantity) * i128::from(line.snapshot.unit_price_minor);
    }
    let subtotals = subtotals
        .into_iter()
        .map(|(currency, amount)| Money {
            currency: currency.to_owned(),
            amount_minor: i64::try_from(amount).unwrap_or(i64::MAX),
        })
        .collect();
    let saved = cart
        .saved_products()
        .into_iter()
        .map(|(product_id, e)| SavedView {
            product_id: product_id.to_string(),
            quantity: e.quantity,
            snapshot: e.snapshot.clone(),
        })
        .collect();
    CartView {
        cart_id: cart_id.to_string(),
        owner: cart_id.owner(),
        lines,
        saved,
        coupons: cart.coupon_codes().into_iter().map(|c| c.to_string()).collect(),
        subtotals,
        touched_at_ms: cart.touched_at_ms,
    }
}
