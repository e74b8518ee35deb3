//! Pricing through real `cartd` processes: the rules set at one node reach every node, every
//! node prices a cart the same way (the worked example of `cluster-config/pricing.toml`), bad
//! documents, regions and coupon codes are refused and change nothing, and concurrent sets
//! never give two documents one version.

mod common;

use common::with_secret;

use std::time::Duration;

use cart_proto::admin_pb::{GetPricingRequest, SetPricingRequest};
use cart_proto::pb;
use tonic::Code;

const FAST: &str = "heartbeat_interval_ms = 200\nrequest_timeout_ms = 1000";
const RULES: &str = include_str!("../../cluster-config/pricing.toml");
/// 2026-12-04T00:00:00Z: TENOFF applies, SUMMER has expired.
const NOW: u64 = 1_796_342_400_000;

fn snapshot(name: &str, price: i64, currency: &str) -> Option<pb::ItemSnapshot> {
    Some(pb::ItemSnapshot {
        name: name.into(),
        unit_price_minor: price,
        currency: currency.into(),
        ..Default::default()
    })
}

fn de() -> Option<pb::PricingContext> {
    Some(pb::PricingContext {
        region: "DE".into(),
        now_ms: NOW,
    })
}

async fn get(addr: std::net::SocketAddr, pricing: Option<pb::PricingContext>) -> Result<pb::Cart, tonic::Status> {
    let mut raw = common::raw_client(addr).await;
    let req = pb::GetCartRequest {
        cart_id: "user:pat".into(),
        consistency: None,
        pricing,
    };
    Ok(raw.get_cart(req).await?.into_inner().cart.unwrap_or_default())
}

async fn version_at(addr: std::net::SocketAddr) -> u64 {
    match common::admin(addr).await.get_pricing(GetPricingRequest {}).await {
        Ok(reply) => reply.into_inner().version,
        Err(_) => 0,
    }
}

#[tokio::test]
async fn rules_set_at_one_node_price_the_cart_alike_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, FAST);
    let addrs: Vec<_> = (0..3).map(|i| common::addr(&cluster, i)).collect();
    let mut raw = common::raw_client(addrs[0]).await;
    for (product, qty, price, currency) in [("mug", 1, 1000, "EUR"), ("tee", 2, 1500, "USD")] {
        raw.add_item(pb::AddItemRequest {
            cart_id: "user:pat".into(),
            product_id: product.into(),
            quantity: qty,
            snapshot: snapshot(product, price, currency),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    // No rules yet: any code is taken; a region is unknown.
    let refused = get(addrs[0], de()).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("pricing.region"), "{refused:?}");
    let unpriced = get(addrs[0], None).await.unwrap();
    assert!(unpriced.pricing.is_none(), "no context, no summary");

    // A bad document is refused whole, naming the key; nothing changes.
    let mut admin = common::admin(addrs[1]).await;
    let bad = RULES.replace("percent_off = 30", "percent_off = 300");
    let refused = admin
        .set_pricing(with_secret(SetPricingRequest { document: bad }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("coupons[3].percent_off"), "{refused:?}");
    let no_secret = admin
        .set_pricing(SetPricingRequest { document: RULES.into() })
        .await
        .unwrap_err();
    assert_eq!(no_secret.code(), Code::Unauthenticated, "{no_secret:?}");
    assert_eq!(version_at(addrs[1]).await, 0);

    // Set at n2; every node learns it from the heartbeats.
    let set = admin
        .set_pricing(with_secret(SetPricingRequest { document: RULES.into() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.version, 1);
    for addr in &addrs {
        let learned = common::eventually(Duration::from_secs(10), || async { version_at(*addr).await == 1 }).await;
        assert!(learned, "{addr} did not learn the pricing rules");
    }

    // Coupons: an unknown code is refused and changes nothing; known ones are applied.
    let refused = raw
        .apply_coupon(pb::ApplyCouponRequest {
            cart_id: "user:pat".into(),
            code: "BOGUS".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    for code in ["TENOFF", "SUMMER"] {
        raw.apply_coupon(pb::ApplyCouponRequest {
            cart_id: "user:pat".into(),
            code: code.into(),
            pricing: de(),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    // The worked example (crdt's pricing tests): every node prices it the same.
    for addr in &addrs {
        let cart = get(*addr, de()).await.unwrap();
        assert_eq!(cart.coupons, vec!["SUMMER".to_string(), "TENOFF".to_string()], "{addr}");
        let pricing = cart.pricing.unwrap_or_else(|| panic!("{addr}: no summary"));
        assert_eq!((pricing.rules_version, pricing.region.as_str()), (1, "DE"));
        let by: Vec<_> = pricing
            .currencies
            .iter()
            .map(|c| {
                (
                    c.currency.as_str(),
                    c.subtotal_minor,
                    c.discount_total_minor,
                    c.tax_minor,
                    c.tax_included_minor,
                    c.shipping_minor,
                    c.total_minor,
                )
            })
            .collect();
        assert_eq!(
            by,
            vec![
                ("EUR", 1000, 100, 0, 150, 495, 1395),
                ("USD", 3000, 300, 0, 450, 0, 2700)
            ],
            "{addr}"
        );
        for c in &pricing.currencies {
            assert_eq!(c.not_applied.len(), 1, "{addr}: {c:?}");
            assert_eq!(c.not_applied[0].code, "SUMMER");
            assert!(c.not_applied[0].reason.starts_with("expired"), "{c:?}");
        }
    }
}

#[tokio::test]
async fn concurrent_sets_never_give_two_documents_one_version() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, FAST);
    let addrs: Vec<_> = (0..3).map(|i| common::addr(&cluster, i)).collect();
    let mut sets = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let document = RULES.replace("code = \"TENOFF\"", &format!("code = \"TENOFF{i}\""));
        let addr = *addr;
        sets.push(tokio::spawn(async move {
            common::admin(addr)
                .await
                .set_pricing(with_secret(SetPricingRequest { document }))
                .await
        }));
    }
    let mut versions = Vec::new();
    for set in sets {
        match set.await.unwrap() {
            Ok(reply) => versions.push(reply.into_inner().version),
            Err(status) => assert!(
                matches!(status.code(), Code::Aborted | Code::Unavailable),
                "a lost race says so: {status:?}"
            ),
        }
    }
    // Duelling proposers may all be told they lost (one may even have completed another's
    // document); what must hold is that no two sets report one version, and that a set after
    // the race goes through and every node ends with one document for the newest version.
    let mut unique = versions.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        versions.len(),
        "two sets reported one version: {versions:?}"
    );
    // Once the nodes agree on what the race left (a node behind is told "set by another node
    // first" rather than overwriting it), the next set goes through.
    let settled = common::eventually(Duration::from_secs(10), || async {
        let mut seen = Vec::new();
        for addr in &addrs {
            seen.push(version_at(*addr).await);
        }
        seen.windows(2).all(|w| w[0] == w[1])
    })
    .await;
    assert!(settled, "the nodes never agreed on a pricing version");
    let newest = common::admin(addrs[0])
        .await
        .set_pricing(with_secret(SetPricingRequest { document: RULES.into() }))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(versions.iter().all(|v| *v < newest), "{versions:?} then {newest}");
    let mut documents = Vec::new();
    for addr in &addrs {
        let agreed = common::eventually(Duration::from_secs(10), || async { version_at(*addr).await == newest }).await;
        assert!(agreed, "{addr} did not reach version {newest}");
        let reply = common::admin(*addr)
            .await
            .get_pricing(GetPricingRequest {})
            .await
            .unwrap()
            .into_inner();
        documents.push(reply.document);
    }
    assert!(
        documents.windows(2).all(|w| w[0] == w[1]),
        "nodes disagree on version {newest}"
    );
}

/// A refresh at one node shows on every replica: both prices, the new subtotal and pricing
/// total; an unavailable item stays in the cart but out of the totals.
#[tokio::test]
async fn a_refreshed_price_shows_on_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, FAST);
    let addrs: Vec<_> = (0..3).map(|i| common::addr(&cluster, i)).collect();
    let mut raw = common::raw_client(addrs[0]).await;
    for (product, price) in [("mug", 1000), ("tee", 2000)] {
        raw.add_item(pb::AddItemRequest {
            cart_id: "user:pat".into(),
            product_id: product.into(),
            quantity: 1,
            snapshot: snapshot(product, price, "EUR"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let refreshed = |product: &str, price: i64, available: bool, catalog_version: u64| pb::RefreshedItem {
        product_id: product.into(),
        snapshot: snapshot(product, price, "EUR"),
        available,
        catalog_version,
    };
    let bad = raw
        .refresh_items(pb::RefreshItemsRequest {
            cart_id: "user:pat".into(),
            items: vec![refreshed("mug", 1200, true, 0)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("catalog_version"), "{bad:?}");
    let mut other = common::raw_client(addrs[2]).await;
    let cart = other
        .refresh_items(pb::RefreshItemsRequest {
            cart_id: "user:pat".into(),
            items: vec![refreshed("mug", 1200, true, 7), refreshed("tee", 2000, false, 7)],
            pricing: Some(pb::PricingContext::default()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    assert_eq!(
        cart.subtotals[0].amount_minor, 1200,
        "the mug at its new price, the tee out"
    );
    assert_eq!(cart.pricing.unwrap().currencies[0].total_minor, 1200);
    // Every replica (W = 2 took it; the third by replication) shows both prices.
    for addr in &addrs {
        let shows = common::eventually(Duration::from_secs(10), || async {
            let reply = common::admin(*addr)
                .await
                .local_read(cart_proto::admin_pb::LocalReadRequest {
                    cart_id: "user:pat".into(),
                })
                .await
                .unwrap()
                .into_inner();
            let Some(cart) = reply.cart.filter(|_| reply.present) else {
                return false;
            };
            let mug = cart.lines.iter().find(|l| l.product_id == "mug");
            let tee = cart.lines.iter().find(|l| l.product_id == "tee");
            match (mug, tee) {
                (Some(mug), Some(tee)) => {
                    let (m, t) = (
                        mug.current.clone().unwrap_or_default(),
                        tee.current.clone().unwrap_or_default(),
                    );
                    mug.snapshot.as_ref().map(|s| s.unit_price_minor) == Some(1000)
                        && m.snapshot.map(|s| s.unit_price_minor) == Some(1200)
                        && m.price_changed
                        && !t.available
                        && cart.subtotals.first().map(|s| s.amount_minor) == Some(1200)
                }
                _ => false,
            }
        })
        .await;
        assert!(shows, "{addr} does not show the refresh");
    }
}
