//! The public `CartService`: decode and validate (in `cart-proto`), coordinate, answer.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use cart_crdt::pricing::{PricingContext, PricingRules};
use cart_crdt::{Cart, CartError, CartId, CartOp, Context, CouponCode, Limits};
use cart_proto::pb::cart_service_server::CartService;
use cart_proto::pb::{self, CartReply};
use cart_proto::{CheckoutRequest, GetRequest, IntoDomain, MergeRequest, Priced, MEMBERSHIP_HEADER};
use futures::stream::FuturesUnordered;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::coordinator::Coordinator;
use crate::error::NodeError;
use crate::lifecycle;

/// The service as tonic serves it: its state is shared with the pipelined calls' futures.
#[derive(Clone)]
pub struct CartApi(Arc<Api>);

struct Api {
    coordinator: Arc<Coordinator>,
    in_flight: Arc<InFlight>,
    /// The membership header of the last reply, rebuilt when the layout changes.
    membership: std::sync::Mutex<(u64, MetadataValue<Ascii>)>,
    /// The last unpriced GetCart reply per cart, with the context and touch time it was built
    /// from: equal contexts mean equal carts, so a cart read again before its next write is not
    /// rebuilt (view, version token) but cloned. (The touch time tells apart a cart swept after
    /// its expiry and written again, whose new dots may repeat the old ones.)
    replies: quick_cache::sync::Cache<CartId, Arc<CachedReply>, ReplyWeight>,
    /// Whether `Pipeline` is served (off: `UNIMPLEMENTED`; see [`NO_PIPELINE_ENV`]).
    pipeline: bool,
}

/// A cached GetCart reply and the state it shows.
struct CachedReply {
    context: Context,
    touched_at_ms: u64,
    cart: pb::Cart,
}

/// Cached replies weigh their lines (a 1,000-line cart is not one entry like an empty one).
#[derive(Clone)]
struct ReplyWeight;

impl quick_cache::Weighter<CartId, Arc<CachedReply>> for ReplyWeight {
    fn weight(&self, _: &CartId, reply: &Arc<CachedReply>) -> u64 {
        let cart = &reply.cart;
        1 + cart.lines.len() as u64 + cart.saved.len() as u64 + cart.coupons.len() as u64
    }
}

/// What the reply cache holds at most, in lines (about 200 bytes each): ~13 MB.
const REPLY_CACHE_LINES: u64 = 65_536;
/// Carts the reply cache expects to hold (sizes its shards).
const REPLY_CACHE_CARTS: usize = 8_192;

/// Counts requests being handled, so shutdown can wait for them rather than for idle connections
/// (hyper's graceful shutdown can wait on an idle keepalive connection indefinitely), and tells
/// pipeline streams when shutdown begins (they take no new calls from then).
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    stopping: AtomicBool,
}

impl InFlight {
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Shutdown began: pipeline streams take no new calls (they answer `UNAVAILABLE`, not
    /// applied), answer those they hold, and end.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }
}

struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Calls of one pipeline stream running at once at most; beyond, the stream is not read (HTTP/2
/// flow control then holds the client back).
pub const PIPELINE_IN_FLIGHT: usize = 1024;

/// Compatibility drill (tests of a cluster being upgraded): with this set, the node answers
/// `Pipeline` with `UNIMPLEMENTED`, like a node of the version before it, so clients fall back
/// to unary calls. Never set in production.
pub const NO_PIPELINE_ENV: &str = "CARTD_COMPAT_NO_PIPELINE";

/// What a reply is priced with.
struct PricedWith {
    rules: Arc<PricingRules>,
    context: PricingContext,
}

/// The membership header's value for a layout fingerprint.
fn header(version: u64) -> MetadataValue<Ascii> {
    MetadataValue::try_from(format!("{version:016x}")).unwrap_or_else(|_| MetadataValue::from_static("0"))
}

impl CartApi {
    pub fn new(coordinator: Arc<Coordinator>, in_flight: Arc<InFlight>) -> Self {
        let version = coordinator.cluster.version();
        let pipeline = std::env::var_os(NO_PIPELINE_ENV).is_none();
        if !pipeline {
            tracing::warn!("{NO_PIPELINE_ENV} set: Pipeline refused, as by an older version");
        }
        CartApi(Arc::new(Api {
            coordinator,
            in_flight,
            membership: std::sync::Mutex::new((version, header(version))),
            replies: quick_cache::sync::Cache::with_weighter(REPLY_CACHE_CARTS, REPLY_CACHE_LINES, ReplyWeight),
            pipeline,
        }))
    }
}

impl Api {
    fn limits(&self) -> &Limits {
        self.coordinator.store.limits()
    }

    /// The request's pricing context, checked, with the rules it is priced by (one snapshot:
    /// a reply never mixes two versions). An unknown region is `INVALID_ARGUMENT`.
    fn pricing(&self, wire: Option<&pb::PricingContext>) -> Result<Option<PricedWith>, NodeError> {
        let Some(wire) = wire else { return Ok(None) };
        let rules = self.coordinator.cluster.pricing();
        let refused = |reason: String| -> NodeError {
            CartError::InvalidArgument {
                field: "pricing.region",
                reason,
            }
            .into()
        };
        if !wire.region.is_empty() && !cart_crdt::pricing::valid_region(&wire.region) {
            return Err(refused(
                "a region code is 1-32 upper-case letters, digits or '-' (e.g. DE, US-CA)".into(),
            ));
        }
        if !wire.region.is_empty() && !rules.regions.contains_key(&wire.region) {
            const SHOWN: usize = 20;
            let mut known: Vec<&str> = rules.regions.keys().map(String::as_str).take(SHOWN).collect();
            let more = rules.regions.len().saturating_sub(SHOWN);
            let more = (more > 0).then(|| format!(" … and {more} more"));
            if known.is_empty() {
                known.push("none");
            }
            return Err(refused(format!(
                "unknown region {:?}; the pricing rules (version {}) define: {}{}",
                wire.region,
                rules.version,
                known.join(", "),
                more.unwrap_or_default()
            )));
        }
        let now_ms = if wire.now_ms == 0 {
            self.coordinator.store.now_ms()
        } else {
            wire.now_ms
        };
        Ok(Some(PricedWith {
            rules,
            context: PricingContext {
                region: wire.region.clone(),
                now_ms,
            },
        }))
    }

    /// `ApplyCoupon` of a code the pricing rules do not define is refused (`NOT_FOUND`), unless
    /// the rules accept unknown codes or the cluster has none yet.
    fn check_coupon(&self, code: &CouponCode) -> Result<(), NodeError> {
        let rules = self.coordinator.cluster.pricing();
        if rules.version == 0 || rules.accept_unknown_coupons || rules.coupon(code.as_str()).is_some() {
            return Ok(());
        }
        Err(CartError::NotFound {
            field: "code",
            reason: format!(
                "no coupon {:?} in the pricing rules (version {}); nothing was applied",
                code.as_str(),
                rules.version
            ),
        }
        .into())
    }

    /// The read model of a cart as replies show it: an expired cart is empty; with its expiry
    /// time, its version token when `with_version` (GetCart, merge, checkout: the token grows
    /// with the lines, so writes do not pay for it), and what it costs when `priced`.
    fn view(&self, cart: &Cart, id: &CartId, with_version: bool) -> Result<pb::Cart, NodeError> {
        self.priced_view(cart, id, with_version, None)
    }

    fn priced_view(
        &self,
        cart: &Cart,
        id: &CartId,
        with_version: bool,
        priced: Option<&PricedWith>,
    ) -> Result<pb::Cart, NodeError> {
        let store = &self.coordinator.store;
        let empty;
        let cart = if store.expired(id, cart) {
            empty = Cart::default();
            &empty
        } else {
            cart
        };
        let mut view = if with_version {
            let (mut view, version) = cart.view_with_version(id);
            view.version = cart_crdt::codec::encode_version(&version)?;
            view
        } else {
            cart.view(id)
        };
        view.expires_at_ms = store.expiry().expires_at_ms(id, cart.touched_at_ms()).unwrap_or(0);
        if let Some(p) = priced {
            view.pricing = Some(
                cart_crdt::pricing::price(&view, &p.rules, &p.context, &|_| false).map_err(|e| {
                    CartError::LimitExceeded {
                        field: "pricing",
                        reason: e.reason,
                    }
                })?,
            );
        }
        Ok(pb::Cart::from(view))
    }

    /// The reply, tagged with this node's membership version so clients notice changes.
    fn reply(
        &self,
        cart: &Cart,
        id: &CartId,
        with_version: bool,
        priced: Option<&PricedWith>,
    ) -> Result<Response<CartReply>, NodeError> {
        let cart = self.priced_view(cart, id, with_version, priced)?;
        Ok(self.tagged(Response::new(CartReply { cart: Some(cart) })))
    }

    /// Adds this node's membership version to a reply, so clients notice changes.
    fn tagged<T>(&self, mut response: Response<T>) -> Response<T> {
        let version = self.coordinator.cluster.version();
        let value = {
            let mut cached = self
                .membership
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if cached.0 != version {
                *cached = (version, header(version));
            }
            cached.1.clone()
        };
        response.metadata_mut().insert(MEMBERSHIP_HEADER, value);
        response
    }

    /// A debug-level span: at the default `info` level it is disabled and costs a level check.
    /// (An enabled span is formatted and stored per request: 2–4% of a node's CPU under load.)
    /// Warnings on the request path name their cart themselves.
    fn span(&self, id: &CartId, op: &'static str) -> tracing::Span {
        tracing::debug_span!("cart_request", cart_id = %id, op, coordinator = %self.coordinator.cluster.self_id)
    }

    async fn mutate<R: IntoDomain + Priced>(&self, request: Request<R>) -> Result<Response<CartReply>, Status> {
        let _in_flight = self.in_flight.enter();
        let deadline_ms = cart_proto::deadline_ms(request.metadata()).map_err(NodeError::from)?;
        let request = request.into_inner();
        let wire_pricing = request.pricing_context().cloned();
        let mut req = request.into_domain(self.limits()).map_err(NodeError::from)?;
        req.deadline_ms = deadline_ms;
        // Checked before anything is applied: a bad pricing context changes nothing.
        let priced = self.pricing(wire_pricing.as_ref())?;
        if let CartOp::ApplyCoupon { code } = &req.op {
            self.check_coupon(code)?;
        }
        // Applied: a cart beyond what pricing handles still gets its reply, unpriced.
        let shape = |cart: &Arc<Cart>| match self.reply(cart, &req.cart_id, false, priced.as_ref()) {
            Err(NodeError::Cart(CartError::LimitExceeded { field: "pricing", .. })) => {
                self.reply(cart, &req.cart_id, false, None)
            }
            other => other,
        };
        async {
            let reply = self
                .coordinator
                .write_as(&req, false, shape)
                .await
                .inspect_err(|e| tracing::debug!(error = %e, "refused"))?;
            Ok(reply?)
        }
        .instrument(self.span(&req.cart_id, req.op.name()))
        .await
    }
}

/// The calls behind the measured methods of [`CartService`].
impl Api {
    /// Runs one public call and records its method, status code and time in the metrics.
    async fn measured<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = std::time::Instant::now();
        let result = call.await;
        let code = result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        self.coordinator.store.metrics.request(op, code, started.elapsed());
        result
    }

    async fn get_cart_call(&self, request: Request<pb::GetCartRequest>) -> Result<Response<CartReply>, Status> {
        let _in_flight = self.in_flight.enter();
        let request = request.into_inner();
        let priced = self.pricing(request.pricing_context())?;
        let req = GetRequest::from_wire(request, self.limits()).map_err(NodeError::from)?;
        async {
            let cart = self.coordinator.read(&req.cart_id, req.consistency).await?;
            let expired = self.coordinator.store.expired(&req.cart_id, &cart);
            if expired {
                self.replies.remove(&req.cart_id);
            }
            if expired || priced.is_some() {
                // An expired cart shows empty; priced replies depend on the time and the rules.
                return Ok(self.reply(&cart, &req.cart_id, true, priced.as_ref())?);
            }
            let view = match self.replies.get(&req.cart_id) {
                Some(hit) if hit.context == *cart.context() && hit.touched_at_ms == cart.touched_at_ms() => {
                    hit.cart.clone()
                }
                _ => {
                    let view = self.view(&cart, &req.cart_id, true)?;
                    let entry = Arc::new(CachedReply {
                        context: cart.context().clone(),
                        touched_at_ms: cart.touched_at_ms(),
                        cart: view.clone(),
                    });
                    self.replies.insert(req.cart_id.clone(), entry);
                    view
                }
            };
            Ok(self.tagged(Response::new(CartReply { cart: Some(view) })))
        }
        .instrument(self.span(&req.cart_id, "get_cart"))
        .await
    }

    async fn merge_carts_call(
        &self,
        request: Request<pb::MergeCartsRequest>,
    ) -> Result<Response<pb::MergeCartsReply>, Status> {
        let _in_flight = self.in_flight.enter();
        let req = MergeRequest::from_wire(request.into_inner(), self.limits()).map_err(NodeError::from)?;
        async {
            let (user, guest) = lifecycle::merge_carts(&self.coordinator, &req).await?;
            let reply = pb::MergeCartsReply {
                cart: Some(self.view(&user, &req.user, true)?),
                guest: Some(self.view(&guest, &req.guest, false)?),
            };
            Ok(self.tagged(Response::new(reply)))
        }
        .instrument(self.span(&req.user, "merge_carts"))
        .await
    }

    async fn checkout_call(
        &self,
        request: Request<pb::CheckoutRequest>,
    ) -> Result<Response<pb::CheckoutReply>, Status> {
        let _in_flight = self.in_flight.enter();
        let deadline_ms = cart_proto::deadline_ms(request.metadata()).map_err(NodeError::from)?;
        let mut req = CheckoutRequest::from_wire(request.into_inner(), self.limits()).map_err(NodeError::from)?;
        req.request.deadline_ms = deadline_ms;
        let id = req.request.cart_id.clone();
        async {
            let (order, cart) = lifecycle::checkout(&self.coordinator, &req).await?;
            let reply = pb::CheckoutReply {
                order: Some(pb::Order::from(&order)),
                cart: Some(self.view(&cart, &id, true)?),
            };
            Ok(self.tagged(Response::new(reply)))
        }
        .instrument(self.span(&id, "checkout"))
        .await
    }
}

/// The pipelined form of each call: the same handler as its unary method.
impl Api {
    /// Runs one call of a pipeline stream, with its timeout, and shapes its result.
    async fn pipelined(&self, call: pb::PipelineCall) -> pb::PipelineResult {
        use pb::pipeline_call::Call;
        use pb::pipeline_result::Result as Out;
        let pb::PipelineCall {
            id,
            timeout_ms,
            deadline_ms,
            call,
        } = call;
        // The unary form of the call, its write deadline in the metadata.
        fn request<T>(message: T, deadline_ms: u64) -> Request<T> {
            let mut request = Request::new(message);
            if deadline_ms > 0 {
                request
                    .metadata_mut()
                    .insert(cart_proto::DEADLINE_HEADER, MetadataValue::from(deadline_ms));
            }
            request
        }
        let run = async {
            match call {
                None => Err(Status::invalid_argument(
                    "call: one of get_cart, add_item, set_quantity, … is required",
                )),
                Some(Call::GetCart(m)) => answer(
                    self.measured("get_cart", self.get_cart_call(request(m, deadline_ms)))
                        .await,
                    Out::Cart,
                ),
                Some(Call::AddItem(m)) => answer(
                    self.measured("add_item", self.mutate(request(m, deadline_ms))).await,
                    Out::Cart,
                ),
                Some(Call::SetQuantity(m)) => answer(
                    self.measured("set_quantity", self.mutate(request(m, deadline_ms)))
                        .await,
                    Out::Cart,
                ),
                Some(Call::AdjustQuantity(m)) => answer(
                    self.measured("adjust_quantity", self.mutate(request(m, deadline_ms)))
                        .await,
                    Out::Cart,
                ),
                Some(Call::RemoveItem(m)) => answer(
                    self.measured("remove_item", self.mutate(request(m, deadline_ms))).await,
                    Out::Cart,
                ),
                Some(Call::ClearCart(m)) => answer(
                    self.measured("clear_cart", self.mutate(request(m, deadline_ms))).await,
                    Out::Cart,
                ),
                Some(Call::SaveForLater(m)) => answer(
                    self.measured("save_for_later", self.mutate(request(m, deadline_ms)))
                        .await,
                    Out::Cart,
                ),
                Some(Call::MoveToCart(m)) => answer(
                    self.measured("move_to_cart", self.mutate(request(m, deadline_ms)))
                        .await,
                    Out::Cart,
                ),
                Some(Call::ApplyCoupon(m)) => answer(
                    self.measured("apply_coupon", self.mutate(request(m, deadline_ms)))
                        .await,
                    Out::Cart,
                ),
                Some(Call::RemoveCoupon(m)) => answer(
                    self.measured("remove_coupon", self.mutate(request(m, deadline_ms)))
                        .await,
                    Out::Cart,
                ),
                Some(Call::RefreshItems(m)) => answer(
                    self.measured("refresh_items", self.mutate(request(m, deadline_ms)))
                        .await,
                    Out::Cart,
                ),
                Some(Call::MergeCarts(m)) => answer(
                    self.measured("merge_carts", self.merge_carts_call(request(m, deadline_ms)))
                        .await,
                    Out::MergeCarts,
                ),
                Some(Call::Checkout(m)) => answer(
                    self.measured("checkout", self.checkout_call(request(m, deadline_ms)))
                        .await,
                    Out::Checkout,
                ),
            }
        };
        let outcome = match timeout_ms {
            0 => run.await,
            ms => tokio::time::timeout(std::time::Duration::from_millis(ms), run)
                .await
                // What tonic answers when a unary call's grpc-timeout passes.
                .unwrap_or_else(|_| Err(Status::cancelled("Timeout expired"))),
        };
        let (membership, result) = match outcome {
            Ok(ok) => ok,
            Err(status) => {
                let header = |name| {
                    status
                        .metadata()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                        .unwrap_or_default()
                };
                let error = pb::CallError {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                    outcome: header(cart_proto::OUTCOME_HEADER),
                };
                (header(MEMBERSHIP_HEADER), Out::Error(error))
            }
        };
        pb::PipelineResult {
            id,
            membership,
            result: Some(result),
        }
    }
}

/// A unary reply as a pipeline result: its membership header and message.
fn answer<T>(
    reply: Result<Response<T>, Status>,
    wrap: fn(T) -> pb::pipeline_result::Result,
) -> Result<(String, pb::pipeline_result::Result), Status> {
    let reply = reply?;
    let membership = reply
        .metadata()
        .get(MEMBERSHIP_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_default();
    Ok((membership, wrap(reply.into_inner())))
}

#[tonic::async_trait]
impl CartService for CartApi {
    async fn get_cart(&self, request: Request<pb::GetCartRequest>) -> Result<Response<CartReply>, Status> {
        self.0.measured("get_cart", self.0.get_cart_call(request)).await
    }

    async fn add_item(&self, request: Request<pb::AddItemRequest>) -> Result<Response<CartReply>, Status> {
        self.0.measured("add_item", self.0.mutate(request)).await
    }

    async fn set_quantity(&self, request: Request<pb::SetQuantityRequest>) -> Result<Response<CartReply>, Status> {
        self.0.measured("set_quantity", self.0.mutate(request)).await
    }

    async fn adjust_quantity(
        &self,
        request: Request<pb::AdjustQuantityRequest>,
    ) -> Result<Response<CartReply>, Status> {
        self.0.measured("adjust_quantity", self.0.mutate(request)).await
    }

    async fn remove_item(&self, request: Request<pb::RemoveItemRequest>) -> Result<Response<CartReply>, Status> {
        self.0.measured("remove_item", self.0.mutate(request)).await
    }

    async fn clear_cart(&self, request: Request<pb::ClearCartRequest>) -> Result<Response<CartReply>, Status> {
        self.0.measured("clear_cart", self.0.mutate(request)).await
    }

    async fn save_for_later(&self, request: Request<pb::SaveForLaterRequest>) -> Result<Response<CartReply>, Status> {
        self.0.measured("save_for_later", self.0.mutate(request)).await
    }

    async fn move_to_cart(&self, request: Request<pb::MoveToCartRequest>) -> Result<Response<CartReply>, Status> {
        self.0.measured("move_to_cart", self.0.mutate(request)).await
    }

    async fn apply_coupon(&self, request: Request<pb::ApplyCouponRequest>) -> Result<Response<CartReply>, Status> {
        self.0.measured("apply_coupon", self.0.mutate(request)).await
    }

    async fn remove_coupon(&self, request: Request<pb::RemoveCouponRequest>) -> Result<Response<CartReply>, Status> {
        self.0.measured("remove_coupon", self.0.mutate(request)).await
    }

    async fn refresh_items(&self, request: Request<pb::RefreshItemsRequest>) -> Result<Response<CartReply>, Status> {
        self.0.measured("refresh_items", self.0.mutate(request)).await
    }

    async fn merge_carts(
        &self,
        request: Request<pb::MergeCartsRequest>,
    ) -> Result<Response<pb::MergeCartsReply>, Status> {
        self.0.measured("merge_carts", self.0.merge_carts_call(request)).await
    }

    async fn checkout(&self, request: Request<pb::CheckoutRequest>) -> Result<Response<pb::CheckoutReply>, Status> {
        self.0.measured("checkout", self.0.checkout_call(request)).await
    }

    type PipelineStream = Pipeline;

    async fn pipeline(
        &self,
        request: Request<Streaming<pb::PipelineCall>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        if !self.0.pipeline {
            return Err(Status::unimplemented(format!("Pipeline is off ({NO_PIPELINE_ENV})")));
        }
        Ok(Response::new(Pipeline {
            api: self.0.clone(),
            calls: Some(request.into_inner()),
            running: FuturesUnordered::new(),
        }))
    }
}

/// One pipeline stream's results, as the stream the node answers with: polling it reads calls
/// (while fewer than [`PIPELINE_IN_FLIGHT`] run) and runs them, all in the one task HTTP/2
/// polls the stream in (no task, and no hand-off between threads, per call). Results leave as
/// they are ready. Once shutdown begins a call that arrives is answered `UNAVAILABLE` (not
/// applied) and the stream ends when the calls it took have answered.
pub struct Pipeline {
    api: Arc<Api>,
    /// `None` once the client ended its side (or the connection went, or shutdown began).
    calls: Option<Streaming<pb::PipelineCall>>,
    running: FuturesUnordered<Pin<Box<dyn std::future::Future<Output = pb::PipelineResult> + Send>>>,
}

impl futures::Stream for Pipeline {
    type Item = Result<pb::PipelineResult, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        while this.running.len() < PIPELINE_IN_FLIGHT {
            let Some(calls) = this.calls.as_mut() else { break };
            match Pin::new(calls).poll_next(cx) {
                Poll::Ready(Some(Ok(call))) => {
                    if this.api.in_flight.stopping() {
                        this.calls = None;
                        let id = call.id;
                        this.running.push(Box::pin(async move { shutting_down(id) }));
                        break;
                    }
                    let api = this.api.clone();
                    this.running.push(Box::pin(async move { api.pipelined(call).await }));
                }
                Poll::Ready(Some(Err(_)) | None) => this.calls = None,
                Poll::Pending => break,
            }
        }
        match Pin::new(&mut this.running).poll_next(cx) {
            Poll::Ready(Some(result)) => Poll::Ready(Some(Ok(result))),
            // Nothing running: the stream ends once no more calls can come.
            Poll::Ready(None) if this.calls.is_none() => Poll::Ready(None),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// The answer to a call that arrived after shutdown began: not applied, try another node.
fn shutting_down(id: u64) -> pb::PipelineResult {
    pb::PipelineResult {
        id,
        membership: String::new(),
        result: Some(pb::pipeline_result::Result::Error(pb::CallError {
            code: tonic::Code::Unavailable as i32,
            message: "the node is shutting down; nothing was applied".into(),
            outcome: cart_proto::OUTCOME_NONE.into(),
        })),
    }
}
