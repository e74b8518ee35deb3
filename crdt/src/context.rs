//! Dots and causal contexts: which events of which actors a cart state has seen.
//!
//! Every cart operation mints one *op dot* (plus one dot per entry it adds) from its actor's
//! counter. A state's [`Context`] is the set of every dot it has seen: a per-actor clock (every
//! counter up to it) plus a *cloud* of dots seen beyond the clock, which only a delta delivered
//! out of order leaves behind and which folds into the clock once the gap fills.
//!
//! Because every operation mints its own op dot, two states with equal contexts have seen the
//! same operations and are equal: the context is the state's version, and comparing contexts is a
//! digest comparison that needs no encoding.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::Actor;

/// The `counter`-th event of `actor` in one cart.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub actor: Actor,
    pub counter: u64,
}

impl fmt::Debug for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}.{}", self.actor, self.counter)
    }
}

/// The dots a state has seen. Both vectors stay sorted, so equal contexts are equal values and
/// encode to equal bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Context {
    /// Per actor (sorted by actor): every counter from 1 up to this one has been seen.
    clock: Vec<(Actor, u64)>,
    /// Dots seen beyond the clock, sorted; never contiguous with the clock (see `compact`).
    cloud: Vec<Dot>,
}

impl Context {
    /// Entries held (clock and cloud), for estimates of memory.
    pub fn entries(&self) -> usize {
        self.clock.len() + self.cloud.len()
    }

    /// The highest counter of `actor` below which nothing is missing.
    fn contiguous(&self, actor: Actor) -> u64 {
        match self.clock.binary_search_by_key(&actor, |(a, _)| *a) {
            Ok(i) => self.clock[i].1,
            Err(_) => 0,
        }
    }

    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.contiguous(dot.actor) || self.cloud.binary_search(&dot).is_ok()
    }

    /// The next counter `actor` may use: above every dot of it seen so far.
    pub(crate) fn next_dot(&self, actor: Actor) -> Dot {
        let in_cloud = self
            .cloud
            .iter()
            .filter(|d| d.actor == actor)
            .map(|d| d.counter)
            .max()
            .unwrap_or(0);
        Dot {
            actor,
            // Decode refuses u64::MAX counters, so this never saturates in practice.
            counter: self.contiguous(actor).max(in_cloud).saturating_add(1),
        }
    }

    /// Records one dot as seen.
    pub(crate) fn insert(&mut self, dot: Dot) {
        if self.contains(dot) {
            return;
        }
        match self.clock.binary_search_by_key(&dot.actor, |(a, _)| *a) {
            Ok(i) if self.clock[i].1.saturating_add(1) == dot.counter => self.clock[i].1 = dot.counter,
            Err(i) if dot.counter == 1 => self.clock.insert(i, (dot.actor, 1)),
            _ => {
                if let Err(at) = self.cloud.binary_search(&dot) {
                    self.cloud.insert(at, dot);
                }
                return;
            }
        }
        self.compact();
    }

    /// Adds every dot `other` has seen.
    pub fn merge(&mut self, other: &Context) {
        for &(actor, counter) in &other.clock {
            match self.clock.binary_search_by_key(&actor, |(a, _)| *a) {
                Ok(i) => self.clock[i].1 = self.clock[i].1.max(counter),
                Err(i) => self.clock.insert(i, (actor, counter)),
            }
        }
        if !other.cloud.is_empty() {
            self.cloud.extend_from_slice(&other.cloud);
            self.cloud.sort_unstable();
            self.cloud.dedup();
        }
        self.compact();
    }

    /// Whether every dot of `other` is in `self` (then merging `other` changes nothing).
    pub fn covers(&self, other: &Context) -> bool {
        other
            .clock
            .iter()
            .all(|&(actor, counter)| counter <= self.contiguous(actor))
            && other.cloud.iter().all(|d| self.contains(*d))
    }

    /// Dots seen beyond the clock (non-zero only while deltas are missing).
    pub fn cloud_len(&self) -> usize {
        self.cloud.len()
    }

    /// Whether both vectors are strictly sorted and the cloud lies beyond the clock.
    /// (Decoded input must pass this: no zero clock entries, no `u64::MAX` counters, so equal
    /// contexts always encode equally and counters never overflow.)
    pub(crate) fn is_well_formed(&self) -> bool {
        self.clock.windows(2).all(|w| w[0].0 < w[1].0)
            && self.clock.iter().all(|(_, c)| (1..u64::MAX).contains(c))
            && self.cloud.windows(2).all(|w| w[0] < w[1])
            && self
                .cloud
                .iter()
                .all(|d| d.counter < u64::MAX && d.counter > self.contiguous(d.actor).saturating_add(1))
    }

    /// Folds cloud dots that became contiguous with the clock into it, and drops those it covers.
    fn compact(&mut self) {
        if self.cloud.is_empty() {
            return;
        }
        let mut kept = Vec::with_capacity(self.cloud.len());
        // The cloud is sorted by (actor, counter): each actor's dots come in ascending order.
        for dot in std::mem::take(&mut self.cloud) {
            let i = match self.clock.binary_search_by_key(&dot.actor, |(a, _)| *a) {
                Ok(i) => i,
                Err(i) if dot.counter == 1 => {
                    self.clock.insert(i, (dot.actor, 0));
                    i
                }
                Err(_) => {
                    kept.push(dot);
                    continue;
                }
            };
            let clock = &mut self.clock[i].1;
            if dot.counter == clock.saturating_add(1) {
                *clock = dot.counter;
            } else if dot.counter > *clock {
                kept.push(dot);
            }
        }
        self.cloud = kept;
    }
}

/// A dot from plain numbers (tests).
#[cfg(test)]
pub(crate) fn dot(actor: u64, counter: u64) -> Dot {
    Dot {
        actor: Actor(actor),
        counter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_dots_fold_into_the_clock_once_the_gap_fills() {
        let mut c = Context::default();
        c.insert(dot(1, 2));
        c.insert(dot(1, 3));
        assert!(!c.contains(dot(1, 1)) && c.contains(dot(1, 3)));
        assert_eq!(c.cloud_len(), 2);
        c.insert(dot(1, 1));
        assert_eq!(c.cloud_len(), 0);
        assert_eq!(c.next_dot(Actor(1)), dot(1, 4));
    }

    #[test]
    fn merge_is_a_union_and_covers_says_so() {
        let mut a = Context::default();
        for n in 1..=3 {
            a.insert(dot(1, n));
        }
        let mut b = Context::default();
        b.insert(dot(2, 1));
        b.insert(dot(1, 5));
        assert!(!a.covers(&b) && !b.covers(&a));
        let mut m = a.clone();
        m.merge(&b);
        assert!(m.covers(&a) && m.covers(&b));
        assert_eq!(m.next_dot(Actor(1)), dot(1, 6));
        m.insert(dot(1, 4));
        assert_eq!(m.cloud_len(), 0, "{m:?}");
        let mut again = m.clone();
        again.merge(&m);
        assert_eq!(again, m);
    }
}
