use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cart::{newer, Cart, LineEntry, LineKind, Refresh};
use crate::context::Dot;
use crate::ids::{Actor, CartId, OwnerKind, ProductId};
use crate::lifecycle::{Version, VersionLine, VersionSaved};
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
    /// A guest cart merged into a user cart at login: that cart's id.
    pub merged_into: Option<String>,
    /// The opaque version token (filled in by the node; empty from [`Cart::view`]).
    pub version: String,
    /// When the cart expires if unchanged, ms since the epoch (filled in by the node; 0: never).
    pub expires_at_ms: u64,
    /// What it costs, when the request asked (filled in by the node from [`crate::pricing`]).
    pub pricing: Option<crate::pricing::PricingSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineView {
    pub product_id: String,
    pub quantity: u64,
    /// As the storefront showed it when the item was added.
    pub snapshot: ItemSnapshot,
    /// The product's current data (`RefreshItems`), if the cart got any.
    #[serde(default)]
    pub current: Option<Current>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedView {
    pub product_id: String,
    pub quantity: u64,
    pub snapshot: ItemSnapshot,
    #[serde(default)]
    pub current: Option<Current>,
}

/// A product's current data as the latest refresh (highest catalogue version) gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    pub catalog_version: u64,
    pub snapshot: ItemSnapshot,
    pub available: bool,
    /// The current unit price (or currency) differs from the one at add time.
    pub price_changed: bool,
}

impl Current {
    fn of(added: &ItemSnapshot, r: &Refresh) -> Self {
        Current {
            catalog_version: r.catalog_version,
            snapshot: r.snapshot.clone(),
            available: r.available,
            price_changed: (r.snapshot.unit_price_minor, &r.snapshot.currency)
                != (added.unit_price_minor, &added.currency),
        }
    }
}

impl LineView {
    /// The snapshot the totals use: the current one when refreshed, else the add-time one.
    pub fn priced_snapshot(&self) -> &ItemSnapshot {
        self.current.as_ref().map_or(&self.snapshot, |c| &c.snapshot)
    }

    /// Whether the line counts in the totals (not marked unavailable by a refresh).
    pub fn available(&self) -> bool {
        self.current.as_ref().is_none_or(|c| c.available)
    }
}

/// A reset as folded: value, base totals, when, and the counters of the totals it observed.
type ResetRef<'a> = (u64, &'a BTreeMap<Actor, i64>, u64, &'a BTreeMap<Actor, u64>);

/// The entries of one line folded into quantity and winning snapshot.
#[derive(Default)]
pub(crate) struct LineAcc<'a> {
    /// Each node's latest running total (by dot, should there briefly be two). A few nodes
    /// write a line, so a vector searched linearly beats a map (this runs for every line of
    /// every reply).
    totals: Vec<(Actor, &'a Dot, i64)>,
    resets: Vec<ResetRef<'a>>,
    snapshot: Option<(&'a Dot, &'a ItemSnapshot)>,
    /// The refresh with the highest catalogue version (then dot).
    refresh: Option<(&'a Dot, &'a Refresh)>,
    /// Applications of requests applied more than once (see `lifecycle`): counted once.
    pub(crate) dups: Vec<Dup>,
}

/// One application of a request applied more than once to a line: who applied it, the counter
/// of the `Total` entry it wrote, and what it added.
#[derive(Debug, Clone)]
pub(crate) struct Dup {
    pub id: crate::lifecycle::RequestId,
    pub actor: Actor,
    pub total: u64,
    pub n: i64,
}

/// What applications of one request beyond the first add to a line after a reset that saw
/// `seen` (`None`: no reset, everything counts): those it did not observe count once in all,
/// or not at all if it observed one.
fn excess(dups: &[Dup], seen: Option<&BTreeMap<Actor, u64>>) -> i64 {
    let mut out = 0i64;
    for group in dups.chunk_by(|a, b| a.id == b.id) {
        let observed = |d: &Dup| seen.is_some_and(|s| s.get(&d.actor).is_some_and(|c| *c >= d.total));
        let unobserved: i64 = group
            .iter()
            .filter(|d| !observed(d))
            .map(|d| d.n)
            .fold(0, i64::saturating_add);
        let any_observed = group.iter().any(observed);
        out = out.saturating_add(if any_observed {
            unobserved
        } else {
            unobserved.saturating_sub(group[0].n)
        });
    }
    out
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
        self.refresh = None;
        self.dups.clear();
    }

    fn push(&mut self, e: &'a LineEntry) {
        match &e.kind {
            LineKind::Total(t) => match self.totals.iter_mut().find(|(a, _, _)| *a == e.dot.actor) {
                Some(slot) if newer(&e.dot, slot.1) => *slot = (e.dot.actor, &e.dot, *t),
                Some(_) => {}
                None => self.totals.push((e.dot.actor, &e.dot, *t)),
            },
            LineKind::Reset {
                value,
                base,
                at_ms,
                seen,
            } => self.resets.push((*value, base, *at_ms, seen)),
            LineKind::Snapshot(s) => {
                if self.snapshot.is_none_or(|(dot, _)| newer(&e.dot, dot)) {
                    self.snapshot = Some((&e.dot, s));
                }
            }
            LineKind::Refresh(r) => {
                let wins = |(dot, held): (&Dot, &Refresh)| {
                    (r.catalog_version, e.dot.counter, e.dot.actor) > (held.catalog_version, dot.counter, dot.actor)
                };
                if self.refresh.is_none_or(wins) {
                    self.refresh = Some((&e.dot, r));
                }
            }
        }
    }

    pub(crate) fn refresh(&self) -> Option<&'a Refresh> {
        self.refresh.map(|(_, r)| r)
    }

    /// Each node's running total.
    pub(crate) fn totals(&self) -> BTreeMap<Actor, i64> {
        self.totals.iter().map(|(a, _, t)| (*a, *t)).collect()
    }

    /// The counter of each node's running-total entry.
    pub(crate) fn seen(&self) -> BTreeMap<Actor, u64> {
        self.totals.iter().map(|(a, dot, _)| (*a, dot.counter)).collect()
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
            .map(|(value, base, _, seen)| {
                i64::try_from(*value)
                    .unwrap_or(i64::MAX)
                    .saturating_add(since(Some(base)))
                    .saturating_sub(excess(&self.dups, Some(seen)))
            })
            .max()
            .unwrap_or_else(|| since(None).saturating_sub(excess(&self.dups, None)))
    }

    pub(crate) fn last_reset_ms(&self) -> Option<u64> {
        self.resets.iter().map(|(_, _, at, _)| *at).max()
    }

    pub(crate) fn snapshot(&self) -> Option<&'a ItemSnapshot> {
        self.snapshot.map(|(_, s)| s)
    }

    pub(crate) fn visible(&self) -> bool {
        self.snapshot.is_some() && self.quantity() >= 1
    }
}

/// Calls `f` with each product's entries folded, in product id order: the one walk over a cart's
/// lines by product. This runs for every reply, so it sorts no strings per entry: entries are
/// grouped by a hash of their product id (a sort of integer pairs), and only the groups, one per
/// line, are sorted by product id. Within a product, entries keep their stored (dot) order, so
/// the fold's saturating sums add up in the same order as the fold of a single line
/// (`Cart::line_state`). One accumulator is reused for every line.
pub(crate) fn for_each_line<'a>(cart: &'a Cart, f: impl FnMut(&'a ProductId, &LineAcc<'a>)) {
    walk_lines(cart, false, f);
}

/// [`for_each_line`]; `sorting` takes the fallback grouping (tests compare the two).
fn walk_lines<'a>(cart: &'a Cart, sorting: bool, mut f: impl FnMut(&'a ProductId, &LineAcc<'a>)) {
    let entries = &cart.lines;
    let mut dups = cart.duplicate_applications();
    let mut acc = LineAcc::default();
    let mut fold = |group: &mut dyn Iterator<Item = &'a LineEntry>| {
        acc.clear();
        let mut product = None;
        for e in group {
            product = Some(&e.product_id);
            acc.push(e);
        }
        if let Some(product_id) = product {
            acc.dups = dups.remove(product_id).unwrap_or_default();
            f(product_id, &acc);
        }
    };
    let count = match u32::try_from(entries.len()) {
        Ok(count) if !sorting => count,
        _ => return by_sorting(entries, &mut fold),
    };
    // (hash of the product id, position): positions ascend within a hash, as dots do.
    let mut keyed: Vec<(u64, u32)> = (0..count)
        .map(|i| (product_hash(&entries[i as usize].product_id), i))
        .collect();
    keyed.sort_unstable();
    let mut groups: Vec<&[(u64, u32)]> = keyed.chunk_by(|a, b| a.0 == b.0).collect();
    let first = |g: &[(u64, u32)]| &entries[g[0].1 as usize].product_id;
    // Two products sharing a hash (xxh3, 64 bits: not expected in practice) would share a group:
    // then the cart takes the plain sort.
    if groups
        .iter()
        .any(|g| g.iter().any(|(_, i)| entries[*i as usize].product_id != *first(g)))
    {
        return by_sorting(entries, &mut fold);
    }
    groups.sort_unstable_by(|a, b| first(a).cmp(first(b)));
    for group in groups {
        fold(&mut group.iter().map(|(_, i)| &entries[*i as usize]));
    }
}

/// [`for_each_line`]'s grouping by a sort of the entries by product id, then dot.
fn by_sorting<'a>(entries: &'a [LineEntry], fold: &mut dyn FnMut(&mut dyn Iterator<Item = &'a LineEntry>)) {
    let mut sorted: Vec<&'a LineEntry> = entries.iter().collect();
    sorted.sort_unstable_by(|a, b| a.product_id.cmp(&b.product_id).then_with(|| a.dot.cmp(&b.dot)));
    for group in sorted.chunk_by(|a, b| a.product_id == b.product_id) {
        fold(&mut group.iter().copied());
    }
}

fn product_hash(product_id: &ProductId) -> u64 {
    xxhash_rust::xxh3::xxh3_64(product_id.as_str().as_bytes())
}

/// The view of `cart`; with `version_lines`, also each visible line as a [`Version`] holds it,
/// from the same walk over the lines (a GetCart reply carries both: see [`version`]).
pub(crate) fn build(cart: &Cart, cart_id: &CartId, mut version_lines: Option<&mut Vec<VersionLine>>) -> CartView {
    let mut lines: Vec<LineView> = Vec::new();
    // Refreshes of saved items live among the line entries of their product.
    let mut refreshed: BTreeMap<&ProductId, &Refresh> = BTreeMap::new();
    for_each_line(cart, |product_id, acc| {
        let quantity = acc.quantity();
        if let (true, Some(snapshot)) = (quantity >= 1, acc.snapshot()) {
            if let Some(version_lines) = version_lines.as_deref_mut() {
                version_lines.push(version_line(product_id, quantity, snapshot, acc));
            }
            lines.push(LineView {
                product_id: product_id.to_string(),
                quantity: quantity as u64,
                snapshot: snapshot.clone(),
                current: acc.refresh().map(|r| Current::of(snapshot, r)),
            });
        } else if let Some(r) = acc.refresh() {
            refreshed.insert(product_id, r);
        }
    });
    let mut subtotals: BTreeMap<&str, i128> = BTreeMap::new();
    for line in lines.iter().filter(|l| l.available()) {
        let priced = line.priced_snapshot();
        *subtotals.entry(&priced.currency).or_default() +=
            i128::from(line.quantity) * i128::from(priced.unit_price_minor);
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
            current: refreshed.get(product_id).map(|r| Current::of(&e.snapshot, r)),
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
        merged_into: cart.merged_into.as_ref().map(|m| m.into.to_string()),
        version: String::new(),
        expires_at_ms: 0,
        pricing: None,
    }
}

/// What a reader of `cart` sees, as a [`Version`]: its visible `lines` (from [`build`] or
/// [`for_each_line`] with [`version_line`]), saved items and coupons.
pub(crate) fn version(cart: &Cart, cart_id: &CartId, lines: Vec<VersionLine>) -> Version {
    Version {
        cart: Version::cart_hash(cart_id),
        at_ms: cart.touched_at_ms,
        context: cart.context.clone(),
        lines,
        saved: cart
            .saved_products()
            .into_iter()
            .map(|(product_id, e)| VersionSaved {
                product_id: product_id.clone(),
                quantity: e.quantity,
                snapshot: e.snapshot.clone(),
            })
            .collect(),
        coupons: cart.coupon_codes().into_iter().cloned().collect(),
    }
}

/// A visible line as a [`Version`] holds it.
pub(crate) fn version_line(
    product_id: &ProductId,
    quantity: i64,
    snapshot: &ItemSnapshot,
    acc: &LineAcc<'_>,
) -> VersionLine {
    VersionLine {
        product_id: product_id.clone(),
        quantity: quantity as u64,
        snapshot: snapshot.clone(),
        totals: acc.totals(),
        seen: acc.seen(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{self, SnapshotInput};
    use crate::Limits;

    /// `for_each_line` folds a line as the single-line fold of the write checks does (its entries
    /// in stored order), saturating sums included: lines whose running totals saturate `i64` get
    /// the same quantity from both. (Enough lines that the sort is not an insertion sort: without
    /// the tie-break on dots it reorders a line's totals.)
    #[test]
    fn for_each_line_folds_like_the_single_line_fold() {
        let limits = Limits::DEFAULT;
        let snapshot = validate::snapshot(
            SnapshotInput {
                name: "Espresso".into(),
                unit_price_minor: 1299,
                currency: "EUR".into(),
                image_url: String::new(),
                attributes: BTreeMap::new(),
            },
            &limits,
        )
        .expect("valid snapshot");
        let mut cart = Cart::default();
        let mut counters = [0u64; 4];
        for p in 0..40 {
            let product_id = ProductId::parse(&format!("p{p:02}"), &limits).expect("valid product id");
            let entries = [
                (1, LineKind::Snapshot(snapshot.clone())),
                (1, LineKind::Total(i64::MAX)),
                (2, LineKind::Total(1)),
                (3, LineKind::Total(-1)),
            ];
            for (actor, kind) in entries {
                counters[actor] += 1;
                let dot = Dot {
                    actor: Actor(actor as u64),
                    counter: counters[actor],
                };
                cart.context.insert(dot);
                cart.lines.push(LineEntry {
                    product_id: product_id.clone(),
                    dot,
                    kind,
                });
            }
        }
        cart.lines.sort_by_key(|e| e.dot);
        let mut products: Vec<&ProductId> = cart.lines.iter().map(|e| &e.product_id).collect();
        products.sort();
        products.dedup();
        let expected: Vec<(String, i64)> = products
            .into_iter()
            .map(|p| {
                let acc = LineAcc::from_entries(cart.line_entries().filter(|e| &e.product_id == p));
                (p.to_string(), acc.quantity())
            })
            .collect();
        let mut folded = Vec::new();
        for_each_line(&cart, |p, acc| folded.push((p.to_string(), acc.quantity())));
        assert_eq!(folded, expected);
        // The grouping by plain sort (taken if two products' hashes collide) folds the same.
        let mut sorted = Vec::new();
        walk_lines(&cart, true, |p, acc| sorted.push((p.to_string(), acc.quantity())));
        assert_eq!(sorted, expected);
    }
}
