//! Shared helpers for integration tests: real `cartd` processes on loopback ports.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cart_client::CartClient;
use cart_node::launcher::{ClusterSpec, LocalCluster};
use cart_proto::admin_pb::admin_service_client::AdminServiceClient;
use cart_proto::pb::cart_service_client::CartServiceClient;
use tonic::transport::Channel;

/// The secret `ClusterSpec::loopback` clusters use.
pub const SECRET: &str = "local-cluster-secret";

/// A request carrying the cluster secret (operator and internal calls).
pub fn with_secret<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(cart_proto::SECRET_HEADER, SECRET.parse().unwrap());
    request
}

pub fn cartd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cartd"))
}

/// A cluster of `nodes` under `dir` on free loopback ports; `cluster_toml` tunes `[cluster]`.
pub fn start_cluster(dir: &Path, nodes: usize, cluster_toml: &str) -> LocalCluster {
    let mut spec = ClusterSpec::loopback(dir, nodes, 0).unwrap();
    spec.cluster_toml = cluster_toml.to_owned();
    LocalCluster::start(cartd(), spec).unwrap_or_else(|e| panic!("{e}"))
}

/// One node (a cluster of one).
pub fn start_node(dir: &Path) -> LocalCluster {
    start_cluster(dir, 1, "")
}

/// One node keeping its data in `engine` (`"fjall"`, `"sled"`).
#[allow(dead_code)]
pub fn start_node_on(dir: &Path, engine: &str) -> LocalCluster {
    let mut spec = ClusterSpec::loopback(dir, 1, 0).unwrap();
    spec.top_toml = format!("[storage]\nengine = \"{engine}\"\n");
    LocalCluster::start(cartd(), spec).unwrap_or_else(|e| panic!("{e}"))
}

pub fn addr(cluster: &LocalCluster, i: usize) -> SocketAddr {
    cluster.spec.nodes[i].1
}

pub async fn client(addr: SocketAddr) -> CartClient {
    CartClient::connect([addr.to_string()]).await.unwrap()
}

/// The generated gRPC client, for sending what the typed client would refuse to build.
pub async fn raw_client(addr: SocketAddr) -> CartServiceClient<Channel> {
    CartServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20)
}

pub async fn admin(addr: SocketAddr) -> AdminServiceClient<Channel> {
    AdminServiceClient::connect(format!("http://{addr}")).await.unwrap()
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes; returns whether it did.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Python venv under the target directory (`name`) holding the pinned `requirements`, created
/// and filled from PyPI when missing or when the requirements changed; its python.
pub fn python_venv(name: &str, requirements: &Path) -> std::path::PathBuf {
    use std::process::Command;
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin/python");
    let stamp = venv.join("requirements.txt");
    let wanted = std::fs::read_to_string(requirements).expect("requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return python;
    }
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv")
        .success();
    assert!(ok, "python3 -m venv {} failed", venv.display());
    let ok = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(requirements)
        .status()
        .expect("pip")
        .success();
    assert!(ok, "pip install -r {} failed", requirements.display());
    std::fs::write(&stamp, wanted).expect("venv stamp");
    python
}

/// `GET path` on a node's HTTP address; the response body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of the sample `series` (name and labels exactly as exposed); 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .next()
        .unwrap_or(0.0)
}
