//! CRDT laws as property tests (DESIGN §4): random schedules over three replicas, where each step
//! is either "replica i applies a random op" or "replica i merges replica j's state".
//!
//! Replica i writes as `Actor(i + 1)`. Ops that the cart refuses (an `Err`) are simply skipped;
//! every successful op's `CartDelta` is recorded with the replica that made it.

mod common;

use std::collections::VecDeque;

use cart_crdt::{Cart, CartDelta, CartOp, Dot, ItemSnapshot, LineKind, ProductId};
use proptest::prelude::*;
use proptest::sample::Index;

use common::*;

const REPLICAS: usize = 3;
const PRODUCTS: [&str; 4] = ["sku-a", "sku-b", "sku-c", "sku-d"];
const COUPONS: [&str; 2] = ["WELCOME", "FREESHIP"];

#[derive(Debug, Clone)]
enum Step {
    /// `request`: a request id from a small space, so that one id is applied on two replicas
    /// (a retry that reached another owner) and their records meet in merges.
    Apply {
        replica: usize,
        op: CartOp,
        request: Option<u8>,
    },
    Merge {
        into: usize,
        from: usize,
    },
}

/// The outcome of a schedule: the replicas' states and every successful op's delta, in the
/// order each replica produced them.
struct Run {
    replicas: Vec<Replica>,
    deltas: Vec<(usize, CartDelta)>,
    /// Every replica's state after every step (what a full-state fallback could ship).
    history: Vec<Cart>,
}

fn run(steps: &[Step]) -> Run {
    let mut replicas: Vec<Replica> = (0..REPLICAS).map(|i| Replica::new(i as u64 + 1)).collect();
    let mut deltas = Vec::new();
    let mut history = Vec::new();
    for step in steps {
        match step {
            Step::Apply { replica, op, request } => {
                let request = request.map(|k| cart_crdt::RequestId(u128::from(k)));
                let r = &mut replicas[*replica];
                // As a node does: a request this replica has seen is not applied again.
                if request.is_some_and(|id| r.cart.seen_request(id)) {
                    continue;
                }
                if let Ok(delta) = r.apply_request(&cart_crdt::Limits::DEFAULT, op, request) {
                    deltas.push((*replica, delta));
                }
            }
            Step::Merge { into, from } => {
                let source = replicas[*from].clone();
                replicas[*into].merge_from(&source);
            }
        }
        history.extend(replicas.iter().map(|r| r.cart.clone()));
    }
    Run {
        replicas,
        deltas,
        history,
    }
}

fn carts(run: &Run) -> Vec<Cart> {
    run.replicas.iter().map(|r| r.cart.clone()).collect()
}

/// The final states of a run, the merge of two states it passed through and two more of them.
fn reached(run: &Run, picks: &[Index; 4]) -> Vec<Cart> {
    let mut states = carts(run);
    if !run.history.is_empty() {
        let at = |i: &Index| run.history[i.index(run.history.len())].clone();
        states.push(merged(&at(&picks[0]), &at(&picks[1])));
        states.extend(picks[2..].iter().map(at));
    }
    states
}

/// The merge of every replica's state.
fn merge_all(carts: &[Cart]) -> Cart {
    carts.iter().fold(Cart::default(), |acc, c| merged(&acc, c))
}

/// A fresh cart that receives every delta, per-actor FIFO, with the interleaving across actors
/// chosen by `picks` (then round-robin once `picks` runs out).
fn deliver_deltas(deltas: &[(usize, CartDelta)], picks: &[Index]) -> Cart {
    let mut queues: Vec<VecDeque<&CartDelta>> = vec![VecDeque::new(); REPLICAS];
    for (replica, delta) in deltas {
        queues[*replica].push_back(delta);
    }
    let mut cart = Cart::default();
    let mut picks = picks.iter();
    loop {
        let ready: Vec<usize> = (0..REPLICAS).filter(|&i| !queues[i].is_empty()).collect();
        if ready.is_empty() {
            return cart;
        }
        let chosen = match picks.next() {
            Some(pick) => ready[pick.index(ready.len())],
            None => ready[0],
        };
        let delta = queues[chosen].pop_front().expect("chosen queue is not empty");
        cart.apply_delta(delta);
    }
}

/// What a receiver does next in [`deliver_mixed`].
#[derive(Debug, Clone)]
enum Receive {
    /// The next delta of one actor (chosen among those with deltas left).
    Delta(Index),
    /// A full-state fallback: merge some replica's state as it was after some step.
    State(Index),
}

/// A fresh cart that gets deltas (per-actor FIFO) mixed with full states taken at any point of
/// the run, then the remaining deltas. Deltas already covered by a merged state are skipped by
/// their dots, which is how a node mixes delta shipping with full-state fallback and repair.
fn deliver_mixed(run: &Run, events: &[Receive]) -> Cart {
    let mut queues: Vec<VecDeque<&CartDelta>> = vec![VecDeque::new(); REPLICAS];
    for (replica, delta) in &run.deltas {
        queues[*replica].push_back(delta);
    }
    let mut cart = Cart::default();
    for event in events {
        match event {
            Receive::Delta(pick) => {
                let ready: Vec<usize> = (0..REPLICAS).filter(|&i| !queues[i].is_empty()).collect();
                if let Some(&chosen) = ready.get(pick.index(ready.len().max(1))) {
                    let delta = queues[chosen].pop_front().expect("chosen queue is not empty");
                    cart.apply_delta(delta);
                }
            }
            Receive::State(pick) if !run.history.is_empty() => {
                cart.merge(run.history[pick.index(run.history.len())].clone());
            }
            Receive::State(_) => {}
        }
    }
    for queue in queues.iter_mut() {
        while let Some(delta) = queue.pop_front() {
            cart.apply_delta(delta);
        }
    }
    cart
}

// ---- generators -----------------------------------------------------------------------------

fn product() -> impl Strategy<Value = ProductId> {
    prop::sample::select(PRODUCTS.to_vec()).prop_map(pid)
}

/// A few distinct valid snapshots, so concurrent adds can assert different ones.
fn snapshot() -> impl Strategy<Value = ItemSnapshot> {
    (
        0..3usize,
        prop::sample::select(vec![100i64, 1299, 2500]),
        prop::sample::select(vec!["EUR", "JPY"]),
    )
        .prop_map(|(version, price, currency)| snap(&format!("Item v{version}"), price, currency))
}

fn coupon() -> impl Strategy<Value = cart_crdt::CouponCode> {
    prop::sample::select(COUPONS.to_vec()).prop_map(code)
}

fn cart_op() -> impl Strategy<Value = CartOp> {
    prop_oneof![
        5 => (product(), 1..=5u64, snapshot())
            .prop_map(|(product_id, quantity, snapshot)| CartOp::AddItem { product_id, quantity, snapshot }),
        2 => (product(), 0..=6u64).prop_map(|(product_id, quantity)| CartOp::SetQuantity { product_id, quantity }),
        3 => (product(), -3..=4i64).prop_map(|(product_id, delta)| CartOp::AdjustQuantity { product_id, delta }),
        2 => product().prop_map(|product_id| CartOp::RemoveItem { product_id }),
        1 => Just(CartOp::Clear),
        2 => product().prop_map(|product_id| CartOp::SaveForLater { product_id }),
        3 => product().prop_map(|product_id| CartOp::MoveToCart { product_id }),
        1 => coupon().prop_map(|code| CartOp::ApplyCoupon { code }),
        1 => coupon().prop_map(|code| CartOp::RemoveCoupon { code }),
        1 => Just(CartOp::Touch),
        2 => prop::collection::vec((product(), snapshot(), any::<bool>(), 1..4u64), 1..3).prop_map(|items| {
            CartOp::RefreshItems {
                items: items
                    .into_iter()
                    .map(|(product_id, snapshot, available, catalog_version)| cart_crdt::RefreshItem {
                        product_id,
                        refresh: cart_crdt::Refresh { catalog_version, snapshot, available },
                    })
                    .collect(),
            }
        }),
    ]
}

fn step(op: impl Strategy<Value = CartOp>) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..REPLICAS, op, prop::option::of(0..8u8)).prop_map(|(replica, op, request)| Step::Apply {
            replica,
            op,
            request
        }),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(into, from)| Step::Merge { into, from }),
    ]
}

fn schedule() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(cart_op()), 0..80)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---- (a)-(c): merge laws and convergence ----------------------------------------------------

proptest! {
    // 125 merge triples per case: 256 cases keep the file under ~10 s in debug builds.
    #![proptest_config(config(256))]

    /// (a) On reachable replica states (the three final ones and two taken mid-run), merge is
    /// commutative, associative and idempotent, compared on canonical bytes.
    #[test]
    fn merge_is_commutative_associative_idempotent(steps in schedule(), mid_run in any::<[Index; 2]>()) {
        let run = run(&steps);
        let mut states = carts(&run);
        if !run.history.is_empty() {
            states.extend(mid_run.iter().map(|i| run.history[i.index(run.history.len())].clone()));
        }
        for x in &states {
            prop_assert_eq!(enc(&merged(x, x)), enc(x), "x ⊔ x == x");
            for y in &states {
                let xy = merged(x, y);
                prop_assert_eq!(enc(&xy), enc(&merged(y, x)), "x ⊔ y == y ⊔ x");
                prop_assert_eq!(enc(&merged(&xy, y)), enc(&xy), "(x ⊔ y) ⊔ y == x ⊔ y");
                for z in &states {
                    prop_assert_eq!(
                        enc(&merged(&xy, z)),
                        enc(&merged(x, &merged(y, z))),
                        "(x ⊔ y) ⊔ z == x ⊔ (y ⊔ z)"
                    );
                }
            }
        }
    }

}

proptest! {
    #![proptest_config(config(512))]

    /// (b) Once every replica has merged every other one, all hold byte-identical state, and
    /// applying an op on the converged state then re-merging keeps them identical.
    #[test]
    fn replicas_converge_after_merging_everything(steps in schedule(), extra in cart_op()) {
        let mut replicas = run(&steps).replicas;
        let before: Vec<Replica> = replicas.clone();
        for r in replicas.iter_mut() {
            for other in &before {
                r.merge_from(other);
            }
        }
        let expected = enc(&merge_all(&before.iter().map(|r| r.cart.clone()).collect::<Vec<_>>()));
        for r in &replicas {
            prop_assert_eq!(enc(&r.cart), expected.clone());
            prop_assert_eq!(r.view(), replicas[0].view());
        }
        // One more write on replica 0, gossiped: still converged.
        if replicas[0].apply(&extra).is_ok() {
            let source = replicas[0].clone();
            for r in replicas.iter_mut().skip(1) {
                r.merge_from(&source);
                prop_assert_eq!(enc(&r.cart), enc(&source.cart));
            }
        }
    }

    /// (c) A fresh cart that receives every recorded delta (per-actor FIFO, any interleaving
    /// across actors) encodes byte-identical to the merge of all replicas' states.
    #[test]
    fn delta_delivery_converges_to_state_merge(
        steps in schedule(),
        picks in prop::collection::vec(any::<Index>(), 0..300),
    ) {
        let run = run(&steps);
        let by_state = merge_all(&carts(&run));
        let by_delta = deliver_deltas(&run.deltas, &picks);
        prop_assert_eq!(enc(&by_delta), enc(&by_state));
        prop_assert_eq!(by_delta.view(&cart_id()), by_state.view(&cart_id()));
    }

    /// (c') Deltas mixed with full-state merges of intermediate states (delta shipping with
    /// full-state fallback, read repair) reach the same bytes as merging all replicas.
    #[test]
    fn mixed_delta_and_state_delivery_converges(
        steps in schedule(),
        events in prop::collection::vec(
            prop_oneof![3 => any::<Index>().prop_map(Receive::Delta), 1 => any::<Index>().prop_map(Receive::State)],
            0..200,
        ),
    ) {
        let run = run(&steps);
        let by_state = merge_all(&carts(&run));
        prop_assert_eq!(enc(&deliver_mixed(&run, &events)), enc(&by_state));
    }

    /// (c'') Deltas delivered in any order at all (not per-actor FIFO), some of them twice,
    /// reach the same bytes as merging all replicas: a delta is a state, so its merge needs no
    /// ordering, and a node may ship deltas over several connections at once.
    #[test]
    fn deltas_in_any_order_converge(steps in schedule(), order in prop::collection::vec(any::<Index>(), 0..300)) {
        let run = run(&steps);
        let by_state = merge_all(&carts(&run));
        let mut pending: Vec<&CartDelta> = run.deltas.iter().map(|(_, d)| d).collect();
        let mut cart = Cart::default();
        for pick in &order {
            if pending.is_empty() {
                break;
            }
            let i = pick.index(pending.len());
            cart.apply_delta(pending[i]);
            // Every other pick delivers a duplicate instead of consuming the delta.
            if pick.index(2) == 0 {
                pending.swap_remove(i);
            }
        }
        for delta in pending {
            cart.apply_delta(delta);
        }
        prop_assert_eq!(enc(&cart), enc(&by_state));
    }

    /// The context is the state's version: over every state a schedule reaches (and merges of
    /// them), equal contexts always come with equal carts. Digest reads rely on this.
    #[test]
    fn equal_contexts_mean_equal_states(steps in schedule(), picks in any::<[Index; 4]>()) {
        let run = run(&steps);
        let mut states = reached(&run, &picks);
        states.extend(run.deltas.iter().take(8).map(|(_, d)| d.as_cart().clone()));
        for x in &states {
            for y in &states {
                if x.context() == y.context() {
                    prop_assert_eq!(enc(x), enc(y));
                }
                prop_assert_eq!(x.covers(y), merged(x, y) == *x, "covers ⇔ merge changes nothing");
            }
        }
    }

    /// A catch-up (a read's reply to a reader whose copy differs) rebuilds into a state with the
    /// sender's context whose merge with the reader's state, either way round, is the merge with
    /// the sender's whole state (also for a reader whose state has moved on since); it round-trips
    /// through its codec, is never much bigger than the whole state, and is refused by a reader
    /// it was not made for.
    #[test]
    fn catch_ups_merge_like_whole_states(steps in schedule(), picks in any::<[Index; 4]>()) {
        let states = reached(&run(&steps), &picks);
        for x in &states {
            for s in &states {
                let catch_up = s.catch_up(x.context()).expect("a context encodes");
                let bytes = cart_crdt::codec::encode_catch_up(&catch_up).expect("a catch-up encodes");
                let decoded = cart_crdt::codec::decode_catch_up(&bytes).expect("own encoding decodes");
                prop_assert_eq!(&decoded, &catch_up);
                prop_assert!(bytes.len() <= enc(s).len() + 16, "{} bytes for a {}-byte state", bytes.len(), enc(s).len());
                let rebuilt = x.rebuild(decoded.clone(), x.context()).expect("made for this reader");
                prop_assert_eq!(rebuilt.context(), s.context());
                prop_assert_eq!(enc(&merged(x, &rebuilt)), enc(&merged(x, s)), "x ⊔ S' == x ⊔ S");
                prop_assert_eq!(enc(&merged(&rebuilt, x)), enc(&merged(s, x)), "S' ⊔ x == S ⊔ x");
                for y in &states {
                    if y.context() != x.context() {
                        let other = s.catch_up(y.context()).expect("a context encodes");
                        prop_assert!(x.rebuild(other, x.context()).is_err(), "made for another reader");
                    }
                    // A reader that has moved on since it sent its context (x ⊔ y covers x's).
                    let later = merged(x, y);
                    let rebuilt = later.rebuild(decoded.clone(), x.context()).expect("covers the context");
                    prop_assert_eq!(enc(&merged(&later, &rebuilt)), enc(&merged(&later, s)), "(x ⊔ y) ⊔ S' == (x ⊔ y) ⊔ S");
                }
            }
        }
    }

    /// Stored bytes round-trip for every reachable state, and equal states encode equally
    /// whatever HashMap order they were built in.
    #[test]
    fn codec_round_trips(steps in schedule()) {
        for cart in carts(&run(&steps)) {
            let bytes = enc(&cart);
            let decoded = cart_crdt::codec::decode(&bytes).expect("own encoding decodes");
            prop_assert_eq!(&decoded, &cart);
            prop_assert_eq!(enc(&decoded), bytes);
        }
    }

    /// A GetCart reply's view and version, made in one walk, are the view and the version.
    #[test]
    fn view_with_version_is_view_and_version(steps in schedule()) {
        for cart in carts(&run(&steps)) {
            let (view, version) = cart.view_with_version(&cart_id());
            prop_assert_eq!(view, cart.view(&cart_id()));
            prop_assert_eq!(version, cart.version(&cart_id()));
        }
    }
}

// ---- (d): quantities are counters, also while every actor rewrites its total concurrently ----

const COUNTED: &str = "sku-a";

/// Increments only: AddItem (always allowed) and AdjustQuantity (needs the line to be known).
fn increment() -> impl Strategy<Value = CartOp> {
    prop_oneof![
        1 => (1..=3u64, snapshot()).prop_map(|(quantity, snapshot)| CartOp::AddItem { product_id: pid(COUNTED), quantity, snapshot }),
        2 => (1..=4i64).prop_map(|delta| CartOp::AdjustQuantity { product_id: pid(COUNTED), delta }),
    ]
}

/// A random prefix, then a burst where every replica adds 5-8 times with no merges (so all
/// three actors replace their running totals concurrently), then a random suffix.
fn counter_schedule() -> impl Strategy<Value = Vec<Step>> {
    let burst = prop::collection::vec(prop::collection::vec(increment(), 5..=8), REPLICAS).prop_map(|per_replica| {
        per_replica
            .into_iter()
            .enumerate()
            .flat_map(|(replica, ops)| {
                // AddItem first so AdjustQuantity finds the line even on a replica that never
                // merged; the burst then holds ≥ 5 successful increments per actor.
                let first = CartOp::AddItem {
                    product_id: pid(COUNTED),
                    quantity: 1,
                    snapshot: snap("Item v0", 100, "EUR"),
                };
                std::iter::once(first).chain(ops).map(move |op| Step::Apply {
                    replica,
                    op,
                    request: None,
                })
            })
            .collect::<Vec<_>>()
    });
    (
        prop::collection::vec(step(increment()), 0..40),
        burst,
        prop::collection::vec(step(increment()), 10..60),
    )
        .prop_map(|(prefix, burst, suffix)| prefix.into_iter().chain(burst).chain(suffix).collect())
}

/// The quantity an op added, as recorded in its delta (AddItem / AdjustQuantity only).
fn increment_of(op: &CartOp) -> i64 {
    match op {
        CartOp::AddItem { quantity, .. } => *quantity as i64,
        CartOp::AdjustQuantity { delta, .. } => *delta,
        other => panic!("not an increment: {other:?}"),
    }
}

/// The dots of the `Total` entries a cart holds.
fn total_dots(cart: &Cart) -> Vec<Dot> {
    cart.lines()
        .iter()
        .filter(|e| matches!(e.kind, LineKind::Total(_)))
        .map(|e| e.dot)
        .collect()
}

/// True when the delta replaced a running total: it removes one of the `Total` entries held
/// before the op.
fn replaces_total(before: &[Dot], delta: &CartDelta) -> bool {
    before.iter().any(|dot| delta.removes(*dot))
}

proptest! {
    #![proptest_config(config(512))]

    /// (d) With only increments on one product, the merged quantity is the sum of all successful
    /// increments, on every replica and by delta delivery, though actors replace their totals
    /// concurrently; and one total per actor keeps the cart small.
    #[test]
    fn merged_quantity_is_the_sum_of_increments(steps in counter_schedule()) {
        let mut replicas: Vec<Replica> = (0..REPLICAS).map(|i| Replica::new(i as u64 + 1)).collect();
        let mut deltas = Vec::new();
        let mut expected = 0i64;
        let mut replacing_actors = [false; REPLICAS];
        for step in &steps {
            match step {
                Step::Apply { replica, op, .. } => {
                    let before = total_dots(&replicas[*replica].cart);
                    if let Ok(delta) = replicas[*replica].apply(op) {
                        expected += increment_of(op);
                        replacing_actors[*replica] |= replaces_total(&before, &delta);
                        deltas.push((*replica, delta));
                    }
                }
                Step::Merge { into, from } => {
                    let source = replicas[*from].clone();
                    replicas[*into].merge_from(&source);
                }
            }
        }
        prop_assert_eq!(replacing_actors, [true; REPLICAS], "every actor replaced its total at least once");

        let all = merge_all(&replicas.iter().map(|r| r.cart.clone()).collect::<Vec<_>>());
        let expected = Some(expected as u64);
        prop_assert_eq!(quantity_of(&all.view(&cart_id()), COUNTED), expected);
        for r in replicas.iter_mut() {
            r.cart.merge(all.clone());
            prop_assert_eq!(r.quantity(COUNTED), expected);
        }
        let by_delta = deliver_deltas(&deltas, &[]);
        prop_assert_eq!(quantity_of(&by_delta.view(&cart_id()), COUNTED), expected);
        let size = enc(&all).len();
        prop_assert!(size < 1024, "one line after {} increments encodes to {} bytes", deltas.len(), size);
    }
}

/// Guards the laws against vacuous schedules: over generated schedules, every op kind succeeds
/// many times (a generator whose ops all fail would make every law above trivially true).
#[test]
fn generated_schedules_exercise_every_op() {
    use std::collections::BTreeMap;

    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut successes: BTreeMap<&'static str, usize> = BTreeMap::new();
    for _ in 0..300 {
        let steps = schedule().new_tree(&mut runner).expect("generate a schedule").current();
        let mut replicas: Vec<Replica> = (0..REPLICAS).map(|i| Replica::new(i as u64 + 1)).collect();
        for step in &steps {
            match step {
                Step::Apply { replica, op, .. } => {
                    if replicas[*replica].apply(op).is_ok() {
                        *successes.entry(op.name()).or_default() += 1;
                    }
                }
                Step::Merge { into, from } => {
                    let source = replicas[*from].clone();
                    replicas[*into].merge_from(&source);
                }
            }
        }
    }
    println!("successful ops over 300 schedules: {successes:?}");
    for name in [
        "add_item",
        "set_quantity",
        "adjust_quantity",
        "remove_item",
        "clear_cart",
        "save_for_later",
        "move_to_cart",
        "apply_coupon",
        "remove_coupon",
        "touch",
    ] {
        let n = successes.get(name).copied().unwrap_or(0);
        assert!(n >= 30, "{name} succeeded only {n} times");
    }
}
