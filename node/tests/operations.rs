//! Operating a node: the gRPC health service (what load balancers and Kubernetes probes ask) and
//! server reflection (what `grpcurl NODE list` uses), on real `cartd` processes.

mod common;

use std::time::{Duration, Instant};

use cart_node::launcher::{ClusterSpec, LocalCluster};
use common::{http_get, sample};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health(addr: std::net::SocketAddr) -> HealthClient<Channel> {
    HealthClient::new(channel(addr).await)
}

async fn status(client: &mut HealthClient<Channel>, service: &str) -> Result<ServingStatus, tonic::Status> {
    let reply = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(reply.into_inner().status())
}

/// One reflection request on a fresh stream; its answer.
async fn reflect(addr: std::net::SocketAddr, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let outbound = tokio_stream::iter([ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    }]);
    let mut replies = client.server_reflection_info(outbound).await.unwrap().into_inner();
    replies
        .message()
        .await
        .unwrap()
        .expect("one reply")
        .message_response
        .expect("a reply body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_health_checks_and_lists_its_services_by_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path());
    let addr = common::addr(&node, 0);

    let mut h = health(addr).await;
    assert_eq!(status(&mut h, "").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        status(&mut h, "cartdb.v1.CartService").await.unwrap(),
        ServingStatus::Serving
    );
    let unknown = status(&mut h, "cartdb.v1.NoSuchService").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    let MessageResponse::ListServicesResponse(list) = reflect(addr, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["cartdb.v1.CartService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.contains("replica")),
        "the internal API is not advertised: {names:?}"
    );
    // What `grpcurl describe` needs: the file that defines a method's service.
    let MessageResponse::FileDescriptorResponse(files) = reflect(
        addr,
        MessageRequest::FileContainingSymbol("cartdb.v1.CartService.GetCart".into()),
    )
    .await
    else {
        panic!("no file for cartdb.v1.CartService.GetCart");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_says_not_serving_while_it_still_serves_for_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = ClusterSpec::loopback(dir.path(), 1, 0).unwrap();
    spec.top_toml = "shutdown_delay_ms = 3000\n".into();
    let mut node = LocalCluster::start(common::cartd(), spec).unwrap_or_else(|e| panic!("{e}"));
    let addr = common::addr(&node, 0);
    let client = common::client(addr).await;
    client
        .add_item(
            "user:draining",
            "sku-1",
            1,
            cart_client::ItemSnapshot::new("Mug", 100, "EUR"),
        )
        .await
        .unwrap();
    let mut h = health(addr).await;
    assert_eq!(status(&mut h, "").await.unwrap(), ServingStatus::Serving);

    let pid = node.node(0).unwrap().pid();
    let asked = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let mut said_not_serving = false;
    while asked.elapsed() < Duration::from_millis(2500) {
        if status(&mut h, "").await.ok() == Some(ServingStatus::NotServing) {
            said_not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(said_not_serving, "no NOT_SERVING within 2.5 s of SIGTERM");
    assert_eq!(
        status(&mut h, "cartdb.v1.CartService").await.unwrap(),
        ServingStatus::NotServing
    );
    // Within the delay the node still answers requests.
    assert!(
        asked.elapsed() < Duration::from_millis(2800),
        "the check took too long to test the delay"
    );
    let cart = client.get_cart("user:draining").await.unwrap();
    assert_eq!(cart.lines.len(), 1);
    let status = loop {
        if let Some(status) = node.node(0).unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(asked.elapsed() < Duration::from_secs(30), "the node did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(
        asked.elapsed() >= Duration::from_millis(3000),
        "stopped before its delay was over"
    );
}

fn add_request(cart: &str, w: u32) -> cart_proto::pb::AddItemRequest {
    cart_proto::pb::AddItemRequest {
        cart_id: cart.into(),
        product_id: "sku-1".into(),
        quantity: 1,
        snapshot: Some(cart_proto::pb::ItemSnapshot {
            name: "Mug".into(),
            unit_price_minor: 100,
            currency: "EUR".into(),
            ..Default::default()
        }),
        consistency: Some(cart_proto::pb::Consistency { r: 0, w }),
        ..Default::default()
    }
}

fn get_request(cart: &str, r: u32) -> cart_proto::pb::GetCartRequest {
    cart_proto::pb::GetCartRequest {
        cart_id: cart.into(),
        consistency: Some(cart_proto::pb::Consistency { r, w: 0 }),
        ..Default::default()
    }
}

/// A cluster of `nodes` with HTTP endpoints; `cluster_toml` tunes `[cluster]`.
fn cluster_with_http(dir: &std::path::Path, nodes: usize, cluster_toml: &str) -> LocalCluster {
    let mut spec = ClusterSpec::loopback(dir, nodes, 0).unwrap().with_http(0).unwrap();
    spec.cluster_toml = cluster_toml.into();
    LocalCluster::start(common::cartd(), spec).unwrap_or_else(|e| panic!("{e}"))
}

/// The sum of one sample over every node's metrics.
async fn cluster_sample(cluster: &LocalCluster, series: &str) -> f64 {
    let mut total = 0.0;
    for http in &cluster.spec.http {
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(http)).await
        {
            drop(stream);
            total += sample(&http_get(*http, "/metrics").await, series);
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_requests_hints_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster_with_http(dir.path(), 3, "");
    let http = cluster.spec.http[0];
    let n1 = common::addr(&cluster, 0);
    let before = http_get(http, "/metrics").await;
    assert!(before.contains("# TYPE cartdb_forwarded counter"), "{before}");
    assert!(before.trim_end().ends_with("# EOF"));

    let mut raw = common::raw_client(n1).await;
    for i in 0..5 {
        let cart = format!("user:metrics-{i}");
        raw.add_item(add_request(&cart, 0)).await.unwrap();
        raw.get_cart(get_request(&cart, 0)).await.unwrap();
    }
    let bad = raw
        .get_cart(cart_proto::pb::GetCartRequest {
            cart_id: "no-kind".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    // An internal call without the cluster secret.
    let mut replica = cart_proto::replica_pb::replica_service_client::ReplicaServiceClient::new(channel(n1).await);
    let refused = replica
        .ping(cart_proto::replica_pb::PingRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    let text = http_get(http, "/metrics").await;
    assert_eq!(
        sample(&text, r#"cartdb_requests_total{op="add_item",code="OK"}"#),
        5.0,
        "{text}"
    );
    assert_eq!(sample(&text, r#"cartdb_requests_total{op="get_cart",code="OK"}"#), 5.0);
    assert_eq!(
        sample(&text, r#"cartdb_requests_total{op="get_cart",code="INVALID_ARGUMENT"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"cartdb_request_duration_seconds_count{op="add_item"}"#),
        5.0
    );
    assert!(sample(&text, r#"cartdb_request_duration_seconds_sum{op="add_item"}"#) > 0.0);
    assert_eq!(
        sample(&text, r#"cartdb_unauthenticated_total{credential="cluster_secret"}"#),
        1.0
    );
    assert!(sample(&text, "cartdb_group_commit_batch_count") >= 5.0);
    assert!(sample(&text, "cartdb_storage_flush_duration_seconds_count") >= 5.0);
    assert!(sample(&text, "cartdb_storage_bytes") > 0.0);
    assert!(sample(&text, "cartdb_carts_cached") >= 5.0);
    assert_eq!(sample(&text, "cartdb_hint_oldest_age_seconds"), 0.0);
    // Recorded once every reply is in, after the client has its answer.
    let versions_seen = common::eventually(Duration::from_secs(5), || async {
        let text = http_get(http, "/metrics").await;
        sample(&text, "cartdb_read_versions_count") == 5.0
    })
    .await;
    assert!(versions_seen, "five reads counted");
    // One version each, or two when the peer read is the replica W = 2 did not wait for.
    let sum = sample(&http_get(http, "/metrics").await, "cartdb_read_versions_sum");
    assert!((5.0..=10.0).contains(&sum), "{sum}");

    // n3 down: n1 keeps hints for it, then hands them over once n3 is back.
    cluster.kill9(2).unwrap();
    let mut hinted = false;
    for i in 0..40 {
        let add = add_request(&format!("user:hinted-{i}"), 0);
        let _ = raw.add_item(add).await;
        let text = http_get(http, "/metrics").await;
        if sample(&text, r#"cartdb_hints_held{owner="n3"}"#) > 0.0 {
            hinted = true;
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let text = http_get(http, "/metrics").await;
            assert!(sample(&text, "cartdb_hint_oldest_age_seconds") >= 1.0, "{text}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hinted, "n1 never held a hint for n3");
    cluster.restart(2).unwrap();
    let handed = common::eventually(Duration::from_secs(30), || async {
        let text = http_get(http, "/metrics").await;
        sample(&text, "cartdb_handoffs_total") > 0.0 && sample(&text, r#"cartdb_hints_held{owner="n3"}"#) == 0.0
    })
    .await;
    assert!(handed, "no handoff counted");
    let text = http_get(http, "/metrics").await;
    assert_eq!(sample(&text, "cartdb_hint_oldest_age_seconds"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_forwards_and_quorum_failures() {
    let dir = tempfile::tempdir().unwrap();
    // Two replicas per cart on three nodes: n1 owns about two carts in three.
    let mut cluster = cluster_with_http(dir.path(), 3, "n = 2\nr = 1\nw = 1\nanti_entropy_interval_ms = 600000");
    let mut raw = common::raw_client(common::addr(&cluster, 0)).await;
    for i in 0..12 {
        raw.add_item(add_request(&format!("user:fwd-{i}"), 0)).await.unwrap();
    }
    assert!(cluster_sample(&cluster, "cartdb_forwarded_total").await > 0.0);

    cluster.kill9(1).unwrap();
    cluster.kill9(2).unwrap();
    for i in 0..6 {
        let cart = format!("user:lonely-{i}");
        assert!(raw.get_cart(get_request(&cart, 2)).await.is_err());
        assert!(raw.add_item(add_request(&cart, 2)).await.is_err());
    }
    let text = http_get(cluster.spec.http[0], "/metrics").await;
    assert_eq!(
        sample(&text, r#"cartdb_quorum_failures_total{kind="read"}"#),
        6.0,
        "{text}"
    );
    assert!(
        sample(&text, r#"cartdb_quorum_failures_total{kind="write"}"#) >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"cartdb_requests_total{op="get_cart",code="UNAVAILABLE"}"#),
        6.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_read_repairs_and_anti_entropy() {
    for anti_entropy in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let interval = if anti_entropy { 200 } else { 600_000 };
        let mut cluster = cluster_with_http(dir.path(), 3, &format!("anti_entropy_interval_ms = {interval}"));
        let n1 = common::addr(&cluster, 0);
        let mut raw = common::raw_client(n1).await;
        // n3 misses five writes, and the hints that would bring them are dropped.
        cluster.kill9(2).unwrap();
        for i in 0..5 {
            raw.add_item(add_request(&format!("user:missed-{i}"), 2)).await.unwrap();
        }
        for i in 0..2 {
            let req = common::with_secret(cart_proto::admin_pb::DiscardHintsRequest {});
            common::admin(common::addr(&cluster, i))
                .await
                .discard_hints(req)
                .await
                .unwrap();
        }
        cluster.restart(2).unwrap();
        if anti_entropy {
            let repaired = common::eventually(Duration::from_secs(30), || async {
                cluster_sample(&cluster, "cartdb_anti_entropy_differing_carts_total").await >= 5.0
                    && cluster_sample(&cluster, "cartdb_anti_entropy_repaired_carts_total").await >= 5.0
            })
            .await;
            assert!(repaired, "anti-entropy repairs not counted");
            continue;
        }
        // A read of all three replicas meets two versions and repairs n3.
        for i in 0..5 {
            raw.get_cart(get_request(&format!("user:missed-{i}"), 3)).await.unwrap();
        }
        // Counted once every reply is in, after the client has its answer.
        let http = cluster.spec.http[0];
        let counted = common::eventually(Duration::from_secs(5), || async {
            let text = http_get(http, "/metrics").await;
            sample(&text, "cartdb_read_repairs_total") == 5.0 && sample(&text, "cartdb_read_versions_count") == 5.0
        })
        .await;
        let text = http_get(http, "/metrics").await;
        assert!(counted, "{text}");
        assert_eq!(sample(&text, "cartdb_read_versions_sum"), 10.0, "two versions per read");
    }
}
