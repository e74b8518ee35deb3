//! DESIGN §4 expected results as scenario tests, plus the single-node behaviour of every op,
//! the error cases (which must leave the cart byte-identical) and input validation.
//!
//! Concurrent scenarios use two replicas, `Actor(1)` and `Actor(2)`, that start from one common
//! merged state, act concurrently, then merge each other's state both ways.

mod common;

use cart_crdt::validate::{self, SnapshotInput};
use cart_crdt::{format_money, CartError, CartId, CartOp, Limits, Money, OwnerKind};
use common::*;

/// Replica 1 runs `setup`, replica 2 merges it (the common state); then replica 1 runs `left`
/// while replica 2 runs `right`; then each merges the other's state. Both directions must give
/// the same bytes; the converged replica is returned.
fn concurrently(setup: &[CartOp], left: &[CartOp], right: &[CartOp]) -> Replica {
    let mut r1 = Replica::new(1);
    let mut r2 = Replica::new(2);
    for op in setup {
        r1.ok(op.clone());
    }
    r2.merge_from(&r1);
    for op in left {
        r1.ok(op.clone());
    }
    for op in right {
        r2.ok(op.clone());
    }
    let (before1, before2) = (r1.clone(), r2.clone());
    r1.merge_from(&before2);
    r2.merge_from(&before1);
    assert_eq!(enc(&r1.cart), enc(&r2.cart), "merging both ways must converge");
    r1
}

/// Several increments by one node, so its running total carries history a concurrent remove or
/// set has observed (the case an earlier folding design got wrong).
fn four_own_increments(p: &str) -> Vec<CartOp> {
    vec![add(p, 1), adjust(p, 1), adjust(p, 1), adjust(p, 1)]
}

// ---- DESIGN §4 expected results -------------------------------------------------------------

/// `+1 ∥ +1 → +2` with AddItem on an existing line.
#[test]
fn concurrent_adds_sum() {
    let r = concurrently(&[add("p", 1)], &[add("p", 1)], &[add("p", 1)]);
    assert_eq!(r.quantity("p"), Some(3));
}

/// `+1 ∥ +1 → +2` when both nodes create the line concurrently.
#[test]
fn concurrent_first_adds_sum() {
    let r = concurrently(&[], &[add("p", 1)], &[add("p", 1)]);
    assert_eq!(r.quantity("p"), Some(2));
}

/// `+1 ∥ +1 → +2` with the counter op AdjustQuantity.
#[test]
fn concurrent_adjusts_sum() {
    let r = concurrently(&[add("p", 1)], &[adjust("p", 1)], &[adjust("p", 1)]);
    assert_eq!(r.quantity("p"), Some(3));
}

/// `remove ∥ +1 → line kept, quantity 1`: the remove deletes only what it observed.
#[test]
fn remove_concurrent_with_add_keeps_line_with_added_quantity() {
    let r = concurrently(&[add("p", 2)], &[remove("p")], &[add("p", 1)]);
    assert_eq!(r.quantity("p"), Some(1));
    assert_eq!(r.view().lines[0].snapshot.name, "Item p");
}

/// `set 3 ∥ set 5 → 5`.
#[test]
fn concurrent_sets_keep_the_larger() {
    let r = concurrently(&[add("p", 1)], &[set("p", 3)], &[set("p", 5)]);
    assert_eq!(r.quantity("p"), Some(5));
}

/// `set 5 ∥ +1 → 6`.
#[test]
fn set_concurrent_with_add_adds_on_top() {
    let r = concurrently(&[add("p", 1)], &[set("p", 5)], &[add("p", 1)]);
    assert_eq!(r.quantity("p"), Some(6));
}

/// Remove then re-add on one node → only the re-added quantity, after merging with a replica
/// that still holds the old line.
#[test]
fn remove_then_readd_on_one_node_keeps_only_the_readded_quantity() {
    let r = concurrently(&[add("p", 3)], &[remove("p"), add("p", 2)], &[]);
    assert_eq!(r.quantity("p"), Some(2));
}

/// Same, with the other replica adding concurrently: its unobserved +1 survives as well.
#[test]
fn remove_then_readd_concurrent_with_add() {
    let r = concurrently(&[add("p", 3)], &[remove("p"), add("p", 2)], &[add("p", 1)]);
    assert_eq!(r.quantity("p"), Some(3));
}

/// `remove ∥ +1 → 1` also after many increments by the adding node: its rewritten total must not
/// bring back increments the remove observed.
#[test]
fn remove_concurrent_with_add_after_many_increments_keeps_quantity_1() {
    let r = concurrently(&four_own_increments("p"), &[add("p", 1)], &[remove("p")]);
    assert_eq!(r.quantity("p"), Some(1));
}

/// `set 5 ∥ +1 → 6` also after many increments by the adding node.
#[test]
fn set_concurrent_with_add_after_many_increments_gives_6() {
    let r = concurrently(&four_own_increments("p"), &[add("p", 1)], &[set("p", 5)]);
    assert_eq!(r.quantity("p"), Some(6));
}

/// Concurrent decrements can leave a line at quantity ≤ 0 (hidden). Adding to the hidden line
/// must show what was added: an acknowledged add is never lost (DESIGN §7.1).
#[test]
fn add_after_concurrent_decrements_shows_the_added_quantity() {
    let mut r = concurrently(&[add("p", 1)], &[adjust("p", -1)], &[adjust("p", -1)]);
    assert_eq!(r.quantity("p"), None, "1 - 1 - 1 is hidden");
    r.ok(add("p", 1));
    assert_eq!(r.quantity("p"), Some(1));
}

/// Rewriting the running total never changes the quantity.
#[test]
fn running_total_keeps_the_quantity() {
    let mut r = Replica::new(1);
    r.ok(add("p", 1));
    for i in 2..=20 {
        r.ok(adjust("p", 1));
        assert_eq!(r.quantity("p"), Some(i));
    }
}

// ---- single-node behaviour ------------------------------------------------------------------

/// SetQuantity 0 removes the line.
#[test]
fn set_quantity_zero_removes_the_line() {
    let mut r = Replica::new(1);
    r.ok(add("p", 2)).ok(add("q", 1)).ok(set("p", 0));
    let view = r.view();
    assert_eq!(view.lines.len(), 1);
    assert_eq!(view.lines[0].product_id, "q");
    assert_eq!(r.quantity("p"), None);
}

/// Save-for-later moves the line (with its quantity) into `saved`; move-to-cart moves it back.
#[test]
fn save_for_later_and_move_back_to_cart() {
    let mut r = Replica::new(1);
    r.ok(add("p", 3)).ok(add("q", 1));
    r.ok(CartOp::SaveForLater { product_id: pid("p") });
    let view = r.view();
    assert_eq!(quantity_of(&view, "p"), None);
    assert_eq!(view.lines.len(), 1);
    assert_eq!(view.saved.len(), 1);
    assert_eq!(view.saved[0].product_id, "p");
    assert_eq!(view.saved[0].quantity, 3);
    assert_eq!(view.saved[0].snapshot, snap("Item p", 1299, "EUR"));

    r.ok(CartOp::MoveToCart { product_id: pid("p") });
    let view = r.view();
    assert!(view.saved.is_empty());
    assert_eq!(quantity_of(&view, "p"), Some(3));
    assert_eq!(
        view.lines.iter().find(|l| l.product_id == "p").unwrap().snapshot,
        snap("Item p", 1299, "EUR")
    );
}

/// Coupons apply (idempotently, listed sorted) and remove.
#[test]
fn coupons_apply_and_remove() {
    let mut r = Replica::new(1);
    r.ok(CartOp::ApplyCoupon { code: code("WELCOME") });
    r.ok(CartOp::ApplyCoupon { code: code("FREESHIP") });
    r.ok(CartOp::ApplyCoupon { code: code("WELCOME") });
    assert_eq!(r.view().coupons, vec!["FREESHIP".to_string(), "WELCOME".to_string()]);
    r.ok(CartOp::RemoveCoupon { code: code("WELCOME") });
    assert_eq!(r.view().coupons, vec!["FREESHIP".to_string()]);
}

/// Clear removes every line and coupon but keeps saved-for-later.
#[test]
fn clear_removes_lines_and_coupons_but_keeps_saved() {
    let mut r = Replica::new(1);
    r.ok(add("p", 1)).ok(add("q", 2)).ok(add("s", 4));
    r.ok(CartOp::SaveForLater { product_id: pid("s") });
    r.ok(CartOp::ApplyCoupon { code: code("WELCOME") });
    r.ok(CartOp::Clear);
    let view = r.view();
    assert!(view.lines.is_empty());
    assert!(view.coupons.is_empty());
    assert!(view.subtotals.is_empty());
    assert_eq!(view.saved.len(), 1);
    assert_eq!(view.saved[0].product_id, "s");
    assert_eq!(view.saved[0].quantity, 4);
}

/// Every write moves `touched_at_ms` forward (max-register); the view shows it and the owner.
#[test]
fn touch_and_owner_in_view() {
    let mut r = Replica::new(1);
    r.ok(CartOp::Touch);
    let first = r.cart.touched_at_ms();
    assert_eq!(first, r.now_ms);
    r.ok(add("p", 1));
    assert!(r.cart.touched_at_ms() > first);
    let view = r.view();
    assert_eq!(view.touched_at_ms, r.cart.touched_at_ms());
    assert_eq!(view.owner, OwnerKind::User);
    assert_eq!(view.cart_id, "user:42");
}

/// Subtotal per currency: 2 × 12.99 EUR = 25.98 EUR; JPY has exponent 0; sorted by currency.
#[test]
fn subtotals_per_currency() {
    let mut r = Replica::new(1);
    r.ok(CartOp::AddItem {
        product_id: pid("book"),
        quantity: 2,
        snapshot: snap("Book", 1299, "EUR"),
    });
    r.ok(CartOp::AddItem {
        product_id: pid("tea"),
        quantity: 3,
        snapshot: snap("Matcha", 500, "JPY"),
    });
    r.ok(CartOp::AddItem {
        product_id: pid("pen"),
        quantity: 1,
        snapshot: snap("Pen", 1, "EUR"),
    });
    let subtotals = r.view().subtotals;
    assert_eq!(
        subtotals,
        vec![
            Money {
                currency: "EUR".into(),
                amount_minor: 2599
            },
            Money {
                currency: "JPY".into(),
                amount_minor: 1500
            },
        ]
    );
    assert_eq!(subtotals[0].display(), "25.99 EUR");
    assert_eq!(subtotals[1].display(), "1500 JPY");

    let two_books = Money {
        currency: "EUR".into(),
        amount_minor: 2 * 1299,
    };
    assert_eq!(two_books.amount_minor, 2598);
    assert_eq!(two_books.display(), "25.98 EUR");
    assert_eq!(format_money(5, "EUR"), "0.05 EUR");
    assert_eq!(format_money(-250, "EUR"), "-2.50 EUR");
    assert_eq!(format_money(1234, "BHD"), "1.234 BHD");
}

// ---- errors leave the cart byte-identical ---------------------------------------------------

/// Applies `op` expecting an error, and checks the cart's stored bytes did not change.
fn refused(r: &mut Replica, limits: &Limits, op: CartOp) -> CartError {
    let before = enc(&r.cart);
    let err = r.apply_with(limits, &op).expect_err("op must be refused");
    assert_eq!(enc(&r.cart), before, "{op:?} failed with {err:?} but changed the cart");
    err
}

fn populated() -> Replica {
    let mut r = Replica::new(1);
    r.ok(add("p", 2)).ok(add("q", 1));
    r.ok(CartOp::ApplyCoupon { code: code("WELCOME") });
    r
}

#[test]
fn remove_unknown_product_is_not_found() {
    let mut r = populated();
    let err = refused(&mut r, &LIMITS, remove("nope"));
    assert!(
        matches!(
            err,
            CartError::NotFound {
                field: "product_id",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn set_quantity_on_unknown_product_is_not_found() {
    let mut r = populated();
    for quantity in [0, 3] {
        let err = refused(&mut r, &LIMITS, set("nope", quantity));
        assert!(
            matches!(
                err,
                CartError::NotFound {
                    field: "product_id",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn adjust_unknown_product_is_not_found() {
    let mut r = populated();
    let err = refused(&mut r, &LIMITS, adjust("nope", 1));
    assert!(
        matches!(
            err,
            CartError::NotFound {
                field: "product_id",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn save_or_move_unknown_product_is_not_found() {
    let mut r = populated();
    let err = refused(
        &mut r,
        &LIMITS,
        CartOp::SaveForLater {
            product_id: pid("nope"),
        },
    );
    assert!(
        matches!(
            err,
            CartError::NotFound {
                field: "product_id",
                ..
            }
        ),
        "{err:?}"
    );
    // `p` is in the cart but not saved for later.
    let err = refused(&mut r, &LIMITS, CartOp::MoveToCart { product_id: pid("p") });
    assert!(
        matches!(
            err,
            CartError::NotFound {
                field: "product_id",
                ..
            }
        ),
        "{err:?}"
    );
}

/// A removed line is gone for every op that needs it.
#[test]
fn ops_on_a_removed_line_are_not_found() {
    let mut r = populated();
    r.ok(remove("p"));
    for op in [
        remove("p"),
        set("p", 2),
        adjust("p", 1),
        CartOp::SaveForLater { product_id: pid("p") },
    ] {
        let err = refused(&mut r, &LIMITS, op);
        assert!(
            matches!(
                err,
                CartError::NotFound {
                    field: "product_id",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn remove_coupon_not_applied_is_not_found() {
    let mut r = populated();
    let err = refused(&mut r, &LIMITS, CartOp::RemoveCoupon { code: code("NOPE") });
    assert!(matches!(err, CartError::NotFound { field: "code", .. }), "{err:?}");
}

/// A new line past `max_lines_per_cart` is refused; adding to an existing line still works.
#[test]
fn new_line_past_max_lines_is_limit_exceeded() {
    let limits = Limits {
        max_lines_per_cart: 2,
        ..Limits::DEFAULT
    };
    let mut r = populated();
    let err = refused(&mut r, &limits, add("third", 1));
    assert!(
        matches!(err, CartError::LimitExceeded { field: "lines", .. }),
        "{err:?}"
    );
    r.apply_with(&limits, &add("p", 1)).expect("existing line has room");
    assert_eq!(r.quantity("p"), Some(3));
    // Removing a line makes room again.
    r.apply_with(&limits, &remove("q")).unwrap();
    r.apply_with(&limits, &add("third", 1)).expect("room after a remove");
}

/// Quantity past `max_quantity`, by add, adjust or move-to-cart, is refused.
#[test]
fn quantity_past_max_is_limit_exceeded() {
    let limits = Limits {
        max_quantity: 10,
        ..Limits::DEFAULT
    };
    let mut r = Replica::new(1);
    r.apply_with(&limits, &add("p", 8)).unwrap();
    for op in [add("p", 3), adjust("p", 3), add("fresh", 11)] {
        let err = refused(&mut r, &limits, op);
        assert!(
            matches!(err, CartError::LimitExceeded { field: "quantity", .. }),
            "{err:?}"
        );
    }
    r.apply_with(&limits, &add("p", 2)).expect("exactly the limit is fine");
    assert_eq!(r.quantity("p"), Some(10));

    // Move-to-cart on top of a re-added line would pass the limit.
    r.apply_with(&limits, &CartOp::SaveForLater { product_id: pid("p") })
        .unwrap();
    r.apply_with(&limits, &add("p", 1)).unwrap();
    let err = refused(&mut r, &limits, CartOp::MoveToCart { product_id: pid("p") });
    assert!(
        matches!(err, CartError::LimitExceeded { field: "quantity", .. }),
        "{err:?}"
    );
}

#[test]
fn coupon_and_saved_limits() {
    let limits = Limits {
        max_coupons_per_cart: 1,
        max_saved_per_cart: 1,
        ..Limits::DEFAULT
    };
    let mut r = populated();
    let err = refused(&mut r, &limits, CartOp::ApplyCoupon { code: code("SECOND") });
    assert!(matches!(err, CartError::LimitExceeded { field: "code", .. }), "{err:?}");
    r.apply_with(&limits, &CartOp::ApplyCoupon { code: code("WELCOME") })
        .expect("re-applying is not a new coupon");

    r.apply_with(&limits, &CartOp::SaveForLater { product_id: pid("p") })
        .unwrap();
    let err = refused(&mut r, &limits, CartOp::SaveForLater { product_id: pid("q") });
    assert!(
        matches!(err, CartError::LimitExceeded { field: "saved", .. }),
        "{err:?}"
    );
}

// ---- validation -----------------------------------------------------------------------------

fn snapshot_input() -> SnapshotInput {
    SnapshotInput {
        name: "Espresso beans".into(),
        unit_price_minor: 1299,
        currency: "EUR".into(),
        image_url: "https://cdn.example.com/beans.jpg".into(),
        attributes: [("size".to_string(), "1kg".to_string())].into(),
    }
}

fn snapshot_error(input: SnapshotInput) -> CartError {
    validate::snapshot(input, &LIMITS).expect_err("snapshot must be refused")
}

fn assert_invalid(err: CartError, expected_field: &str) {
    match err {
        CartError::InvalidArgument { field, .. } => assert_eq!(field, expected_field),
        other => panic!("expected InvalidArgument for {expected_field}, got {other:?}"),
    }
}

#[test]
fn valid_snapshot_is_accepted() {
    let s = validate::snapshot(snapshot_input(), &LIMITS).unwrap();
    assert_eq!(s.unit_price_minor, 1299);
    assert_eq!(s.image_url.as_deref(), Some("https://cdn.example.com/beans.jpg"));
    let no_image = validate::snapshot(
        SnapshotInput {
            image_url: String::new(),
            ..snapshot_input()
        },
        &LIMITS,
    )
    .unwrap();
    assert_eq!(no_image.image_url, None);
}

#[test]
fn snapshot_with_empty_name_is_refused() {
    for name in ["", "   "] {
        assert_invalid(
            snapshot_error(SnapshotInput {
                name: name.into(),
                ..snapshot_input()
            }),
            "snapshot.name",
        );
    }
}

#[test]
fn snapshot_with_negative_price_is_refused() {
    let err = snapshot_error(SnapshotInput {
        unit_price_minor: -1,
        ..snapshot_input()
    });
    assert_invalid(err, "snapshot.unit_price_minor");
}

#[test]
fn snapshot_with_bad_currency_is_refused() {
    for currency in ["eur", "EURO", "ABC", "", "EU"] {
        let err = snapshot_error(SnapshotInput {
            currency: currency.into(),
            ..snapshot_input()
        });
        assert_invalid(err, "snapshot.currency");
    }
    validate::currency("JPY").expect("JPY is ISO 4217");
}

#[test]
fn snapshot_over_max_bytes_is_refused() {
    let name = "x".repeat(LIMITS.max_snapshot_bytes + 1);
    assert_invalid(
        snapshot_error(SnapshotInput {
            name,
            ..snapshot_input()
        }),
        "snapshot",
    );
}

#[test]
fn snapshot_with_bad_image_url_is_refused() {
    for url in ["ftp://x/y.jpg", "https://x/a b.jpg"] {
        let err = snapshot_error(SnapshotInput {
            image_url: url.into(),
            ..snapshot_input()
        });
        assert_invalid(err, "snapshot.image_url");
    }
}

#[test]
fn add_quantity_validation() {
    assert_invalid(validate::add_quantity(0, &LIMITS).unwrap_err(), "quantity");
    assert_invalid(validate::add_quantity(-3, &LIMITS).unwrap_err(), "quantity");
    assert_invalid(
        validate::add_quantity(LIMITS.max_quantity as i64 + 1, &LIMITS).unwrap_err(),
        "quantity",
    );
    assert_eq!(validate::add_quantity(1, &LIMITS), Ok(1));
    assert_eq!(validate::set_quantity(0, &LIMITS), Ok(0));
    assert_invalid(validate::set_quantity(-1, &LIMITS).unwrap_err(), "quantity");
}

#[test]
fn cart_id_parse_refuses_bad_ids() {
    let too_long = format!("user:{}", "a".repeat(LIMITS.max_id_bytes));
    for raw in [
        "",
        "cart:1",
        "User:1",
        "user:",
        "guest:",
        "user:a b",
        " user:1",
        "user:1\n",
        "user:\t",
        too_long.as_str(),
    ] {
        match CartId::parse(raw, &LIMITS) {
            Err(CartError::InvalidArgument { field: "cart_id", .. }) => {}
            other => panic!("{raw:?} gave {other:?}, expected InvalidArgument for cart_id"),
        }
    }
}

#[test]
fn cart_id_parse_accepts_good_ids() {
    let user = CartId::parse("user:42", &LIMITS).unwrap();
    assert_eq!(user.owner(), OwnerKind::User);
    assert_eq!(user.as_str(), "user:42");
    let guest = CartId::parse("guest:sess-9f2c", &LIMITS).unwrap();
    assert_eq!(guest.owner(), OwnerKind::Guest);
    let longest = format!("user:{}", "a".repeat(LIMITS.max_id_bytes - "user:".len()));
    assert!(
        CartId::parse(&longest, &LIMITS).is_ok(),
        "exactly max_id_bytes is allowed"
    );
}

// ---- residue of removed lines ----------------------------------------------------------------

/// A removed line keeps its counter entries (so a concurrent add counts from the right base)
/// until `RESIDUE_GRACE_MS` has passed; the next write after that drops them.
#[test]
fn removed_line_residue_is_dropped_after_the_grace_period() {
    let mut r = Replica::new(1);
    r.ok(add("p", 3)).ok(add("q", 1)).ok(remove("p"));
    let with_residue = enc(&r.cart).len();
    r.ok(add("q", 1));
    assert_eq!(
        enc(&r.cart).len(),
        with_residue,
        "residue is kept inside the grace period"
    );
    r.now_ms += cart_crdt::RESIDUE_GRACE_MS + 1;
    r.ok(add("q", 1));
    let after = enc(&r.cart).len();
    assert!(
        after < with_residue,
        "residue should be dropped: {after} >= {with_residue}"
    );
    assert_eq!(r.quantity("p"), None);
    r.ok(add("p", 2));
    assert_eq!(r.quantity("p"), Some(2), "a re-added line starts afresh");
}

// ---- RefreshItems -----------------------------------------------------------------------------

fn refresh(product: &str, version: u64, price: i64, available: bool) -> CartOp {
    CartOp::RefreshItems {
        items: vec![cart_crdt::RefreshItem {
            product_id: pid(product),
            refresh: cart_crdt::Refresh {
                catalog_version: version,
                snapshot: snap("Item v1", price, "EUR"),
                available,
            },
        }],
    }
}

fn subtotal(r: &Replica) -> i64 {
    r.view().subtotals.iter().map(|m| m.amount_minor).sum()
}

/// Concurrent refreshes converge on the higher catalogue version whichever merges first; the
/// line keeps its add-time price beside the current one, and the totals use the current one.
#[test]
fn concurrent_refreshes_converge_on_the_highest_catalog_version() {
    // `add` puts the line at 1299 EUR (common::add).
    let r = concurrently(
        &[add("p", 2)],
        &[refresh("p", 3, 1500, true)],
        &[refresh("p", 2, 999, true)],
    );
    let view = r.view();
    let line = &view.lines[0];
    let current = line.current.as_ref().expect("refreshed");
    assert_eq!((current.catalog_version, current.snapshot.unit_price_minor), (3, 1500));
    assert!(current.price_changed && current.available);
    assert_eq!(line.snapshot.unit_price_minor, 1299, "the add-time price stays");
    assert_eq!(subtotal(&r), 3000);

    // Older data changes nothing; a newer unavailable one keeps the line out of the totals.
    let mut r = r;
    r.ok(refresh("p", 2, 1, true));
    assert_eq!(r.view().lines[0].current.as_ref().unwrap().catalog_version, 3);
    r.ok(refresh("p", 4, 1500, false));
    assert_eq!(r.quantity("p"), Some(2), "kept");
    assert_eq!(subtotal(&r), 0, "out of the totals");
}

/// Saved items refresh too; the refresh follows the product back into the cart. A product the
/// cart does not hold is skipped; removing the line hides its refresh with it.
#[test]
fn saved_items_refresh_and_absent_products_are_skipped() {
    let mut r = Replica::new(1);
    r.ok(add("p", 1)).ok(CartOp::SaveForLater { product_id: pid("p") });
    r.ok(refresh("p", 1, 1100, true)).ok(refresh("absent", 1, 5, true));
    let view = r.view();
    assert_eq!(view.saved[0].current.as_ref().unwrap().snapshot.unit_price_minor, 1100);
    assert!(view.lines.is_empty());
    r.ok(CartOp::MoveToCart { product_id: pid("p") });
    assert_eq!(
        r.view().lines[0].current.as_ref().unwrap().snapshot.unit_price_minor,
        1100
    );
    assert_eq!(subtotal(&r), 1100);
    r.ok(remove("p"));
    assert!(r.view().lines.is_empty() && r.view().saved.is_empty());
}
