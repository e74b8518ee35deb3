//! The workloads, run by client processes through `cart-client`, each process attached to one
//! node. Both tiers (real namespaces and simulation) use this code; time is tokio's, which the
//! simulation drives.
//!
//! - *cart-set*: adds of unique items (`p<process>-<seq>`) to a few hot carts, which rotate every
//!   [`SET_WINDOW`] so no cart outgrows its line limit; now and then a read, and a remove of an
//!   item that read returned.
//! - *quantity*: signed adjustments (±1..5) of a few lines, each created once with
//!   [`QUANTITY_BASE`] units before the faults start.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cart_client::{CartClient, ClientError};
use cart_crdt::{CartView, ItemSnapshot};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use crate::history::{Op, OpKind, Outcome, Recorder};

/// Carts of the cart-set workload change every this long.
pub const SET_WINDOW: Duration = Duration::from_secs(5);
/// Hot carts of the cart-set workload per window.
pub const SET_CARTS: usize = 4;
/// Carts and lines per cart of the quantity workload.
pub const QUANTITY_CARTS: usize = 2;
pub const QUANTITY_LINES: usize = 3;
/// Units each quantity line starts with, so random walks stay above 0 and below the limit.
pub const QUANTITY_BASE: i64 = 3_000;
/// Attempts to create one quantity line before the run gives up on it.
const SETUP_ATTEMPTS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    CartSet,
    Quantity,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::CartSet => "cart-set",
            Workload::Quantity => "quantity",
        }
    }

    /// Parses `cart-set`, `quantity` or `all` (comma-separated lists allowed).
    pub fn parse_list(spec: &str) -> Result<Vec<Workload>, String> {
        let mut out = BTreeSet::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => {
                    out.extend([Workload::CartSet, Workload::Quantity]);
                }
                other => {
                    out.insert(other.parse()?);
                }
            }
        }
        if out.is_empty() {
            return Err("no workload given (cart-set, quantity or all)".into());
        }
        Ok(out.into_iter().collect())
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cart-set" => Ok(Workload::CartSet),
            "quantity" => Ok(Workload::Quantity),
            other => Err(format!("unknown workload {other:?} (cart-set, quantity or all)")),
        }
    }
}

/// The time base of a run: operation times are microseconds since `start`. Inside a turmoil
/// simulation it is the simulated time since the simulation began, which every host shares.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    pub start: Instant,
}

impl RunClock {
    pub fn now() -> Self {
        RunClock { start: Instant::now() }
    }

    pub fn elapsed(&self) -> Duration {
        turmoil::sim_elapsed().unwrap_or_else(|| self.start.elapsed())
    }

    pub fn now_us(&self) -> u64 {
        self.elapsed().as_micros() as u64
    }
}

/// The products of the quantity workload's lines: (cart, product).
pub fn quantity_lines() -> Vec<(String, String)> {
    (0..QUANTITY_CARTS)
        .flat_map(|c| (0..QUANTITY_LINES).map(move |l| (format!("guest:qty-{c}"), format!("q-{l}"))))
        .collect()
}

fn snapshot(item: &str) -> ItemSnapshot {
    ItemSnapshot {
        name: item.to_owned(),
        unit_price_minor: 100,
        currency: "EUR".into(),
        image_url: None,
        attributes: BTreeMap::new(),
    }
}

/// Who records: a process's identity in the history, and where it writes.
#[derive(Clone)]
pub struct Recording {
    pub recorder: Recorder,
    pub clock: RunClock,
    pub process: usize,
    pub node: String,
    pub workload: Workload,
}

impl Recording {
    /// Runs one timed call and records it; a read's `seen` is filled from the cart it returned.
    pub async fn call<F>(&self, cart: &str, mut kind: OpKind, call: F) -> (Outcome, Option<CartView>)
    where
        F: Future<Output = Result<CartView, ClientError>>,
    {
        let start_us = self.clock.now_us();
        let result = call.await;
        let end_us = self.clock.now_us();
        let (outcome, error, view) = match result {
            Ok(view) => (Outcome::Ok, None, Some(view)),
            Err(e) => (Outcome::of_error(&e), Some(e.to_string()), None),
        };
        if let (OpKind::Read { seen }, Some(view)) = (&mut kind, &view) {
            *seen = products(view);
        }
        self.recorder.op(Op {
            process: self.process,
            node: self.node.clone(),
            workload: self.workload.name().into(),
            cart: cart.to_owned(),
            kind,
            outcome,
            error,
            start_us,
            end_us,
        });
        (outcome, view)
    }
}

/// One client process.
pub struct Process {
    pub recording: Recording,
    pub client: CartClient,
    pub seed: u64,
    /// The process stops starting operations at this instant.
    pub until: Instant,
    /// Pause between two operations of this process.
    pub think: Duration,
    /// Set to stop early (Ctrl-C).
    pub stop: Arc<AtomicBool>,
}

impl Process {
    /// Runs operations until `until`; every loop iteration sleeps `think`, so the loop is bounded
    /// by time and by count (`until` ÷ `think`).
    pub async fn run(self) {
        let rec = &self.recording;
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut seq = 0u64;
        // Per cart: the items this process last read there and has not yet tried to remove.
        let mut readable: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let lines = quantity_lines();
        while Instant::now() < self.until && !self.stop.load(Ordering::Relaxed) {
            match rec.workload {
                Workload::CartSet => {
                    let window = rec.clock.elapsed().as_secs() / SET_WINDOW.as_secs();
                    let cart = format!("guest:set-{window}-{}", rng.random_range(0..SET_CARTS));
                    let roll = rng.random_range(0..100u32);
                    let removable = readable.get_mut(&cart).filter(|items| !items.is_empty() && roll >= 90);
                    if roll < 78 {
                        let item = format!("p{}-{seq}", rec.process);
                        seq += 1;
                        let kind = OpKind::Add {
                            item: item.clone(),
                            delta: 1,
                        };
                        rec.call(&cart, kind, self.client.add_item(&cart, &item, 1, snapshot(&item)))
                            .await;
                    } else if let Some(items) = removable {
                        let item = items.swap_remove(rng.random_range(0..items.len()));
                        let kind = OpKind::Remove { item: item.clone() };
                        rec.call(&cart, kind, self.client.remove_item(&cart, &item)).await;
                    } else {
                        let (_, view) = rec
                            .call(&cart, OpKind::Read { seen: Vec::new() }, self.client.get_cart(&cart))
                            .await;
                        if let Some(view) = view {
                            readable.insert(cart, products(&view));
                        }
                    }
                }
                Workload::Quantity => {
                    let (cart, item) = &lines[rng.random_range(0..lines.len())];
                    let mut delta = rng.random_range(1..=5i64);
                    if rng.random_bool(0.5) {
                        delta = -delta;
                    }
                    let kind = OpKind::Adjust {
                        item: item.clone(),
                        delta,
                    };
                    rec.call(cart, kind, self.client.adjust_quantity(cart, item, delta))
                        .await;
                }
            }
            tokio::time::sleep(self.think).await;
        }
    }
}

/// The products present in a cart view.
pub fn products(view: &CartView) -> Vec<String> {
    view.lines.iter().map(|l| l.product_id.to_string()).collect()
}

/// Creates every quantity line with [`QUANTITY_BASE`] units (before faults), retrying a line
/// whose add failed. Every attempt is recorded: an unknown one may still have added its units.
pub async fn setup_quantity(client: &CartClient, rec: &Recording, stop: &AtomicBool) -> Result<(), String> {
    for (cart, item) in quantity_lines() {
        let mut done = false;
        for _ in 0..SETUP_ATTEMPTS {
            if stop.load(Ordering::Relaxed) {
                return Err("stopped".into());
            }
            let kind = OpKind::Add {
                item: item.clone(),
                delta: QUANTITY_BASE,
            };
            let add = client.add_item(&cart, &item, QUANTITY_BASE as u32, snapshot(&item));
            let (outcome, _) = rec.call(&cart, kind, add).await;
            if outcome == Outcome::Ok {
                done = true;
                break;
            }
            if outcome == Outcome::Unknown {
                // It may have been applied: a second add could take the line over the limit.
                let (_, view) = rec
                    .call(&cart, OpKind::Read { seen: Vec::new() }, client.get_cart(&cart))
                    .await;
                if view.is_some_and(|v| products(&v).contains(&item)) {
                    done = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !done {
            return Err(format!("could not create quantity line {cart}/{item}"));
        }
    }
    Ok(())
}
