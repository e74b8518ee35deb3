//! The public API end to end through a real `cartd`: every operation, and bad input refused with
//! the right status, a message naming the field, and the cart left as it was.

mod common;

use cart_client::ItemSnapshot;
use cart_proto::pb;
use tonic::Code;

fn mug() -> ItemSnapshot {
    ItemSnapshot::new("Mug", 1299, "EUR")
}

#[tokio::test]
async fn every_operation_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path());
    let c = common::client(common::addr(&node, 0)).await;
    let id = "user:alice";

    let empty = c.get_cart(id).await.unwrap();
    assert!(empty.lines.is_empty());
    assert_eq!(empty.touched_at_ms, 0);

    let cart = c.add_item(id, "sku-1", 2, mug()).await.unwrap();
    assert_eq!(cart.lines.len(), 1);
    assert_eq!(cart.lines[0].quantity, 2);
    assert_eq!(cart.subtotals[0].display(), "25.98 EUR");
    assert!(cart.touched_at_ms > 0);

    let tea = ItemSnapshot::new("Tea", 450, "EUR")
        .with_attribute("size", "L")
        .with_image_url("https://img.example/tea.png");
    c.add_item(id, "sku-2", 1, tea.clone()).await.unwrap();
    let cart = c.add_item(id, "sku-1", 1, mug()).await.unwrap();
    assert_eq!(
        cart.lines
            .iter()
            .map(|l| (l.product_id.as_str(), l.quantity))
            .collect::<Vec<_>>(),
        [("sku-1", 3), ("sku-2", 1)]
    );
    assert_eq!(cart.lines[1].snapshot, tea);
    assert_eq!(cart.subtotals[0].amount_minor, 3 * 1299 + 450);

    let cart = c.set_quantity(id, "sku-1", 5).await.unwrap();
    assert_eq!(cart.lines[0].quantity, 5);
    let cart = c.save_for_later(id, "sku-2").await.unwrap();
    assert_eq!(cart.lines.len(), 1);
    assert_eq!(
        (cart.saved[0].product_id.as_str(), cart.saved[0].quantity),
        ("sku-2", 1)
    );
    let cart = c.apply_coupon(id, "WELCOME10").await.unwrap();
    assert_eq!(cart.coupons, ["WELCOME10"]);
    let cart = c.move_to_cart(id, "sku-2").await.unwrap();
    assert!(cart.saved.is_empty());
    assert_eq!(cart.lines.len(), 2);
    let cart = c.remove_coupon(id, "WELCOME10").await.unwrap();
    assert!(cart.coupons.is_empty());
    let cart = c.remove_item(id, "sku-2").await.unwrap();
    assert_eq!(cart.lines.len(), 1);
    c.save_for_later(id, "sku-1").await.unwrap();
    c.add_item(id, "sku-3", 1, mug()).await.unwrap();
    let cart = c.clear_cart(id).await.unwrap();
    assert!(cart.lines.is_empty());
    assert_eq!(cart.saved.len(), 1, "clear keeps saved-for-later");
    let cart = c.set_quantity(id, "sku-3", 0).await;
    assert_eq!(cart.unwrap_err().code(), Some(Code::NotFound));

    // What the node answered is what it stored.
    let stored = c.get_cart(id).await.unwrap();
    assert_eq!(stored.saved[0].product_id, "sku-1");
    assert_eq!(stored.saved[0].quantity, 5);
    assert_eq!(stored.owner, cart_crdt::OwnerKind::User);
    assert_eq!(
        c.get_cart("guest:s-1").await.unwrap().owner,
        cart_crdt::OwnerKind::Guest
    );
}

type Reply = Result<tonic::Response<pb::CartReply>, tonic::Status>;

fn snapshot(name: &str, price: i64, currency: &str) -> pb::ItemSnapshot {
    pb::ItemSnapshot {
        name: name.into(),
        unit_price_minor: price,
        currency: currency.into(),
        ..Default::default()
    }
}

fn add(cart_id: &str, product_id: &str, quantity: i64, snapshot: pb::ItemSnapshot) -> pb::AddItemRequest {
    pb::AddItemRequest {
        request_id: String::new(),
        cart_id: cart_id.into(),
        product_id: product_id.into(),
        quantity,
        snapshot: Some(snapshot),
        consistency: None,
        pricing: None,
    }
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path());
    let mut raw = common::raw_client(common::addr(&node, 0)).await;
    let id = "user:bob";
    raw.add_item(add(id, "sku-1", 2, snapshot("Mug", 1299, "EUR")))
        .await
        .unwrap();
    raw.apply_coupon(pb::ApplyCouponRequest {
        request_id: String::new(),
        cart_id: id.into(),
        code: "SPRING".into(),
        consistency: None,
        pricing: None,
    })
    .await
    .unwrap();
    let get = || pb::GetCartRequest {
        cart_id: id.into(),
        consistency: None,
        pricing: None,
    };
    let before = raw.get_cart(get()).await.unwrap().into_inner();

    let mut huge = snapshot("Mug", 1299, "EUR");
    huge.attributes.insert("blob".into(), "x".repeat(1 << 20));
    let cases: Vec<(&str, Reply, Code, &str)> = vec![
        (
            "empty cart id",
            raw.add_item(add("", "sku-2", 1, snapshot("Tea", 450, "EUR"))).await,
            Code::InvalidArgument,
            "cart_id",
        ),
        (
            "bad cart id prefix",
            raw.add_item(add("bob", "sku-2", 1, snapshot("Tea", 450, "EUR"))).await,
            Code::InvalidArgument,
            "cart_id",
        ),
        (
            "quantity 0 on add",
            raw.add_item(add(id, "sku-2", 0, snapshot("Tea", 450, "EUR"))).await,
            Code::InvalidArgument,
            "quantity",
        ),
        (
            "negative price",
            raw.add_item(add(id, "sku-2", 1, snapshot("Tea", -450, "EUR"))).await,
            Code::InvalidArgument,
            "snapshot.unit_price_minor",
        ),
        (
            "1 MiB snapshot",
            raw.add_item(add(id, "sku-2", 1, huge)).await,
            Code::InvalidArgument,
            "snapshot",
        ),
        (
            "lower-case currency",
            raw.add_item(add(id, "sku-2", 1, snapshot("Tea", 450, "eur"))).await,
            Code::InvalidArgument,
            "snapshot.currency",
        ),
        (
            "unknown currency",
            raw.add_item(add(id, "sku-2", 1, snapshot("Tea", 450, "ABC"))).await,
            Code::InvalidArgument,
            "snapshot.currency",
        ),
        (
            "missing snapshot",
            raw.add_item(pb::AddItemRequest {
                snapshot: None,
                ..add(id, "sku-2", 1, snapshot("Tea", 450, "EUR"))
            })
            .await,
            Code::InvalidArgument,
            "snapshot",
        ),
        (
            "empty product id",
            raw.add_item(add(id, "", 1, snapshot("Tea", 450, "EUR"))).await,
            Code::InvalidArgument,
            "product_id",
        ),
        (
            "quantity over the limit",
            raw.add_item(add(id, "sku-1", 9_999, snapshot("Mug", 1299, "EUR")))
                .await,
            Code::ResourceExhausted,
            "quantity",
        ),
        (
            "unknown product on remove",
            raw.remove_item(pb::RemoveItemRequest {
                request_id: String::new(),
                cart_id: id.into(),
                product_id: "nope".into(),
                consistency: None,
                pricing: None,
            })
            .await,
            Code::NotFound,
            "product_id",
        ),
        (
            "negative set quantity",
            raw.set_quantity(pb::SetQuantityRequest {
                request_id: String::new(),
                cart_id: id.into(),
                product_id: "sku-1".into(),
                quantity: -1,
                consistency: None,
                pricing: None,
            })
            .await,
            Code::InvalidArgument,
            "quantity",
        ),
        (
            "zero delta",
            raw.adjust_quantity(pb::AdjustQuantityRequest {
                request_id: String::new(),
                cart_id: id.into(),
                product_id: "sku-1".into(),
                delta: 0,
                consistency: None,
                pricing: None,
            })
            .await,
            Code::InvalidArgument,
            "delta",
        ),
        (
            "adjust below zero",
            raw.adjust_quantity(pb::AdjustQuantityRequest {
                request_id: String::new(),
                cart_id: id.into(),
                product_id: "sku-1".into(),
                delta: -9_999,
                consistency: None,
                pricing: None,
            })
            .await,
            Code::InvalidArgument,
            "delta",
        ),
        (
            "adjust an unknown product",
            raw.adjust_quantity(pb::AdjustQuantityRequest {
                request_id: String::new(),
                cart_id: id.into(),
                product_id: "nope".into(),
                delta: 1,
                consistency: None,
                pricing: None,
            })
            .await,
            Code::NotFound,
            "product_id",
        ),
        (
            "save an unknown product",
            raw.save_for_later(pb::SaveForLaterRequest {
                request_id: String::new(),
                cart_id: id.into(),
                product_id: "nope".into(),
                consistency: None,
                pricing: None,
            })
            .await,
            Code::NotFound,
            "product_id",
        ),
        (
            "move a product not saved",
            raw.move_to_cart(pb::MoveToCartRequest {
                request_id: String::new(),
                cart_id: id.into(),
                product_id: "sku-1".into(),
                consistency: None,
                pricing: None,
            })
            .await,
            Code::NotFound,
            "product_id",
        ),
        (
            "remove a coupon not applied",
            raw.remove_coupon(pb::RemoveCouponRequest {
                request_id: String::new(),
                cart_id: id.into(),
                code: "NOPE".into(),
                consistency: None,
                pricing: None,
            })
            .await,
            Code::NotFound,
            "code",
        ),
        (
            "coupon with a space",
            raw.apply_coupon(pb::ApplyCouponRequest {
                request_id: String::new(),
                cart_id: id.into(),
                code: "TEN OFF".into(),
                consistency: None,
                pricing: None,
            })
            .await,
            Code::InvalidArgument,
            "code",
        ),
    ];
    for (what, result, code, field) in cases {
        let status = result.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(field),
            "{what}: message {:?} should name {field}",
            status.message()
        );
        let after = raw.get_cart(get()).await.unwrap().into_inner();
        assert_eq!(after, before, "{what} changed the cart");
    }

    // A message over max_message_bytes (2 MiB) is cut by the transport before any handler runs.
    let mut oversized = snapshot("Mug", 1299, "EUR");
    oversized.attributes.insert("blob".into(), "x".repeat(3 << 20));
    let status = raw.add_item(add(id, "sku-2", 1, oversized)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("message length too large"), "{status:?}");
    assert_eq!(raw.get_cart(get()).await.unwrap().into_inner(), before);
}

#[tokio::test]
async fn a_full_cart_refuses_new_lines_but_accepts_more_of_an_existing_one() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path());
    let c = common::client(common::addr(&node, 0)).await;
    let id = "guest:full";
    let limit = cart_crdt::Limits::DEFAULT.max_lines_per_cart;
    for i in 0..limit {
        c.add_item(id, &format!("sku-{i}"), 1, mug()).await.unwrap();
    }
    let before = c.get_cart(id).await.unwrap();
    let err = c.add_item(id, "one-too-many", 1, mug()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted));
    assert!(err.to_string().contains("lines"), "{err}");
    assert_eq!(c.get_cart(id).await.unwrap(), before);
    let cart = c.add_item(id, "sku-0", 1, mug()).await.unwrap();
    assert_eq!(cart.lines.len(), limit);
    assert_eq!(cart.lines[0].quantity, 2);
}

#[tokio::test]
async fn the_client_fails_over_to_a_live_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path());
    // A port nothing listens on: bind, note it, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let c = cart_client::CartClient::connect([dead.to_string(), common::addr(&node, 0).to_string()])
        .await
        .unwrap();
    for i in 0..20 {
        let id = format!("user:failover-{i}");
        let cart = c
            .add_item(&id, "sku-1", 1, mug())
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(cart.lines[0].quantity, 1);
    }
    let only_dead = cart_client::CartClient::connect([dead.to_string()]).await.unwrap();
    let err = only_dead.get_cart("user:x").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
}

/// GetCart replies are cached per cart with the context they were built from: a read after a
/// write (at this node or another) shows the write, and reads between writes agree.
#[tokio::test]
async fn a_cached_reply_never_outlives_the_cart_version_it_shows() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, "");
    let n1 = common::client(common::addr(&cluster, 0)).await;
    let n2 = common::client(common::addr(&cluster, 1)).await;
    let id = "user:cached";
    n1.add_item(id, "sku-1", 1, mug()).await.unwrap();
    for i in 2..6 {
        let first = n1.get_cart(id).await.unwrap();
        let again = n1.get_cart(id).await.unwrap();
        assert_eq!(first, again, "two reads with no write between must agree");
        // A write through another node: n1's next read merges it and must not answer the old
        // reply.
        n2.add_item(id, &format!("sku-{i}"), 1, mug()).await.unwrap();
        let after = n1.get_cart(id).await.unwrap();
        assert_eq!(after.lines.len(), i, "read at n1 after the write at n2: {after:?}");
        assert_ne!(after.version, first.version);
    }
}
