//! Write deadlines with real `cartd` processes: a write that waited at a paused node past its
//! deadline is never applied when the node resumes, and so a client whose first attempt sat at
//! a paused node can take another node's refusal as the answer once that deadline has passed.

mod common;

use std::time::Duration;

use cart_client::{system_clock_ms, CartClient, ClientOptions, ItemSnapshot};
use cart_proto::pb;
use nix::sys::signal::Signal;
use tonic::metadata::MetadataValue;
use tonic::Code;

fn mug() -> ItemSnapshot {
    ItemSnapshot::new("Mug", 1299, "EUR")
}

fn remove(cart: &str, deadline_ms: &str) -> tonic::Request<pb::RemoveItemRequest> {
    let mut request = tonic::Request::new(pb::RemoveItemRequest {
        cart_id: cart.into(),
        product_id: "sku-1".into(),
        consistency: None,
        request_id: "late-remove-1".into(),
        pricing: None,
    });
    request.metadata_mut().insert(
        cart_proto::DEADLINE_HEADER,
        MetadataValue::try_from(deadline_ms).unwrap(),
    );
    request
}

#[tokio::test]
async fn a_write_that_waited_at_a_paused_node_past_its_deadline_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, "");
    let cart = "user:late-remove";
    let client = common::client(common::addr(&cluster, 0)).await;
    client.add_item(cart, "sku-1", 1, mug()).await.unwrap();

    // A deadline that is not a number is refused, naming the header, and changes nothing.
    let mut raw = common::raw_client(common::addr(&cluster, 1)).await;
    let bad = raw.remove_item(remove(cart, "soon")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains(cart_proto::DEADLINE_HEADER), "{bad:?}");

    // The remove reaches n2 while it is stopped (its connection is open: the call above), with
    // a deadline 300 ms ahead; the caller keeps waiting (no timeout of its own). n2 resumes
    // after the deadline: it must not begin the write, and nor may the owners it could forward
    // it to.
    cluster.node(1).unwrap().signal(Signal::SIGSTOP).unwrap();
    let deadline = (system_clock_ms() + 300).to_string();
    let late = tokio::spawn(async move { raw.remove_item(remove(cart, &deadline)).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.node(1).unwrap().signal(Signal::SIGCONT).unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), late)
        .await
        .expect("the resumed node answers")
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code(), Code::DeadlineExceeded, "{refused:?}");
    assert!(
        cart_proto::outcome_none(&refused),
        "says nothing was applied: {refused:?}"
    );
    assert!(refused.message().contains("nothing was applied"), "{refused:?}");

    // Still in the cart, on every node.
    for i in 0..3 {
        let cart = common::client(common::addr(&cluster, i))
            .await
            .get_cart(cart)
            .await
            .unwrap();
        assert_eq!(cart.lines.len(), 1, "node {i}: {cart:?}");
    }
    // The same write within its deadline is applied.
    let mut raw = common::raw_client(common::addr(&cluster, 1)).await;
    let deadline = (system_clock_ms() + 5_000).to_string();
    let removed = raw.remove_item(remove(cart, &deadline)).await.unwrap().into_inner();
    assert!(removed.cart.unwrap_or_default().lines.is_empty());
}

#[tokio::test]
async fn a_refusal_is_the_answer_once_a_paused_attempts_deadline_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, "");
    let paused = common::addr(&cluster, 1).to_string();
    let options = ClientOptions {
        request_timeout: Duration::from_millis(500),
        clock_skew: Duration::from_millis(100),
        hedge: false,
        ..ClientOptions::default()
    };
    let client = CartClient::connect_with([common::addr(&cluster, 0).to_string()], options)
        .await
        .unwrap();
    // A cart whose calls go to n2 first.
    let cart = (0..1_000)
        .map(|k| format!("guest:paused-first-{k}"))
        .find(|id| client.route(id)[0] == paused)
        .expect("n2 comes first for some cart");
    client.get_cart(&cart).await.unwrap(); // opens the connection to n2

    cluster.node(1).unwrap().signal(Signal::SIGSTOP).unwrap();
    // The first attempt waits at the stopped n2 until its deadline; the retry at the next owner
    // is refused (nothing to remove). Past the first attempt's deadline (and the skew) no node
    // will begin it, so the refusal is a definite answer, not an unknown outcome.
    let began = std::time::Instant::now();
    let answer = client.remove_item(&cart, "sku-1").await;
    let took = began.elapsed();
    cluster.node(1).unwrap().signal(Signal::SIGCONT).unwrap();
    let err = answer.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    // Deadline and wait are whole milliseconds of the wall clock (the deadline is the clock read
    // when the attempt began, truncated, + 500): up to ~1 ms of each falls before `began`'s
    // 600 ms (a CI run answered after 599.7 ms).
    assert!(
        took >= Duration::from_millis(598),
        "answered after deadline + skew: {took:?}"
    );

    // An add through the same route is acknowledged (retried at the next owner, same id) and
    // counted once, also after n2 has resumed and handled its late first attempt.
    cluster.node(1).unwrap().signal(Signal::SIGSTOP).unwrap();
    let added = client.add_item(&cart, "sku-2", 1, mug()).await;
    cluster.node(1).unwrap().signal(Signal::SIGCONT).unwrap();
    assert_eq!(added.unwrap().lines[0].quantity, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(client.get_cart(&cart).await.unwrap().lines[0].quantity, 1);
}
