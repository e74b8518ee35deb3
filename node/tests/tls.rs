//! A cluster with TLS on every connection, mutual TLS between peers and API tokens: it
//! replicates, hands hints off and converges with every peer call over TLS; `cartctl` and
//! `cart-bench` speak TLS with a token; wrong or missing credentials are refused
//! `UNAUTHENTICATED` (or at the handshake), change nothing and are counted.

mod common;

use std::path::Path;
use std::time::Duration;

use cart_client::{CartClient, ClientError, ClientOptions, ClientTls, Credentials, ItemSnapshot};
use cart_node::launcher::{ClusterSpec, LocalCluster};
use cart_proto::replica_pb::replica_service_client::ReplicaServiceClient;
use cart_proto::replica_pb::PingRequest;
use clap::Parser;
use common::{http_get, sample};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const TOKEN: &str = "storefront-token-0123456789";

fn tls_cluster(dir: &Path) -> LocalCluster {
    let mut spec = ClusterSpec::loopback(dir, 3, 0)
        .unwrap()
        .with_http(0)
        .unwrap()
        .with_tls(true)
        .unwrap();
    spec.cluster_toml = "heartbeat_interval_ms = 200\nhint_interval_ms = 200\nanti_entropy_interval_ms = 500\n".into();
    spec.tables_toml.push_str(&format!(
        "\n[auth]\ntokens = [\"{TOKEN}\", \"checkout-token-9876543210\"]\n"
    ));
    LocalCluster::start(common::cartd(), spec).unwrap_or_else(|e| panic!("{e}"))
}

fn credentials(ca: &Path, token: Option<&str>) -> Credentials {
    let tls = Credentials::default().with_tls(ClientTls::from_files(ca, None).unwrap());
    match token {
        Some(token) => tls.with_token(token).unwrap(),
        None => tls,
    }
}

async fn client(cluster: &LocalCluster, credentials: Credentials) -> CartClient {
    let options = ClientOptions {
        credentials,
        max_attempts: 2,
        request_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    CartClient::connect_with(cluster.endpoints(), options).await.unwrap()
}

/// `cartctl ARGS…` in-process with the cluster's CA and the token, against node `i`.
async fn cartctl(cluster: &LocalCluster, i: usize, args: &[&str]) -> Result<String, ClientError> {
    let ca = cluster.spec.tls_ca_file().display().to_string();
    let endpoint = common::addr(cluster, i).to_string();
    let argv = ["cartctl", "--tls-ca", &ca, "--token", TOKEN, "--endpoint", &endpoint];
    let cli = cart_client::cli::Cli::try_parse_from(argv.iter().chain(args)).unwrap();
    cart_client::cli::run(cli).await
}

/// A TLS channel to `addr` trusting `ca`, presenting `identity` if given.
async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<Identity>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

/// A certificate and key from `dir` (`NAME.pem`, `NAME.key`).
fn identity(dir: &Path, name: &str) -> Identity {
    Identity::from_pem(
        std::fs::read(dir.join(format!("{name}.pem"))).unwrap(),
        std::fs::read(dir.join(format!("{name}.key"))).unwrap(),
    )
}

fn mug() -> ItemSnapshot {
    ItemSnapshot::new("Mug", 1299, "EUR")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_replicates_hands_off_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = tls_cluster(dir.path());
    let ca = cluster.spec.tls_ca_file();
    let client = client(&cluster, credentials(&ca, Some(TOKEN))).await;
    let carts: Vec<String> = (0..12).map(|i| format!("user:tls-{i}")).collect();
    for cart in &carts {
        client.add_item(cart, "sku-1", 1, mug()).await.unwrap();
    }
    // n3 down: the writes go to the others (and hints to a fallback), over TLS between peers.
    cluster.kill9(2).unwrap();
    for cart in &carts {
        let view = client.add_item(cart, "sku-2", 2, mug()).await.unwrap();
        assert_eq!(view.lines.len(), 2, "{cart}");
    }
    cluster.restart(2).unwrap();
    // N = 3 of 3 nodes: every cart reaches n3 (handoff and anti-entropy over mutual TLS).
    for cart in &carts {
        let converged = common::eventually(Duration::from_secs(30), || async {
            match cartctl(&cluster, 2, &["--json", "cart", "get", cart, "--local"]).await {
                Ok(json) => json.contains("sku-1") && json.contains("sku-2"),
                Err(_) => false,
            }
        })
        .await;
        assert!(converged, "{cart} did not reach n3 over TLS");
    }
    let all_up = common::eventually(Duration::from_secs(10), || async {
        let json = cartctl(&cluster, 0, &["--json", "status"]).await.unwrap();
        let status: cart_client::cli::ClusterStatus = serde_json::from_str(&json).unwrap();
        status.nodes.len() == 3 && status.nodes.iter().all(|n| n.up)
    })
    .await;
    assert!(all_up, "cartctl status over TLS shows the three nodes up");
    let read = client.get_cart(&carts[0]).await.unwrap();
    assert_eq!(read.lines.iter().map(|l| l.quantity).sum::<u64>(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_change_nothing_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tls_cluster(dir.path());
    let ca = cluster.spec.tls_ca_file();
    let n1 = common::addr(&cluster, 0);

    // No token, then a wrong one: UNAUTHENTICATED, naming the header.
    let no_token = client(&cluster, credentials(&ca, None)).await;
    let err = no_token.add_item("user:mallory", "sku-1", 1, mug()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
    assert!(err.to_string().contains("authorization"), "{err}");
    let wrong = client(&cluster, credentials(&ca, Some("storefront-token-0123456780"))).await;
    let err = wrong.add_item("user:mallory", "sku-1", 1, mug()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
    assert_eq!(
        wrong.get_cart("user:mallory").await.unwrap_err().code(),
        Some(Code::Unauthenticated)
    );

    // A client that trusts another CA never completes the handshake; one without TLS neither.
    let other = cart_node::security::write_dev_pki(&dir.path().join("other-ca"), &["n1"], &["127.0.0.1"]).unwrap();
    let stranger = client(&cluster, credentials(&other.ca_file, Some(TOKEN))).await;
    let err = stranger.add_item("user:mallory", "sku-1", 1, mug()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    let plain = client(&cluster, Credentials::default().with_token(TOKEN).unwrap()).await;
    let err = plain.add_item("user:mallory", "sku-1", 1, mug()).await.unwrap_err();
    // The server answers plain HTTP/2 with a TLS alert and closes: the client sees a broken
    // protocol or a connection dropped under its request, whichever it notices first.
    assert!(
        matches!(err.code(), Some(Code::Unavailable | Code::Internal | Code::Cancelled)),
        "{err}"
    );

    // None of it changed anything; the second configured token works too.
    let good = client(&cluster, credentials(&ca, Some("checkout-token-9876543210"))).await;
    assert!(good.get_cart("user:mallory").await.unwrap().lines.is_empty());

    // The replica API: the cluster secret alone is not enough without a peer certificate, and a
    // certificate from another CA fails the handshake.
    let ping = || {
        let mut request = common::with_secret(PingRequest::default());
        request.set_timeout(Duration::from_secs(2));
        request
    };
    let channel = tls_channel(n1, &ca, None).await.unwrap();
    let status = ReplicaServiceClient::new(channel).ping(ping()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("peer certificate"), "{status:?}");
    match tls_channel(n1, &ca, Some(identity(&other.dir, "n1"))).await {
        Err(_) => {}
        Ok(channel) => assert!(ReplicaServiceClient::new(channel).ping(ping()).await.is_err()),
    }
    // A peer's own certificate with the secret is let in.
    let peer = tls_channel(n1, &ca, Some(identity(ca.parent().unwrap(), "n2")))
        .await
        .unwrap();
    ReplicaServiceClient::new(peer).ping(ping()).await.unwrap();

    // The admin API needs the token too (cartctl status without one); health checks do not.
    let argv = [
        "cartctl",
        "--tls-ca",
        ca.to_str().unwrap(),
        "--endpoint",
        &n1.to_string(),
        "status",
    ];
    let err = cart_client::cli::run(cart_client::cli::Cli::try_parse_from(argv).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
    let channel = tls_channel(n1, &ca, None).await.unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, ServingStatus::Serving as i32);

    // Counted per credential on the node that refused.
    let text = http_get(cluster.spec.http[0], "/metrics").await;
    assert!(
        sample(&text, r#"cartdb_unauthenticated_total{credential="token"}"#) >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"cartdb_unauthenticated_total{credential="peer_certificate"}"#),
        1.0
    );
    // Three token refusals here (no token, a wrong one twice) and cartctl status's.
    let all_nodes_tokens = {
        let mut total = 0.0;
        for http in &cluster.spec.http {
            total += sample(
                &http_get(*http, "/metrics").await,
                r#"cartdb_unauthenticated_total{credential="token"}"#,
            );
        }
        total
    };
    assert!(
        all_nodes_tokens >= 3.0,
        "three token refusals at least: {all_nodes_tokens}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cart_bench_speaks_tls_and_the_metrics_move_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tls_cluster(dir.path());
    let ca = cluster.spec.tls_ca_file().display().to_string();
    let target = format!("cartdb={}", cluster.endpoints().join(","));
    let json = dir.path().join("bench.json").display().to_string();
    let args = cart_bench::cli::Args::try_parse_from([
        "cart-bench",
        "--profile",
        "storefront",
        "--duration",
        "3",
        "--concurrency",
        "4",
        "--carts",
        "50",
        "--no-progress",
        "--target",
        &target,
        "--json",
        &json,
        "--tls-ca",
        &ca,
        "--token",
        TOKEN,
    ])
    .unwrap();
    let report = cart_bench::app::run(args).await.unwrap();
    let run = &report.targets[0];
    assert!(run.overall.count > 100, "{run:?}");
    assert_eq!(run.errors, 0, "{:?}", run.error_codes);

    // What the bench moved, summed over the three nodes.
    let mut totals = std::collections::BTreeMap::new();
    for http in &cluster.spec.http {
        let text = http_get(*http, "/metrics").await;
        for series in [
            r#"cartdb_requests_total{op="get_cart",code="OK"}"#,
            r#"cartdb_requests_total{op="add_item",code="OK"}"#,
            r#"cartdb_request_duration_seconds_count{op="add_item"}"#,
            "cartdb_group_commit_batch_count",
            "cartdb_storage_flush_duration_seconds_count",
            "cartdb_read_versions_count",
            "cartdb_storage_bytes",
            "cartdb_carts_cached",
        ] {
            *totals.entry(series).or_insert(0.0) += sample(&text, series);
        }
    }
    for (series, total) in &totals {
        assert!(*total > 0.0, "{series} did not move under cart-bench: {totals:?}");
    }
}
