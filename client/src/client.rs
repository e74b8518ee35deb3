use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use cart_crdt::{CartView, ItemSnapshot};
use cart_proto::pb::cart_service_client::CartServiceClient;
use cart_proto::pb::{self, CartReply};
use cart_proto::Consistency;
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

/// Tuning for a [`CartClient`]. The defaults suit a storefront on the same network.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one attempt, sent to the server as `grpc-timeout`.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts per call, across endpoints (at least 1).
    pub max_attempts: usize,
    /// First retry delay; doubles per attempt up to `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Quorum override sent with every request (`None` = cluster default).
    pub consistency: Consistency,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            max_attempts: 3,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            consistency: Consistency::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The server answered with an error status; `message` names the offending field.
    #[error("{code:?}: {message}")]
    Status {
        code: Code,
        message: String,
        endpoint: String,
    },
    #[error("the server sent a reply without a cart")]
    EmptyReply,
    #[error("cannot format output: {reason}")]
    Output { reason: String },
}

impl ClientError {
    /// The gRPC code, when the error came from a server or the transport.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

struct Node {
    address: String,
    client: CartServiceClient<Channel>,
}

/// A cheap-to-share handle on a cartdb cluster (clone it or put it in an `Arc`).
#[derive(Clone)]
pub struct CartClient {
    nodes: std::sync::Arc<Vec<Node>>,
    options: ClientOptions,
}

impl CartClient {
    /// Connects lazily to `HOST:PORT` endpoints (or full `http://` URIs) with default options.
    pub async fn connect<I, S>(endpoints: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_with(endpoints, ClientOptions::default()).await
    }

    pub async fn connect_with<I, S>(endpoints: I, options: ClientOptions) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nodes = Vec::new();
        for raw in endpoints {
            let raw = raw.as_ref().trim();
            let uri = if raw.contains("://") {
                raw.to_owned()
            } else {
                format!("http://{raw}")
            };
            let invalid = |reason: String| ClientError::InvalidEndpoint {
                endpoint: raw.to_owned(),
                reason,
            };
            let channel = Endpoint::from_shared(uri)
                .map_err(|e| invalid(e.to_string()))?
                .connect_timeout(options.connect_timeout)
                .timeout(options.request_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
                .connect_lazy();
            nodes.push(Node {
                address: raw.to_owned(),
                client: CartServiceClient::new(channel),
            });
        }
        if nodes.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        Ok(CartClient {
            nodes: std::sync::Arc::new(nodes),
            options,
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The cart; a cart never written reads as empty.
    pub async fn get_cart(&self, cart_id: &str) -> Result<CartView, ClientError> {
        let req = pb::GetCartRequest {
            cart_id: cart_id.into(),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::Idempotent, req, |mut c, r| async move {
            c.get_cart(r).await
        })
        .await
    }

    /// Adds `quantity` (≥ 1) of a product, with what the storefront shows for it.
    pub async fn add_item(
        &self,
        cart_id: &str,
        product_id: &str,
        quantity: u32,
        snapshot: ItemSnapshot,
    ) -> Result<CartView, ClientError> {
        let req = pb::AddItemRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            quantity: i64::from(quantity),
            snapshot: Some(snapshot.into()),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.add_item(r).await
        })
        .await
    }

    /// Sets a line's quantity; 0 removes the line.
    pub async fn set_quantity(&self, cart_id: &str, product_id: &str, quantity: u32) -> Result<CartView, ClientError> {
        let req = pb::SetQuantityRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            quantity: i64::from(quantity),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.set_quantity(r).await
        })
        .await
    }

    pub async fn remove_item(&self, cart_id: &str, product_id: &str) -> Result<CartView, ClientError> {
        let req = pb::RemoveItemRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.remove_item(r).await
        })
        .await
    }

    /// Removes every line and coupon; saved-for-later items stay.
    pub async fn clear_cart(&self, cart_id: &str) -> Result<CartView, ClientError> {
        let req = pb::ClearCartRequest {
            cart_id: cart_id.into(),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.clear_cart(r).await
        })
        .await
    }

    pub async fn save_for_later(&self, cart_id: &str, product_id: &str) -> Result<CartView, ClientError> {
        let req = pb::SaveForLaterRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.save_for_later(r).await
        })
        .await
    }

    pub async fn move_to_cart(&self, cart_id: &str, product_id: &str) -> Result<CartView, ClientError> {
        let req = pb::MoveToCartRequest {
            cart_id: cart_id.into(),
            product_id: product_id.into(),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.move_to_cart(r).await
        })
        .await
    }

    pub async fn apply_coupon(&self, cart_id: &str, code: &str) -> Result<CartView, ClientError> {
        let req = pb::ApplyCouponRequest {
            cart_id: cart_id.into(),
            code: code.into(),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.apply_coupon(r).await
        })
        .await
    }

    pub async fn remove_coupon(&self, cart_id: &str, code: &str) -> Result<CartView, ClientError> {
        let req = pb::RemoveCouponRequest {
            cart_id: cart_id.into(),
            code: code.into(),
            consistency: self.consistency(),
        };
        self.call(cart_id, Retry::OnlyUnreached, req, |mut c, r| async move {
            c.remove_coupon(r).await
        })
        .await
    }

    fn consistency(&self) -> Option<pb::Consistency> {
        let c = self.options.consistency;
        (c != Consistency::default()).then(|| c.into())
    }

    /// Runs one call with deadline, endpoint failover and backoff.
    async fn call<Req, F, Fut>(&self, cart_id: &str, retry: Retry, req: Req, rpc: F) -> Result<CartView, ClientError>
    where
        Req: Clone,
        F: Fn(CartServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<CartReply>, Status>>,
    {
        let start = sticky_index(cart_id, self.nodes.len());
        let attempts = self.options.max_attempts.max(1);
        let mut backoff = self.options.backoff_initial;
        let mut attempt = 0;
        loop {
            let node = &self.nodes[(start + attempt) % self.nodes.len()];
            let mut request = Request::new(req.clone());
            request.set_timeout(self.options.request_timeout);
            let status = match rpc(node.client.clone(), request).await {
                Ok(reply) => {
                    return reply
                        .into_inner()
                        .cart
                        .map(CartView::from)
                        .ok_or(ClientError::EmptyReply)
                }
                Err(status) => status,
            };
            attempt += 1;
            if attempt >= attempts || !retry.allows(status.code()) {
                return Err(ClientError::Status {
                    code: status.code(),
                    message: status.message().to_owned(),
                    endpoint: node.address.clone(),
                });
            }
            tracing::debug!(endpoint = %node.address, code = ?status.code(), attempt, "retrying on the next endpoint");
            let jitter: f64 = rand::random_range(0.5..1.0);
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
            backoff = (backoff * 2).min(self.options.backoff_max);
        }
    }
}

#[derive(Clone, Copy)]
enum Retry {
    /// Safe to repeat anywhere (reads).
    Idempotent,
    /// Repeat only when the node was not reached (or refused before acting).
    OnlyUnreached,
}

impl Retry {
    fn allows(self, code: Code) -> bool {
        match self {
            Retry::Idempotent => matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Unknown),
            Retry::OnlyUnreached => code == Code::Unavailable,
        }
    }
}

fn sticky_index(cart_id: &str, n: usize) -> usize {
    let mut h = DefaultHasher::new();
    cart_id.hash(&mut h);
    (h.finish() % n as u64) as usize
}
