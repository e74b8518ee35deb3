//! A peer's batchers: requests of one kind (replicate, read) queued for one peer go out together,
//! as batches on one long-lived bidirectional gRPC stream per peer and kind (no per-call headers,
//! stream set-up or HPACK work per batch). The peer answers each batch with one reply, in the
//! order sent, so several batches can be in flight and replicated deltas still arrive in write
//! order. A stream that fails, or whose oldest batch goes unanswered for the peer timeout, is
//! dropped with everything in flight on it (each waiter gets the error) and opened again for the
//! next batch. A peer of an older version without the stream calls gets unary batch calls, one at
//! a time.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use cart_proto::replica_pb::{
    ItemResult, ReadBatchReply, ReadBatchRequest, ReadReply, ReadRequest, ReadResult, ReplicateBatchReply,
    ReplicateBatchRequest, ReplicateRequest,
};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status, Streaming};

use crate::cluster::PeerClient;

/// Requests sent to one peer in one batch at most.
pub const BATCH_MAX: usize = 256;
/// Requests of one kind waiting for one peer at most; beyond, senders wait (back-pressure).
pub const BATCH_QUEUE_MAX: usize = 4096;
/// How long a peer that lacks the stream calls is served by unary batch calls before the stream
/// is tried again (it may have been upgraded meanwhile).
const UNARY_FALLBACK_FOR: Duration = Duration::from_secs(60);

/// One request waiting in a peer's batcher, and where its own outcome goes.
pub struct BatchItem<Req, Out> {
    pub request: Req,
    pub done: oneshot::Sender<Result<Out, Status>>,
}

/// Queues a request on a batcher and waits for its outcome.
pub async fn batched<Req, Out>(queue: &mpsc::Sender<BatchItem<Req, Out>>, request: Req) -> Result<Out, Status> {
    let (done, result) = oneshot::channel();
    queue
        .send(BatchItem { request, done })
        .await
        .map_err(|_| Status::unavailable("batch queue closed"))?;
    result.await.map_err(|_| Status::unavailable("batch dropped"))?
}

/// One kind of batched peer request: its batch messages, its stream and its unary call.
pub trait BatchKind: Send + 'static {
    type Req: Send + 'static;
    type Out: Send + 'static;
    type Batch: Send + 'static;
    type Reply: Send + 'static;
    /// Batches in flight on one stream at most.
    const IN_FLIGHT: usize;

    fn batch(items: Vec<Self::Req>) -> Self::Batch;
    /// One outcome per item, in order.
    fn outcomes(reply: Self::Reply) -> Vec<Result<Self::Out, Status>>;
    fn open(
        client: PeerClient,
        batches: ReceiverStream<Self::Batch>,
    ) -> impl Future<Output = Result<Streaming<Self::Reply>, Status>> + Send;
    fn unary(
        client: PeerClient,
        batch: Request<Self::Batch>,
    ) -> impl Future<Output = Result<Self::Reply, Status>> + Send;
}

/// Replicate requests: a result per item once it is durable on the peer.
pub struct Replicates;

impl BatchKind for Replicates {
    type Req = ReplicateRequest;
    type Out = ();
    type Batch = ReplicateBatchRequest;
    type Reply = ReplicateBatchReply;
    const IN_FLIGHT: usize = 4;

    fn batch(items: Vec<ReplicateRequest>) -> ReplicateBatchRequest {
        ReplicateBatchRequest { items }
    }

    fn outcomes(reply: ReplicateBatchReply) -> Vec<Result<(), Status>> {
        reply
            .results
            .into_iter()
            .map(|ItemResult { code, message }| match code {
                0 => Ok(()),
                code => Err(item_status(code, message)),
            })
            .collect()
    }

    async fn open(
        mut client: PeerClient,
        batches: ReceiverStream<ReplicateBatchRequest>,
    ) -> Result<Streaming<ReplicateBatchReply>, Status> {
        Ok(client.replicate_stream(batches).await?.into_inner())
    }

    async fn unary(
        mut client: PeerClient,
        batch: Request<ReplicateBatchRequest>,
    ) -> Result<ReplicateBatchReply, Status> {
        Ok(client.replicate_batch(batch).await?.into_inner())
    }
}

/// Read requests: the peer's copy (or digest answer) per item.
pub struct Reads;

impl BatchKind for Reads {
    type Req = ReadRequest;
    type Out = ReadReply;
    type Batch = ReadBatchRequest;
    type Reply = ReadBatchReply;
    const IN_FLIGHT: usize = 4;

    fn batch(items: Vec<ReadRequest>) -> ReadBatchRequest {
        ReadBatchRequest { items }
    }

    fn outcomes(reply: ReadBatchReply) -> Vec<Result<ReadReply, Status>> {
        reply
            .results
            .into_iter()
            .map(|ReadResult { code, message, reply }| match (code, reply) {
                (0, Some(reply)) => Ok(reply),
                (0, None) => Err(Status::internal("the peer sent a read result without a reply")),
                (code, _) => Err(item_status(code, message)),
            })
            .collect()
    }

    async fn open(
        mut client: PeerClient,
        batches: ReceiverStream<ReadBatchRequest>,
    ) -> Result<Streaming<ReadBatchReply>, Status> {
        Ok(client.read_stream(batches).await?.into_inner())
    }

    async fn unary(mut client: PeerClient, batch: Request<ReadBatchRequest>) -> Result<ReadBatchReply, Status> {
        Ok(client.read_batch(batch).await?.into_inner())
    }
}

fn item_status(code: i32, message: String) -> Status {
    Status::new(Code::from_i32(code), message)
}

type Waiters<Out> = Vec<oneshot::Sender<Result<Out, Status>>>;

/// An open stream to the peer: where batches go, where replies come from.
struct Link<K: BatchKind> {
    batches: mpsc::Sender<K::Batch>,
    replies: Streaming<K::Reply>,
}

/// Sends what queues for one peer in batches until the queue closes; each waiter gets its own
/// item's outcome. Every batch in flight has a deadline (`timeout`).
pub async fn run<K: BatchKind>(
    client: PeerClient,
    mut queue: mpsc::Receiver<BatchItem<K::Req, K::Out>>,
    timeout: Duration,
) {
    let mut items = Vec::new();
    let mut link: Option<Link<K>> = None;
    // Batches sent on `link` and not yet answered, oldest first, with their deadlines.
    let mut in_flight: VecDeque<(Waiters<K::Out>, Instant)> = VecDeque::new();
    let mut unary_until: Option<Instant> = None;
    loop {
        let oldest = in_flight.front().map(|(_, deadline)| *deadline);
        tokio::select! {
            biased; // fixed branch order: deterministic under simulation
            // Polled with nothing in flight too: a stream the peer closed (a restart) is
            // noticed before the next batch would be sent on it.
            reply = next_reply(&mut link), if link.is_some() => {
                let Some(Ok(reply)) = reply else {
                    let status = match reply {
                        Some(Err(status)) => status,
                        _ => Status::unavailable("the peer closed the batch stream"),
                    };
                    fail_all(&mut in_flight, &status);
                    link = None;
                    continue;
                };
                match in_flight.pop_front() {
                    Some((waiters, _)) => deliver(waiters, Ok(K::outcomes(reply))),
                    // A reply to nothing: the stream is out of step; start another.
                    None => link = None,
                }
            }
            _ = tokio::time::sleep_until(oldest.unwrap_or_else(Instant::now)), if oldest.is_some() => {
                fail_all(&mut in_flight, &Status::deadline_exceeded("batch call timed out"));
                link = None;
            }
            n = queue.recv_many(&mut items, BATCH_MAX), if in_flight.len() < K::IN_FLIGHT => {
                if n == 0 {
                    return;
                }
                let (requests, waiters): (Vec<K::Req>, Waiters<K::Out>) =
                    items.drain(..).map(|i| (i.request, i.done)).unzip();
                if unary_until.is_some_and(|until| Instant::now() < until) {
                    deliver(waiters, unary::<K>(client.clone(), requests, timeout).await);
                    continue;
                }
                if link.is_none() {
                    match open::<K>(client.clone(), timeout).await {
                        Ok(opened) => link = Some(opened),
                        Err(status) if status.code() == Code::Unimplemented => {
                            tracing::info!("peer lacks batch streams: unary batch calls for a while");
                            unary_until = Some(Instant::now() + UNARY_FALLBACK_FOR);
                            deliver(waiters, unary::<K>(client.clone(), requests, timeout).await);
                            continue;
                        }
                        Err(status) => {
                            deliver(waiters, Err(status));
                            continue;
                        }
                    }
                }
                // The channel holds `IN_FLIGHT` batches and fewer are unanswered: a full or
                // closed channel means the stream is gone.
                let sent = link.as_ref().is_some_and(|l| l.batches.try_send(K::batch(requests)).is_ok());
                if sent {
                    in_flight.push_back((waiters, Instant::now() + timeout));
                } else {
                    let status = Status::unavailable("the batch stream to the peer closed");
                    deliver(waiters, Err(status.clone()));
                    fail_all(&mut in_flight, &status);
                    link = None;
                }
            }
        }
    }
}

/// The next reply on the link (never, without one).
async fn next_reply<K: BatchKind>(link: &mut Option<Link<K>>) -> Option<Result<K::Reply, Status>> {
    match link {
        Some(link) => link.replies.next().await,
        None => std::future::pending().await,
    }
}

async fn open<K: BatchKind>(client: PeerClient, timeout: Duration) -> Result<Link<K>, Status> {
    let (batches, outgoing) = mpsc::channel(K::IN_FLIGHT);
    let replies = tokio::time::timeout(timeout, K::open(client, ReceiverStream::new(outgoing)))
        .await
        .map_err(|_| Status::deadline_exceeded("opening the batch stream timed out"))??;
    Ok(Link { batches, replies })
}

async fn unary<K: BatchKind>(
    client: PeerClient,
    requests: Vec<K::Req>,
    timeout: Duration,
) -> Result<Vec<Result<K::Out, Status>>, Status> {
    let mut request = Request::new(K::batch(requests));
    request.set_timeout(timeout);
    let reply = tokio::time::timeout(timeout, K::unary(client, request))
        .await
        .map_err(|_| Status::deadline_exceeded("batch call timed out"))??;
    Ok(K::outcomes(reply))
}

/// Gives each waiter its own item's outcome (or the batch's error).
fn deliver<Out>(waiters: Waiters<Out>, outcome: Result<Vec<Result<Out, Status>>, Status>) {
    match outcome {
        Ok(results) => {
            let mut results = results.into_iter();
            for waiter in waiters {
                let outcome = results
                    .next()
                    .unwrap_or_else(|| Err(Status::internal("the peer sent fewer results than items")));
                let _ = waiter.send(outcome);
            }
        }
        Err(status) => {
            for waiter in waiters {
                let _ = waiter.send(Err(status.clone()));
            }
        }
    }
}

fn fail_all<Out>(in_flight: &mut VecDeque<(Waiters<Out>, Instant)>, status: &Status) {
    for (waiters, _) in in_flight.drain(..) {
        deliver(waiters, Err(status.clone()));
    }
}
