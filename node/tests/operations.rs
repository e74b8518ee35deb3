//! Operating a node: the gRPC health service (what load balancers and Kubernetes probes ask) and
//! server reflection (what `grpcurl NODE list` uses), on real `cartd` processes.

mod common;

use std::time::{Duration, Instant};

use cart_node::launcher::{ClusterSpec, LocalCluster};
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
