//! The public `CartService`: decode and validate (in `cart-proto`), run on the store, answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cart_proto::pb::cart_service_server::CartService;
use cart_proto::pb::{self, CartReply};
use cart_proto::{GetRequest, IntoDomain};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::NodeError;
use crate::store::CartStore;

pub struct CartApi {
    store: Arc<CartStore>,
    node_id: String,
    in_flight: Arc<InFlight>,
}

/// Counts requests being handled, so shutdown can wait for them rather than for idle connections
/// (hyper's graceful shutdown can wait on an idle keepalive connection indefinitely).
#[derive(Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }
}

struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl CartApi {
    pub fn new(store: Arc<CartStore>, node_id: String, in_flight: Arc<InFlight>) -> Self {
        CartApi {
            store,
            node_id,
            in_flight,
        }
    }

    async fn mutate<R: IntoDomain>(&self, request: Request<R>) -> Result<Response<CartReply>, Status> {
        let _in_flight = self.in_flight.enter();
        let req = request
            .into_inner()
            .into_domain(self.store.limits())
            .map_err(NodeError::from)?;
        let span = tracing::info_span!("cart_request", cart_id = %req.cart_id, op = req.op.name(), coordinator = %self.node_id);
        async {
            let cart = self
                .store
                .write(&req.cart_id, &req.op)
                .await
                .inspect_err(|e| tracing::debug!(error = %e, "refused"))?;
            Ok(reply(cart.view(&req.cart_id)))
        }
        .instrument(span)
        .await
    }
}

fn reply(view: cart_crdt::CartView) -> Response<CartReply> {
    Response::new(CartReply {
        cart: Some(pb::Cart::from(view)),
    })
}

#[tonic::async_trait]
impl CartService for CartApi {
    async fn get_cart(&self, request: Request<pb::GetCartRequest>) -> Result<Response<CartReply>, Status> {
        let _in_flight = self.in_flight.enter();
        let req = GetRequest::from_wire(request.into_inner(), self.store.limits()).map_err(NodeError::from)?;
        let span =
            tracing::info_span!("cart_request", cart_id = %req.cart_id, op = "get_cart", coordinator = %self.node_id);
        async {
            let cart = self.store.read(&req.cart_id).await?;
            Ok(reply(cart.view(&req.cart_id)))
        }
        .instrument(span)
        .await
    }

    async fn add_item(&self, request: Request<pb::AddItemRequest>) -> Result<Response<CartReply>, Status> {
        self.mutate(request).await
    }

    async fn set_quantity(&self, request: Request<pb::SetQuantityRequest>) -> Result<Response<CartReply>, Status> {
        self.mutate(request).await
    }

    async fn remove_item(&self, request: Request<pb::RemoveItemRequest>) -> Result<Response<CartReply>, Status> {
        self.mutate(request).await
    }

    async fn clear_cart(&self, request: Request<pb::ClearCartRequest>) -> Result<Response<CartReply>, Status> {
        self.mutate(request).await
    }

    async fn save_for_later(&self, request: Request<pb::SaveForLaterRequest>) -> Result<Response<CartReply>, Status> {
        self.mutate(request).await
    }

    async fn move_to_cart(&self, request: Request<pb::MoveToCartRequest>) -> Result<Response<CartReply>, Status> {
        self.mutate(request).await
    }

    async fn apply_coupon(&self, request: Request<pb::ApplyCouponRequest>) -> Result<Response<CartReply>, Status> {
        self.mutate(request).await
    }

    async fn remove_coupon(&self, request: Request<pb::RemoveCouponRequest>) -> Result<Response<CartReply>, Status> {
        self.mutate(request).await
    }
}
