//! Replication end to end with real `cartd` processes: quorum reads and writes, hinted handoff
//! after kill -9, anti-entropy without hints or reads, concurrent coordinators, sloppy quorum with
//! a fallback node, forwarding from a non-owner, the cluster secret, and heartbeats while a large
//! store rebuilds its anti-entropy digests.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use cart_client::{CartClient, ClientOptions, Consistency, ItemSnapshot};
use cart_node::launcher::LocalCluster;
use cart_proto::admin_pb::{ClusterStatusRequest, DiscardHintsRequest, LocalReadRequest};
use cart_proto::pb;
use cart_proto::replica_pb::replica_service_client::ReplicaServiceClient;
use cart_proto::replica_pb::{PingRequest, ReadRequest};
use cart_ring::Ring;
use tonic::Code;

const SECRET: &str = "local-cluster-secret";
/// Anti-entropy off (for tests of hints alone).
const NO_AE: &str = "anti_entropy_interval_ms = 600000";

fn mug() -> ItemSnapshot {
    ItemSnapshot::new("Mug", 1299, "EUR")
}

fn snapshot() -> pb::ItemSnapshot {
    pb::ItemSnapshot {
        name: "Item".into(),
        unit_price_minor: 100,
        currency: "EUR".into(),
        ..Default::default()
    }
}

/// A client pinned to one node (ring-aware routing off would still fail over; the raw gRPC client
/// talks to exactly this node).
async fn add_via(addr: SocketAddr, cart: &str, product: &str, w: u32) -> Result<pb::Cart, tonic::Status> {
    let mut c = common::raw_client(addr).await;
    let req = pb::AddItemRequest {
        request_id: String::new(),
        cart_id: cart.into(),
        product_id: product.into(),
        quantity: 1,
        snapshot: Some(snapshot()),
        consistency: Some(pb::Consistency { r: 0, w }),
        pricing: None,
    };
    Ok(c.add_item(req).await?.into_inner().cart.unwrap_or_default())
}

async fn get_via(addr: SocketAddr, cart: &str, r: u32) -> Result<pb::Cart, tonic::Status> {
    let mut c = common::raw_client(addr).await;
    let req = pb::GetCartRequest {
        cart_id: cart.into(),
        consistency: Some(pb::Consistency { r, w: 0 }),
        pricing: None,
    };
    Ok(c.get_cart(req).await?.into_inner().cart.unwrap_or_default())
}

/// The products in a node's own replica of `cart` (no quorum, no hints).
async fn local_products(addr: SocketAddr, cart: &str) -> BTreeSet<String> {
    let reply = common::admin(addr)
        .await
        .local_read(LocalReadRequest { cart_id: cart.into() })
        .await
        .unwrap();
    reply
        .into_inner()
        .cart
        .map(|c| c.lines.into_iter().map(|l| l.product_id).collect())
        .unwrap_or_default()
}

async fn status(addr: SocketAddr) -> cart_proto::admin_pb::ClusterStatusReply {
    common::admin(addr)
        .await
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn hint_backlog(addr: SocketAddr) -> u64 {
    status(addr).await.hint_backlog
}

/// The addresses of a 3-node cluster's nodes.
fn three(cluster: &LocalCluster) -> (SocketAddr, SocketAddr, SocketAddr) {
    (
        common::addr(cluster, 0),
        common::addr(cluster, 1),
        common::addr(cluster, 2),
    )
}

/// Drops every hint `addr` holds (an operator call, with the cluster secret).
async fn discard_hints(addr: SocketAddr) {
    let req = common::with_secret(DiscardHintsRequest {});
    common::admin(addr).await.discard_hints(req).await.unwrap();
}

fn products(cart: &pb::Cart) -> BTreeSet<String> {
    cart.lines.iter().map(|l| l.product_id.clone()).collect()
}

fn ring_of(cluster: &LocalCluster) -> Ring {
    Ring::new(cluster.spec.nodes.iter().map(|(id, a)| cart_ring::Member {
        node_id: id.clone(),
        addr: a.to_string(),
        weight: 1,
        zone: String::new(),
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_acknowledged_at_w2_is_readable_through_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, "");
    let cart = add_via(common::addr(&cluster, 0), "user:alice", "sku-1", 2)
        .await
        .unwrap();
    assert_eq!(products(&cart), BTreeSet::from(["sku-1".to_string()]));
    for i in 0..3 {
        let seen = get_via(common::addr(&cluster, i), "user:alice", 0).await.unwrap();
        assert_eq!(
            products(&seen),
            BTreeSet::from(["sku-1".to_string()]),
            "read through node {i}"
        );
    }
    let all = get_via(common::addr(&cluster, 2), "user:alice", 3).await.unwrap();
    assert_eq!(all.lines[0].quantity, 1, "R = 3 sees it");
    // Every replica holds it on its own disk shortly after (the third got it in the background).
    for i in 0..3 {
        let addr = common::addr(&cluster, i);
        assert!(
            common::eventually(Duration::from_secs(5), || async move {
                local_products(addr, "user:alice").await.contains("sku-1")
            })
            .await
        );
    }
    // Quorums outside 1..=N are refused, naming the field.
    let err = add_via(common::addr(&cluster, 0), "user:alice", "sku-2", 4)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("consistency.w"), "{err:?}");
}

/// A node of the version before batch streams (emulated): its peers fall back to unary batch
/// calls, and writes that need it (W = 3) and reads that ask it (R = 3) still go through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_batch_streams_gets_unary_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, NO_AE);
    cluster.terminate(2, Duration::from_secs(10)).unwrap();
    cluster
        .restart_with_env(2, &[(cart_node::replica::NO_BATCH_STREAMS_ENV, "1")])
        .unwrap();
    let old = common::addr(&cluster, 2);
    // Its peers see it up again before a W = 3 write can reach it.
    let all_up = common::eventually(Duration::from_secs(15), || async {
        add_via(common::addr(&cluster, 0), "user:warm-up", "sku", 3)
            .await
            .is_ok()
    })
    .await;
    assert!(all_up, "a W = 3 write through n1 never went through");
    for (i, coordinator) in [0, 1, 0].into_iter().enumerate() {
        let product = format!("sku-{i}");
        add_via(common::addr(&cluster, coordinator), "user:upgrade", &product, 3)
            .await
            .unwrap_or_else(|e| panic!("W = 3 write {i} through n{}: {e:?}", coordinator + 1));
        assert!(local_products(old, "user:upgrade").await.contains(&product));
    }
    let all = get_via(common::addr(&cluster, 1), "user:upgrade", 3).await.unwrap();
    assert_eq!(products(&all).len(), 3, "R = 3 through a peer of the old node");
    // The old node coordinating: its own batches still go over the stream to the others.
    add_via(old, "user:upgrade", "sku-old", 3).await.unwrap();
    assert!(local_products(common::addr(&cluster, 0), "user:upgrade")
        .await
        .contains("sku-old"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hinted_writes_reach_a_node_restarted_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, NO_AE);
    let (n1, n2, n3) = three(&cluster);
    cluster.kill9(2).unwrap();
    let carts: Vec<String> = (0..20).map(|i| format!("user:h{i}")).collect();
    for (i, cart) in carts.iter().enumerate() {
        let via = if i % 2 == 0 { n1 } else { n2 };
        add_via(via, cart, "sku-1", 2)
            .await
            .unwrap_or_else(|e| panic!("{cart} while n3 is down: {e:?}"));
        add_via(via, cart, "sku-2", 2).await.unwrap();
    }
    let held = hint_backlog(n1).await + hint_backlog(n2).await;
    assert_eq!(held, carts.len() as u64, "one hint per cart for n3");
    let status = common::admin(n1)
        .await
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let n3_row = status.nodes.iter().find(|n| n.node_id == "n3").unwrap();
    assert!(!n3_row.up, "n1 should see n3 down");

    cluster.restart(2).unwrap();
    let delivered = common::eventually(Duration::from_secs(20), || {
        let carts = carts.clone();
        async move {
            for cart in &carts {
                if local_products(n3, cart).await.len() != 2 {
                    return false;
                }
            }
            hint_backlog(n1).await + hint_backlog(n2).await == 0
        }
    })
    .await;
    assert!(delivered, "hints not handed off to n3 within 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_alone_converges_a_replica_whose_hints_were_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, "anti_entropy_interval_ms = 300");
    let (n1, n2, n3) = three(&cluster);
    cluster.kill9(2).unwrap();
    let carts: Vec<String> = (0..30).map(|i| format!("guest:ae{i}")).collect();
    for cart in &carts {
        add_via(n1, cart, "sku-1", 2).await.unwrap();
    }
    for addr in [n1, n2] {
        let refused = common::admin(addr)
            .await
            .discard_hints(DiscardHintsRequest {})
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "discarding hints needs the secret"
        );
        discard_hints(addr).await;
        assert_eq!(hint_backlog(addr).await, 0);
    }
    cluster.restart(2).unwrap();
    // No read of these carts goes through the API: only anti-entropy can bring them to n3.
    let converged = common::eventually(Duration::from_secs(30), || {
        let carts = carts.clone();
        async move {
            for cart in &carts {
                if !local_products(n3, cart).await.contains("sku-1") {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(converged, "anti-entropy did not converge n3 within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_through_different_coordinators_all_survive_and_sum() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, "anti_entropy_interval_ms = 500");
    let cart = "user:shared";
    let mut tasks = Vec::new();
    for i in 0..3 {
        let addr = common::addr(&cluster, i);
        tasks.push(tokio::spawn(async move {
            let mut c = common::raw_client(addr).await;
            for k in 0..15 {
                for product in [format!("n{i}-item-{k}"), "hot".to_string()] {
                    let req = pb::AddItemRequest {
                        request_id: String::new(),
                        cart_id: cart.into(),
                        product_id: product,
                        quantity: 1,
                        snapshot: Some(snapshot()),
                        consistency: None,
                        pricing: None,
                    };
                    c.add_item(req).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected: BTreeSet<String> = (0..3)
        .flat_map(|i| (0..15).map(move |k| format!("n{i}-item-{k}")))
        .chain(["hot".to_string()])
        .collect();
    for i in 0..3 {
        let addr = common::addr(&cluster, i);
        let expected = expected.clone();
        let converged = common::eventually(Duration::from_secs(15), || {
            let expected = expected.clone();
            async move {
                let reply = common::admin(addr)
                    .await
                    .local_read(LocalReadRequest { cart_id: cart.into() })
                    .await
                    .unwrap();
                let Some(local) = reply.into_inner().cart else {
                    return false;
                };
                let hot = local.lines.iter().find(|l| l.product_id == "hot").map(|l| l.quantity);
                products(&local) == expected && hot == Some(45)
            }
        })
        .await;
        assert!(
            converged,
            "node {i}'s replica lacks items or the concurrent +1s did not sum to 45"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sloppy_quorum_uses_a_fallback_and_a_non_owner_forwards() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 4, &format!("n = 3\n{NO_AE}"));
    let ring = ring_of(&cluster);
    let ids: Vec<String> = cluster.spec.nodes.iter().map(|(n, _)| n.clone()).collect();
    let index = |id: &str| ids.iter().position(|n| n == id).unwrap();
    let cart = "user:sloppy";
    let walk: Vec<String> = ring.walk(cart.as_bytes(), 3).map(|m| m.node_id.clone()).collect();
    let (owners, outsider) = (&walk[..3], &walk[3]);

    // A non-owner forwards: the write succeeds and lands on the owners, not on it.
    let outsider_addr = common::addr(&cluster, index(outsider));
    add_via(outsider_addr, cart, "sku-1", 3).await.unwrap();
    assert!(
        local_products(outsider_addr, cart).await.is_empty(),
        "{outsider} is not a replica"
    );
    for o in owners {
        assert!(
            local_products(common::addr(&cluster, index(o)), cart)
                .await
                .contains("sku-1"),
            "owner {o}"
        );
    }

    // With one owner down, W = 3 is still reached: the fallback holds a hint for it.
    let dead = index(&owners[2]);
    cluster.kill9(dead).unwrap();
    let coordinator = common::addr(&cluster, index(&owners[0]));
    let mut acked = false;
    for _ in 0..20 {
        // The first attempt may still try the dead owner before the detector marks it down.
        if add_via(coordinator, cart, "sku-2", 3).await.is_ok() {
            acked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(acked, "W = 3 with a fallback standing in for the dead owner");
    let status = common::admin(outsider_addr)
        .await
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let held = status.nodes.iter().find(|n| n.node_id == owners[2]).unwrap().hints_held;
    assert_eq!(held, 1, "the fallback {outsider} holds the hint for {}", owners[2]);
    // A sloppy read sees it through the fallback too.
    let seen = get_via(common::addr(&cluster, index(&owners[1])), cart, 3)
        .await
        .unwrap();
    assert!(products(&seen).contains("sku-2"));

    cluster.restart(dead).unwrap();
    let dead_addr = common::addr(&cluster, dead);
    let handed_off = common::eventually(Duration::from_secs(20), || async move {
        local_products(dead_addr, cart).await.contains("sku-2") && hint_backlog(outsider_addr).await == 0
    })
    .await;
    assert!(handed_off, "the fallback's hint did not reach the restarted owner");
}

#[tokio::test]
async fn peer_calls_without_the_cluster_secret_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, "");
    let url = format!("http://{}", common::addr(&cluster, 0));
    let mut peer = ReplicaServiceClient::connect(url).await.unwrap();
    let refused = peer
        .ping(PingRequest {
            layout_version: 0,
            synced_version: 0,
            finished_version: 0,
            from_node: "intruder".into(),
            degraded: String::new(),
            pricing_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(PingRequest {
        from_node: "intruder".into(),
        ..PingRequest::default()
    });
    wrong
        .metadata_mut()
        .insert(cart_proto::SECRET_HEADER, "not-the-secret".parse().unwrap());
    assert_eq!(peer.ping(wrong).await.unwrap_err().code(), Code::Unauthenticated);
    let mut right = tonic::Request::new(PingRequest {
        from_node: "n2".into(),
        ..PingRequest::default()
    });
    right
        .metadata_mut()
        .insert(cart_proto::SECRET_HEADER, SECRET.parse().unwrap());
    assert_eq!(peer.ping(right).await.unwrap().into_inner().node_id, "n1");
}

/// Digest reads: a replica whose cart has the context the coordinator sends answers
/// "unchanged" without the cart, one whose context that context covers answers "behind" without
/// it; any other context (or none) gets the whole cart, or a catch-up when the read asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_answers_a_digest_read_with_unchanged_or_behind_and_ships_only_news() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, "");
    let (a, b, c) = three(&cluster);
    add_via(a, "user:dora", "sku-1", 3).await.unwrap();
    let peer = ReplicaServiceClient::connect(format!("http://{b}")).await.unwrap();
    let read = |known_context: Vec<u8>| read_at(&peer, "user:dora", known_context, false);
    let full = read(Vec::new()).await;
    assert!(!full.unchanged && !full.state.is_empty());
    let cart = cart_crdt::codec::decode(&full.state).unwrap();
    let context = cart_crdt::codec::encode_context(cart.context()).unwrap();
    let same = read(context.clone()).await;
    assert!(same.unchanged, "same context must be answered as unchanged");
    assert!(same.state.is_empty(), "an unchanged answer carries no cart");
    // After one more write the old context is stale: the whole cart comes back.
    add_via(a, "user:dora", "sku-2", 3).await.unwrap();
    let stale = read(context.clone()).await;
    assert!(!stale.unchanged);
    let newer = cart_crdt::codec::decode(&stale.state).unwrap();
    assert!(newer.covers(&cart) && !cart.covers(&newer));
    assert!(!stale.behind);
    // Asked for a catch-up instead: what the old copy lacks and the dots of the rest, which
    // rebuild from the old copy into the replica's cart.
    let caught = read_at(&peer, "user:dora", context, true).await;
    assert!(caught.state.is_empty() && !caught.unchanged && !caught.behind);
    let catch_up = cart_crdt::codec::decode_catch_up(&caught.catch_up).unwrap();
    // Only lines and request records here: the second add's travel, the first's as dots.
    assert_eq!(
        catch_up.news() + catch_up.kept(),
        newer.lines().len() + newer.requests().len()
    );
    assert!(
        catch_up.news() >= 1 && catch_up.kept() >= 1,
        "{} news, {} kept",
        catch_up.news(),
        catch_up.kept()
    );
    let rebuilt = cart.rebuild(catch_up, cart.context()).unwrap();
    assert_eq!(rebuilt, newer, "the old copy and the catch-up make the replica's cart");
    // A coordinator ahead of the replica (it has seen every dot the replica has, and more):
    // the replica's cart adds nothing, so it answers "behind" and ships nothing. (A context
    // with a dot of another writer: the one of a cart written through the third node.)
    let other = add_via(c, "user:eve", "sku-1", 3).await.unwrap();
    assert_eq!(other.lines.len(), 1);
    let eve = read_at(&peer, "user:eve", Vec::new(), false).await;
    let mut ahead = newer.context().clone();
    ahead.merge(cart_crdt::codec::decode(&eve.state).unwrap().context());
    let behind = read(cart_crdt::codec::encode_context(&ahead).unwrap()).await;
    assert!(
        behind.behind,
        "a replica the coordinator's context covers must say it is behind"
    );
    assert!(
        !behind.unchanged && behind.state.is_empty(),
        "a replica behind ships no cart"
    );
}

/// One secret-bearing `ReplicaService.Read` of `cart` at `peer`.
async fn read_at(
    peer: &ReplicaServiceClient<tonic::transport::Channel>,
    cart: &str,
    known_context: Vec<u8>,
    catch_up: bool,
) -> cart_proto::replica_pb::ReadReply {
    let mut request = tonic::Request::new(ReadRequest {
        cart_id: cart.into(),
        known_context,
        catch_up,
    });
    request
        .metadata_mut()
        .insert(cart_proto::SECRET_HEADER, SECRET.parse().unwrap());
    peer.clone().read(request).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_keeps_working_when_a_node_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, "");
    let options = ClientOptions {
        consistency: Consistency { r: None, w: Some(2) },
        ..ClientOptions::default()
    };
    let client = CartClient::connect_with(cluster.endpoints(), options).await.unwrap();
    client.add_item("user:resilient", "sku-1", 1, mug()).await.unwrap();
    cluster.kill9(0).unwrap();
    for i in 0..10 {
        let cart = client
            .add_item("user:resilient", &format!("sku-{}", i + 2), 1, mug())
            .await
            .unwrap();
        assert_eq!(cart.lines.len(), i + 2);
    }
    assert_eq!(client.get_cart("user:resilient").await.unwrap().lines.len(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_survive_a_kill_9_of_the_node_holding_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, NO_AE);
    let (n1, n3) = (common::addr(&cluster, 0), common::addr(&cluster, 2));
    cluster.kill9(2).unwrap();
    let carts: Vec<String> = (0..10).map(|i| format!("guest:held{i}")).collect();
    for cart in &carts {
        add_via(n1, cart, "sku-1", 2).await.unwrap();
    }
    // The hint for the dead owner is kept by the write's straggler task, after the client's ack.
    let held = common::eventually(Duration::from_secs(10), || async {
        hint_backlog(n1).await == carts.len() as u64
    })
    .await;
    assert!(
        held,
        "n1 coordinated every write and holds the hints: {}",
        hint_backlog(n1).await
    );
    // A hint counts as held once stored; the straggler's flush makes it durable at most a
    // commit window (2 ms) and one fdatasync later: leave it that.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The hinting node dies before it can hand anything off, and comes back.
    cluster.kill9(0).unwrap();
    cluster.restart(0).unwrap();
    assert_eq!(hint_backlog(n1).await, carts.len() as u64, "hints are durable");
    cluster.restart(2).unwrap();
    let delivered = common::eventually(Duration::from_secs(20), || {
        let carts = carts.clone();
        async move {
            for cart in &carts {
                if !local_products(n3, cart).await.contains("sku-1") {
                    return false;
                }
            }
            hint_backlog(n1).await == 0
        }
    })
    .await;
    assert!(delivered, "hints held by a restarted node were not handed off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_owner_catches_up_before_removing_what_the_client_saw() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, NO_AE);
    let (n1, n2, n3) = three(&cluster);
    cluster.kill9(2).unwrap();
    add_via(n1, "user:lag", "sku-1", 2).await.unwrap();
    // The failed copy for n3 becomes a hint in the background; discard it once it is there.
    let hinted = common::eventually(Duration::from_secs(10), || async move {
        hint_backlog(n1).await + hint_backlog(n2).await >= 1
    })
    .await;
    assert!(hinted, "no hint was kept for n3");
    for addr in [n1, n2] {
        discard_hints(addr).await;
    }
    cluster.restart(2).unwrap();
    // n3 is an owner (3 nodes, N = 3) that never got the add: no hint, no anti-entropy.
    assert!(local_products(n3, "user:lag").await.is_empty());
    // The client read it (R = 1 on n2: no read repair reaches n3) and asks n3 to remove it.
    assert!(products(&get_via(n2, "user:lag", 1).await.unwrap()).contains("sku-1"));
    assert!(local_products(n3, "user:lag").await.is_empty());
    let mut c = common::raw_client(n3).await;
    let removed = c
        .remove_item(pb::RemoveItemRequest {
            request_id: String::new(),
            cart_id: "user:lag".into(),
            product_id: "sku-1".into(),
            consistency: None,
            pricing: None,
        })
        .await
        .expect("n3 catches up from a read quorum, then removes")
        .into_inner();
    assert!(removed.cart.map(|c| products(&c).is_empty()).unwrap_or(false));
    let after = get_via(n2, "user:lag", 3).await.unwrap();
    assert!(products(&after).is_empty(), "the item came back: {after:?}");
    // Something that exists nowhere is still NOT_FOUND.
    let missing = c
        .remove_item(pb::RemoveItemRequest {
            request_id: String::new(),
            cart_id: "user:lag".into(),
            product_id: "nope".into(),
            consistency: None,
            pricing: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

/// Writes `carts` carts straight into a node's storage at `data` (before the node runs).
async fn preload(data: &std::path::Path, carts: usize) {
    use cart_crdt::validate::{self, SnapshotInput};
    use cart_crdt::{CartId, CartOp, Limits, ProductId};
    use cart_node::storage::{self, Engine};
    use cart_node::store::CartStore;
    use std::sync::Arc;

    std::fs::create_dir_all(data).unwrap();
    let storage = storage::open(Engine::default(), data).unwrap();
    let store = Arc::new(
        CartStore::open(
            storage,
            Arc::new(cart_node::clock::SystemClock),
            Limits::DEFAULT,
            4096,
            99,
        )
        .await
        .unwrap(),
    );
    let limits = Limits::DEFAULT;
    let op = CartOp::AddItem {
        product_id: ProductId::parse("sku-1", &limits).unwrap(),
        quantity: 1,
        snapshot: validate::snapshot(
            SnapshotInput {
                name: "Mug".into(),
                unit_price_minor: 100,
                currency: "EUR".into(),
                image_url: String::new(),
                attributes: Default::default(),
            },
            &limits,
        )
        .unwrap(),
    };
    // Concurrent writers share flushes (group commit).
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..64 {
        let (store, op) = (store.clone(), op.clone());
        tasks.spawn(async move {
            for i in (worker..carts).step_by(64) {
                let id = CartId::parse(&format!("user:preload-{i}"), &Limits::DEFAULT).unwrap();
                store.write_with(&id, &op, None, |_| {}).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    // No clean-shutdown marker: each node that starts on a copy takes an incarnation of its own.
}

/// `peer is down` lines in a node's log after byte `from`.
fn downs_logged(log: &std::path::Path, from: usize) -> usize {
    let text = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(text.get(from..).unwrap_or_default())
        .matches("peer is down")
        .count()
}

/// Three nodes start on a store of 30,000 carts each and rebuild their digests (throttled to 3,000
/// carts/s, so the rebuild spans about 100 heartbeats): no node marks a peer down meanwhile, the
/// rebuild shows in `status`, and every node ends with all the carts counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_stay_green_while_a_large_store_rebuilds_its_digests() {
    const CARTS: usize = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = cart_node::launcher::ClusterSpec::loopback(dir.path(), 3, 0).unwrap();
    spec.cluster_toml = "heartbeat_interval_ms = 100\ndigest_rebuild_carts_per_sec = 3000\n".into();
    let first = spec.node_dir("n1").join("data");
    preload(&first, CARTS).await;
    for id in ["n2", "n3"] {
        let to = spec.node_dir(id).join("data");
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let copied = std::process::Command::new("cp")
            .arg("-r")
            .arg(&first)
            .arg(&to)
            .status()
            .unwrap();
        assert!(copied.success());
    }
    let logs: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| spec.node_dir(id).join("cartd.log"))
        .collect();
    let cluster = LocalCluster::start(common::cartd(), spec).unwrap_or_else(|e| panic!("{e}"));
    let addrs = [0, 1, 2].map(|i| common::addr(&cluster, i));
    // Nodes start one after another: a peer not started yet may be marked down at first.
    let all_up = common::eventually(Duration::from_secs(30), || async move {
        for addr in addrs {
            if !status(addr).await.nodes.iter().all(|n| n.up) {
                return false;
            }
        }
        true
    })
    .await;
    assert!(all_up, "the nodes never all saw each other up");
    let from: Vec<usize> = logs
        .iter()
        .map(|l| std::fs::metadata(l).map_or(0, |m| m.len() as usize))
        .collect();

    let mut rebuilding_seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut ready = 0;
        for addr in addrs {
            let s = status(addr).await;
            let down: Vec<_> = s.nodes.iter().filter(|n| !n.up).map(|n| n.node_id.clone()).collect();
            assert!(
                down.is_empty(),
                "{} sees {down:?} down during the rebuild",
                s.asked_node
            );
            if s.digests_ready {
                assert_eq!(s.digest_carts, CARTS as u64, "{} counted", s.asked_node);
                ready += 1;
            } else {
                rebuilding_seen += 1;
            }
        }
        if ready == addrs.len() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "digests not built after 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        rebuilding_seen >= 3,
        "the rebuild ended before it could be watched ({rebuilding_seen} observations)"
    );
    for (log, from) in logs.iter().zip(&from) {
        assert_eq!(downs_logged(log, *from), 0, "{} logged a peer down", log.display());
    }
}
