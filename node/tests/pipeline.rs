//! `CartService.Pipeline` end to end through a real `cartd`: calls answered by id, in any order,
//! concurrently; a bad call ends itself and not the stream; a node without `Pipeline` still
//! serves `cart-client` (unary calls); shutdown answers late calls "not applied".

mod common;

use std::collections::HashMap;
use std::time::Duration;

use cart_client::{CartClient, ClientOptions, ItemSnapshot};
use cart_proto::pb::pipeline_call::Call;
use cart_proto::pb::pipeline_result::Result as Out;
use cart_proto::pb::{self, PipelineCall, PipelineResult};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn add(cart_id: &str, product_id: &str, quantity: i64, request_id: &str) -> Call {
    Call::AddItem(pb::AddItemRequest {
        cart_id: cart_id.into(),
        product_id: product_id.into(),
        quantity,
        snapshot: Some(pb::ItemSnapshot {
            name: "Mug".into(),
            unit_price_minor: 1299,
            currency: "EUR".into(),
            image_url: String::new(),
            attributes: Default::default(),
        }),
        consistency: None,
        request_id: request_id.into(),
        pricing: None,
    })
}

fn get(cart_id: &str) -> Call {
    Call::GetCart(pb::GetCartRequest {
        cart_id: cart_id.into(),
        consistency: None,
        pricing: None,
    })
}

fn call(id: u64, call: Option<Call>) -> PipelineCall {
    PipelineCall {
        id,
        timeout_ms: 10_000,
        deadline_ms: 0,
        call,
    }
}

/// Sends `calls` on one stream and collects a result for each id (failing on a duplicate).
async fn run(addr: std::net::SocketAddr, calls: Vec<PipelineCall>) -> HashMap<u64, PipelineResult> {
    let mut raw = common::raw_client(addr).await;
    let want = calls.len();
    let (tx, rx) = mpsc::channel(calls.len());
    for c in calls {
        tx.send(c).await.unwrap();
    }
    let mut results = raw.pipeline(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut by_id = HashMap::new();
    while by_id.len() < want {
        let result = tokio::time::timeout(Duration::from_secs(20), results.message())
            .await
            .expect("every call is answered")
            .unwrap()
            .expect("the stream stays open while calls are unanswered");
        assert!(by_id.insert(result.id, result).is_none(), "one result per id");
    }
    drop(tx);
    by_id
}

fn cart(result: &PipelineResult) -> &pb::Cart {
    match &result.result {
        Some(Out::Cart(reply)) => reply.cart.as_ref().expect("a cart"),
        other => panic!("expected a cart, got {other:?}"),
    }
}

fn error(result: &PipelineResult) -> &pb::CallError {
    match &result.result {
        Some(Out::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn quantities(cart: &pb::Cart) -> HashMap<String, i64> {
    cart.lines.iter().map(|l| (l.product_id.clone(), l.quantity)).collect()
}

#[tokio::test]
async fn calls_are_answered_by_id_and_a_bad_call_ends_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path());
    let addr = common::addr(&node, 0);

    let mut calls = vec![
        call(1, Some(add("user:p", "sku-1", 2, "r-1"))),
        call(2, None),
        call(3, Some(add("", "sku-2", 1, "r-3"))),
        // A write whose deadline (1 ms after the epoch) has passed: refused, nothing applied.
        PipelineCall {
            deadline_ms: 1,
            ..call(4, Some(add("user:p", "sku-late", 1, "r-4")))
        },
        call(5, Some(add("user:p", "sku-1", 0, "r-5"))),
    ];
    // 200 adds at once on the same stream: 20 products, 10 adds of 1 each.
    for i in 0..200u64 {
        let product = format!("sku-{}", i % 20);
        calls.push(call(100 + i, Some(add("user:many", &product, 1, &format!("m-{i}")))));
    }
    let results = run(addr, calls).await;

    let added = cart(&results[&1]);
    assert_eq!(quantities(added)["sku-1"], 2);
    assert_eq!(results[&1].membership.len(), 16, "the membership version rides along");
    let none = error(&results[&2]);
    assert_eq!(none.code, Code::InvalidArgument as i32);
    assert!(none.message.contains("call"), "{none:?}");
    let bad_id = error(&results[&3]);
    assert_eq!(bad_id.code, Code::InvalidArgument as i32);
    assert!(bad_id.message.contains("cart_id"), "{bad_id:?}");
    let late = error(&results[&4]);
    assert_eq!(late.code, Code::DeadlineExceeded as i32, "{late:?}");
    assert_eq!(late.outcome, "none", "{late:?}");
    let zero = error(&results[&5]);
    assert_eq!(zero.code, Code::InvalidArgument as i32);
    assert!(zero.message.contains("quantity"), "{zero:?}");
    for i in 0..200 {
        assert!(matches!(results[&(100 + i)].result, Some(Out::Cart(_))), "add {i}");
    }

    // What the failed calls did not apply is not there; every concurrent add is.
    let after = run(
        addr,
        vec![call(1, Some(get("user:p"))), call(2, Some(get("user:many")))],
    )
    .await;
    assert_eq!(quantities(cart(&after[&1])), HashMap::from([("sku-1".to_owned(), 2)]));
    let many = quantities(cart(&after[&2]));
    assert_eq!(many.len(), 20);
    assert!(many.values().all(|&q| q == 10), "{many:?}");
}

#[tokio::test]
async fn a_retried_call_with_the_same_request_id_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path());
    let addr = common::addr(&node, 0);
    let first = run(addr, vec![call(1, Some(add("user:once", "sku-1", 3, "same")))]).await;
    assert_eq!(quantities(cart(&first[&1]))["sku-1"], 3);
    // The same request again, on another stream, as a client retrying an unknown outcome.
    let again = run(addr, vec![call(9, Some(add("user:once", "sku-1", 3, "same")))]).await;
    assert_eq!(quantities(cart(&again[&9]))["sku-1"], 3);
}

/// A node of the version before `Pipeline` (emulated): `cart-client` falls back to unary calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_pipeline_serves_the_client_with_unary_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = common::start_node(dir.path());
    node.terminate(0, Duration::from_secs(10)).unwrap();
    node.restart_with_env(0, &[(cart_node::service::NO_PIPELINE_ENV, "1")])
        .unwrap();
    let addr = common::addr(&node, 0);
    let mut raw = common::raw_client(addr).await;
    let (_calls, rx) = mpsc::channel::<PipelineCall>(1);
    let refused = raw.pipeline(ReceiverStream::new(rx)).await;
    assert_eq!(refused.map(|_| ()).unwrap_err().code(), Code::Unimplemented);

    let client = CartClient::connect_with([addr.to_string()], ClientOptions::default())
        .await
        .unwrap();
    let snapshot = ItemSnapshot::new("Mug", 1299, "EUR");
    client.add_item("user:old", "sku-1", 2, snapshot.clone()).await.unwrap();
    let cart = client.add_item("user:old", "sku-1", 1, snapshot).await.unwrap();
    assert_eq!(cart.lines[0].quantity, 3);
    assert_eq!(client.get_cart("user:old").await.unwrap().lines[0].quantity, 3);
}
