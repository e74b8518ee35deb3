//! Assembles a node from its parts and serves it on a caller-supplied listener.
//!
//! The transport is a parameter (`incoming`): real nodes pass a TCP listener, a simulation passes
//! its own streams. Storage and clock are parameters too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cart_proto::admin_pb::admin_service_server::AdminServiceServer;
use cart_proto::pb::cart_service_server::CartServiceServer;
use cart_proto::replica_pb::replica_service_server::ReplicaServiceServer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Connected;
use tonic::transport::Server;

use crate::admin::AdminApi;
use crate::clock::Clock;
use crate::cluster::{tcp_connect, Cluster, Connect};
use crate::config::NodeConfig;
use crate::coordinator::Coordinator;
use crate::error::NodeError;
use crate::replica::{check_peer, ReplicaApi};
use crate::security::check_token;
use crate::service::{CartApi, InFlight};
use crate::storage::{Storage, StorageError};
use crate::store::CartStore;
use crate::{anti_entropy, handoff, lifecycle, membership};
use cart_ring::layout::Layout;

/// Attempts (500 ms apart) to learn the layout from the `--join` seed on first start.
const JOIN_ATTEMPTS: u32 = 60;
/// Streams a client may open and reset before the node accepts them (h2's limit per connection).
const PENDING_RESETS_MAX: usize = 4096;

pub struct Node {
    config: NodeConfig,
    coordinator: Arc<Coordinator>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("final flush: {0}")]
    Flush(#[from] StorageError),
}

impl Node {
    /// Opens the store and dials peers over real TCP (lazily); see [`Node::open_with_connector`].
    pub async fn open(
        config: NodeConfig,
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
        fresh_actor: u64,
    ) -> Result<Self, NodeError> {
        Self::open_with_connector(config, storage, clock, fresh_actor, tcp_connect()).await
    }

    /// Opens the store on `storage` (`fresh_actor` is the actor if this start is a new
    /// incarnation) and makes each peer's channel with `connect`: the transport seam a simulation
    /// fills in.
    pub async fn open_with_connector(
        config: NodeConfig,
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
        fresh_actor: u64,
        connect: Connect,
    ) -> Result<Self, NodeError> {
        let store = CartStore::open(
            storage,
            clock,
            config.limits.clone(),
            config.max_inflight_writes,
            fresh_actor,
        )
        .await?
        .with_commit_window(config.commit_window)
        .with_cache_bytes(config.cache_bytes)
        .with_expiry(config.cluster.expiry);
        let mut config = config;
        let stored = match membership::load(&store)? {
            Some(stored) => {
                let mut listed = config.cluster.members.clone();
                listed.sort();
                if config.join.is_none() && listed != stored.current.members && stored.current.version > 1 {
                    tracing::info!(
                        version = stored.current.version,
                        "the stored cluster layout differs from the config file's members and wins: change membership with `cartctl cluster`"
                    );
                } else if config.join.is_none() && listed != stored.current.members {
                    tracing::warn!(
                        "the config file's members differ from the stored layout version 1, which wins: change membership with `cartctl cluster`, not the file"
                    );
                }
                stored
            }
            None => {
                let (current, previous) = match &config.join {
                    // First start of a joining node: the cluster's layout, from the seed.
                    Some(seed) => {
                        let secret = &config.cluster.secret;
                        membership::fetch_from_seed(seed, secret, config.tls.as_ref(), &connect, JOIN_ATTEMPTS).await?
                    }
                    // First start from a cluster file: its members are version 1.
                    None => {
                        let c = &config.cluster;
                        let layout = Layout::initial(c.members.clone(), c.n as u32, c.r as u32, c.w as u32);
                        (layout, None)
                    }
                };
                membership::save(&store, &current, previous.as_ref()).await?;
                let synced = current.version;
                membership::Stored {
                    current,
                    previous,
                    synced,
                }
            }
        };
        // N, R and W are the layout's (a joining node's file need not name them).
        let layout = &stored.current;
        (config.cluster.n, config.cluster.r, config.cluster.w) =
            (layout.n as usize, layout.r as usize, layout.w as usize);
        config.cluster.members = layout.members.clone();
        if !layout.is_member(&config.node_id) {
            tracing::info!(
                version = layout.version,
                "not a member of the cluster layout yet: waiting for an operator's `cartctl cluster join`"
            );
        }
        let cluster = Arc::new(Cluster::new(
            &config,
            &connect,
            stored.current,
            stored.previous,
            stored.synced,
            store.health.clone(),
        )?);
        if let Some(rules) = crate::membership::pricing::load(&store)? {
            cluster.set_pricing(Arc::new(rules));
        }
        Ok(Node {
            coordinator: Coordinator::new(Arc::new(store), cluster),
            config,
        })
    }

    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    pub fn store(&self) -> &Arc<CartStore> {
        &self.coordinator.store
    }

    /// Serves the public, replica and admin APIs until `shutdown` resolves, running the failure
    /// detector, hinted handoff and anti-entropy in the background. Then it stops accepting, lets
    /// in-flight requests finish (up to `shutdown_grace`), stops the background tasks and flushes.
    pub async fn serve<I, IO, IE>(
        self,
        incoming: I,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError>
    where
        I: Stream<Item = Result<IO, IE>>,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limits = &self.config.limits;
        let in_flight = Arc::new(InFlight::default());
        let metrics = &self.coordinator.store.metrics;
        let tokens = check_token(self.config.api_tokens.clone(), metrics.clone());
        let api = CartServiceServer::new(CartApi::new(self.coordinator.clone(), in_flight.clone()))
            .max_decoding_message_size(limits.max_message_bytes)
            .max_encoding_message_size(limits.max_message_bytes);
        let api = InterceptedService::new(api, tokens.clone());
        let peer_mtls = self.config.tls.as_ref().is_some_and(|t| t.peer_mtls);
        let replica = ReplicaServiceServer::with_interceptor(
            ReplicaApi::new(self.coordinator.clone()),
            check_peer(self.config.cluster.secret.clone(), peer_mtls, metrics.clone()),
        );
        let admin = AdminServiceServer::with_interceptor(AdminApi::new(self.coordinator.clone()), tokens);
        // Health: SERVING from here (storage open, the layout and so the peers known) until
        // shutdown begins; reflection lists the public API and the health service.
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<CartServiceServer<CartApi>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(cart_proto::CART_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;

        let current = self.coordinator.cluster.topology().current.layout.clone();
        membership::follow_layout(
            self.coordinator.store.clone(),
            current,
            self.coordinator.cluster.config.digest_rebuild_carts_per_sec,
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let background = [
            tokio::spawn(self.coordinator.cluster.clone().run_failure_detector(stop_rx.clone())),
            tokio::spawn(handoff::run(self.coordinator.clone(), stop_rx.clone())),
            tokio::spawn(anti_entropy::run(self.coordinator.clone(), stop_rx.clone())),
            tokio::spawn(lifecycle::sweeper::run(self.coordinator.clone(), stop_rx.clone())),
            tokio::spawn(membership::run(self.coordinator.membership.clone(), stop_rx)),
        ];

        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let delay = self.config.shutdown_delay;
        let pipelines = in_flight.clone();
        let signal = async move {
            shutdown.await;
            health.set_not_serving::<CartServiceServer<CartApi>>().await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            if !delay.is_zero() {
                tracing::info!(
                    ?delay,
                    "shutdown requested: health says NOT_SERVING; serving on meanwhile"
                );
                tokio::time::sleep(delay).await;
            }
            tracing::info!("shutdown requested: no new connections, finishing in-flight requests");
            pipelines.stop();
            let _ = stopping_tx.send(());
        };
        let mut builder = Server::builder();
        if let Some(tls) = &self.config.tls {
            builder = builder.tls_config(tls.server())?;
        }
        tracing::info!(
            tls = self.config.tls.is_some(),
            peer_mtls,
            api_tokens = self.config.api_tokens.len(),
            "wire security (README \"TLS and tokens\")"
        );
        let server = builder
            // Clients hedge and cancel: a node resuming from a pause finds hundreds of streams
            // opened and reset while it slept. h2's default (20) would answer that with a
            // GOAWAY that fails every call on the connection; still bounded (rapid-reset floods).
            .http2_max_pending_accept_reset_streams(Some(PENDING_RESETS_MAX))
            .http2_keepalive_interval(Some(self.config.keepalive_interval))
            .http2_keepalive_timeout(Some(self.config.keepalive_interval))
            .add_service(api)
            .add_service(replica)
            .add_service(admin)
            .add_service(health_service)
            .add_service(reflection)
            .serve_with_incoming_shutdown(incoming, signal);
        let grace = self.config.shutdown_grace;
        let drained = async move {
            if stopping_rx.await.is_err() {
                return std::future::pending::<bool>().await;
            }
            let deadline = tokio::time::Instant::now() + grace;
            while in_flight.count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            in_flight.count() == 0
        };
        tokio::select! {
            biased; // fixed branch order: deterministic under simulation
            served = server => served?,
            all_done = drained => if !all_done {
                tracing::warn!(?grace, "requests still running after the grace period; stopping anyway");
            },
        }
        let _ = stop_tx.send(true);
        for task in background {
            // Each loop checks the stop signal between rounds; one stuck in a peer call is cut off.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
        self.coordinator.store.close(self.config.shutdown_grace).await?;
        tracing::info!("storage flushed; bye");
        Ok(())
    }
}
