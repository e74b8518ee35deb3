//! `cartctl` against a real node: the README's tour, table and JSON output, errors.

mod common;

use cart_client::cli::{run, Cli};
use clap::Parser;

async fn cartctl(addr: std::net::SocketAddr, args: &[&str]) -> Result<String, cart_client::ClientError> {
    let endpoint = addr.to_string();
    let argv = ["cartctl", "--endpoint", endpoint.as_str()]
        .into_iter()
        .chain(args.iter().copied());
    run(Cli::try_parse_from(argv).unwrap()).await
}

#[tokio::test]
async fn the_readme_tour_works() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path());
    let added = cartctl(
        common::addr(&node, 0),
        &[
            "cart",
            "add",
            "user:alice",
            "sku-1",
            "--qty",
            "2",
            "--name",
            "Mug",
            "--price",
            "1299",
            "--currency",
            "EUR",
        ],
    )
    .await
    .unwrap();
    assert!(added.contains("25.98 EUR"), "{added}");
    let shown = cartctl(common::addr(&node, 0), &["cart", "get", "user:alice"])
        .await
        .unwrap();
    assert!(shown.contains("sku-1") && shown.contains("Mug"), "{shown}");
    assert!(shown.contains("subtotal: 25.98 EUR"), "{shown}");

    let json = cartctl(common::addr(&node, 0), &["--json", "cart", "get", "user:alice"])
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["lines"][0]["quantity"], 2);
    assert_eq!(value["subtotals"][0]["amount_minor"], 2598);

    cartctl(
        common::addr(&node, 0),
        &["cart", "coupon", "add", "user:alice", "WELCOME"],
    )
    .await
    .unwrap();
    cartctl(common::addr(&node, 0), &["cart", "save", "user:alice", "sku-1"])
        .await
        .unwrap();
    let shown = cartctl(common::addr(&node, 0), &["cart", "get", "user:alice"])
        .await
        .unwrap();
    assert!(
        shown.contains("coupons: WELCOME") && shown.contains("saved for later: 2 × Mug"),
        "{shown}"
    );
    let moved = cartctl(common::addr(&node, 0), &["cart", "move", "user:alice", "sku-1"])
        .await
        .unwrap();
    assert!(moved.contains("25.98 EUR"), "{moved}");
    let set = cartctl(common::addr(&node, 0), &["cart", "set", "user:alice", "sku-1", "0"])
        .await
        .unwrap();
    assert!(set.contains("(no items)"), "{set}");

    let err = cartctl(common::addr(&node, 0), &["cart", "remove", "user:alice", "nope"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound));
    assert!(err.to_string().contains("product_id"), "{err}");

    // The node's own replica, without a quorum read.
    let local = cartctl(common::addr(&node, 0), &["cart", "get", "user:alice", "--local"])
        .await
        .unwrap();
    let quorum = cartctl(common::addr(&node, 0), &["cart", "get", "user:alice"])
        .await
        .unwrap();
    assert!(local.contains("(no items)"), "{local}");
    assert_eq!(local, quorum, "one node: its replica is the cart");
    let none = cartctl(common::addr(&node, 0), &["cart", "get", "user:nobody", "--local"])
        .await
        .unwrap();
    assert!(none.contains("holds no replica of user:nobody"), "{none}");
    let json = cartctl(
        common::addr(&node, 0),
        &["--json", "cart", "get", "user:nobody", "--local"],
    )
    .await
    .unwrap();
    assert_eq!(json.trim(), "null");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartctl_cluster_stages_plans_and_discards() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, "");
    let n1 = common::addr(&cluster, 0);
    let shown = cartctl(n1, &["cluster", "show"]).await.unwrap();
    assert!(shown.contains("layout version 1 (n=3 r=2 w=2)"), "{shown}");
    assert!(shown.contains("no staged changes"), "{shown}");

    let secret = cluster.spec.secret.clone();
    let staged = cartctl(
        n1,
        &[
            "cluster",
            "join",
            "n4",
            "127.0.0.1:1",
            "--zone",
            "b",
            "--secret",
            &secret,
        ],
    )
    .await
    .unwrap();
    assert!(staged.contains("join    n4 at 127.0.0.1:1 zone \"b\""), "{staged}");
    let plan = cartctl(n1, &["cluster", "plan"]).await.unwrap();
    assert!(plan.contains("plan: version 1 -> 2"), "{plan}");
    assert!(plan.contains("n4"), "{plan}");
    let json: serde_json::Value =
        serde_json::from_str(&cartctl(n1, &["--json", "cluster", "plan"]).await.unwrap()).unwrap();
    assert_eq!(json["next_version"], 2);
    assert!(
        json["moves"].as_array().unwrap().iter().all(|m| m["to_node"] == "n4"),
        "{json}"
    );

    let wrong = cartctl(n1, &["cluster", "leave", "n9", "--secret", &secret])
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("\"n9\" is not a member"), "{wrong}");
    let denied = cartctl(n1, &["cluster", "commit", "--secret", "not-the-secret"])
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("secret"), "{denied}");

    let discarded = cartctl(n1, &["cluster", "discard", "--secret", &secret]).await.unwrap();
    assert!(discarded.contains("no staged changes"), "{discarded}");
    let status = cartctl(n1, &["status"]).await.unwrap();
    assert!(status.contains("layout version 1"), "{status}");
}

/// The README's lifecycle walk-through: a guest cart, login (merge), checkout; expiry shown.
#[tokio::test]
async fn the_lifecycle_walk_through_works() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path());
    let addr = common::addr(&node, 0);
    let add = |cart: &'static str, sku: &'static str, qty: &'static str| {
        let args = [
            "cart",
            "add",
            cart,
            sku,
            "--qty",
            qty,
            "--name",
            "Mug",
            "--price",
            "1299",
            "--currency",
            "EUR",
        ];
        async move { cartctl(addr, &args).await }
    };
    let guest = add("guest:sess-42", "sku-1", "2").await.unwrap();
    assert!(guest.contains("expires "), "{guest}");
    add("user:alice", "sku-2", "1").await.unwrap();
    let merged = cartctl(addr, &["cart", "merge", "guest:sess-42", "user:alice"])
        .await
        .unwrap();
    assert!(merged.contains("sku-1") && merged.contains("sku-2"), "{merged}");
    assert!(merged.contains("merged into user:alice"), "{merged}");
    let shown = cartctl(addr, &["--json", "cart", "get", "user:alice"]).await.unwrap();
    let value: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let version = value["version"].as_str().unwrap().to_owned();
    assert!(value["expires_at_ms"].as_u64().unwrap() > value["touched_at_ms"].as_u64().unwrap());
    add("user:alice", "sku-3", "1").await.unwrap();
    let out = cartctl(
        addr,
        &[
            "cart",
            "checkout",
            "user:alice",
            "--version",
            &version,
            "--request-id",
            "order-1",
        ],
    )
    .await
    .unwrap();
    assert!(out.contains("order (request id order-1)"), "{out}");
    assert!(out.contains("total: 38.97 EUR"), "{out}");
    let left = cartctl(addr, &["--json", "cart", "get", "user:alice"]).await.unwrap();
    let left: serde_json::Value = serde_json::from_str(&left).unwrap();
    assert_eq!(left["lines"].as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left["lines"][0]["product_id"], "sku-3");
    let stale = cartctl(
        addr,
        &[
            "cart",
            "checkout",
            "user:alice",
            "--version",
            &version,
            "--request-id",
            "order-2",
        ],
    )
    .await
    .unwrap_err();
    assert!(stale.to_string().contains("checked out"), "{stale}");
}

#[tokio::test]
async fn pricing_walk_through() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path());
    let addr = common::addr(&node, 0);
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../cluster-config/pricing.toml");
    let none = cartctl(addr, &["pricing", "show"]).await.unwrap();
    assert!(none.contains("no pricing rules yet"), "{none}");
    let set = cartctl(addr, &["pricing", "set", rules, "--secret", "local-cluster-secret"])
        .await
        .unwrap();
    assert!(set.starts_with("# pricing rules version 1"), "{set}");
    let shown = cartctl(addr, &["pricing", "show"]).await.unwrap();
    assert!(
        shown.contains("code = \"TENOFF\"") && shown.contains("[regions.US-CA]"),
        "{shown}"
    );
    let wrong = cartctl(addr, &["pricing", "set", rules, "--secret", "not-the-secret"])
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("secret"), "{wrong}");

    cartctl(
        addr,
        &[
            "cart",
            "add",
            "user:carla",
            "boot",
            "--qty",
            "1",
            "--name",
            "Boot",
            "--price",
            "4000",
            "--currency",
            "EUR",
            "--attr",
            "category=shoes",
        ],
    )
    .await
    .unwrap();
    let priced = cartctl(
        addr,
        &["cart", "coupon", "add", "user:carla", "SHOES15", "--region", "DE"],
    )
    .await
    .unwrap();
    // 15% of 40.00; VAT in 34.00 = 5.67; under the 50.00 threshold, shipping 4.95.
    for want in ["priced for DE", "-6.00 EUR", "5.67 EUR", "4.95 EUR", "38.95 EUR"] {
        assert!(priced.contains(want), "{want} in {priced}");
    }
    let bogus = cartctl(addr, &["cart", "coupon", "add", "user:carla", "BOGUS"])
        .await
        .unwrap_err();
    assert!(bogus.to_string().contains("no coupon \"BOGUS\""), "{bogus}");
    let region = cartctl(addr, &["cart", "get", "user:carla", "--region", "FR"])
        .await
        .unwrap_err();
    assert!(region.to_string().contains("pricing.region"), "{region}");
    let json = cartctl(addr, &["--json", "cart", "get", "user:carla", "--region", "US-CA"])
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    // 34.00 + 7.25% (246.5 rounds half away from zero: 2.47); US-CA ships no EUR.
    assert_eq!(value["pricing"]["currencies"][0]["total"], 3647, "{value}");

    // The catalogue lowers the boot's price: both prices show, the totals use the new one
    // (15% of 30.00 off: 25.50, VAT in it 4.25, shipping 4.95: 30.45).
    let refreshed = cartctl(
        addr,
        &[
            "cart",
            "refresh",
            "user:carla",
            "boot",
            "--name",
            "Boot",
            "--price",
            "3000",
            "--currency",
            "EUR",
            "--attr",
            "category=shoes",
            "--catalog-version",
            "2",
            "--region",
            "DE",
        ],
    )
    .await
    .unwrap();
    for want in [
        "40.00 EUR",
        "boot now: 30.00 EUR, catalogue version 2 (price changed)",
        "-4.50 EUR",
        "30.45 EUR",
    ] {
        assert!(refreshed.contains(want), "{want} in {refreshed}");
    }
    let gone = cartctl(
        addr,
        &[
            "cart",
            "refresh",
            "user:carla",
            "boot",
            "--name",
            "Boot",
            "--price",
            "3000",
            "--currency",
            "EUR",
            "--catalog-version",
            "3",
            "--unavailable",
            "--region",
            "DE",
        ],
    )
    .await
    .unwrap();
    assert!(gone.contains("unavailable: not in the totals"), "{gone}");
    assert!(gone.contains("SHOES15 not applied: no eligible items"), "{gone}");
}
