//! `cart-crdt`: the shopping cart as a state-based CRDT, its operations, read model and storage codec.
//!
//! Contract:
//! - A [`Cart`] is three flat add-wins sets of write-once dotted entries (lines, saved-for-later,
//!   coupons) sharing one causal [`Context`], plus a max-register `touched_at_ms`. [`Cart::merge`]
//!   is commutative, associative and idempotent; [`Cart::apply`] returns a [`CartDelta`], a small
//!   cart state whose merge (in any order) reaches the same state as merging whole carts.
//! - Every operation mints its own dot, so equal contexts mean equal states: [`Cart::context`] is
//!   a cart's version, cheap to compare.
//! - Actors are node incarnations ([`Actor`]), never clients. The caller serialises writes to one
//!   cart per actor: two ops built from the same state would reuse one dot and one would be lost.
//! - Never merge two *different* carts (guest into user): replay lines as new ops instead.
//! - Input validation ([`validate`]) and limits ([`Limits`]) live here so every binary agrees;
//!   errors name the offending field.
//! - [`codec`] stores a cart as one format-version byte followed by bincode 2; every container
//!   of a cart is sorted, so equal states encode to equal bytes.
//! - [`catchup`]: a state shipped to a reader that holds the cart at a known context, as what
//!   that context lacks plus the dots of the rest; [`Cart::rebuild`] makes it a state whose
//!   merge with the reader's equals the merge with the whole state.
//!
//! - Feature `test-broken-merge` (tests only, never in a release build) adds [`sabotage`]: a
//!   per-thread switch that turns `merge` into last-writer-wins, so harness tests can show their
//!   checker catches a broken store.
//!
//! - [`pricing`]: what a cart costs, a pure function of its view, the cluster's pricing rules, a
//!   region and a time.
//!
//! This crate never does IO, async, networking or storage.

mod cart;
pub mod catchup;
pub mod codec;
mod context;
mod error;
mod ids;
mod lifecycle;
mod limits;
pub mod pricing;
#[cfg(feature = "test-broken-merge")]
pub mod sabotage;
mod snapshot;
pub mod validate;
mod view;

pub use cart::{
    Cart, CartDelta, CartOp, CouponEntry, LineEntry, LineKind, Refresh, RefreshItem, SavedEntry, WriteCtx,
    RESIDUE_GRACE_MS,
};
pub use context::{Context, Dot};
pub use error::CartError;
pub use ids::{Actor, CartId, CouponCode, OwnerKind, ProductId};
pub use lifecycle::{
    Effect, Expiry, MergeMode, MergedInto, Order, OrderLine, RequestEntry, RequestId, Version, VersionLine,
    VersionSaved, ORDERS_KEPT, REQUESTS_PER_CART_MAX, REQUESTS_PRUNE_SLACK, REQUEST_ID_MAX_BYTES, REQUEST_WINDOW_MS,
};
pub use limits::Limits;
pub use snapshot::{format_money, ItemSnapshot, Money};
pub use view::{CartView, Current, LineView, SavedView};
