//! Pipelined calls: many calls on one long-lived `CartService.Pipeline` stream per node instead
//! of an HTTP/2 stream each (README "Pipelined calls"). A call's answer is what its unary method
//! would have answered, as a `Response` or a `Status` with the same metadata, so the retry,
//! hedging and membership logic above does not know which way a call went.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cart_proto::pb::cart_service_client::CartServiceClient;
use cart_proto::pb::pipeline_call::Call;
use cart_proto::pb::pipeline_result::Result as Out;
use cart_proto::pb::{self, PipelineCall, PipelineResult};
use cart_proto::{MEMBERSHIP_HEADER, OUTCOME_HEADER};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::client::{lock, ClientOptions};

/// Calls queued on one stream and not yet sent at most; a call beyond waits (within its
/// timeout). The node runs at most 1,024 of a stream's calls at once and then stops reading it.
const QUEUE: usize = 1024;

/// A request message that has a pipelined form.
pub trait Pipelined {
    fn into_call(self) -> Call;
}

/// A reply message a pipeline result can carry.
pub trait Answer: Sized {
    fn from_result(result: Out) -> Option<Self>;
}

macro_rules! pipelined {
    ($($request:ident => $variant:ident),* $(,)?) => {
        $(impl Pipelined for pb::$request {
            fn into_call(self) -> Call {
                Call::$variant(self)
            }
        })*
    };
}

pipelined! {
    GetCartRequest => GetCart,
    AddItemRequest => AddItem,
    SetQuantityRequest => SetQuantity,
    AdjustQuantityRequest => AdjustQuantity,
    RemoveItemRequest => RemoveItem,
    ClearCartRequest => ClearCart,
    SaveForLaterRequest => SaveForLater,
    MoveToCartRequest => MoveToCart,
    ApplyCouponRequest => ApplyCoupon,
    RemoveCouponRequest => RemoveCoupon,
    RefreshItemsRequest => RefreshItems,
    MergeCartsRequest => MergeCarts,
    CheckoutRequest => Checkout,
}

macro_rules! answer {
    ($($reply:ident <= $variant:ident),* $(,)?) => {
        $(impl Answer for pb::$reply {
            fn from_result(result: Out) -> Option<Self> {
                match result {
                    Out::$variant(reply) => Some(reply),
                    _ => None,
                }
            }
        })*
    };
}

answer! {
    CartReply <= Cart,
    MergeCartsReply <= MergeCarts,
    CheckoutReply <= Checkout,
}

/// The calls of a stream waiting for their results.
struct Waiting {
    next_id: u64,
    /// False once the node's side of the stream ended: nothing more will be answered.
    open: bool,
    by_id: HashMap<u64, oneshot::Sender<PipelineResult>>,
}

/// One open `Pipeline` stream to a node.
pub struct Pipe {
    calls: mpsc::Sender<PipelineCall>,
    waiting: Arc<Mutex<Waiting>>,
}

/// Takes a call's slot back when its caller stops waiting (answered, timed out, or cancelled by
/// a hedge that won elsewhere): the map holds only calls someone waits for.
struct Slot<'a> {
    waiting: &'a Mutex<Waiting>,
    id: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(self.waiting).by_id.remove(&self.id);
    }
}

impl Pipe {
    /// Opens a stream on `channel` (one round trip: the node answers with its headers at once).
    /// `Ok(None)`: the node does not serve `Pipeline` (an older version); use unary calls.
    pub async fn open(channel: Channel, options: &ClientOptions) -> Result<Option<Arc<Pipe>>, Status> {
        let (calls, queued) = mpsc::channel(QUEUE);
        let mut request = Request::new(ReceiverStream::new(queued));
        options.credentials.authorize(&mut request);
        let mut results = match CartServiceClient::new(channel).pipeline(request).await {
            Ok(results) => results.into_inner(),
            Err(status) if status.code() == Code::Unimplemented => return Ok(None),
            Err(status) => return Err(status),
        };
        let waiting = Arc::new(Mutex::new(Waiting {
            next_id: 0,
            open: true,
            by_id: HashMap::new(),
        }));
        let reader = waiting.clone();
        tokio::spawn(async move {
            // Until the node ends the stream or the connection goes.
            while let Ok(Some(result)) = results.message().await {
                let waiter = lock(&reader).by_id.remove(&result.id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(result);
                }
            }
            // Dropping the waiters' senders tells each of them the stream ended.
            let mut waiting = lock(&reader);
            waiting.open = false;
            waiting.by_id.clear();
        });
        Ok(Some(Arc::new(Pipe { calls, waiting })))
    }

    /// Whether the node's side of the stream is still open.
    pub fn is_open(&self) -> bool {
        lock(&self.waiting).open && !self.calls.is_closed()
    }

    /// Sends one call and waits for its result, as the unary method would answer it. The caller
    /// bounds the wait (the call's `timeout`, also sent to the node).
    pub async fn call<Req: Pipelined, Resp: Answer>(
        &self,
        request: Req,
        timeout: Duration,
        deadline_ms: Option<u64>,
    ) -> Result<Response<Resp>, Status> {
        let (answer, answered) = oneshot::channel();
        let id = {
            let mut waiting = lock(&self.waiting);
            if !waiting.open {
                return Err(Status::unavailable("the pipeline stream had ended; nothing was sent"));
            }
            let id = waiting.next_id;
            waiting.next_id += 1;
            waiting.by_id.insert(id, answer);
            id
        };
        let _slot = Slot {
            waiting: &self.waiting,
            id,
        };
        let call = PipelineCall {
            id,
            timeout_ms: timeout.as_millis() as u64,
            deadline_ms: deadline_ms.unwrap_or(0),
            call: Some(request.into_call()),
        };
        if self.calls.send(call).await.is_err() {
            return Err(Status::unavailable("the pipeline stream had ended; nothing was sent"));
        }
        match answered.await {
            Ok(result) => settle(result),
            // Sent, and the stream ended before its answer: it may have been applied.
            Err(_) => Err(Status::unknown("the pipeline stream ended before the call's answer")),
        }
    }
}

/// A result as its unary call would have ended: the membership (and outcome) headers in the
/// metadata, the reply or the status.
fn settle<Resp: Answer>(result: PipelineResult) -> Result<Response<Resp>, Status> {
    let mut metadata = MetadataMap::new();
    let mut header = |name: &'static str, value: &str| {
        if let Ok(value) = MetadataValue::try_from(value) {
            if !value.is_empty() {
                metadata.insert(name, value);
            }
        }
    };
    header(MEMBERSHIP_HEADER, &result.membership);
    match result.result {
        Some(Out::Error(error)) => {
            header(OUTCOME_HEADER, &error.outcome);
            Err(Status::with_metadata(Code::from(error.code), error.message, metadata))
        }
        Some(reply) => match Resp::from_result(reply) {
            Some(reply) => {
                let mut response = Response::new(reply);
                *response.metadata_mut() = metadata;
                Ok(response)
            }
            None => Err(Status::internal(
                "the node answered a pipelined call with another call's reply",
            )),
        },
        None => Err(Status::internal(
            "the node answered a pipelined call with an empty result",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(result: Out, membership: &str) -> PipelineResult {
        PipelineResult {
            id: 7,
            membership: membership.into(),
            result: Some(result),
        }
    }

    #[test]
    fn a_reply_keeps_the_membership_header() {
        let reply = settle::<pb::CartReply>(result(Out::Cart(pb::CartReply::default()), "00000000000000ab"))
            .expect("a cart reply");
        assert_eq!(
            reply.metadata().get(MEMBERSHIP_HEADER).map(|v| v.as_bytes()),
            Some(&b"00000000000000ab"[..])
        );
    }

    #[test]
    fn an_error_becomes_the_status_a_unary_call_gives() {
        let error = pb::CallError {
            code: Code::Unavailable as i32,
            message: "missed the write quorum".into(),
            outcome: "unknown".into(),
        };
        let status = settle::<pb::CartReply>(result(Out::Error(error), "")).expect_err("an error");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "missed the write quorum");
        assert!(cart_proto::outcome_unknown(&status));
        assert!(status.metadata().get(MEMBERSHIP_HEADER).is_none());
    }

    #[test]
    fn a_reply_of_another_kind_is_refused() {
        let status = settle::<pb::CheckoutReply>(result(Out::Cart(pb::CartReply::default()), ""))
            .expect_err("a cart reply is no checkout reply");
        assert_eq!(status.code(), Code::Internal);
    }
}
