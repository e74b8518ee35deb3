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
//! - *availability*: writes acknowledged ÷ writes attempted while a fault was active (reported).

use std::collections::{BTreeMap, BTreeSet};

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
    /// Writes started while a fault was active: (attempted, acknowledged).
    pub writes_during_faults: (usize, usize),
    pub valid: bool,
}

impl Verdict {
    pub fn availability(&self) -> Option<f64> {
        let (attempted, acked) = self.writes_during_faults;
        (attempted > 0).then(|| acked as f64 / attempted as f64)
    }
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
    for op in qty_ops() {
        let (item, delta) = match &op.kind {
            OpKind::Add { item, delta } | OpKind::Adjust { item, delta } => (item.as_str(), *delta),
            _ => continue,
        };
        let (acked, neg, pos) = lines.entry((op.cart.as_str(), item)).or_default();
        match op.outcome {
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

    // Convergence: every owner of a cart holds the same canonical bytes.
    for (cart, states) in &by_cart {
        if states.windows(2).any(|w| w[0].canonical != w[1].canonical) {
            v.divergent_carts.push((*cart).to_owned());
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
        v.writes_during_faults.0 += 1;
        v.writes_during_faults.1 += usize::from(op.outcome == Outcome::Ok);
    }

    v.valid = v.lost_items.is_empty()
        && v.resurrected_items.is_empty()
        && v.phantom_items.is_empty()
        && v.quantity_violations.is_empty()
        && v.divergent_carts.is_empty();
    v
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
