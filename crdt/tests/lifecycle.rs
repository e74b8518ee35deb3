//! The cart's lifecycle as pure functions: exactly-once request ids, checkout of a version,
//! the two steps of a merge at login, and expiry.

mod common;

use cart_crdt::{codec, CartError, CartId, CartOp, Expiry, MergeMode, RequestId, Version};
use common::*;

fn rid(text: &str) -> RequestId {
    RequestId::parse(text, "request_id").expect("valid request id")
}

fn qty(r: &Replica, product: &str) -> u64 {
    r.view()
        .lines
        .iter()
        .find(|l| l.product_id == product)
        .map_or(0, |l| l.quantity)
}

fn version(r: &Replica) -> Box<Version> {
    Box::new(r.cart.version(&cart_id()))
}

#[test]
fn request_ids_are_checked_and_hashed() {
    assert_eq!(rid("abc"), rid("abc"));
    assert_ne!(rid("abc"), rid("abd"));
    for bad in ["", "has space", &"x".repeat(129)] {
        match RequestId::parse(bad, "request_id") {
            Err(CartError::InvalidArgument { field, .. }) => assert_eq!(field, "request_id"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

/// A request applied on two replicas before either saw the other counts once: in every view at
/// once, and for good after the second writer settles (its total is taken back).
#[test]
fn a_request_applied_on_two_replicas_counts_once() {
    let mut a = Replica::new(1);
    a.ok(add("tea", 2));
    let mut b = Replica::new(2);
    b.merge_from(&a);
    let id = rid("req-1");
    a.apply_request(&LIMITS, &adjust("tea", 3), Some(id))
        .expect("applies on a");
    b.apply_request(&LIMITS, &adjust("tea", 3), Some(id))
        .expect("applies on b");
    assert_eq!(qty(&a, "tea"), 5);
    assert_eq!(qty(&b, "tea"), 5);
    a.merge_from(&b);
    b.merge_from(&a);
    assert_eq!(qty(&a, "tea"), 5, "the duplicate is not counted");
    assert_eq!(qty(&b, "tea"), 5);
    assert!(a.cart.seen_request(id));
    // The writer of the higher dot settles: its running total gives the 3 back.
    let (later, earlier) = if a
        .cart
        .requests()
        .iter()
        .filter(|r| r.id == id)
        .map(|r| r.dot)
        .max()
        .expect("two entries")
        .actor
        .0
        == 1
    {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let actor = later.actor;
    let now = later.now_ms;
    assert!(later.cart.settle(actor, now, &LIMITS).is_some());
    assert_eq!(qty(later, "tea"), 5);
    assert_eq!(later.cart.requests().iter().filter(|r| r.id == id).count(), 1);
    earlier.merge_from(later);
    assert_eq!(qty(earlier, "tea"), 5);
    assert_eq!(enc(&earlier.cart), enc(&later.cart));
    // Further ops keep counting normally.
    earlier.ok(adjust("tea", 1));
    assert_eq!(qty(earlier, "tea"), 6);
}

/// A set of the line after the duplicate overrules it: nothing is taken back twice.
#[test]
fn a_reset_after_a_duplicate_overrules_it() {
    let mut a = Replica::new(1);
    a.ok(add("tea", 2));
    let mut b = Replica::new(2);
    b.merge_from(&a);
    let id = rid("req-2");
    a.apply_request(&LIMITS, &adjust("tea", 3), Some(id)).expect("a");
    b.apply_request(&LIMITS, &adjust("tea", 3), Some(id)).expect("b");
    a.merge_from(&b);
    a.ok(set("tea", 7));
    assert_eq!(qty(&a, "tea"), 7);
    b.merge_from(&a);
    let (actor, now) = (b.actor, b.now_ms);
    b.cart.settle(actor, now, &LIMITS);
    let (actor, now) = (a.actor, a.now_ms);
    a.cart.settle(actor, now, &LIMITS);
    a.merge_from(&b);
    b.merge_from(&a);
    assert_eq!(qty(&a, "tea"), 7);
    assert_eq!(qty(&b, "tea"), 7);
}

/// Checkout takes exactly what the version saw: an add and a raise made concurrently on another
/// replica stay in the cart, and the order is the version's lines.
#[test]
fn checkout_takes_what_the_version_saw_and_keeps_concurrent_adds() {
    let mut a = Replica::new(1);
    a.ok(add("tea", 2))
        .ok(add("mug", 1))
        .ok(CartOp::ApplyCoupon { code: code("WELCOME") });
    let mut b = Replica::new(2);
    b.merge_from(&a);
    let seen = version(&a);
    b.ok(add("tea", 4)).ok(add("pen", 1));
    let checkout = CartOp::Checkout { version: seen.clone() };
    a.apply_request(&LIMITS, &checkout, Some(rid("co-1")))
        .expect("checkout");
    let order = a.cart.order_of(rid("co-1")).expect("order recorded").clone();
    let lines: Vec<(&str, u64)> = order
        .lines
        .iter()
        .map(|l| (l.product_id.as_str(), l.quantity))
        .collect();
    assert_eq!(lines, vec![("mug", 1), ("tea", 2)]);
    assert_eq!(order.coupons, vec![code("WELCOME")]);
    assert!(a.view().lines.is_empty());
    a.merge_from(&b);
    b.merge_from(&a);
    for r in [&a, &b] {
        let view = r.view();
        let lines: Vec<(&str, u64)> = view.lines.iter().map(|l| (l.product_id.as_str(), l.quantity)).collect();
        assert_eq!(
            lines,
            vec![("pen", 1), ("tea", 4)],
            "what was added after the version stays"
        );
        assert!(view.coupons.is_empty());
    }
    // The same version again is stale: that checkout has happened.
    match a.apply_request(&LIMITS, &checkout, Some(rid("co-2"))) {
        Err(CartError::Stale { field, .. }) => assert_eq!(field, "version"),
        other => panic!("expected stale, got {other:?}"),
    }
    // A new version checks out what is there now.
    let now = version(&a);
    a.apply_request(&LIMITS, &CartOp::Checkout { version: now }, Some(rid("co-3")))
        .expect("checkout of the new version");
    assert!(a.view().lines.is_empty());
}

/// A version the replica has not seen all of is refused as not found (the node catches up).
#[test]
fn checkout_of_a_version_ahead_of_the_replica_asks_to_catch_up() {
    let mut a = Replica::new(1);
    a.ok(add("tea", 1));
    let mut b = Replica::new(2);
    b.ok(add("mug", 1));
    let ahead = version(&a);
    match b.apply(&CartOp::Checkout { version: ahead }) {
        Err(CartError::NotFound { field, .. }) => assert_eq!(field, "version"),
        other => panic!("expected not found, got {other:?}"),
    }
}

#[test]
fn version_tokens_round_trip_and_refuse_other_carts() {
    let mut a = Replica::new(1);
    a.ok(add("tea", 1));
    let v = a.cart.version(&cart_id());
    let token = codec::encode_version(&v).expect("encodes");
    assert_eq!(
        codec::decode_version(&token, &cart_id(), "version").expect("decodes"),
        v
    );
    let other = CartId::parse("guest:someone-else", &LIMITS).expect("id");
    for (token, id) in [
        (token.as_str(), &other),
        ("", &cart_id()),
        ("!!", &cart_id()),
        ("AAAA", &cart_id()),
    ] {
        match codec::decode_version(token, id, "version") {
            Err(CartError::InvalidArgument { field, .. }) => assert_eq!(field, "version"),
            other => panic!("{token:?}: {other:?}"),
        }
    }
}

/// Merge at login, both steps run twice and concurrently: the user cart takes the larger
/// quantity per product once; an item added to the guest cart after its version stays there.
#[test]
fn merge_steps_are_idempotent_and_keep_late_guest_items() {
    let mut guest = Replica::new(1);
    guest
        .ok(add("tea", 2))
        .ok(add("mug", 1))
        .ok(CartOp::ApplyCoupon { code: code("WELCOME") });
    let mut user_a = Replica::new(1);
    user_a.ok(add("tea", 5)).ok(add("pen", 1));
    let mut user_b = Replica::new(2);
    user_b.merge_from(&user_a);
    let seen = version(&guest);
    let absorb = CartOp::Absorb {
        mode: MergeMode::Merge,
        from: seen.clone(),
    };
    // Two tabs: the same guest version absorbed on two owners concurrently, then once more.
    user_a.ok(absorb.clone());
    user_b.ok(absorb.clone());
    user_a.merge_from(&user_b);
    user_a.ok(absorb);
    let lines: Vec<(String, u64)> = user_a
        .view()
        .lines
        .iter()
        .map(|l| (l.product_id.clone(), l.quantity))
        .collect();
    assert_eq!(
        lines,
        vec![("mug".into(), 1), ("pen".into(), 1), ("tea".into(), 5)],
        "larger quantity wins, nothing added twice"
    );
    assert_eq!(user_a.view().coupons, vec!["WELCOME".to_string()]);
    // The guest adds while the merge runs; then the release of what was absorbed, twice.
    guest.ok(add("cup", 1)).ok(add("tea", 1));
    let user = CartId::parse("user:42", &LIMITS).expect("id");
    let release = CartOp::Release {
        into: user.clone(),
        from: seen,
    };
    guest.ok(release.clone()).ok(release);
    let view = guest.view();
    let lines: Vec<(String, u64)> = view.lines.iter().map(|l| (l.product_id.clone(), l.quantity)).collect();
    assert_eq!(
        lines,
        vec![("cup".into(), 1), ("tea".into(), 1)],
        "late items stay for the next merge"
    );
    assert!(view.coupons.is_empty());
    assert_eq!(view.merged_into.as_deref(), Some("user:42"));
}

#[test]
fn replace_mode_gives_the_user_the_guest_lines() {
    let mut guest = Replica::new(1);
    guest.ok(add("tea", 2));
    let mut user = Replica::new(1);
    user.ok(add("pen", 3)).ok(CartOp::ApplyCoupon { code: code("OLD") });
    user.ok(CartOp::Absorb {
        mode: MergeMode::Replace,
        from: version(&guest),
    });
    let lines: Vec<(String, u64)> = user
        .view()
        .lines
        .iter()
        .map(|l| (l.product_id.clone(), l.quantity))
        .collect();
    assert_eq!(lines, vec![("tea".into(), 2)]);
    assert!(user.view().coupons.is_empty());
}

#[test]
fn absorb_refuses_to_pass_the_line_limit() {
    let limits = cart_crdt::Limits {
        max_lines_per_cart: 2,
        ..LIMITS
    };
    let mut guest = Replica::new(1);
    guest.ok(add("a", 1)).ok(add("b", 1));
    let mut user = Replica::new(2);
    user.ok(add("c", 1));
    let before = enc(&user.cart);
    let op = CartOp::Absorb {
        mode: MergeMode::Merge,
        from: version(&guest),
    };
    match user.apply_with(&limits, &op) {
        Err(CartError::LimitExceeded { field, .. }) => assert_eq!(field, "lines"),
        other => panic!("{other:?}"),
    }
    assert_eq!(enc(&user.cart), before, "a refused merge changes nothing");
}

/// Expiry is a pure function of the state; an expired cart written again keeps no entry, and
/// merging the old copy back brings nothing back.
#[test]
fn an_expired_cart_written_again_cannot_be_revived_by_its_old_copy() {
    let expiry = Expiry {
        guest_ttl_ms: 1_000,
        user_ttl_ms: 10_000,
        skew_ms: 100,
    };
    let guest = CartId::parse("guest:s1", &LIMITS).expect("id");
    assert_eq!(expiry.expires_at_ms(&guest, 5_000), Some(6_100));
    assert!(!expiry.expired(&guest, 5_000, 6_099));
    assert!(expiry.expired(&guest, 5_000, 6_100));
    assert!(
        !expiry.expired(&guest, 0, u64::MAX),
        "a cart never written does not expire"
    );
    assert!(!Expiry::NEVER.expired(&guest, 1, u64::MAX));
    let mut a = Replica::new(1);
    a.ok(add("tea", 2));
    let old = a.cart.clone();
    a.cart.forget_expired();
    a.ok(add("mug", 1));
    a.cart.merge(old);
    let lines: Vec<String> = a.view().lines.iter().map(|l| l.product_id.clone()).collect();
    assert_eq!(lines, vec!["mug".to_string()]);
}

/// A first attempt applied late on a cut-off replica, after its retry was applied elsewhere and
/// the line checked out: the late application is the one the checkout did not observe, and it
/// does not bring the line back (nor does its writer's settling take anything else away).
#[test]
fn a_late_first_attempt_after_a_checkout_does_not_bring_the_line_back() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    let id = rid("add-1");
    b.apply_request(&LIMITS, &add("tea", 1), Some(id))
        .expect("the retry, on b");
    b.ok(add("mug", 1));
    let seen = version(&b);
    b.apply_request(&LIMITS, &CartOp::Checkout { version: seen }, Some(rid("co")))
        .expect("checkout");
    assert!(b.view().lines.is_empty());
    // The first attempt reaches a (cut off until now) and applies there.
    a.apply_request(&LIMITS, &add("tea", 1), Some(id))
        .expect("the first attempt, late");
    a.merge_from(&b);
    b.merge_from(&a);
    assert!(a.view().lines.is_empty(), "{:?}", a.view().lines);
    assert!(b.view().lines.is_empty());
    let (actor, now) = (a.actor, a.now_ms);
    a.cart.settle(actor, now, &LIMITS);
    b.merge_from(&a);
    assert!(a.view().lines.is_empty() && b.view().lines.is_empty());
    // A new add after all that shows exactly what it adds.
    b.ok(add("tea", 2));
    assert_eq!(qty(&b, "tea"), 2);
    a.merge_from(&b);
    assert_eq!(qty(&a, "tea"), 2);
}

/// A first attempt applied late (its node was paused while the retry was answered elsewhere and
/// the item then removed) must not bring the item back.
#[test]
fn a_late_duplicate_add_does_not_undo_a_later_remove() {
    let mut b = Replica::new(2);
    let mut c = Replica::new(3);
    let mut a = Replica::new(1);
    let id = rid("add-1");
    b.apply_request(&LIMITS, &add("tea", 1), Some(id))
        .expect("retry applies on b");
    c.merge_from(&b);
    b.apply_request(&LIMITS, &remove("tea"), Some(rid("rm-1")))
        .expect("remove on b");
    c.merge_from(&b);
    assert_eq!(qty(&b, "tea"), 0);
    // The first attempt reaches a, which has seen neither.
    a.apply_request(&LIMITS, &add("tea", 1), Some(id))
        .expect("late attempt applies on a");
    for _ in 0..2 {
        a.merge_from(&b);
        b.merge_from(&a);
        c.merge_from(&a);
    }
    assert_eq!(qty(&a, "tea"), 0, "a: {:?}", a.view());
    assert_eq!(qty(&b, "tea"), 0, "b: {:?}", b.view());
    assert_eq!(qty(&c, "tea"), 0, "c: {:?}", c.view());
}

/// A cart keeps at least the newest `REQUESTS_PER_CART_MAX` request records and never more than
/// `REQUESTS_PRUNE_SLACK` beyond them: the oldest go in bulk once the slack is used up.
#[test]
fn request_records_stay_between_the_bound_and_its_slack() {
    use cart_crdt::{REQUESTS_PER_CART_MAX, REQUESTS_PRUNE_SLACK};
    let mut a = Replica::new(1);
    a.ok(add("tea", 1));
    let writes = REQUESTS_PER_CART_MAX + 3 * REQUESTS_PRUNE_SLACK;
    let mut pruned_at = Vec::new();
    for i in 0..writes {
        let before = a.cart.requests().len();
        a.apply_request(&LIMITS, &adjust("tea", 1), Some(rid(&format!("req-{i}"))))
            .expect("applies");
        let held = a.cart.requests().len();
        assert!(
            held <= REQUESTS_PER_CART_MAX + REQUESTS_PRUNE_SLACK,
            "{held} after write {i}"
        );
        if held < before {
            pruned_at.push(i);
        }
    }
    assert_eq!(pruned_at.len(), 2, "pruned in bulk, twice: {pruned_at:?}");
    // Every one of the newest REQUESTS_PER_CART_MAX is still known (a retry is answered).
    let newest = writes - REQUESTS_PER_CART_MAX..writes;
    assert!(newest.clone().all(|i| a.cart.seen_request(rid(&format!("req-{i}")))));
    assert!(!a.cart.seen_request(rid("req-0")), "the oldest went");
    assert_eq!(qty(&a, "tea"), 1 + writes as u64);
}
