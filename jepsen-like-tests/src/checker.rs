//! The checker: a pure function of the history and of every owner replica's final state.
//!
//! - *lost acknowledged adds*: an add acknowledged by the cluster, missing from some owner
//!   replica after heal and convergence, with no remove of that item that may have taken effect.
//!   Must be 0 (DESIGN §7 invariant 1).
//! - *resurrected removes*: an item present at the end although an acknowledged remove of it
//!   started after its add had finished and taken effect (acknowledged, or seen by a read that
//!   ended before the remove began). Must be 0.
//! - *phantom items*: an item present that no client tried to add to that cart, or whose every
//!   add was refused (a refusal must change nothing). Must be 0.
//! - *quantity out of range*: a line whose final quantity is not the sum of the acknowledged
//!   deltas plus some subset of the unknown ones (the pn-counter rule, checked as the range
//!   [acked + Σ negative unknown, acked + Σ positive unknown]). Must be 0 (invariant 4).
//! - *divergent carts*: owner replicas whose canonical encodings differ. Must be 0 (invariant 3).
//! - *merge*: an acknowledged add to a guest cart found neither in its user cart nor in the guest
//!   cart (unless the guest cart may have expired), and a merged line counted twice (quantity
//!   above 1 for a unique item). Must be 0.
//! - *checkout*: an item in two orders (two request ids), an ordered item the version did not
//!   show, an acknowledged add neither in the cart nor in an order (nor seen by a checkout whose
//!   outcome is unknown), an ordered item back in the cart. Must be 0.
//! - *expired carts back*: a cart of the expiry workload certainly expired (and swept twice
//!   since) yet held by a replica. Must be 0.
//! - *availability*: writes acknowledged ÷ writes attempted while a fault was active (reported),
//!   for clients attached to one node and for clients that fail over, separately.
//!
//! Attempts of a write that share a request id are one request (the cluster applies an id
//! once): acknowledged if any attempt was, refused if every attempt was, else unknown.

use std::collections::{BTreeMap, BTreeSet};

use cart_crdt::REQUESTS_PER_CART_MAX;

use serde::{Deserialize, Serialize};

use crate::history::{History, Op, OpKind, Outcome};

/// What one owner node holds for one cart at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    pub cart: String,
    pub node: String,
    pub present: bool,
    /// Canonical encoding (empty when absent).
    pub canonical: Vec<u8>,
    /// Raw quantity per line with an item snapshot.
    pub quantities: BTreeMap<String, i64>,
}

impl ReplicaState {
    fn has(&self, item: &str) -> bool {
        self.quantities.get(item).is_some_and(|q| *q >= 1)
    }
}

/// Counts for one workload, Jepsen style.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub attempted: usize,
    pub acknowledged: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Acknowledged writes whose effect is in every owner replica at the end.
    pub survived: usize,
    pub lost: usize,
}

/// A line of the quantity workload whose final value broke the counter rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantityViolation {
    pub cart: String,
    pub line: String,
    pub node: String,
    pub value: i64,
    pub low: i64,
    pub high: i64,
}

/// The checker's verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub adds: Counts,
    pub removes: Counts,
    pub adjustments: Counts,
    pub reads: Counts,
    pub lost_items: Vec<String>,
    pub resurrected_items: Vec<String>,
    pub phantom_items: Vec<String>,
    pub quantity_violations: Vec<QuantityViolation>,
    pub divergent_carts: Vec<String>,
    /// Quantity requests still unknown after their retries (the counter is then a range).
    #[serde(default)]
    pub quantity_unresolved: usize,
    /// Quantity requests whose first attempt was unknown, settled by a retry with their id.
    #[serde(default)]
    pub quantity_resolved: usize,
    /// Of those, the ones answered only after more than [`REQUESTS_PER_CART_MAX`] later
    /// requests to their cart (past the exactly-once window: counted as once or twice).
    #[serde(default)]
    pub quantity_late: usize,
    #[serde(default)]
    pub merge_lost: Vec<String>,
    #[serde(default)]
    pub merge_doubled: Vec<String>,
    #[serde(default)]
    pub checkout_twice: Vec<String>,
    #[serde(default)]
    pub checkout_not_in_version: Vec<String>,
    #[serde(default)]
    pub checkout_lost: Vec<String>,
    #[serde(default)]
    pub checkout_back: Vec<String>,
    #[serde(default)]
    pub expired_back: Vec<String>,
    /// Writes started while a fault was active by clients attached to one node:
    /// (attempted, acknowledged).
    pub writes_during_faults: (usize, usize),
    /// The same for clients that fail over.
    #[serde(default)]
    pub failover_writes_during_faults: (usize, usize),
    /// Checkouts (any client), which are strict and so less available during faults.
    #[serde(default)]
    pub checkouts_during_faults: (usize, usize),
    /// Of those writes, how many a node refused for what the cart holds (a remove of an item
    /// already gone: an answer, not an outage): attached, failing over, checkouts.
    #[serde(default)]
    pub refused_during_faults: (usize, usize, usize),
    pub valid: bool,
}

impl Verdict {
    pub fn availability(&self) -> Option<f64> {
        let (attempted, acked) = self.writes_during_faults;
        (attempted > 0).then(|| acked as f64 / attempted as f64)
    }

    pub fn failover_availability(&self) -> Option<f64> {
        let (attempted, acked) = self.failover_writes_during_faults;
        (attempted > 0).then(|| acked as f64 / attempted as f64)
    }
}

/// How guest carts expire in the run (the simulation's short ttl), for the checker to excuse
/// what expiry took and to find expired carts that came back. Times in µs of the run.
#[derive(Debug, Clone, Copy)]
pub struct ExpiryRule {
    pub guest_ttl_us: u64,
    pub skew_us: u64,
    pub sweep_us: u64,
    /// When the final states were read.
    pub end_us: u64,
}

/// One request: its attempts folded (see the module doc).
struct Request<'a> {
    first: &'a Op,
    outcome: Outcome,
    attempts: usize,
    /// When the first acknowledged attempt started.
    acked_at: Option<u64>,
}

/// Folds attempts sharing a request id; ops without one are requests of their own.
fn requests<'a>(ops: impl Iterator<Item = &'a Op>) -> Vec<Request<'a>> {
    let mut out: Vec<Request<'a>> = Vec::new();
    let mut by_id: BTreeMap<&str, usize> = BTreeMap::new();
    for op in ops {
        let slot = op.request_id.as_deref().and_then(|id| by_id.get(id).copied());
        match slot {
            Some(i) => {
                let r = &mut out[i];
                r.attempts += 1;
                if op.outcome == Outcome::Ok && r.acked_at.is_none() {
                    r.acked_at = Some(op.start_us);
                }
                r.outcome = match (r.outcome, op.outcome) {
                    (Outcome::Ok, _) | (_, Outcome::Ok) => Outcome::Ok,
                    (Outcome::Fail, Outcome::Fail) => Outcome::Fail,
                    _ => Outcome::Unknown,
                };
            }
            None => {
                if let Some(id) = op.request_id.as_deref() {
                    by_id.insert(id, out.len());
                }
                out.push(Request {
                    first: op,
                    outcome: op.outcome,
                    attempts: 1,
                    acked_at: (op.outcome == Outcome::Ok).then_some(op.start_us),
                });
            }
        }
    }
    out
}

fn count<'a>(ops: impl Iterator<Item = &'a Op>) -> Counts {
    let mut c = Counts::default();
    for op in ops {
        c.attempted += 1;
        match op.outcome {
            Outcome::Ok => c.acknowledged += 1,
            Outcome::Fail => c.failed += 1,
            Outcome::Unknown => c.unknown += 1,
        }
    }
    c
}

/// Whether every cart's owners hold byte-identical states (`states` grouped by cart).
pub fn converged(states: &[ReplicaState]) -> bool {
    states
        .windows(2)
        .all(|w| w[0].cart != w[1].cart || w[0].canonical == w[1].canonical)
}

/// Checks a history against the final replica states (every owner of every cart the history
/// touched; a cart with no state listed counts as absent everywhere).
pub fn check(history: &History, finals: &[ReplicaState]) -> Verdict {
    check_with(history, finals, None)
}

/// [`check`] of a run whose guest carts expire as `expiry` says.
pub fn check_with(history: &History, finals: &[ReplicaState], expiry: Option<ExpiryRule>) -> Verdict {
    let mut by_cart: BTreeMap<&str, Vec<&ReplicaState>> = BTreeMap::new();
    for state in finals {
        by_cart.entry(state.cart.as_str()).or_default().push(state);
    }
    let replicas = |cart: &str| by_cart.get(cart).map(Vec::as_slice).unwrap_or(&[]);
    let set_ops = || history.ops.iter().filter(|o| o.workload == "cart-set");
    let mut v = Verdict::default();

    // cart-set: adds and removes by (cart, item).
    let mut removes: BTreeMap<(&str, &str), Vec<&Op>> = BTreeMap::new();
    let mut adds: BTreeMap<(&str, &str), Vec<&Op>> = BTreeMap::new();
    for op in set_ops() {
        match &op.kind {
            OpKind::Remove { item } => removes.entry((op.cart.as_str(), item.as_str())).or_default().push(op),
            OpKind::Add { item, .. } => adds.entry((op.cart.as_str(), item.as_str())).or_default().push(op),
            _ => {}
        }
    }
    v.adds = count(set_ops().filter(|o| matches!(o.kind, OpKind::Add { .. })));
    v.removes = count(set_ops().filter(|o| matches!(o.kind, OpKind::Remove { .. })));
    v.reads = count(history.ops.iter().filter(|o| matches!(o.kind, OpKind::Read { .. })));
    for (&(cart, item), ops) in &adds {
        if !ops.iter().any(|o| o.outcome == Outcome::Ok) {
            continue;
        }
        let may_be_removed = removes
            .get(&(cart, item))
            .is_some_and(|rs| rs.iter().any(|r| r.outcome != Outcome::Fail));
        let states = replicas(cart);
        let everywhere = !states.is_empty() && states.iter().all(|s| s.has(item));
        if everywhere || may_be_removed {
            v.adds.survived += 1;
        } else {
            v.adds.lost += 1;
            v.lost_items.push(format!("{cart}/{item}"));
        }
    }
    // When each item was first seen by a successful read (then its one add had taken effect,
    // whatever that add's outcome said).
    let mut first_seen: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for op in set_ops().filter(|o| o.outcome == Outcome::Ok) {
        if let OpKind::Read { seen } = &op.kind {
            for item in seen {
                let at = first_seen.entry((op.cart.as_str(), item.as_str())).or_insert(op.end_us);
                *at = (*at).min(op.end_us);
            }
        }
    }
    for ((cart, item), rs) in &removes {
        let present = replicas(cart).iter().any(|s| s.has(item));
        let add_ops = adds.get(&(*cart, *item)).map(Vec::as_slice).unwrap_or(&[]);
        // Resurrected: an acknowledged remove that started after the item's add had taken effect
        // (acknowledged before, or seen by a read that ended before), with no add still running,
        // yet the item is back. Items are unique: one add each.
        let resurrected = present
            && rs.iter().any(|r| {
                let settled = add_ops.iter().all(|a| a.end_us < r.start_us);
                let acked_before = !add_ops.is_empty() && add_ops.iter().all(|a| a.outcome == Outcome::Ok);
                let seen_before = first_seen.get(&(*cart, *item)).is_some_and(|t| *t < r.start_us);
                r.outcome == Outcome::Ok && settled && (acked_before || seen_before)
            });
        if resurrected {
            v.resurrected_items.push(format!("{cart}/{item}"));
        }
        if rs.iter().any(|r| r.outcome == Outcome::Ok) {
            if present {
                v.removes.lost += 1;
            } else {
                v.removes.survived += 1;
            }
        }
    }
    let set_carts: BTreeSet<&str> = set_ops().map(|o| o.cart.as_str()).collect();
    for cart in &set_carts {
        let mut present: BTreeSet<&str> = BTreeSet::new();
        for state in replicas(cart) {
            present.extend(
                state
                    .quantities
                    .iter()
                    .filter(|(_, q)| **q >= 1)
                    .map(|(i, _)| i.as_str()),
            );
        }
        for item in present {
            let attempted = adds
                .get(&(*cart, item))
                .is_some_and(|ops| ops.iter().any(|o| o.outcome != Outcome::Fail));
            if !attempted {
                v.phantom_items.push(format!("{cart}/{item}"));
            }
        }
    }

    // quantity: per line, the acknowledged sum and the unknown deltas.
    let qty_ops = || history.ops.iter().filter(|o| o.workload == "quantity");
    v.adjustments = count(qty_ops().filter(|o| o.is_write()));
    let mut lines: BTreeMap<(&str, &str), (i64, i64, i64)> = BTreeMap::new();
    // Start times of the quantity requests that may have been applied, by cart (sorted).
    let mut cart_starts: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for op in qty_ops().filter(|o| o.is_write() && o.outcome != Outcome::Fail) {
        cart_starts.entry(op.cart.as_str()).or_default().push(op.start_us);
    }
    for starts in cart_starts.values_mut() {
        starts.sort_unstable();
    }
    for request in requests(qty_ops().filter(|o| o.is_write())) {
        let op = request.first;
        let (item, delta) = match &op.kind {
            OpKind::Add { item, delta } | OpKind::Adjust { item, delta } => (item.as_str(), *delta),
            _ => continue,
        };
        if request.attempts > 1 && op.outcome == Outcome::Unknown && request.outcome != Outcome::Unknown {
            v.quantity_resolved += 1;
        }
        v.quantity_unresolved += usize::from(request.outcome == Outcome::Unknown);
        // A retry answered after more requests to the cart than it remembers ids for is past
        // the exactly-once window: the first attempt may have been applied too.
        let late = op.outcome == Outcome::Unknown
            && request.acked_at.is_some_and(|at| {
                let starts = &cart_starts[op.cart.as_str()];
                let between = starts.partition_point(|&s| s < at);
                between.saturating_sub(starts.partition_point(|&s| s <= op.start_us)) > REQUESTS_PER_CART_MAX
            });
        v.quantity_late += usize::from(late);
        let (acked, neg, pos) = lines.entry((op.cart.as_str(), item)).or_default();
        match request.outcome {
            Outcome::Ok if late && delta < 0 => (*acked, *neg) = (*acked + delta, *neg + delta),
            Outcome::Ok if late => (*acked, *pos) = (*acked + delta, *pos + delta),
            Outcome::Ok => *acked += delta,
            Outcome::Unknown if delta < 0 => *neg += delta,
            Outcome::Unknown => *pos += delta,
            Outcome::Fail => {}
        }
    }
    let mut qty_ok = 0;
    for (&(cart, line), &(acked, neg, pos)) in &lines {
        let (low, high) = (acked + neg, acked + pos);
        let states = replicas(cart);
        let mut ok = true;
        if states.is_empty() && !(low..=high).contains(&0) {
            ok = false;
            v.quantity_violations.push(QuantityViolation {
                cart: cart.into(),
                line: line.into(),
                node: "-".into(),
                value: 0,
                low,
                high,
            });
        }
        for state in states {
            let value = state.quantities.get(line).copied().unwrap_or(0);
            if !(low..=high).contains(&value) {
                ok = false;
                v.quantity_violations.push(QuantityViolation {
                    cart: cart.into(),
                    line: line.into(),
                    node: state.node.clone(),
                    value,
                    low,
                    high,
                });
            }
        }
        qty_ok += usize::from(ok);
    }
    v.adjustments.survived = qty_ok;
    v.adjustments.lost = lines.len() - qty_ok;

    // Convergence: every owner of a cart holds the same canonical bytes (a guest cart that may
    // have expired is deleted by each replica's sweeper in its own time: not compared).
    let touched = last_ok_touch(history);
    let may_have_expired = |cart: &str| possibly_expired(expiry, &touched, cart);
    for (cart, states) in &by_cart {
        if may_have_expired(cart) {
            continue;
        }
        if states.windows(2).any(|w| w[0].canonical != w[1].canonical) {
            v.divergent_carts.push((*cart).to_owned());
        }
    }

    check_merge(history, &replicas, expiry, &mut v);
    check_checkout(history, &replicas, &mut v);
    if let Some(rule) = expiry {
        let mut last_end: BTreeMap<&str, u64> = BTreeMap::new();
        for op in history
            .ops
            .iter()
            .filter(|o| o.workload == "expiry" && o.outcome != Outcome::Fail)
        {
            let end = last_end.entry(op.cart.as_str()).or_default();
            *end = (*end).max(op.end_us);
        }
        for (cart, end) in last_end {
            let swept_by = end + rule.guest_ttl_us + rule.skew_us + 2 * rule.sweep_us;
            if swept_by <= rule.end_us && replicas(cart).iter().any(|s| s.present) {
                v.expired_back.push(cart.to_owned());
            }
        }
    }

    // Availability while faults were active.
    let during = |op: &Op| {
        history
            .faults
            .iter()
            .any(|f| op.start_us >= f.start_us && op.start_us < f.end_us)
    };
    for op in history.ops.iter().filter(|o| o.is_write() && during(o)) {
        let refused = usize::from(op.outcome == Outcome::Fail);
        let counts = match (op.failover, &op.kind) {
            // Strict by design (a majority read, W owners): reported apart.
            (_, OpKind::Checkout { .. }) => {
                v.refused_during_faults.2 += refused;
                &mut v.checkouts_during_faults
            }
            (true, _) => {
                v.refused_during_faults.1 += refused;
                &mut v.failover_writes_during_faults
            }
            (false, _) => {
                v.refused_during_faults.0 += refused;
                &mut v.writes_during_faults
            }
        };
        counts.0 += 1;
        counts.1 += usize::from(op.outcome == Outcome::Ok);
    }

    v.valid = v.lost_items.is_empty()
        && v.resurrected_items.is_empty()
        && v.phantom_items.is_empty()
        && v.quantity_violations.is_empty()
        && v.divergent_carts.is_empty()
        && v.merge_lost.is_empty()
        && v.merge_doubled.is_empty()
        && v.checkout_twice.is_empty()
        && v.checkout_not_in_version.is_empty()
        && v.checkout_lost.is_empty()
        && v.checkout_back.is_empty()
        && v.expired_back.is_empty();
    v
}

/// The latest start of an acknowledged write to each cart (a merge writes its guest cart too):
/// the cart was last changed no earlier.
fn last_ok_touch(history: &History) -> BTreeMap<&str, u64> {
    let mut touched: BTreeMap<&str, u64> = BTreeMap::new();
    for op in history.ops.iter().filter(|o| o.is_write() && o.outcome == Outcome::Ok) {
        for cart in [Some(op.cart.as_str()), op.merged_guest()].into_iter().flatten() {
            let at = touched.entry(cart).or_default();
            *at = (*at).max(op.start_us);
        }
    }
    touched
}

/// Whether a guest cart of `history` may have expired by `rule.end_us`.
pub fn possibly_expired_cart(history: &History, rule: ExpiryRule, cart: &str) -> bool {
    possibly_expired(Some(rule), &last_ok_touch(history), cart)
}

/// Whether a guest cart may have expired by the end of the run.
fn possibly_expired(expiry: Option<ExpiryRule>, touched: &BTreeMap<&str, u64>, cart: &str) -> bool {
    cart.starts_with("guest:")
        && expiry.is_some_and(|rule| {
            touched
                .get(cart)
                .is_none_or(|t| t + rule.guest_ttl_us + rule.skew_us <= rule.end_us)
        })
}

type Replicas<'a, 'b> = dyn Fn(&str) -> &'b [&'a ReplicaState] + 'b;

/// Merge at login: acknowledged guest adds end in the user cart or stay in the guest cart;
/// nothing merged counts twice.
fn check_merge(history: &History, replicas: &Replicas<'_, '_>, expiry: Option<ExpiryRule>, v: &mut Verdict) {
    let ops = || history.ops.iter().filter(|o| o.workload == "merge");
    let touched = last_ok_touch(history);
    let may_have_expired = |guest: &str| possibly_expired(expiry, &touched, guest);
    for request in requests(ops().filter(|o| matches!(o.kind, OpKind::Add { .. }))) {
        let (op, OpKind::Add { item, .. }) = (request.first, &request.first.kind) else {
            continue;
        };
        if request.outcome != Outcome::Ok {
            continue;
        }
        let user = op.cart.replacen("guest:", "user:", 1);
        let held = |cart: &str| replicas(cart).iter().any(|s| s.has(item));
        if !held(&user) && !held(&op.cart) && !may_have_expired(&op.cart) {
            v.merge_lost.push(format!("{}/{item}", op.cart));
        }
    }
    let users: BTreeSet<&str> = ops()
        .filter(|o| matches!(o.kind, OpKind::Merge { .. }))
        .map(|o| o.cart.as_str())
        .collect();
    for user in users {
        for state in replicas(user) {
            for (item, q) in &state.quantities {
                if *q > 1 {
                    v.merge_doubled.push(format!("{user}/{item} on {} ({q})", state.node));
                }
            }
        }
    }
}

/// Checkout of a version: every item in at most one order, only what the version showed, and
/// no acknowledged add lost or ordered item back.
fn check_checkout(history: &History, replicas: &Replicas<'_, '_>, v: &mut Verdict) {
    let ops = || history.ops.iter().filter(|o| o.workload == "checkout");
    let mut ordered: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    let mut maybe_ordered: BTreeSet<(&str, &str)> = BTreeSet::new();
    // Answered checkout attempts by request id (one pass: a history holds thousands).
    let mut answered: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops().filter(|o| o.outcome == Outcome::Ok && matches!(o.kind, OpKind::Checkout { .. })) {
        if let Some(id) = op.request_id.as_deref() {
            answered.entry(id).or_default().push(op);
        }
    }
    for request in requests(ops().filter(|o| matches!(o.kind, OpKind::Checkout { .. }))) {
        let OpKind::Checkout { seen, .. } = &request.first.kind else {
            continue;
        };
        let cart = request.first.cart.as_str();
        let id = request.first.request_id.as_deref().unwrap_or("-");
        // The order of a request: what any answered attempt returned (all return the same).
        for attempt in answered.get(id).into_iter().flatten() {
            if let OpKind::Checkout { ordered: items, .. } = &attempt.kind {
                for item in items {
                    ordered.entry((cart, item.as_str())).or_default().insert(id);
                    if !seen.contains(item) {
                        v.checkout_not_in_version.push(format!("{cart}/{item}"));
                    }
                }
            }
        }
        if request.outcome == Outcome::Unknown {
            maybe_ordered.extend(seen.iter().map(|i| (cart, i.as_str())));
        }
    }
    for ((cart, item), ids) in &ordered {
        if ids.len() > 1 {
            v.checkout_twice.push(format!("{cart}/{item}"));
        }
        if replicas(cart).iter().any(|s| s.has(item)) {
            v.checkout_back.push(format!("{cart}/{item}"));
        }
    }
    for request in requests(ops().filter(|o| matches!(o.kind, OpKind::Add { .. }))) {
        let (op, OpKind::Add { item, .. }) = (request.first, &request.first.kind) else {
            continue;
        };
        let key = (op.cart.as_str(), item.as_str());
        if request.outcome != Outcome::Ok || ordered.contains_key(&key) || maybe_ordered.contains(&key) {
            continue;
        }
        let states = replicas(&op.cart);
        if states.is_empty() || !states.iter().all(|s| s.has(item)) {
            v.checkout_lost.push(format!("{}/{item}", op.cart));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::FaultSpan;

    fn op(kind: OpKind, workload: &str, outcome: Outcome, start_us: u64, end_us: u64) -> Op {
        Op {
            process: 0,
            node: "n1".into(),
            workload: workload.into(),
            cart: "guest:c".into(),
            kind,
            request_id: None,
            failover: false,
            outcome,
            error: None,
            start_us,
            end_us,
        }
    }

    fn add(item: &str, outcome: Outcome, start: u64, end: u64) -> Op {
        let kind = OpKind::Add {
            item: item.into(),
            delta: 1,
        };
        op(kind, "cart-set", outcome, start, end)
    }

    fn remove(item: &str, outcome: Outcome, start: u64, end: u64) -> Op {
        op(OpKind::Remove { item: item.into() }, "cart-set", outcome, start, end)
    }

    fn adjust(delta: i64, outcome: Outcome) -> Op {
        let kind = OpKind::Adjust {
            item: "q".into(),
            delta,
        };
        op(kind, "quantity", outcome, 0, 1)
    }

    fn replica(node: &str, items: &[(&str, i64)]) -> ReplicaState {
        let quantities: BTreeMap<String, i64> = items.iter().map(|(i, q)| (i.to_string(), *q)).collect();
        ReplicaState {
            cart: "guest:c".into(),
            node: node.into(),
            present: !items.is_empty(),
            canonical: format!("{quantities:?}").into_bytes(),
            quantities,
        }
    }

    fn history(ops: Vec<Op>) -> History {
        History { ops, faults: vec![] }
    }

    #[test]
    fn a_clean_history_is_valid() {
        let h = history(vec![add("a", Outcome::Ok, 0, 10), add("b", Outcome::Unknown, 0, 10)]);
        let v = check(&h, &[replica("n1", &[("a", 1)]), replica("n2", &[("a", 1)])]);
        assert!(v.valid, "{v:?}");
        assert_eq!((v.adds.acknowledged, v.adds.survived, v.adds.lost), (1, 1, 0));
    }

    #[test]
    fn an_acknowledged_add_missing_from_one_replica_is_lost() {
        let h = history(vec![add("a", Outcome::Ok, 0, 10)]);
        let v = check(&h, &[replica("n1", &[("a", 1)]), replica("n2", &[])]);
        assert!(!v.valid);
        assert_eq!(v.lost_items, vec!["guest:c/a".to_string()]);
        assert_eq!(v.divergent_carts, vec!["guest:c".to_string()]);
    }

    #[test]
    fn a_removed_item_is_not_lost_but_must_not_come_back() {
        let h = history(vec![add("a", Outcome::Ok, 0, 10), remove("a", Outcome::Ok, 20, 30)]);
        assert!(check(&h, &[replica("n1", &[])]).valid);
        let v = check(&h, &[replica("n1", &[("a", 1)])]);
        assert_eq!(v.resurrected_items, vec!["guest:c/a".to_string()]);
        // An add still running when the remove started may win (add-wins).
        let h = history(vec![add("a", Outcome::Ok, 0, 25), remove("a", Outcome::Ok, 20, 30)]);
        assert!(check(&h, &[replica("n1", &[("a", 1)])]).valid);
    }

    #[test]
    fn an_item_nobody_added_is_a_phantom() {
        let h = history(vec![add("a", Outcome::Ok, 0, 10), add("f", Outcome::Fail, 0, 10)]);
        let v = check(&h, &[replica("n1", &[("a", 1), ("zz", 1), ("f", 1)])]);
        assert_eq!(v.phantom_items, vec!["guest:c/f".to_string(), "guest:c/zz".to_string()]);
    }

    #[test]
    fn an_unknown_add_seen_by_a_read_must_stay_removed() {
        let seen = OpKind::Read { seen: vec!["a".into()] };
        let read = op(seen, "cart-set", Outcome::Ok, 12, 15);
        let h = history(vec![
            add("a", Outcome::Unknown, 0, 10),
            read,
            remove("a", Outcome::Ok, 20, 30),
        ]);
        let v = check(&h, &[replica("n1", &[("a", 1)])]);
        assert_eq!(v.resurrected_items, vec!["guest:c/a".to_string()]);
        // Never seen before the remove: the unknown add may have landed after it.
        let h = history(vec![
            add("a", Outcome::Unknown, 0, 10),
            remove("a", Outcome::Ok, 20, 30),
        ]);
        assert!(check(&h, &[replica("n1", &[("a", 1)])]).valid);
    }

    #[test]
    fn a_counter_with_no_replica_is_checked_against_zero() {
        let h = history(vec![adjust(10, Outcome::Ok)]);
        let v = check(&h, &[]);
        assert_eq!(v.quantity_violations.len(), 1);
        assert!(!v.valid);
    }

    #[test]
    fn quantities_follow_the_pn_counter_rule() {
        let h = history(vec![
            adjust(10, Outcome::Ok),
            adjust(-3, Outcome::Ok),
            adjust(5, Outcome::Unknown),
            adjust(-2, Outcome::Unknown),
            adjust(100, Outcome::Fail),
        ]);
        for good in [5, 7, 10, 12] {
            assert!(check(&h, &[replica("n1", &[("q", good)])]).valid, "{good}");
        }
        let v = check(&h, &[replica("n1", &[("q", 13)])]);
        assert_eq!(v.quantity_violations.len(), 1);
        assert_eq!((v.quantity_violations[0].low, v.quantity_violations[0].high), (5, 12));
    }

    fn on(cart: &str, workload: &str, kind: OpKind, outcome: Outcome, id: Option<&str>) -> Op {
        Op {
            cart: cart.into(),
            request_id: id.map(str::to_owned),
            ..op(kind, workload, outcome, 0, 1)
        }
    }

    fn state(cart: &str, items: &[(&str, i64)]) -> ReplicaState {
        ReplicaState {
            cart: cart.into(),
            ..replica("n1", items)
        }
    }

    /// Attempts sharing a request id are one request: a retry that was answered makes the
    /// counter exact, and a retry never counts twice.
    #[test]
    fn attempts_with_one_request_id_count_once() {
        let attempt = |outcome| Op {
            request_id: Some("r1".into()),
            ..adjust(5, outcome)
        };
        let h = history(vec![
            adjust(10, Outcome::Ok),
            attempt(Outcome::Unknown),
            attempt(Outcome::Ok),
        ]);
        let v = check(&h, &[replica("n1", &[("q", 15)])]);
        assert!(v.valid, "{v:?}");
        assert_eq!((v.quantity_resolved, v.quantity_unresolved), (1, 0));
        // Exact: 10 (the retry not applied) or 20 (applied twice) are both wrong.
        for wrong in [10, 20] {
            assert!(!check(&h, &[replica("n1", &[("q", wrong)])]).valid, "{wrong}");
        }
    }

    /// A retry answered only after more later requests to its cart than the cart remembers ids
    /// for is past the exactly-once window: once or twice are both allowed, and it is counted.
    #[test]
    fn a_retry_past_the_window_may_count_twice() {
        let at = |op: Op, start_us: u64| Op {
            start_us,
            end_us: start_us + 1,
            ..op
        };
        let attempt = |outcome, start_us| {
            at(
                Op {
                    request_id: Some("r1".into()),
                    ..adjust(5, outcome)
                },
                start_us,
            )
        };
        for (between, late) in [(REQUESTS_PER_CART_MAX, false), (REQUESTS_PER_CART_MAX + 1, true)] {
            let mut ops = vec![attempt(Outcome::Unknown, 1)];
            ops.extend((0..between).map(|i| {
                at(
                    Op {
                        request_id: Some(format!("x{i}")),
                        ..adjust(0, Outcome::Ok)
                    },
                    2 + i as u64,
                )
            }));
            ops.push(attempt(Outcome::Ok, 10_000));
            let h = history(ops);
            let v = check(&h, &[replica("n1", &[("q", 5)])]);
            assert!(v.valid, "{v:?}");
            assert_eq!(v.quantity_late, usize::from(late));
            assert_eq!(
                check(&h, &[replica("n1", &[("q", 10)])]).valid,
                late,
                "twice: {between}"
            );
            assert!(!check(&h, &[replica("n1", &[("q", 0)])]).valid, "never: {between}");
        }
    }

    #[test]
    fn merge_lines_must_move_once_and_not_vanish() {
        let add = |item: &str| {
            let kind = OpKind::Add {
                item: item.into(),
                delta: 1,
            };
            on("guest:m-0-0", "merge", kind, Outcome::Ok, Some(item))
        };
        let merge = on(
            "user:m-0-0",
            "merge",
            OpKind::Merge {
                guest: "guest:m-0-0".into(),
            },
            Outcome::Ok,
            None,
        );
        let h = history(vec![add("a"), add("b"), merge]);
        let good = [state("user:m-0-0", &[("a", 1)]), state("guest:m-0-0", &[("b", 1)])];
        assert!(check(&h, &good).valid);
        let v = check(&h, &[state("user:m-0-0", &[("a", 2)])]);
        assert_eq!(v.merge_lost, vec!["guest:m-0-0/b".to_string()]);
        assert_eq!(v.merge_doubled.len(), 1);
    }

    #[test]
    fn checkout_orders_are_once_from_the_version_and_lose_nothing() {
        let cart = "user:co-0-0";
        let add = |item: &str| {
            let kind = OpKind::Add {
                item: item.into(),
                delta: 1,
            };
            on(cart, "checkout", kind, Outcome::Ok, Some(item))
        };
        let checkout = |id: &str, seen: &[&str], ordered: &[&str]| {
            let kind = OpKind::Checkout {
                seen: seen.iter().map(|s| s.to_string()).collect(),
                ordered: ordered.iter().map(|s| s.to_string()).collect(),
            };
            on(cart, "checkout", kind, Outcome::Ok, Some(id))
        };
        let h = history(vec![
            add("a"),
            add("b"),
            add("c"),
            checkout("o1", &["a", "b"], &["a", "b"]),
        ]);
        assert!(check(&h, &[state(cart, &[("c", 1)])]).valid);
        let v = check(&h, &[state(cart, &[("a", 1)])]);
        assert_eq!(v.checkout_back, vec![format!("{cart}/a")]);
        assert_eq!(v.checkout_lost, vec![format!("{cart}/c")]);
        let h = history(vec![
            add("a"),
            checkout("o1", &["a"], &["a"]),
            checkout("o2", &["a"], &["a", "x"]),
        ]);
        let v = check(&h, &[state(cart, &[])]);
        assert_eq!(v.checkout_twice, vec![format!("{cart}/a")]);
        assert_eq!(v.checkout_not_in_version, vec![format!("{cart}/x")]);
    }

    #[test]
    fn an_expired_cart_held_after_its_sweeps_is_back() {
        let kind = OpKind::Add {
            item: "a".into(),
            delta: 1,
        };
        let h = history(vec![on("guest:exp-1-0", "expiry", kind, Outcome::Ok, None)]);
        let rule = |end_us| ExpiryRule {
            guest_ttl_us: 100,
            skew_us: 10,
            sweep_us: 10,
            end_us,
        };
        let held = [state("guest:exp-1-0", &[("a", 1)])];
        assert!(check_with(&h, &held, Some(rule(100))).valid, "not expired yet");
        let v = check_with(&h, &held, Some(rule(1_000)));
        assert_eq!(v.expired_back, vec!["guest:exp-1-0".to_string()]);
        assert!(check_with(&h, &[], Some(rule(1_000))).valid);
    }

    #[test]
    fn availability_counts_writes_started_during_faults() {
        let mut h = history(vec![add("a", Outcome::Ok, 5, 10), add("b", Outcome::Unknown, 15, 30)]);
        h.faults.push(FaultSpan {
            nemesis: "kill".into(),
            detail: "n1".into(),
            start_us: 0,
            end_us: 20,
        });
        let v = check(&h, &[replica("n1", &[("a", 1)])]);
        assert_eq!(v.writes_during_faults, (2, 1));
        assert_eq!(v.availability(), Some(0.5));
    }
}
