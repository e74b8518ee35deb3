//! The workloads, run by client processes through `cart-client`, each process attached to one
//! node. Both tiers (real namespaces and simulation) use this code; time is tokio's, which the
//! simulation drives.
//!
//! - *cart-set*: adds of unique items (`p<process>-<seq>`) to a few hot carts, which rotate every
//!   [`SET_WINDOW`] so no cart outgrows its line limit; now and then a read, and a remove or a
//!   catalogue refresh (`RefreshItems`, random price, version and availability) of an item that
//!   read returned.
//! - *quantity*: signed adjustments (±1..5) of a few lines, each created once with
//!   [`QUANTITY_BASE`] units before the faults start. Every write carries a request id; after
//!   the faults heal, writes whose outcome stayed unknown are sent again with their id
//!   ([`resolve_unknown`]), so the checker can hold each counter to its exact value.
//! - *merge*: guests add unique items to a guest cart while their user logs in from several
//!   places at once (`MergeCarts` of the window's guest cart into its user cart).
//! - *checkout*: unique items added to a few carts while each cart's own checkout process reads
//!   it and checks out the version it read.
//! - *expiry* (simulation only, where guest carts live seconds): guest carts written early and
//!   never again; they must be gone from every replica at the end.
//!
//! Carts are `user:` carts except where the workload is about guests (merge, expiry).

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
/// Carts and lines per cart of the quantity workload (enough carts that each keeps its request
/// ids for longer than a fault lasts: a cart remembers its newest 256).
pub const QUANTITY_CARTS: usize = 24;
pub const QUANTITY_LINES: usize = 3;
/// Units each quantity line starts with, so random walks stay above 0 and below the limit.
pub const QUANTITY_BASE: i64 = 3_000;
/// Attempts to create one quantity line before the run gives up on it.
const SETUP_ATTEMPTS: usize = 20;
/// Guest/user cart pairs of the merge workload per window, and carts of the checkout workload
/// per window (a window lasts [`SET_WINDOW`]).
pub const MERGE_PAIRS: usize = 2;
/// Carts of the expiry workload each process writes, in the first second of the run.
pub const EXPIRY_CARTS: usize = 3;
/// Times a write whose outcome stayed unknown is sent again after the faults heal, and how long
/// that phase lasts at most.
const RESOLVE_ATTEMPTS: usize = 5;
const RESOLVE_TIME_MAX: Duration = Duration::from_secs(60);
/// A quantity process sends a write whose outcome is unknown again this many times at most,
/// this far apart (about as long as the longest fault), before it moves on.
const UNKNOWN_RETRIES: usize = 60;
const UNKNOWN_RETRY_PAUSE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    CartSet,
    Quantity,
    Merge,
    Checkout,
    Expiry,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::CartSet => "cart-set",
            Workload::Quantity => "quantity",
            Workload::Merge => "merge",
            Workload::Checkout => "checkout",
            Workload::Expiry => "expiry",
        }
    }

    /// Parses `cart-set`, `quantity`, `merge`, `checkout`, `expiry` or `all` (every one but
    /// `expiry`, which needs the simulation's short guest ttl); comma-separated lists allowed.
    pub fn parse_list(spec: &str) -> Result<Vec<Workload>, String> {
        let mut out = BTreeSet::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => {
                    out.extend([
                        Workload::CartSet,
                        Workload::Quantity,
                        Workload::Merge,
                        Workload::Checkout,
                    ]);
                }
                other => {
                    out.insert(other.parse()?);
                }
            }
        }
        if out.is_empty() {
            return Err("no workload given (cart-set, quantity, merge, checkout, expiry or all)".into());
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
            "merge" => Ok(Workload::Merge),
            "checkout" => Ok(Workload::Checkout),
            "expiry" => Ok(Workload::Expiry),
            other => Err(format!(
                "unknown workload {other:?} (cart-set, quantity, merge, checkout, expiry or all)"
            )),
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
        .flat_map(|c| (0..QUANTITY_LINES).map(move |l| (format!("user:qty-{c}"), format!("q-{l}"))))
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
    /// The client fails over to other nodes (not attached to `node`).
    pub failover: bool,
}

impl Recording {
    /// Runs one timed call and records it; a read's `seen` is filled from the cart it returned.
    pub async fn call<F>(&self, cart: &str, kind: OpKind, call: F) -> (Outcome, Option<CartView>)
    where
        F: Future<Output = Result<CartView, ClientError>>,
    {
        self.call_as(cart, kind, None, call).await
    }

    /// [`Recording::call`] of a write sent under `request_id`.
    pub async fn call_as<F, T>(
        &self,
        cart: &str,
        mut kind: OpKind,
        request_id: Option<String>,
        call: F,
    ) -> (Outcome, Option<T>)
    where
        F: Future<Output = Result<T, ClientError>>,
        T: Observed,
    {
        let start_us = self.clock.now_us();
        let result = call.await;
        let end_us = self.clock.now_us();
        let (outcome, error, value) = match result {
            Ok(value) => (Outcome::Ok, None, Some(value)),
            Err(e) => (Outcome::of_error(&e), Some(e.to_string()), None),
        };
        if let Some(value) = &value {
            value.observe(&mut kind);
        }
        self.recorder.op(Op {
            process: self.process,
            node: self.node.clone(),
            workload: self.workload.name().into(),
            cart: cart.to_owned(),
            kind,
            request_id,
            failover: self.failover,
            outcome,
            error,
            start_us,
            end_us,
        });
        (outcome, value)
    }
}

/// What a successful reply tells the history about the op.
pub trait Observed {
    fn observe(&self, kind: &mut OpKind);
}

impl Observed for CartView {
    fn observe(&self, kind: &mut OpKind) {
        if let OpKind::Read { seen } = kind {
            *seen = products(self);
        }
    }
}

impl Observed for (CartView, CartView) {
    fn observe(&self, _: &mut OpKind) {}
}

impl Observed for (cart_client::OrderView, CartView) {
    fn observe(&self, kind: &mut OpKind) {
        if let OpKind::Checkout { ordered, .. } = kind {
            *ordered = self.0.lines.iter().map(|l| l.product_id.clone()).collect();
        }
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
    /// Checkout workload: carts per window, and the one this process checks out.
    pub checkout_carts: usize,
    pub checkout_index: usize,
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
                    let cart = format!("user:set-{window}-{}", rng.random_range(0..SET_CARTS));
                    let roll = rng.random_range(0..100u32);
                    let refreshable = readable
                        .get(&cart)
                        .filter(|items| !items.is_empty() && roll < 81)
                        .map(|items| items[rng.random_range(0..items.len())].clone());
                    let removable = readable.get_mut(&cart).filter(|items| !items.is_empty() && roll >= 90);
                    if roll < 78 {
                        self.add_unique(&cart, &mut seq).await;
                    } else if let Some(item) = refreshable {
                        // Catalogue data for an item read there (not in the history: it changes
                        // no membership); replicas must still converge on it byte for byte.
                        let refreshed = cart_client::RefreshedItem {
                            snapshot: ItemSnapshot::new(item.clone(), rng.random_range(1..5_000u64), "EUR"),
                            product_id: item,
                            available: rng.random_bool(0.8),
                            catalog_version: rng.random_range(1..6u64),
                        };
                        let _ = self.client.refresh_items(&cart, vec![refreshed]).await;
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
                    // As a storefront would: a write whose outcome is unknown is sent again with
                    // its id until it is answered (bounded), so it resolves while its record is
                    // still kept.
                    let id = self.client.next_request_id();
                    for _ in 0..UNKNOWN_RETRIES {
                        let call = self.client.adjust_quantity_with_id(&id, cart, item, delta);
                        let (outcome, _) = rec.call_as(cart, kind.clone(), Some(id.clone()), call).await;
                        if outcome != Outcome::Unknown || self.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        tokio::time::sleep(UNKNOWN_RETRY_PAUSE).await;
                    }
                }
                Workload::Merge => {
                    let window = rec.clock.elapsed().as_secs() / SET_WINDOW.as_secs();
                    let pair = rng.random_range(0..MERGE_PAIRS);
                    let (guest, user) = (format!("guest:m-{window}-{pair}"), format!("user:m-{window}-{pair}"));
                    if rng.random_range(0..100u32) < 80 {
                        self.add_unique(&guest, &mut seq).await;
                    } else {
                        let kind = OpKind::Merge { guest: guest.clone() };
                        let call = self.client.merge_carts(&guest, &user, cart_client::MergeMode::Merge);
                        rec.call_as(&user, kind, None, call).await;
                    }
                }
                Workload::Checkout => {
                    let window = rec.clock.elapsed().as_secs() / SET_WINDOW.as_secs();
                    // Each process checks out only its own cart (one customer's checkout), and
                    // adds to any cart of the window.
                    if rng.random_range(0..100u32) < 75 {
                        let cart = format!("user:co-{window}-{}", rng.random_range(0..self.checkout_carts.max(1)));
                        self.add_unique(&cart, &mut seq).await;
                    } else {
                        let cart = format!("user:co-{window}-{}", self.checkout_index);
                        self.checkout(&cart).await;
                    }
                }
                Workload::Expiry => {
                    if rec.clock.elapsed() > Duration::from_secs(1) {
                        break;
                    }
                    let cart = format!("guest:exp-{}-{}", rec.process, rng.random_range(0..EXPIRY_CARTS));
                    self.add_unique(&cart, &mut seq).await;
                }
            }
            tokio::time::sleep(self.think).await;
        }
    }
}

/// One client process to start: its id, the endpoints its client uses, the node it is attached
/// to ("any" when it fails over), and what it runs.
#[derive(Debug, Clone)]
pub struct Planned {
    pub id: usize,
    pub targets: Vec<String>,
    pub node: String,
    pub failover: bool,
    pub workload: Workload,
    /// Checkout workload: carts per window, and the one this process checks out.
    pub checkout_carts: usize,
    pub checkout_index: usize,
}

/// The client processes of a run, numbered from 1: `per_node` attached to each of `nodes`
/// ((name, endpoint)) per workload, then `failover` per workload that use every endpoint.
pub fn plan(nodes: &[(String, String)], workloads: &[Workload], per_node: usize, failover: usize) -> Vec<Planned> {
    let every: Vec<String> = nodes.iter().map(|(_, e)| e.clone()).collect();
    let attached = nodes.iter().flat_map(|(name, endpoint)| {
        workloads
            .iter()
            .flat_map(move |w| std::iter::repeat_n((vec![endpoint.clone()], name.clone(), false, *w), per_node))
    });
    let failing_over = workloads
        .iter()
        .flat_map(|w| std::iter::repeat_n((every.clone(), "any".to_owned(), true, *w), failover));
    let mut out: Vec<Planned> = attached
        .chain(failing_over)
        .enumerate()
        .map(|(i, (targets, node, failover, workload))| Planned {
            id: i + 1,
            targets,
            node,
            failover,
            workload,
            checkout_carts: 0,
            checkout_index: 0,
        })
        .collect();
    let checkout_carts = out.iter().filter(|p| p.workload == Workload::Checkout).count();
    let mut index = 0;
    for p in out.iter_mut() {
        p.checkout_carts = checkout_carts;
        p.checkout_index = index;
        index += usize::from(p.workload == Workload::Checkout);
    }
    out
}

impl Process {
    /// Adds one unit of a new unique item (`p<process>-<seq>`) under a request id.
    async fn add_unique(&self, cart: &str, seq: &mut u64) {
        let rec = &self.recording;
        let item = format!("p{}-{seq}", rec.process);
        *seq += 1;
        let kind = OpKind::Add {
            item: item.clone(),
            delta: 1,
        };
        let id = self.client.next_request_id();
        let call = self.client.add_item_with_id(&id, cart, &item, 1, snapshot(&item));
        rec.call_as(cart, kind, Some(id.clone()), call).await;
    }

    /// Reads the cart and checks out the version read.
    async fn checkout(&self, cart: &str) {
        let rec = &self.recording;
        let Ok(view) = self.client.get_cart(cart).await else {
            return;
        };
        if view.lines.is_empty() {
            return;
        }
        let kind = OpKind::Checkout {
            seen: products(&view),
            ordered: Vec::new(),
        };
        let id = self.client.next_request_id();
        let call = self.client.checkout(cart, &view.version, &id);
        rec.call_as(cart, kind, Some(id.clone()), call).await;
    }
}

/// Sends every quantity write of `history` whose outcome stayed unknown (no attempt with its
/// request id answered) again with the same request id (for at most [`RESOLVE_TIME_MAX`]), until it is answered or [`RESOLVE_ATTEMPTS`]
/// tries: the cluster applies an id once, so the answer settles what happened. Recorded as
/// further attempts of the same request (as a failing-over client, node `resolve`). Run after
/// the faults healed.
pub async fn resolve_unknown(client: &CartClient, recorder: &Recorder, clock: RunClock) {
    let history = recorder.history();
    let mut settled: BTreeSet<&str> = BTreeSet::new();
    for op in &history.ops {
        if let (Some(id), true) = (&op.request_id, op.outcome != Outcome::Unknown) {
            settled.insert(id);
        }
    }
    let mut pending: BTreeMap<&str, &crate::history::Op> = BTreeMap::new();
    for op in history.ops.iter().filter(|o| o.workload == Workload::Quantity.name()) {
        if let (Some(id), Outcome::Unknown) = (&op.request_id, op.outcome) {
            if !settled.contains(id.as_str()) && matches!(op.kind, OpKind::Adjust { .. } | OpKind::Add { .. }) {
                pending.insert(id, op);
            }
        }
    }
    let deadline = Instant::now() + RESOLVE_TIME_MAX;
    for (id, op) in pending {
        if Instant::now() >= deadline {
            break;
        }
        let Ok(workload) = op.workload.parse() else { continue };
        let rec = Recording {
            recorder: recorder.clone(),
            clock,
            process: op.process,
            node: "resolve".into(),
            workload,
            failover: true,
        };
        for _ in 0..RESOLVE_ATTEMPTS {
            let outcome = match &op.kind {
                OpKind::Adjust { item, delta } => {
                    let call = client.adjust_quantity_with_id(id, &op.cart, item, *delta);
                    rec.call_as(&op.cart, op.kind.clone(), Some(id.to_owned()), call)
                        .await
                        .0
                }
                OpKind::Add { item, delta } => {
                    let quantity = u32::try_from(*delta).unwrap_or(1);
                    let call = client.add_item_with_id(id, &op.cart, item, quantity, snapshot(item));
                    rec.call_as(&op.cart, op.kind.clone(), Some(id.to_owned()), call)
                        .await
                        .0
                }
                _ => break,
            };
            if outcome != Outcome::Unknown {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
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
            // One request id for every attempt: a retry after an unknown outcome adds nothing more.
            let id = format!("setup-{cart}-{item}");
            let add = client.add_item_with_id(&id, &cart, &item, QUANTITY_BASE as u32, snapshot(&item));
            let (outcome, _) = rec.call_as(&cart, kind, Some(id.clone()), add).await;
            if outcome == Outcome::Ok {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !done {
            return Err(format!("could not create quantity line {cart}/{item}"));
        }
    }
    Ok(())
}
