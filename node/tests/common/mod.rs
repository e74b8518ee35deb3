//! Shared helpers for integration tests: real `cartd` processes on loopback ports.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use cart_client::CartClient;
use cart_node::launcher::{NodeProcess, NodeSpec};
use cart_proto::pb::cart_service_client::CartServiceClient;
use tonic::transport::Channel;

/// Starts `cartd` with its folder under `dir`, on a free loopback port.
pub fn start_node(dir: &Path) -> NodeProcess {
    let spec = NodeSpec {
        node_id: "n1".into(),
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        dir: dir.to_owned(),
    };
    NodeProcess::start(Path::new(env!("CARGO_BIN_EXE_cartd")), spec).unwrap_or_else(|e| panic!("{e}"))
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
