//! `cart-micro`: what one cart costs a node's CPU, operation by operation, without any network or
//! disk: the CRDT work every request does on a cart of N lines (`--lines`, 50 by default, about a
//! hot cart of the storefront profile).
//!
//! The cart is built the way a 3-node cluster builds it: each line added by one node, then
//! quantities adjusted by all three, so a line carries several running totals. Each measured
//! operation runs `--iterations` times on that cart; the table gives HDR percentiles in µs:
//!
//! - `view`: the read model every reply is built from;
//! - `view_version`: a GetCart reply's view with its version token (what a checkout takes);
//! - `view_coupons` / `view_priced`: the same cart with two coupons applied (TENOFF, SUMMER),
//!   its view alone and with the pricing summary a priced reply adds (`cluster-config/pricing.toml`,
//!   region DE); the ratio of their p50s is printed;
//! - `encode` / `decode`: the storage and replication codec;
//! - `clone`: what a write pays when a reader still holds the cached cart;
//! - `apply`: one AdjustQuantity on an owned cart (the clone it needs is not counted);
//! - `merge_delta`: a replica merging a write's delta (likewise without the clone);
//! - `catch_up` / `rebuild`: a read's reply to a coordinator one write behind, made and encoded
//!   by the replica, decoded and rebuilt into the replica's state by the coordinator, against
//!   `encode` / `decode` of the whole state it replaces; the sizes of both are printed.
//!
//! `--requests N` first applies N more writes with request ids, each leaving a request record
//! (a busy cart keeps up to 1,152; the storefront's hottest cart ~1,100).
//!
//! `cart-micro --lines 50 --iterations 20000 [--requests 0] [--json FILE]`. One thread; noisy machines still
//! move the absolute figures, so compare two builds by alternating runs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};
use cart_crdt::validate::{self, SnapshotInput};
use cart_crdt::{codec, Actor, Cart, CartId, CartOp, Limits, ProductId, WriteCtx};
use clap::Parser;
use hdrhistogram::Histogram;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "CPU cost of the cart CRDT operations a node runs per request")]
struct Args {
    /// Lines in the measured cart.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=2000))]
    lines: u32,
    /// Runs of each operation.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// Writes with request ids applied to the cart first (each keeps a request record).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    requests: u32,
    /// Also write the percentiles as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

const ACTORS: [u64; 3] = [0x9f3a_51c2_7be0_4d11, 0x42c8_e6f1_0a93_7b25, 0xd17b_2e04_c5a6_f839];

fn product(i: u32) -> String {
    format!("sku-{i:05}")
}

fn add_op(i: u32, limits: &Limits) -> Result<CartOp> {
    let snapshot = validate::snapshot(
        SnapshotInput {
            name: format!("Organic espresso beans {}", product(i)),
            unit_price_minor: 1299 + i64::from(i % 7),
            currency: "EUR".into(),
            image_url: format!("https://cdn.example.com/img/{}.jpg", product(i)),
            attributes: [("roast".to_string(), "dark".to_string())].into(),
        },
        limits,
    )?;
    Ok(CartOp::AddItem {
        product_id: ProductId::parse(&product(i), limits)?,
        quantity: 1,
        snapshot,
    })
}

fn adjust_op(i: u32, limits: &Limits) -> Result<CartOp> {
    Ok(CartOp::AdjustQuantity {
        product_id: ProductId::parse(&product(i), limits)?,
        delta: 1,
    })
}

/// A cart of `lines` lines as three replicas would build it, converged.
fn build_cart(lines: u32, limits: &Limits) -> Result<Cart> {
    let mut replicas = [Cart::default(), Cart::default(), Cart::default()];
    for i in 0..lines {
        let at = (i % 3) as usize;
        let ctx = WriteCtx {
            actor: Actor(ACTORS[at]),
            now_ms: u64::from(i),
            limits,
            request: Some(cart_crdt::RequestId(u128::from(i))),
        };
        replicas[at].apply(&ctx, &add_op(i, limits)?)?;
    }
    let merged = converge(&replicas);
    let mut replicas = [merged.clone(), merged.clone(), merged];
    for (at, replica) in replicas.iter_mut().enumerate() {
        let ctx = WriteCtx {
            actor: Actor(ACTORS[at]),
            now_ms: u64::from(lines),
            limits,
            request: None,
        };
        for i in (0..lines).filter(|i| (i + at as u32).is_multiple_of(2)) {
            replica.apply(&ctx, &adjust_op(i, limits)?)?;
        }
    }
    Ok(converge(&replicas))
}

fn converge(replicas: &[Cart]) -> Cart {
    let mut merged = Cart::default();
    for replica in replicas {
        merged.merge(replica.clone());
    }
    merged
}

/// Times `run` `iterations` times (after a tenth as warm-up); `setup` runs untimed before each.
fn measure<S, T>(iterations: u32, mut setup: impl FnMut() -> S, mut run: impl FnMut(S) -> T) -> Result<Histogram<u64>> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for round in 0..iterations + iterations / 10 {
        let input = setup();
        let started = Instant::now();
        let output = run(input);
        let nanos = started.elapsed().as_nanos();
        drop(std::hint::black_box(output));
        if round >= iterations / 10 {
            histogram.record(u64::try_from(nanos).unwrap_or(u64::MAX).max(1))?;
        }
    }
    Ok(histogram)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let limits = Limits {
        max_lines_per_cart: Limits::DEFAULT.max_lines_per_cart.max(args.lines as usize + 1),
        ..Limits::DEFAULT
    };
    limits.check().map_err(anyhow::Error::msg)?;
    let id = CartId::parse("user:micro", &limits)?;
    let mut cart = build_cart(args.lines, &limits)?;
    for i in 0..args.requests {
        let ctx = WriteCtx {
            actor: Actor(ACTORS[(i % 3) as usize]),
            now_ms: u64::from(args.lines) + u64::from(i),
            limits: &limits,
            request: Some(cart_crdt::RequestId(u128::from(args.lines + i))),
        };
        cart.apply(&ctx, &adjust_op(i % args.lines, &limits)?)?;
    }
    let bytes = codec::encode(&cart)?;
    let writer = WriteCtx {
        actor: Actor(ACTORS[0]),
        now_ms: u64::from(args.lines) + 1,
        limits: &limits,
        request: Some(cart_crdt::RequestId(u128::MAX)),
    };
    let adjust = adjust_op(0, &limits)?;
    let delta = cart.clone().apply(&writer, &adjust)?;
    // A replica one write ahead of the coordinator's `cart`.
    let mut ahead = cart.clone();
    ahead.apply(&writer, &adjust)?;
    let ahead_bytes = codec::encode(&ahead)?;
    let catch_up_bytes = codec::encode_catch_up(&ahead.catch_up(cart.context())?)?;
    let n = args.iterations;
    let mut with_coupons = cart.clone();
    for code in ["TENOFF", "SUMMER"] {
        let code = cart_crdt::CouponCode::parse(code, &limits)?;
        with_coupons.apply(&writer, &CartOp::ApplyCoupon { code })?;
    }
    let rules = cart_crdt::pricing::PricingRules::parse(include_str!("../../../cluster-config/pricing.toml"))
        .map_err(anyhow::Error::msg)?;
    let pricing = cart_crdt::pricing::PricingContext {
        region: "DE".into(),
        now_ms: 1_796_342_400_000,
    };

    let results: Vec<(&str, Histogram<u64>)> = vec![
        ("view", measure(n, || (), |()| cart.view(&id))?),
        ("view_coupons", measure(n, || (), |()| with_coupons.view(&id))?),
        (
            "view_priced",
            measure(
                n,
                || (),
                |()| {
                    let mut view = with_coupons.view(&id);
                    view.pricing = cart_crdt::pricing::price(&view, &rules, &pricing, &|_| false).ok();
                    view
                },
            )?,
        ),
        (
            "view_version",
            measure(
                n,
                || (),
                |()| {
                    let (mut view, version) = cart.view_with_version(&id);
                    view.version = codec::encode_version(&version)?;
                    Ok::<_, cart_crdt::CartError>(view)
                },
            )?,
        ),
        ("encode", measure(n, || (), |()| codec::encode(&cart))?),
        ("decode", measure(n, || (), |()| codec::decode(&bytes))?),
        ("clone", measure(n, || (), |()| cart.clone())?),
        (
            "apply",
            measure(n, || cart.clone(), |mut c| c.apply(&writer, &adjust).map(|_| c))?,
        ),
        (
            "merge_delta",
            measure(
                n,
                || (cart.clone(), delta.as_cart().clone()),
                |(mut c, d)| {
                    c.merge(d);
                    c
                },
            )?,
        ),
        (
            "catch_up",
            measure(
                n,
                || (),
                |()| ahead.catch_up(cart.context()).and_then(|c| codec::encode_catch_up(&c)),
            )?,
        ),
        (
            "rebuild",
            measure(
                n,
                || (),
                |()| codec::decode_catch_up(&catch_up_bytes).and_then(|c| cart.rebuild(c, cart.context())),
            )?,
        ),
    ];

    println!(
        "cart of {} lines and {} request records ({} bytes encoded), {} runs each, µs:",
        args.lines,
        cart.requests().len(),
        bytes.len(),
        n
    );
    println!(
        "a read one write behind: whole state {} bytes, catch-up {} bytes",
        ahead_bytes.len(),
        catch_up_bytes.len()
    );
    println!("{:<12} {:>9} {:>9} {:>9} {:>9}", "op", "p50", "p99", "p99.9", "max");
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    let mut json = serde_json::Map::new();
    for (name, h) in &results {
        println!(
            "{name:<12} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            us(h, 0.5),
            us(h, 0.99),
            us(h, 0.999),
            h.max() as f64 / 1_000.0
        );
        json.insert(
            (*name).to_owned(),
            serde_json::json!({"p50_us": us(h, 0.5), "p99_us": us(h, 0.99), "p999_us": us(h, 0.999)}),
        );
    }
    let p50 = |name: &str| {
        results
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0.0, |(_, h)| h.value_at_quantile(0.5) as f64)
    };
    let ratio = p50("view_priced") / p50("view_coupons").max(1.0);
    println!("view_priced / view_coupons at p50: {ratio:.2}x");
    json.insert("priced_view_ratio_p50".into(), serde_json::json!(ratio));
    if let Some(path) = args.json {
        let report = serde_json::json!({
            "lines": args.lines,
            "request_records": cart.requests().len(),
            "encoded_bytes": bytes.len(),
            "catch_up_bytes": catch_up_bytes.len(),
            "iterations": n,
            "ops": json
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
