//! The ring-aware `cart-client` and `cartctl status` / `hints discard` against real 3-node
//! clusters on loopback.

mod common;

use std::time::Duration;

use cart_client::cli::{run, Cli, ClusterStatus};
use cart_client::{CartClient, ClientError, ClientOptions, ItemSnapshot};
use cart_node::launcher::{ClusterSpec, LocalCluster};
use cart_proto::admin_pb::{GetMembershipRequest, Membership};
use cart_ring::{Member, Ring};
use clap::Parser;
use tonic::Code;

fn mug() -> ItemSnapshot {
    ItemSnapshot::new("Mug", 1299, "EUR")
}

async fn cartctl(endpoints: &[String], args: &[&str]) -> Result<String, ClientError> {
    let mut argv = vec!["cartctl".to_owned()];
    for endpoint in endpoints {
        argv.extend(["--endpoint".to_owned(), endpoint.clone()]);
    }
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    run(Cli::try_parse_from(argv).unwrap()).await
}

async fn status(endpoints: &[String]) -> Result<ClusterStatus, ClientError> {
    let json = cartctl(endpoints, &["--json", "status"]).await?;
    Ok(serde_json::from_str(&json).unwrap())
}

/// The membership as node `i` reports it, and the ring built from it here.
async fn membership(cluster: &LocalCluster, i: usize) -> (Membership, Ring) {
    let mut admin = common::admin(common::addr(cluster, i)).await;
    let m = admin
        .get_membership(GetMembershipRequest {})
        .await
        .unwrap()
        .into_inner();
    let ring = Ring::new(m.members.iter().map(|m| Member {
        node_id: m.node_id.clone(),
        addr: m.addr.clone(),
        weight: m.weight,
        zone: String::new(),
    }))
    .unwrap();
    (m, ring)
}

#[tokio::test]
async fn a_client_given_one_endpoint_learns_every_member_and_outlives_that_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, "");
    let client = CartClient::connect([common::addr(&cluster, 0).to_string()])
        .await
        .unwrap();
    let (wire, ring) = membership(&cluster, 1).await;
    let learned = client.membership().expect("learned at connect");
    assert_eq!(learned.version, wire.version);
    let mut addrs: Vec<String> = learned.members.iter().map(|m| m.addr.clone()).collect();
    addrs.sort();
    let mut all = cluster.endpoints();
    all.sort();
    assert_eq!(addrs, all, "all three members from one endpoint");

    // A cart whose first owner is n1, the node the client was given.
    let id = (0..1_000)
        .map(|k| format!("user:outlives-{k}"))
        .find(|id| ring.preference_list(id.as_bytes(), 1)[0].node_id == "n1")
        .unwrap();
    let owners: Vec<String> = ring
        .preference_list(id.as_bytes(), 3)
        .iter()
        .map(|m| m.addr.clone())
        .collect();
    assert_eq!(client.route(&id), owners, "owners in preference-list order");
    client.add_item(&id, "sku-1", 1, mug()).await.unwrap();

    cluster.kill9(0).unwrap();
    // The read goes to n1 first and on to the next owner. (It also absorbs the connection n1
    // dropped: a write sent on it fails with UNKNOWN and is not retried, see the crate docs.)
    assert_eq!(client.get_cart(&id).await.unwrap().lines.len(), 1);
    let cart = client.add_item(&id, "sku-2", 2, mug()).await.unwrap();
    assert_eq!(cart.lines.len(), 2);
    let cart = client.get_cart(&id).await.unwrap();
    let lines: Vec<(&str, u64)> = cart.lines.iter().map(|l| (l.product_id.as_str(), l.quantity)).collect();
    assert_eq!(lines, [("sku-1", 1), ("sku-2", 2)]);
    let other = "guest:after-the-kill";
    client.add_item(other, "sku-1", 1, mug()).await.unwrap();
    assert_eq!(client.get_cart(other).await.unwrap().lines[0].quantity, 1);
}

#[tokio::test]
async fn each_call_goes_first_to_the_carts_owner() {
    let dir = tempfile::tempdir().unwrap();
    // One replica per cart, so only the owner can serve it once the other nodes are gone.
    let mut cluster = common::start_cluster(dir.path(), 3, "n = 1\nr = 1\nw = 1");
    // No hedging, and so no outlier ejection: a dead owner that failed three calls would
    // otherwise be tried last, and the survivor would answer for carts it does not own.
    let options = ClientOptions {
        max_attempts: 1,
        hedge: false,
        ..ClientOptions::default()
    };
    let client = CartClient::connect_with([common::addr(&cluster, 0).to_string()], options)
        .await
        .unwrap();
    let (_, ring) = membership(&cluster, 0).await;
    let survivor = common::addr(&cluster, 2).to_string();
    let (mut on_survivor, mut elsewhere) = (Vec::new(), Vec::new());
    for k in 0..1_000 {
        let id = format!("user:owner-{k}-x");
        let owner = ring.preference_list(id.as_bytes(), 1)[0].addr.clone();
        assert_eq!(client.route(&id)[0], owner, "{id}");
        if owner == survivor {
            on_survivor.push(id);
        } else {
            elsewhere.push(id);
        }
        if on_survivor.len() >= 5 && elsewhere.len() >= 5 {
            break;
        }
    }
    for id in on_survivor.iter().chain(&elsewhere) {
        client.add_item(id, "sku-1", 1, mug()).await.unwrap();
    }

    // Only n3 is left. With one attempt per call, a call succeeds only if it went to n3 first:
    // for the carts n3 owns it must, for the others it cannot (their owner is dead).
    cluster.kill9(0).unwrap();
    cluster.kill9(1).unwrap();
    for id in &on_survivor {
        let cart = client
            .add_item(id, "sku-1", 1, mug())
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(cart.lines[0].quantity, 2, "{id}");
    }
    for id in &elsewhere {
        let err = client.get_cart(id).await.unwrap_err();
        // UNKNOWN when the request went out on the connection the dead owner dropped.
        assert!(
            matches!(err.code(), Some(Code::Unavailable | Code::Unknown)),
            "{id}: {err}"
        );
    }
}

#[tokio::test]
async fn a_client_made_while_the_cluster_is_down_learns_the_membership_once_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec::loopback(dir.path(), 3, 0).unwrap();
    let first = spec.nodes[0].1.to_string();
    let client = CartClient::connect([first.as_str()]).await.unwrap();
    assert!(client.membership().is_none());
    assert_eq!(client.route("user:early"), [first.as_str()]);
    let err = client.get_cart("user:early").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");

    let _cluster = LocalCluster::start(common::cartd(), spec).unwrap();
    let learned = common::eventually(Duration::from_secs(15), || async {
        client.add_item("user:early", "sku-1", 1, mug()).await.is_ok()
            && client.membership().is_some_and(|m| m.members.len() == 3)
    })
    .await;
    assert!(learned, "membership: {:?}", client.membership());
    assert_eq!(client.route("user:early").len(), 3);
}

#[tokio::test]
async fn a_client_follows_a_membership_change() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, "heartbeat_interval_ms = 200\nrequest_timeout_ms = 1000");
    let client = CartClient::connect([common::addr(&cluster, 0).to_string()])
        .await
        .unwrap();
    let before = client.membership().unwrap();
    client.add_item("user:moving", "sku-1", 1, mug()).await.unwrap();

    // n1 gets twice the weight: a new layout version, committed through the admin API.
    let n1 = common::addr(&cluster, 0);
    let mut stage = tonic::Request::new(cart_proto::admin_pb::StageChangeRequest {
        change: Some(cart_proto::admin_pb::StagedChange {
            kind: "join".into(),
            node_id: "n1".into(),
            addr: n1.to_string(),
            weight: 2,
            ..Default::default()
        }),
    });
    let secret: tonic::metadata::MetadataValue<_> = cluster.spec.secret.parse().unwrap();
    stage.metadata_mut().insert(cart_proto::SECRET_HEADER, secret.clone());
    common::admin(n1).await.stage_change(stage).await.unwrap();
    let mut commit = tonic::Request::new(cart_proto::admin_pb::CommitLayoutRequest {});
    commit.metadata_mut().insert(cart_proto::SECRET_HEADER, secret);
    common::admin(n1).await.commit_layout(commit).await.unwrap();
    // Clients follow the read version: the new one once every node has handed over.
    let moved = common::eventually(Duration::from_secs(30), || async {
        membership(&cluster, 0).await.0.version != before.version
    })
    .await;
    assert!(moved, "the layout never moved on");
    let (wire, _) = membership(&cluster, 0).await;

    let followed = common::eventually(Duration::from_secs(15), || async {
        client.get_cart("user:moving").await.is_ok() && client.membership().unwrap().version == wire.version
    })
    .await;
    let after = client.membership().unwrap();
    assert!(followed, "still on {:016x}", after.version);
    let n1 = after.members.iter().find(|m| m.node_id == "n1").unwrap();
    assert_eq!(n1.weight, 2);
    assert_eq!(client.get_cart("user:moving").await.unwrap().lines.len(), 1);
}

#[tokio::test]
async fn cartctl_status_lists_every_node_and_sees_one_go_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, "");
    let endpoints = cluster.endpoints();

    // n1 may have probed the others before they were listening: wait until it sees them up.
    let all_up = common::eventually(Duration::from_secs(10), || async {
        status(&endpoints).await.is_ok_and(|s| s.nodes.iter().all(|n| n.up))
    })
    .await;
    let s = status(&endpoints).await.unwrap();
    assert!(all_up, "{s:?}");
    assert_eq!(s.asked_node, "n1");
    assert_eq!(s.endpoint, endpoints[0]);
    let ids: Vec<&str> = s.nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(ids, ["n1", "n2", "n3"]);
    let total: f64 = s.nodes.iter().map(|n| n.ring_share).sum();
    assert!((total - 1.0).abs() < 0.001, "shares sum to {total}");
    assert!(s.nodes.iter().all(|n| n.ring_share > 0.2), "{s:?}");
    assert_eq!(s.hint_backlog, 0);

    let table = cartctl(&endpoints, &["status"]).await.unwrap();
    assert!(
        table.starts_with(&format!("cluster as seen by n1 (asked at {})", endpoints[0])),
        "{table}"
    );
    assert_eq!(table.matches(" up ").count(), 3, "{table}");
    let percents: f64 = table
        .split_whitespace()
        .filter_map(|w| w.strip_suffix('%'))
        .map(|p| p.parse::<f64>().unwrap())
        .sum();
    assert!((percents - 100.0).abs() <= 0.15, "{percents}\n{table}");
    assert!(table.contains("\nhint backlog: 0\n"), "{table}");

    cluster.kill9(2).unwrap();
    let seen_down = common::eventually(Duration::from_secs(5), || async {
        status(&endpoints)
            .await
            .is_ok_and(|s| s.nodes.iter().map(|n| n.up).eq([true, true, false]))
    })
    .await;
    assert!(seen_down, "{:?}", status(&endpoints).await);
    let table = cartctl(&endpoints, &["status"]).await.unwrap();
    let n3 = table.lines().find(|l| l.contains(" n3 ")).unwrap();
    assert!(n3.contains(" down "), "{table}");

    // The first endpoint that answers is asked.
    let dead_first = [endpoints[2].clone(), endpoints[1].clone()];
    let s = status(&dead_first).await.unwrap();
    assert_eq!(
        (s.asked_node.as_str(), s.endpoint.as_str()),
        ("n2", endpoints[1].as_str())
    );
}

#[tokio::test]
async fn cartctl_hints_discard_drops_the_asked_nodes_hints() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::start_cluster(dir.path(), 3, "");
    let n1 = [common::addr(&cluster, 0).to_string()];
    cluster.kill9(2).unwrap();

    // Everything through n1, which keeps a hint for n3 for each write.
    let options = ClientOptions {
        ring_aware: false,
        ..ClientOptions::default()
    };
    let client = CartClient::connect_with(&n1, options).await.unwrap();
    for k in 0..5 {
        client
            .add_item(&format!("user:hinted-{k}"), "sku-1", 1, mug())
            .await
            .unwrap();
    }
    let held = common::eventually(Duration::from_secs(10), || async {
        status(&n1).await.is_ok_and(|s| s.nodes[2].hints_held >= 5)
    })
    .await;
    let before = status(&n1).await.unwrap();
    assert!(held, "{before:?}");
    assert_eq!(before.hint_backlog, before.nodes[2].hints_held);

    let err = cartctl(&n1, &["hints", "discard", "--secret", "not-the-secret"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
    assert_eq!(status(&n1).await.unwrap().hint_backlog, before.hint_backlog);

    let secret = cluster.spec.secret.clone();
    let json = cartctl(&n1, &["--json", "hints", "discard", "--secret", &secret])
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(reply["discarded"], before.hint_backlog, "{json}");
    assert_eq!(reply["endpoint"], n1[0], "{json}");
    let after = status(&n1).await.unwrap();
    assert_eq!(after.hint_backlog, 0, "{after:?}");
    let text = cartctl(&n1, &["hints", "discard", "--secret", &secret]).await.unwrap();
    assert!(text.contains("discarded 0 hint(s)"), "{text}");
}
