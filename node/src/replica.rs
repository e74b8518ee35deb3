//! The internal `ReplicaService`: what peers ask of this node. Every call passed the secret check
//! ([`check_secret`]) before it gets here.

use std::sync::Arc;

use cart_crdt::{codec, CartId};
use cart_proto::replica_pb::replica_service_server::ReplicaService;
use cart_proto::replica_pb::{
    BucketKeysReply, BucketKeysRequest, CoordinateReply, CoordinateRequest, DigestReply, DigestRequest,
    GetLayoutRequest, GetPricingRequest, ItemResult, KeyHash, LayoutAcceptReply, LayoutAcceptRequest, LayoutDoc,
    LayoutPrepareReply, LayoutPrepareRequest, PingReply, PingRequest, PricingDoc, ReadBatchReply, ReadBatchRequest,
    ReadReply, ReadRequest, ReadResult, ReplicateBatchReply, ReplicateBatchRequest, ReplicateReply, ReplicateRequest,
};
use cart_proto::{CartRequest, Consistency, SECRET_HEADER};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::anti_entropy;
use crate::coordinator::Coordinator;
use crate::error::NodeError;
use crate::membership;
use crate::membership::paxos::{Ballot, Prepared};
use crate::membership::DocKind;
use crate::metrics::{Credential, Metrics};
use crate::security::{constant_time_eq, has_peer_certificate};

#[derive(Clone)]
pub struct ReplicaApi {
    coordinator: Arc<Coordinator>,
    /// Whether the batch stream calls are served (off: answered `UNIMPLEMENTED`, as a node of
    /// the version before them did; see [`NO_BATCH_STREAMS_ENV`]).
    batch_streams: bool,
}

/// Compatibility drill (tests of a cluster being upgraded): with this set, the node answers the
/// batch stream calls `UNIMPLEMENTED`, like a node of the version before them, so its peers fall
/// back to unary batch calls. Never set in production.
pub const NO_BATCH_STREAMS_ENV: &str = "CARTD_COMPAT_NO_BATCH_STREAMS";

/// Batches of one peer stream taken but not yet answered at most (their flushes overlap).
const STREAM_BATCHES_IN_FLIGHT: usize = 8;

impl ReplicaApi {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        let batch_streams = std::env::var_os(NO_BATCH_STREAMS_ENV).is_none();
        if !batch_streams {
            tracing::warn!("{NO_BATCH_STREAMS_ENV} set: batch streams refused, as by an older version");
        }
        ReplicaApi {
            coordinator,
            batch_streams,
        }
    }

    fn check_batch_streams(&self) -> Result<(), Status> {
        match self.batch_streams {
            true => Ok(()),
            false => Err(Status::unimplemented(format!(
                "batch streams are off ({NO_BATCH_STREAMS_ENV})"
            ))),
        }
    }

    /// Merges one replicated state (or stores it as a hint) without waiting for the flush.
    fn store_unflushed(&self, req: ReplicateRequest) -> Result<(), Status> {
        let id = self.cart_id(&req.cart_id)?;
        let cart = codec::decode(&req.state).map_err(bad_state)?;
        let store = &self.coordinator.store;
        let deps = match req.deps.is_empty() {
            true => None,
            false => Some(codec::decode_context(&req.deps).map_err(bad_state)?),
        };
        if req.hint_for.is_empty() {
            store.merge_unflushed(&id, cart, Some(&req.state), deps.as_ref())?;
        } else if deps.is_some() {
            // A hint must be a whole cart: a delta without its past would reach the owner alone.
            return Err(NodeError::MissingHistory {
                cart_id: id.to_string(),
            }
            .into());
        } else if !store.add_hint_unflushed(&req.hint_for, &id, cart, self.coordinator.cluster.config.hints_max)? {
            return Err(NodeError::HintsFull {
                limit: self.coordinator.cluster.config.hints_max,
            }
            .into());
        }
        Ok(())
    }

    /// This node's state of one cart (replica merged with hints), or, for a digest read,
    /// `unchanged` when its context is the one the coordinator holds, `behind` when that
    /// context covers it, and otherwise a catch-up if the read asks for one.
    fn read_one(&self, req: ReadRequest) -> Result<ReadReply, Status> {
        let id = self.cart_id(&req.cart_id)?;
        let encoding = |e| Status::from(NodeError::from(e));
        let Some(cart) = self.coordinator.store.read_with_hints(&id)? else {
            return Ok(ReadReply::default());
        };
        if !req.known_context.is_empty() {
            let known = codec::decode_context(&req.known_context)
                .map_err(|e| Status::invalid_argument(format!("known_context: {e}")))?;
            if known == *cart.context() {
                return Ok(ReadReply {
                    unchanged: true,
                    ..ReadReply::default()
                });
            }
            // The coordinator has seen everything this copy holds (writes still on their way
            // here): it adds nothing to the merge and is not shipped.
            if known.covers(cart.context()) {
                return Ok(ReadReply {
                    behind: true,
                    ..ReadReply::default()
                });
            }
            // The coordinator holds the cart at `known`: what it lacks, and the dots of the rest.
            if req.catch_up {
                let catch_up = cart.catch_up(&known).map_err(encoding)?;
                return Ok(ReadReply {
                    catch_up: codec::encode_catch_up(&catch_up).map_err(encoding)?,
                    ..ReadReply::default()
                });
            }
        }
        Ok(ReadReply {
            state: codec::encode(&cart).map_err(encoding)?,
            ..ReadReply::default()
        })
    }

    /// Merges a batch without flushing: one result per item, in order.
    fn store_batch(&self, items: Vec<ReplicateRequest>) -> Vec<ItemResult> {
        items
            .into_iter()
            .map(|item| item_result(self.store_unflushed(item)))
            .collect()
    }

    /// The batch's results once one flush has made what it stored durable; if the flush fails,
    /// nothing in it is acknowledged.
    async fn flushed(&self, mut results: Vec<ItemResult>) -> ReplicateBatchReply {
        if let Err(e) = self.coordinator.store.durable().await {
            let failed = item_result(Err(Status::from(e)));
            for r in results.iter_mut().filter(|r| r.code == 0) {
                *r = failed.clone();
            }
        }
        ReplicateBatchReply { results }
    }

    /// A batch of reads: one result per item, in order.
    fn read_items(&self, items: Vec<ReadRequest>) -> ReadBatchReply {
        let results = items
            .into_iter()
            .map(|item| match self.read_one(item) {
                Ok(reply) => ReadResult {
                    code: 0,
                    message: String::new(),
                    reply: Some(reply),
                },
                Err(status) => ReadResult {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                    reply: None,
                },
            })
            .collect();
        ReadBatchReply { results }
    }

    fn cart_id(&self, raw: &str) -> Result<CartId, Status> {
        CartId::parse(raw, self.coordinator.store.limits()).map_err(|e| Status::from(NodeError::from(e)))
    }
}

/// Refuses calls that do not carry the cluster secret (admin calls that change the cluster).
pub fn check_secret(
    secret: String,
    metrics: Arc<Metrics>,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let given = request.metadata().get(SECRET_HEADER).map(|v| v.as_bytes());
        if given.is_some_and(|g| constant_time_eq(g, secret.as_bytes())) {
            Ok(request)
        } else {
            metrics.refused(Credential::ClusterSecret);
            Err(NodeError::Unauthenticated { header: SECRET_HEADER }.into())
        }
    }
}

/// Refuses internal calls from anyone but a peer: the cluster secret, and with `[tls] peer_mtls`
/// a client certificate the cluster's CA signed.
pub fn check_peer(
    secret: String,
    require_certificate: bool,
    metrics: Arc<Metrics>,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    let check_secret = check_secret(secret, metrics.clone());
    move |request: Request<()>| {
        if require_certificate && !has_peer_certificate(&request) {
            metrics.refused(Credential::PeerCertificate);
            return Err(Status::unauthenticated(
                "internal call without a peer certificate ([tls] peer_mtls is on)",
            ));
        }
        check_secret(request)
    }
}

fn item_result(outcome: Result<(), Status>) -> ItemResult {
    match outcome {
        Ok(()) => ItemResult {
            code: 0,
            message: String::new(),
        },
        Err(status) => ItemResult {
            code: status.code() as i32,
            message: status.message().to_owned(),
        },
    }
}

fn bad_state(e: cart_crdt::CartError) -> Status {
    NodeError::BadPeerMessage { reason: e.to_string() }.into()
}

#[tonic::async_trait]
impl ReplicaService for ReplicaApi {
    async fn replicate(&self, request: Request<ReplicateRequest>) -> Result<Response<ReplicateReply>, Status> {
        self.store_unflushed(request.into_inner())?;
        self.coordinator.store.durable().await?;
        Ok(Response::new(ReplicateReply {}))
    }

    async fn replicate_batch(
        &self,
        request: Request<ReplicateBatchRequest>,
    ) -> Result<Response<ReplicateBatchReply>, Status> {
        let results = self.store_batch(request.into_inner().items);
        Ok(Response::new(self.flushed(results).await))
    }

    type ReplicateStreamStream = ReceiverStream<Result<ReplicateBatchReply, Status>>;

    async fn replicate_stream(
        &self,
        request: Request<Streaming<ReplicateBatchRequest>>,
    ) -> Result<Response<Self::ReplicateStreamStream>, Status> {
        self.check_batch_streams()?;
        let mut incoming = request.into_inner();
        let (replies, out) = mpsc::channel(STREAM_BATCHES_IN_FLIGHT);
        let api = self.clone();
        tokio::spawn(async move {
            // Batches are merged in the order they arrive; their flushes overlap (one group
            // commit may cover several) and their replies leave in arrival order.
            let mut flushing = FuturesOrdered::new();
            loop {
                tokio::select! {
                    biased; // fixed branch order: deterministic under simulation
                    Some(reply) = flushing.next(), if !flushing.is_empty() => {
                        if replies.send(Ok(reply)).await.is_err() {
                            return;
                        }
                    }
                    message = incoming.next(), if flushing.len() < STREAM_BATCHES_IN_FLIGHT => match message {
                        Some(Ok(batch)) => flushing.push_back(api.flushed(api.store_batch(batch.items))),
                        // The coordinator closed the stream or the connection went: what was
                        // taken is still flushed (an ack may yet reach a retry), nothing answers.
                        Some(Err(_)) | None => break,
                    },
                }
            }
            while flushing.next().await.is_some() {}
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadReply>, Status> {
        Ok(Response::new(self.read_one(request.into_inner())?))
    }

    async fn read_batch(&self, request: Request<ReadBatchRequest>) -> Result<Response<ReadBatchReply>, Status> {
        Ok(Response::new(self.read_items(request.into_inner().items)))
    }

    type ReadStreamStream = ReceiverStream<Result<ReadBatchReply, Status>>;

    async fn read_stream(
        &self,
        request: Request<Streaming<ReadBatchRequest>>,
    ) -> Result<Response<Self::ReadStreamStream>, Status> {
        self.check_batch_streams()?;
        let mut incoming = request.into_inner();
        let (replies, out) = mpsc::channel(STREAM_BATCHES_IN_FLIGHT);
        let api = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(batch)) = incoming.next().await {
                if replies.send(Ok(api.read_items(batch.items))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    async fn coordinate(&self, request: Request<CoordinateRequest>) -> Result<Response<CoordinateReply>, Status> {
        let req = request.into_inner();
        let cart_id = self.cart_id(&req.cart_id)?;
        let op = codec::decode_op(&req.op).map_err(bad_state)?;
        if !self.coordinator.cluster.is_owner(&cart_id) {
            // The rings disagree: coordinating here would make a non-owner an actor of the cart.
            return Err(NodeError::NotOwner {
                node: self.coordinator.cluster.self_id.clone(),
                cart_id: cart_id.to_string(),
            }
            .into());
        }
        let consistency = Consistency {
            r: (req.r > 0).then_some(req.r),
            w: (req.w > 0).then_some(req.w),
        };
        tracing::debug!(cart_id = %cart_id, from = %req.from_node, op = op.name(), "coordinating a forwarded write");
        let request_id = match <[u8; 16]>::try_from(req.request_id.as_slice()) {
            Ok(bytes) => Some(cart_crdt::RequestId(u128::from_be_bytes(bytes))),
            Err(_) if req.request_id.is_empty() => None,
            Err(_) => return Err(Status::invalid_argument("request_id: must be 16 bytes")),
        };
        let request = CartRequest {
            cart_id,
            op,
            consistency,
            request: request_id,
            deadline_ms: (req.deadline_ms > 0).then_some(req.deadline_ms),
        };
        let state = self
            .coordinator
            .write_as(&request, true, |cart| codec::encode(cart))
            .await?
            .map_err(|e| Status::from(NodeError::from(e)))?;
        Ok(Response::new(CoordinateReply { state }))
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        let cluster = &self.coordinator.cluster;
        let ping = request.into_inner();
        if let Some(peer) = cluster.peer(&ping.from_node) {
            cluster.heard(&peer, &ping);
        }
        let me = cluster.ping();
        Ok(Response::new(PingReply {
            node_id: me.from_node,
            layout_version: me.layout_version,
            synced_version: me.synced_version,
            finished_version: me.finished_version,
            degraded: me.degraded,
            pricing_version: me.pricing_version,
        }))
    }

    async fn get_layout(&self, _request: Request<GetLayoutRequest>) -> Result<Response<LayoutDoc>, Status> {
        Ok(Response::new(membership::doc(&self.coordinator.cluster)?))
    }

    async fn layout_prepare(
        &self,
        request: Request<LayoutPrepareRequest>,
    ) -> Result<Response<LayoutPrepareReply>, Status> {
        let req = request.into_inner();
        let kind = DocKind::from_wire(&req.kind)?;
        let ballot = Ballot {
            round: req.round,
            proposer: req.proposer,
        };
        let (answer, installed) = self
            .coordinator
            .membership
            .on_prepare(kind, req.version, &ballot)
            .await?;
        let mut reply = LayoutPrepareReply {
            current_version: installed,
            ..LayoutPrepareReply::default()
        };
        match answer {
            Prepared::Promise(prior) => {
                reply.promised = true;
                if let Some((ballot, doc)) = prior {
                    reply.accepted_round = ballot.round;
                    reply.accepted_proposer = ballot.proposer;
                    reply.accepted_layout = doc;
                }
            }
            Prepared::Refused { promised } => reply.promised_round = promised.round,
            Prepared::Decided => {}
        }
        Ok(Response::new(reply))
    }

    async fn layout_accept(
        &self,
        request: Request<LayoutAcceptRequest>,
    ) -> Result<Response<LayoutAcceptReply>, Status> {
        let req = request.into_inner();
        let kind = DocKind::from_wire(&req.kind)?;
        let ballot = Ballot {
            round: req.round,
            proposer: req.proposer,
        };
        let (accepted, installed) = self
            .coordinator
            .membership
            .on_accept(kind, req.version, &ballot, &req.layout)
            .await?;
        Ok(Response::new(LayoutAcceptReply {
            accepted,
            current_version: installed,
        }))
    }

    async fn get_pricing(&self, _request: Request<GetPricingRequest>) -> Result<Response<PricingDoc>, Status> {
        Ok(Response::new(membership::pricing::doc(
            &self.coordinator.cluster.pricing(),
        )?))
    }

    async fn digest(&self, request: Request<DigestRequest>) -> Result<Response<DigestReply>, Status> {
        let from = request.into_inner().from_node;
        let digest = anti_entropy::digest(&self.coordinator, &from)?;
        Ok(Response::new(DigestReply { buckets: digest }))
    }

    async fn bucket_keys(&self, request: Request<BucketKeysRequest>) -> Result<Response<BucketKeysReply>, Status> {
        let req = request.into_inner();
        let keys = anti_entropy::bucket_keys(&self.coordinator, &req.from_node, &req.buckets).await?;
        Ok(Response::new(BucketKeysReply {
            keys: keys
                .into_iter()
                .map(|(cart_id, hash)| KeyHash { cart_id, hash })
                .collect(),
        }))
    }
}
