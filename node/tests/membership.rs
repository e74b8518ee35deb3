//! Membership end to end with real `cartd` processes: nodes started with `--join` wait as
//! non-members; a 3-node cluster under a writing client grows to 5 and shrinks back to 3 through
//! staged changes and commits, and every acknowledged add is on every owner afterwards; two
//! concurrent commits never give two layouts of one version; bad requests are refused and change
//! nothing.

mod common;

use common::with_secret;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cart_client::{CartClient, ClientOptions, ItemSnapshot};
use cart_node::launcher::LocalCluster;
use cart_proto::admin_pb::{
    ClusterStatusRequest, CommitLayoutRequest, LayoutReply, LocalReadRequest, ShowLayoutRequest, StageChangeRequest,
    StagedChange,
};
use cart_ring::Ring;
use tonic::Code;

const FAST: &str =
    "heartbeat_interval_ms = 200\nrequest_timeout_ms = 1000\nanti_entropy_interval_ms = 1000\nhint_interval_ms = 250";
/// Anti-entropy off: only the layout transfer (and the writes themselves) move carts.
const NO_AE: &str =
    "heartbeat_interval_ms = 200\nrequest_timeout_ms = 1000\nanti_entropy_interval_ms = 600000\nhint_interval_ms = 250";

fn join(node_id: &str, addr: SocketAddr) -> StagedChange {
    StagedChange {
        kind: "join".into(),
        node_id: node_id.into(),
        addr: addr.to_string(),
        weight: 1,
        ..StagedChange::default()
    }
}

fn leave(node_id: &str) -> StagedChange {
    StagedChange {
        kind: "leave".into(),
        node_id: node_id.into(),
        ..StagedChange::default()
    }
}

async fn stage(addr: SocketAddr, change: StagedChange) -> Result<LayoutReply, tonic::Status> {
    let request = with_secret(StageChangeRequest { change: Some(change) });
    Ok(common::admin(addr).await.stage_change(request).await?.into_inner())
}

async fn commit(addr: SocketAddr) -> Result<LayoutReply, tonic::Status> {
    let mut request = with_secret(CommitLayoutRequest {});
    request.set_timeout(Duration::from_secs(10));
    Ok(common::admin(addr).await.commit_layout(request).await?.into_inner())
}

async fn show(addr: SocketAddr) -> Option<LayoutReply> {
    let mut admin = cart_proto::admin_pb::admin_service_client::AdminServiceClient::connect(format!("http://{addr}"))
        .await
        .ok()?;
    Some(admin.show_layout(ShowLayoutRequest {}).await.ok()?.into_inner())
}

/// Whether every node in `addrs` is at layout `version` with no transfer left.
async fn settled(addrs: &[SocketAddr], version: u64) -> bool {
    for addr in addrs {
        match show(*addr).await {
            Some(l) if l.current.as_ref().is_some_and(|c| c.version == version) && l.previous.is_none() => {}
            _ => return false,
        }
    }
    true
}

async fn local_products(addr: SocketAddr, cart: &str) -> BTreeSet<String> {
    let reply = common::admin(addr)
        .await
        .local_read(LocalReadRequest { cart_id: cart.into() })
        .await
        .unwrap()
        .into_inner();
    reply
        .cart
        .map(|c| c.lines.into_iter().map(|l| l.product_id).collect())
        .unwrap_or_default()
}

fn addrs(cluster: &LocalCluster) -> Vec<SocketAddr> {
    (0..cluster.spec.nodes.len())
        .map(|i| common::addr(cluster, i))
        .collect()
}

/// Adds items to 150 carts in a loop until `stop`; returns every acknowledged (cart, product).
fn writer(endpoints: Vec<String>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<(String, String)>> {
    tokio::spawn(async move {
        let options = ClientOptions {
            request_timeout: Duration::from_secs(3),
            ..ClientOptions::default()
        };
        let client = CartClient::connect_with(&endpoints, options).await.unwrap();
        let mut acked = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) && i < 200_000 {
            let cart = format!("user:{}", i % 150);
            let product = format!("p{i}");
            if client
                .add_item(&cart, &product, 1, ItemSnapshot::new("Tea", 450, "EUR"))
                .await
                .is_ok()
            {
                acked.push((cart, product));
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        acked
    })
}

/// The owners of `cart` in the layout `node` shows now.
async fn owners_now(node: SocketAddr, cart: &str) -> Vec<SocketAddr> {
    let layout = show(node).await.unwrap().current.unwrap();
    let ring = Ring::new(layout.members.iter().map(|m| cart_ring::Member {
        node_id: m.node_id.clone(),
        addr: m.addr.clone(),
        weight: m.weight,
        zone: m.zone.clone(),
    }))
    .unwrap();
    ring.preference_list(cart.as_bytes(), layout.n as usize)
        .into_iter()
        .map(|m| m.addr.parse().unwrap())
        .collect()
}

/// Cold carts (written once, before any change) missing on one of their current owners.
async fn cold_missing(node: SocketAddr, cold: &[String]) -> Vec<String> {
    let mut missing = Vec::new();
    for cart in cold {
        for owner in owners_now(node, cart).await {
            if !local_products(owner, cart).await.contains("cold") {
                missing.push(format!("{cart} on {owner}"));
            }
        }
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_grows_to_five_and_shrinks_to_three_under_writes_without_losing_an_add() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, NO_AE);
    let first = addrs(&cluster);
    let endpoints: Vec<String> = first.iter().map(|a| a.to_string()).collect();
    // Cold carts: written once before any change, so only the transfer can move them (anti-entropy
    // is off in this test).
    let client = CartClient::connect(endpoints.clone()).await.unwrap();
    let cold: Vec<String> = (0..300).map(|i| format!("guest:cold-{i}")).collect();
    for cart in &cold {
        client
            .add_item(cart, "cold", 1, ItemSnapshot::new("Mug", 1299, "EUR"))
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(endpoints, stop.clone());

    // Two new nodes learn the layout from n1 and wait as non-members.
    let i4 = tokio::task::block_in_place(|| cluster.start_joining("n4", 0, 0)).unwrap();
    let i5 = tokio::task::block_in_place(|| cluster.start_joining("n5", 0, 0)).unwrap();
    let (a4, a5) = (common::addr(&cluster, i4), common::addr(&cluster, i5));
    let status = common::admin(a4)
        .await
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.asked_is_member, "a joining node waits as a non-member");
    assert_eq!(status.layout_version, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Grow: both joins staged on n1, one commit.
    stage(first[0], join("n4", a4)).await.unwrap();
    let staged = stage(first[0], join("n5", a5)).await.unwrap();
    assert_eq!(staged.staged.len(), 2);
    let committed = commit(first[0]).await.unwrap();
    assert_eq!(committed.current.unwrap().version, 2);
    let all = addrs(&cluster);
    assert!(
        common::eventually(Duration::from_secs(60), || settled(&all, 2)).await,
        "the move into version 2 did not finish: {:?}",
        show(first[0]).await.and_then(|l| l.transfer)
    );
    let missing = cold_missing(first[0], &cold).await;
    assert!(
        missing.is_empty(),
        "after growing, {} cold carts miss an owner: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // Every node's anti-entropy digests follow version 2 (the three first nodes moved theirs:
    // they were built for version 1) and cover the carts it holds.
    for addr in &all {
        let ready = || async {
            let status = common::admin(*addr)
                .await
                .cluster_status(ClusterStatusRequest {})
                .await
                .map(|r| r.into_inner());
            status.is_ok_and(|s| s.digests_ready && s.digest_carts > 0)
        };
        assert!(
            common::eventually(Duration::from_secs(30), ready).await,
            "{addr}: digests not ready for version 2"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Shrink back: both leave, one commit.
    stage(first[1], leave("n4")).await.unwrap();
    stage(first[1], leave("n5")).await.unwrap();
    assert_eq!(commit(first[1]).await.unwrap().current.unwrap().version, 3);
    assert!(
        common::eventually(Duration::from_secs(60), || settled(&all, 3)).await,
        "the move into version 3 did not finish: {:?}",
        show(first[1]).await.and_then(|l| l.transfer)
    );
    let missing = cold_missing(first[1], &cold).await;
    assert!(
        missing.is_empty(),
        "after shrinking, {} cold carts miss an owner: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    stop.store(true, Ordering::SeqCst);
    let acked = writes.await.unwrap();
    assert!(
        acked.len() > 200,
        "the writer made progress through both changes ({} acks)",
        acked.len()
    );

    // Every acknowledged add is on at least W = 2 of its 3 owners, and in a quorum read.
    let mut expected: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for (cart, product) in &acked {
        expected.entry(cart.clone()).or_default().insert(product.clone());
    }
    let mut missing = Vec::new();
    for (cart, products) in &expected {
        let mut held = Vec::new();
        for addr in &first {
            held.push(local_products(*addr, cart).await);
        }
        for p in products {
            if held.iter().filter(|h| h.contains(p)).count() < 2 {
                missing.push(format!("{cart} {p} on fewer than 2 owners"));
            }
        }
        let read: BTreeSet<String> = client
            .get_cart(cart)
            .await
            .unwrap()
            .lines
            .into_iter()
            .map(|l| l.product_id)
            .collect();
        missing.extend(
            products
                .difference(&read)
                .map(|p| format!("{cart} {p} not in a quorum read")),
        );
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged adds missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    // The nodes that left handed over and dropped their copies.
    for addr in [a4, a5] {
        let dropped = common::eventually(Duration::from_secs(20), || async {
            for cart in expected.keys().chain(&cold) {
                if !local_products(addr, cart).await.is_empty() {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(dropped, "{addr} still holds carts it no longer owns");
    }
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_never_give_two_layouts_one_version() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, FAST);
    let a = addrs(&cluster);
    // Different changes staged on two nodes, committed at once.
    let (x, y) = (
        SocketAddr::from(([127, 0, 0, 1], 40_001)),
        SocketAddr::from(([127, 0, 0, 1], 40_002)),
    );
    stage(a[0], join("x", x)).await.unwrap();
    stage(a[1], join("y", y)).await.unwrap();
    let (one, two) = tokio::join!(commit(a[0]), commit(a[1]));
    assert!(one.is_err() || two.is_err(), "both commits succeeded: {one:?} {two:?}");
    for failed in [&one, &two].into_iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(failed.code(), Code::Aborted | Code::Unavailable), "{failed:?}");
    }
    // Every node ends with the same layout for version 2 (a commit that lost to a majority for
    // the other, or finished the other's proposal, still leaves one version 2).
    let same = common::eventually(Duration::from_secs(20), || async {
        let mut seen = BTreeSet::new();
        for addr in &a {
            match show(*addr).await.and_then(|l| l.current) {
                Some(c) if c.version == 2 => {
                    seen.insert(format!("{:?}", c.members));
                }
                _ => return false,
            }
        }
        seen.len() == 1
    })
    .await;
    let winner = show(a[2]).await.and_then(|l| l.current);
    assert!(same, "nodes disagree on version 2 (n3 has {winner:?})");
    let ids: BTreeSet<String> = winner.unwrap().members.iter().map(|m| m.node_id.clone()).collect();
    assert!(
        ids.contains("x") ^ ids.contains("y"),
        "exactly one proposal is version 2: {ids:?}"
    );
    // The made-up node never reports the new version: the transfer waits, and says why.
    let transfer = common::eventually(Duration::from_secs(10), || async {
        show(a[2])
            .await
            .and_then(|l| l.transfer)
            .is_some_and(|t| t.phase == "waiting" && !t.waiting_for.is_empty())
    })
    .await;
    assert!(transfer, "{:?}", show(a[2]).await.and_then(|l| l.transfer));
    let refused = commit(a[0]).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("still moving"), "{}", refused.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, FAST);
    let a = addrs(&cluster);
    let refused = |r: Result<LayoutReply, tonic::Status>| r.unwrap_err();

    let unknown = refused(stage(a[0], leave("n9")).await);
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    assert!(
        unknown.message().contains("\"n9\" is not a member"),
        "{}",
        unknown.message()
    );

    let below = refused(stage(a[0], leave("n3")).await);
    assert!(below.message().contains("fewer than n = 3"), "{}", below.message());

    let dup = refused(stage(a[0], join("n4", a[1])).await);
    assert!(
        dup.message().contains("already used by node \"n2\""),
        "{}",
        dup.message()
    );

    let same = refused(stage(a[0], join("n2", a[1])).await);
    assert!(same.message().contains("the same members"), "{}", same.message());

    let no_secret = common::admin(a[0])
        .await
        .stage_change(StageChangeRequest {
            change: Some(join("n4", "127.0.0.1:2".parse().unwrap())),
        })
        .await
        .unwrap_err();
    assert_eq!(no_secret.code(), Code::Unauthenticated);

    let nothing = refused(commit(a[0]).await);
    assert!(nothing.message().contains("nothing is staged"), "{}", nothing.message());

    let layout = show(a[0]).await.unwrap();
    assert_eq!(layout.current.unwrap().version, 1);
    assert!(
        layout.staged.is_empty(),
        "refused changes were staged: {:?}",
        layout.staged
    );
    // Placement is still the cluster file's.
    let ring = Ring::new(cluster.spec.nodes.iter().map(|(id, a)| cart_ring::Member {
        node_id: id.clone(),
        addr: a.to_string(),
        weight: 1,
        zone: String::new(),
    }))
    .unwrap();
    assert_eq!(ring.members().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_survives_kill_9_of_a_sender_and_of_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    // Slow transfer (100 carts/s per node) so the kills land in the middle of it.
    let slow = format!("{NO_AE}\ntransfer_carts_per_sec = 100");
    let mut cluster = common::start_cluster(dir.path(), 3, &slow);
    let first = addrs(&cluster);
    let client = CartClient::connect(first.iter().map(|a| a.to_string())).await.unwrap();
    let cold: Vec<String> = (0..400).map(|i| format!("guest:cold-{i}")).collect();
    for cart in &cold {
        client
            .add_item(cart, "cold", 1, ItemSnapshot::new("Mug", 1299, "EUR"))
            .await
            .unwrap();
    }
    let i4 = tokio::task::block_in_place(|| cluster.start_joining("n4", 0, 0)).unwrap();
    let a4 = common::addr(&cluster, i4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stage(first[0], join("n4", a4)).await.unwrap();
    commit(first[0]).await.unwrap();

    // n1 is sending: kill -9 it, and the receiver too, then bring both back.
    let sending = common::eventually(Duration::from_secs(20), || async {
        show(first[0])
            .await
            .and_then(|l| l.transfer)
            .is_some_and(|t| t.phase == "sending" && t.carts_scanned > 0)
    })
    .await;
    assert!(
        sending,
        "n1 never started sending: {:?}",
        show(first[0]).await.and_then(|l| l.transfer)
    );
    tokio::task::block_in_place(|| {
        cluster.kill9(0).unwrap();
        cluster.kill9(i4).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        cluster.restart(0).unwrap();
        cluster.restart(i4).unwrap();
    });
    let all = addrs(&cluster);
    assert!(
        common::eventually(Duration::from_secs(90), || settled(&all, 2)).await,
        "the transfer did not finish after the kills: {:?}",
        show(first[1]).await.and_then(|l| l.transfer)
    );
    let missing = cold_missing(first[0], &cold).await;
    assert!(
        missing.is_empty(),
        "{} cold carts miss an owner: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_mid_transfer_is_replaced_and_the_transfer_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, NO_AE);
    let first = addrs(&cluster);
    let client = CartClient::connect(first.iter().map(|a| a.to_string())).await.unwrap();
    let cold: Vec<String> = (0..200).map(|i| format!("guest:cold-{i}")).collect();
    for cart in &cold {
        client
            .add_item(cart, "cold", 1, ItemSnapshot::new("Mug", 1299, "EUR"))
            .await
            .unwrap();
    }
    let i4 = tokio::task::block_in_place(|| cluster.start_joining("n4", 0, 0)).unwrap();
    let a4 = common::addr(&cluster, i4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // n4 dies as soon as it is added: the transfer waits for it, and says so.
    tokio::task::block_in_place(|| cluster.kill9(i4)).unwrap();
    stage(first[0], join("n4", a4)).await.unwrap();
    commit(first[0]).await.unwrap();
    let waiting = common::eventually(Duration::from_secs(10), || async {
        show(first[0])
            .await
            .and_then(|l| l.transfer)
            .is_some_and(|t| t.phase == "waiting" && t.waiting_for == ["n4"])
    })
    .await;
    assert!(waiting, "{:?}", show(first[0]).await.and_then(|l| l.transfer));
    // Any other change is refused meanwhile; replacing the dead node is not.
    stage(first[0], leave("n3")).await.unwrap();
    let refused = commit(first[0]).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("cartctl cluster replace"),
        "{}",
        refused.message()
    );
    let i5 = tokio::task::block_in_place(|| cluster.start_joining("n5", 0, 0)).unwrap();
    let a5 = common::addr(&cluster, i5);
    let replace = StagedChange {
        kind: "replace".into(),
        node_id: "n5".into(),
        addr: a5.to_string(),
        replaces: "n4".into(),
        ..StagedChange::default()
    };
    stage(first[1], replace).await.unwrap();
    let committed = commit(first[1]).await.unwrap();
    assert_eq!(committed.current.unwrap().version, 3);
    assert_eq!(
        committed.previous.unwrap().version,
        1,
        "carts move straight from version 1"
    );
    let live = vec![first[0], first[1], first[2], a5];
    assert!(
        common::eventually(Duration::from_secs(60), || settled(&live, 3)).await,
        "the transfer into version 3 did not finish: {:?}",
        show(first[0]).await.and_then(|l| l.transfer)
    );
    let missing = cold_missing(first[0], &cold).await;
    assert!(
        missing.is_empty(),
        "{} cold carts miss an owner: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}
