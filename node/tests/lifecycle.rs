//! The cart lifecycle end to end with real `cartd` processes: exactly-once retries (also when a
//! retry reaches an owner the first attempt never did), merge at login, checkout of a version,
//! expiry and its sweeper, and a replica with a 100-day-old copy under libfaketime.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cart_client::{ItemSnapshot, MergeMode};
use cart_proto::admin_pb::LocalReadRequest;
use cart_proto::pb;
use nix::sys::signal::Signal;
use tonic::Code;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn mug() -> ItemSnapshot {
    ItemSnapshot::new("Mug", 1299, "EUR")
}

async fn adjust_via(
    addr: SocketAddr,
    cart: &str,
    delta: i64,
    request_id: &str,
    w: u32,
) -> Result<pb::Cart, tonic::Status> {
    let mut c = common::raw_client(addr).await;
    let req = pb::AdjustQuantityRequest {
        cart_id: cart.into(),
        product_id: "tea".into(),
        delta,
        consistency: Some(pb::Consistency { r: 0, w }),
        request_id: request_id.into(),
        pricing: None,
    };
    Ok(c.adjust_quantity(req).await?.into_inner().cart.unwrap_or_default())
}

fn quantity(cart: &pb::Cart, product: &str) -> i64 {
    cart.lines
        .iter()
        .find(|l| l.product_id == product)
        .map_or(0, |l| l.quantity)
}

/// Whether node `addr` stores a replica of `cart` (no quorum, no hints).
async fn present(addr: SocketAddr, cart: &str) -> bool {
    common::admin(addr)
        .await
        .local_read(LocalReadRequest { cart_id: cart.into() })
        .await
        .map(|r| r.into_inner().present)
        .unwrap_or(false)
}

/// The same request id sent to every node applies once; a retry reaching an owner that never saw
/// the first attempt (the first attempt's owners paused) applies there too, and once the copies
/// meet the duplicate is taken back: the quantity counts the request once on every replica.
#[tokio::test]
async fn a_request_id_applies_once_even_when_two_owners_applied_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, "anti_entropy_interval_ms = 200\nhint_interval_ms = 200");
    let addrs: Vec<SocketAddr> = (0..3).map(|i| common::addr(&cluster, i)).collect();
    let cart = "user:once";
    let c = common::client(addrs[0]).await;
    c.add_item(cart, "tea", 10, mug()).await.unwrap();
    // Plain retries: every node answers the same id with the cart, nothing applied again.
    for addr in &addrs {
        let reply = adjust_via(*addr, cart, 2, "retry-1", 0).await.unwrap();
        assert_eq!(quantity(&reply, "tea"), 12, "{addr}");
    }
    // n2 and n3 down: n1 applies "split-1" alone (W=1); then n1 paused, n2 and n3 back: the
    // retry applies on n2, which never saw the first attempt (killed, not paused, so that no
    // request of n1's waits in a socket buffer for them).
    for i in [1, 2] {
        cluster.kill9(i).unwrap();
    }
    assert_eq!(
        quantity(&adjust_via(addrs[0], cart, 5, "split-1", 1).await.unwrap(), "tea"),
        17
    );
    cluster.node(0).unwrap().signal(Signal::SIGSTOP).unwrap();
    for i in [1, 2] {
        cluster.restart(i).unwrap();
    }
    let retried = adjust_via(addrs[1], cart, 5, "split-1", 1).await.unwrap();
    assert_eq!(quantity(&retried, "tea"), 17);
    cluster.node(0).unwrap().signal(Signal::SIGCONT).unwrap();
    // The copies meet (hints, anti-entropy): 17 on every replica, not 22.
    let converged = common::eventually(Duration::from_secs(20), || async {
        let mut all = true;
        for addr in &addrs {
            let reply = common::admin(*addr)
                .await
                .local_read(LocalReadRequest { cart_id: cart.into() })
                .await
                .unwrap()
                .into_inner();
            all &= reply.cart.is_some_and(|c| quantity(&c, "tea") == 17);
        }
        all
    })
    .await;
    assert!(converged, "every replica should count split-1 once");
    let read = c.get_cart(cart).await.unwrap();
    assert_eq!(read.lines[0].quantity, 17);
}

#[tokio::test]
async fn merge_at_login_moves_guest_lines_once_and_keeps_late_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, "");
    let c = common::client(common::addr(&cluster, 0)).await;
    let (guest, user) = ("guest:sess-1", "user:alice");
    c.add_item(guest, "tea", 2, mug()).await.unwrap();
    c.add_item(guest, "mug", 1, mug()).await.unwrap();
    c.apply_coupon(guest, "WELCOME").await.unwrap();
    c.add_item(user, "tea", 5, mug()).await.unwrap();
    // Two tabs log in at once.
    let c2 = common::client(common::addr(&cluster, 1)).await;
    let (a, b) = tokio::join!(
        c.merge_carts(guest, user, MergeMode::Merge),
        c2.merge_carts(guest, user, MergeMode::Merge)
    );
    a.unwrap();
    b.unwrap();
    let lines = |v: &cart_client::CartView| -> Vec<(String, u64)> {
        v.lines.iter().map(|l| (l.product_id.clone(), l.quantity)).collect()
    };
    let user_cart = c.get_cart(user).await.unwrap();
    assert_eq!(lines(&user_cart), vec![("mug".into(), 1), ("tea".into(), 5)]);
    assert_eq!(user_cart.coupons, vec!["WELCOME".to_string()]);
    let guest_cart = c.get_cart(guest).await.unwrap();
    assert!(guest_cart.lines.is_empty() && guest_cart.coupons.is_empty());
    assert_eq!(guest_cart.merged_into.as_deref(), Some(user));
    // A guest item added after the merge stays in the guest cart; the next merge brings it,
    // and nothing merged before comes twice.
    c.add_item(guest, "cup", 3, mug()).await.unwrap();
    let (user_cart, guest_cart) = c.merge_carts(guest, user, MergeMode::Merge).await.unwrap();
    assert_eq!(
        lines(&user_cart),
        vec![("cup".into(), 3), ("mug".into(), 1), ("tea".into(), 5)]
    );
    assert!(guest_cart.lines.is_empty());
    // Merging again (a retry) changes nothing.
    let (again, _) = c.merge_carts(guest, user, MergeMode::Merge).await.unwrap();
    assert_eq!(lines(&again), lines(&user_cart));
    // Bad ids are refused naming the field.
    let err = c.merge_carts(user, user, MergeMode::Merge).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert!(err.to_string().contains("guest_cart_id"), "{err}");
}

#[tokio::test]
async fn checkout_takes_the_version_and_keeps_what_came_after() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, "");
    let c = common::client(common::addr(&cluster, 0)).await;
    let cart = "user:bob";
    c.add_item(cart, "tea", 2, mug()).await.unwrap();
    c.add_item(cart, "mug", 1, mug()).await.unwrap();
    let seen = c.get_cart(cart).await.unwrap();
    assert!(!seen.version.is_empty());
    assert!(seen.expires_at_ms > seen.touched_at_ms);
    // Added after the customer saw the cart: not part of the order.
    c.add_item(cart, "tea", 4, mug()).await.unwrap();
    c.add_item(cart, "pen", 1, mug()).await.unwrap();
    let (order, after) = c.checkout(cart, &seen.version, "order-1").await.unwrap();
    let ordered: Vec<(String, u64)> = order.lines.iter().map(|l| (l.product_id.clone(), l.quantity)).collect();
    assert_eq!(ordered, vec![("mug".into(), 1), ("tea".into(), 2)]);
    assert_eq!(order.totals[0].amount_minor, 3 * 1299);
    let left: Vec<(String, u64)> = after.lines.iter().map(|l| (l.product_id.clone(), l.quantity)).collect();
    assert_eq!(left, vec![("pen".into(), 1), ("tea".into(), 4)]);
    // A retry (same id) returns the same order and takes nothing more.
    let (again, after_again) = c.checkout(cart, &seen.version, "order-1").await.unwrap();
    assert_eq!(again, order);
    assert_eq!(after_again.lines, after.lines);
    // The same version under a new id: stale.
    let err = c.checkout(cart, &seen.version, "order-2").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("version"), "{err}");
    // A version of another cart, garbage, or no request id: INVALID_ARGUMENT naming the field.
    c.add_item("user:carol", "tea", 1, mug()).await.unwrap();
    let foreign = c.get_cart("user:carol").await.unwrap().version;
    for (version, id, field) in [
        (foreign.as_str(), "order-3", "version"),
        ("not-a-token", "order-4", "version"),
        (after.version.as_str(), "", "request_id"),
    ] {
        let err = c.checkout(cart, version, id).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
    let fresh = c.get_cart(cart).await.unwrap();
    assert_eq!(fresh.lines, after.lines, "refused checkouts changed nothing");
}

/// A cart expires a ttl (+ the skew bound) after its last change: it reads as empty, every
/// replica's sweeper deletes it, and writing to it again starts an empty cart.
#[tokio::test]
async fn expired_carts_read_empty_and_are_swept_from_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(
        dir.path(),
        3,
        "guest_ttl = \"2s\"\nclock_skew = \"0\"\nsweep_interval = \"300ms\"\nanti_entropy_interval_ms = 200",
    );
    let addrs: Vec<SocketAddr> = (0..3).map(|i| common::addr(&cluster, i)).collect();
    let c = common::client(addrs[0]).await;
    let cart = c.add_item("guest:short", "tea", 1, mug()).await.unwrap();
    assert_eq!(cart.expires_at_ms, cart.touched_at_ms + 2_000);
    c.add_item("user:long", "tea", 1, mug()).await.unwrap();
    let swept = common::eventually(Duration::from_secs(15), || async {
        let mut gone = true;
        for addr in &addrs {
            gone &= !present(*addr, "guest:short").await;
        }
        gone
    })
    .await;
    assert!(swept, "every replica should delete the expired guest cart");
    assert!(c.get_cart("guest:short").await.unwrap().lines.is_empty());
    // A user cart lives 90 days: untouched.
    assert_eq!(c.get_cart("user:long").await.unwrap().lines.len(), 1);
    for addr in &addrs {
        assert!(present(*addr, "user:long").await);
    }
    // Written again, it starts empty.
    let again = c.add_item("guest:short", "mug", 1, mug()).await.unwrap();
    let products: Vec<&str> = again.lines.iter().map(|l| l.product_id.as_str()).collect();
    assert_eq!(products, vec!["mug"]);
}

fn faketime_env(offset: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", LIBFAKETIME.to_owned()),
        ("FAKETIME", offset.to_owned()),
        ("FAKETIME_DONT_RESET", "1".to_owned()),
    ]
}

fn restart_at(cluster: &mut cart_node::launcher::LocalCluster, i: usize, offset: &str) {
    let env = faketime_env(offset);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    cluster.restart_with_env(i, &env).unwrap_or_else(|e| panic!("{e}"));
}

/// A replica powered off for 100 days comes back holding its copy of a guest cart the others
/// expired and swept meanwhile (all nodes under libfaketime, 100 days ahead): its copy is expired
/// too, so anti-entropy, reads and hints never bring the cart back.
#[tokio::test]
async fn a_replica_back_after_100_days_does_not_revive_an_expired_cart() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "libfaketime is missing: scripts/test.sh installs it (apt-get install faketime)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(
        dir.path(),
        3,
        "sweep_interval = \"300ms\"\nanti_entropy_interval_ms = 200",
    );
    let addrs: Vec<SocketAddr> = (0..3).map(|i| common::addr(&cluster, i)).collect();
    let c = common::client(addrs[0]).await;
    let cart = "guest:old";
    c.add_item(cart, "tea", 1, mug()).await.unwrap();
    c.add_item("user:kept", "tea", 1, mug()).await.unwrap();
    assert!(common::eventually(Duration::from_secs(10), || present(addrs[2], cart)).await);
    // n3 powers off with its copy; n1 and n2 live 100 days later and sweep the cart.
    cluster.terminate(2, Duration::from_secs(10)).unwrap();
    for i in [0, 1] {
        cluster.terminate(i, Duration::from_secs(10)).unwrap();
        restart_at(&mut cluster, i, "+100d");
    }
    let swept = common::eventually(Duration::from_secs(15), || async {
        !present(addrs[0], cart).await && !present(addrs[1], cart).await
    })
    .await;
    assert!(swept, "n1 and n2 should sweep the expired cart");
    // The 90-day user cart expired too (100 > 90 days).
    let c = common::client(addrs[0]).await;
    assert!(c.get_cart("user:kept").await.unwrap().lines.is_empty());
    // n3 comes back with its 100-day-old copy.
    restart_at(&mut cluster, 2, "+100d");
    for _ in 0..20 {
        assert!(!present(addrs[0], cart).await, "n1 got the expired cart back");
        assert!(!present(addrs[1], cart).await, "n2 got the expired cart back");
        for addr in &addrs {
            let reply = common::client(*addr).await.get_cart(cart).await.unwrap();
            assert!(reply.lines.is_empty(), "{addr} reads the expired cart");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // And n3 sweeps its own copy.
    assert!(common::eventually(Duration::from_secs(10), || async { !present(addrs[2], cart).await }).await);
}
