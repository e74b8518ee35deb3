//! The cart lifecycle on the cluster: merge at login (two idempotent writes on two carts),
//! checkout of a version, and the expiry sweeper. What each step *does* to a cart is pure and
//! lives in `cart_crdt` (`CartOp::Absorb`, `Release`, `Checkout`, `Expiry`).
//!
//! **Merge at login** is cross-key, so not atomic; each step is idempotent on its own:
//! 1. read the guest cart (quorum) and take its [`cart_crdt::Version`];
//! 2. the user cart absorbs that version, as a request whose id derives from the guest cart's
//!    id and context: two tabs reading the same guest cart send the same id (applied once), and
//!    the op sets quantities (the larger wins), so even two applications add nothing twice;
//! 3. the guest cart releases exactly what the version saw (an observed remove: what was added
//!    since stays) and is marked merged into the user cart, again under a derived id.
//!
//! A crash between 2 and 3 leaves the guest cart as it was: the next merge (a retry, or the next
//! login) reads the same or a newer guest version, step 2 changes nothing already absorbed
//! (quantities are set to the larger, not added), and step 3 runs.

pub mod sweeper;

use std::sync::Arc;

use cart_crdt::{codec, Cart, CartOp, MergeMode, Order, RequestId};
use cart_proto::{CartRequest, CheckoutRequest, MergeRequest};

use crate::coordinator::Coordinator;
use crate::error::NodeError;

/// Merges a guest cart into a user cart (see the module doc); returns (user cart, guest cart).
pub async fn merge_carts(
    coordinator: &Arc<Coordinator>,
    req: &MergeRequest,
) -> Result<(Arc<Cart>, Arc<Cart>), NodeError> {
    let guest = coordinator.read(&req.guest, req.consistency).await?;
    let version = guest.version(&req.guest);
    if version.is_empty() {
        // Nothing to bring over (a cart never written, expired, or merged already).
        let user = coordinator.read(&req.user, req.consistency).await?;
        return Ok((user, guest));
    }
    let seen = codec::encode_context(guest.context())?;
    let mode: &[u8] = match req.mode {
        MergeMode::Merge => b"merge",
        MergeMode::Replace => b"replace",
    };
    let (guest_id, user_id) = (req.guest.as_str().as_bytes(), req.user.as_str().as_bytes());
    let absorb = CartRequest {
        cart_id: req.user.clone(),
        op: CartOp::Absorb {
            mode: req.mode,
            from: Box::new(version.clone()),
        },
        consistency: req.consistency,
        request: Some(RequestId::derived(&[b"absorb", mode, guest_id, &seen])),
        // Derived ids and idempotent steps: a late merge step changes nothing a retry did not.
        deadline_ms: None,
    };
    let user = coordinator.write(&absorb).await?;
    let release = CartRequest {
        cart_id: req.guest.clone(),
        op: CartOp::Release {
            into: req.user.clone(),
            from: Box::new(version),
        },
        consistency: req.consistency,
        request: Some(RequestId::derived(&[b"release", guest_id, user_id, &seen])),
        deadline_ms: None,
    };
    let guest = coordinator.write(&release).await?;
    Ok((user, guest))
}

/// Checks out a version; returns the order and the cart after it. A retry (same request id)
/// returns the same order.
pub async fn checkout(coordinator: &Arc<Coordinator>, req: &CheckoutRequest) -> Result<(Order, Arc<Cart>), NodeError> {
    let CartOp::Checkout { version } = &req.request.op else {
        return Err(NodeError::Config {
            reason: "a checkout request without a checkout".into(),
        });
    };
    let order_of_version = version.order();
    let cart = coordinator.write(&req.request).await?;
    // The record is there unless it was pruned since (a retry more than the window later):
    // the version's lines are then the order, as they were the first time.
    let order = cart.order_of(req.request_id).cloned().unwrap_or(order_of_version);
    Ok((order, cart))
}
