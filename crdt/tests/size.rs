//! Size bound (DESIGN §4): with node actors and one running total per node and line, a 5-line cart stays small however
//! many ops it has seen. 1,000 random ops over 3 actors (random 64-bit ids, as nodes draw them)
//! with periodic merges must encode to under 4096 bytes. Run with `--nocapture` to see sizes.

mod common;

use cart_crdt::validate::{self, SnapshotInput};
use cart_crdt::{codec, CartOp, ItemSnapshot};
use common::*;

const PRODUCTS: [&str; 5] = ["sku-1001", "sku-1002", "sku-1003", "sku-1004", "sku-1005"];
const COUPONS: [&str; 2] = ["WELCOME10", "FREESHIP"];
const ACTORS: [u64; 3] = [0x9f3a_51c2_7be0_4d11, 0x42c8_e6f1_0a93_7b25, 0xd17b_2e04_c5a6_f839];
const OPS: usize = 1_000;
const MAX_BYTES: usize = 4096;

/// A realistic snapshot: name, price, image url and two attributes (~90 bytes of text).
fn snapshot(product: &str, variant: u64) -> ItemSnapshot {
    validate::snapshot(
        SnapshotInput {
            name: format!("Organic espresso beans {product}"),
            unit_price_minor: 1299 + variant as i64,
            currency: "EUR".into(),
            image_url: format!("https://cdn.example.com/img/{product}.jpg"),
            attributes: [
                ("roast".to_string(), "dark".to_string()),
                ("size".to_string(), "1kg".to_string()),
            ]
            .into(),
        },
        &LIMITS,
    )
    .expect("valid snapshot")
}

fn random_op(rng: &mut SplitMix, increments_only: bool) -> CartOp {
    let product = PRODUCTS[rng.below(PRODUCTS.len() as u64) as usize];
    let product_id = pid(product);
    let kind = if increments_only { rng.below(2) } else { rng.below(12) };
    match kind {
        0 => CartOp::AddItem {
            product_id,
            quantity: 1 + rng.below(3),
            snapshot: snapshot(product, rng.below(3)),
        },
        1..=3 => CartOp::AdjustQuantity {
            product_id,
            delta: 1 + rng.below(3) as i64,
        },
        4 => CartOp::AdjustQuantity { product_id, delta: -1 },
        5 => CartOp::SetQuantity {
            product_id,
            quantity: 1 + rng.below(6),
        },
        6 => CartOp::RemoveItem { product_id },
        7 => CartOp::SaveForLater { product_id },
        8 => CartOp::MoveToCart { product_id },
        9 => CartOp::ApplyCoupon {
            code: code(COUPONS[rng.below(2) as usize]),
        },
        10 => CartOp::RemoveCoupon {
            code: code(COUPONS[rng.below(2) as usize]),
        },
        _ => CartOp::Touch,
    }
}

/// Runs `OPS` successful random ops spread over the three actors, merging a random pair every
/// few ops and everything every 100, then converges and makes sure all 5 products are lines.
fn churned_cart(seed: u64, increments_only: bool) -> Replica {
    let mut rng = SplitMix(seed);
    let mut replicas: Vec<Replica> = ACTORS.iter().map(|&a| Replica::new(a)).collect();
    for r in replicas.iter_mut() {
        for product in PRODUCTS {
            r.ok(CartOp::AddItem {
                product_id: pid(product),
                quantity: 1,
                snapshot: snapshot(product, 0),
            });
        }
    }
    let mut done = 0;
    while done < OPS {
        let i = rng.below(3) as usize;
        if replicas[i].apply(&random_op(&mut rng, increments_only)).is_ok() {
            done += 1;
        }
        if done % 7 == 0 {
            let (into, from) = (rng.below(3) as usize, rng.below(3) as usize);
            let source = replicas[from].clone();
            replicas[into].merge_from(&source);
        }
        if done % 100 == 0 {
            converge(&mut replicas);
        }
    }
    converge(&mut replicas);
    let mut cart = replicas.swap_remove(0);
    for product in PRODUCTS {
        if cart.quantity(product).is_none() {
            cart.ok(CartOp::AddItem {
                product_id: pid(product),
                quantity: 1,
                snapshot: snapshot(product, 0),
            });
        }
    }
    assert_eq!(cart.view().lines.len(), PRODUCTS.len(), "a 5-line cart");
    cart
}

fn converge(replicas: &mut [Replica]) {
    let all = replicas
        .iter()
        .fold(cart_crdt::Cart::default(), |acc, r| merged(&acc, &r.cart));
    for r in replicas.iter_mut() {
        r.cart.merge(all.clone());
    }
}

fn check_size(label: &str, increments_only: bool) {
    let mut largest = 0;
    for seed in 1..=5u64 {
        let cart = churned_cart(seed, increments_only);
        let bytes = enc(&cart.cart);
        println!(
            "{label}, seed {seed}: 5-line cart after {OPS} ops over 3 actors encodes to {} bytes",
            bytes.len()
        );
        largest = largest.max(bytes.len());
        assert!(bytes.len() < MAX_BYTES, "{label}, seed {seed}: {} bytes", bytes.len());

        // decode(encode(c)) round-trips to the same bytes and the same view.
        let decoded = codec::decode(&bytes).expect("own encoding decodes");
        assert_eq!(enc(&decoded), bytes);
        assert_eq!(decoded.view(&cart_id()), cart.view());
    }
    println!("{label}: largest {largest} bytes (limit {MAX_BYTES})");
}

/// Mixed workload: adds, adjusts, sets, removes, save/move, coupons.
#[test]
fn five_line_cart_after_1000_mixed_ops_stays_under_4_kib() {
    check_size("mixed ops", false);
}

/// Counter-heavy workload (adds and increments only): one total per node and line must bound the size.
#[test]
fn five_line_cart_after_1000_increments_stays_under_4_kib() {
    check_size("increments only", true);
}
