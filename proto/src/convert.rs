//! Wire ⇄ domain conversions. Requests are validated here, once, against the node's limits.

use cart_crdt::validate::{self, SnapshotInput};
use cart_crdt::{
    CartError, CartId, CartOp, CartView, CouponCode, Current, ItemSnapshot, Limits, LineView, MergeMode, Money, Order,
    OwnerKind, ProductId, Refresh, RefreshItem, RequestId, SavedView,
};

use cart_crdt::pricing::{CurrencySummary, Discount, NotApplied, PricingSummary};

use crate::pb;

/// A per-request quorum override; `None` means the cluster default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Consistency {
    pub r: Option<u32>,
    pub w: Option<u32>,
}

impl From<Option<pb::Consistency>> for Consistency {
    fn from(c: Option<pb::Consistency>) -> Self {
        let c = c.unwrap_or_default();
        Consistency {
            r: (c.r > 0).then_some(c.r),
            w: (c.w > 0).then_some(c.w),
        }
    }
}

impl From<Consistency> for pb::Consistency {
    fn from(c: Consistency) -> Self {
        pb::Consistency {
            r: c.r.unwrap_or(0),
            w: c.w.unwrap_or(0),
        }
    }
}

/// A validated mutating request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartRequest {
    pub cart_id: CartId,
    pub op: CartOp,
    pub consistency: Consistency,
    /// The client's request id: applied at most once per id.
    pub request: Option<RequestId>,
    /// The client's deadline for this attempt, wall-clock ms since the Unix epoch (from
    /// [`crate::DEADLINE_HEADER`]): no node begins to apply the write after it.
    pub deadline_ms: Option<u64>,
}

/// An optional `request_id` field: empty means none.
pub fn request_id(raw: &str) -> Result<Option<RequestId>, CartError> {
    if raw.is_empty() {
        return Ok(None);
    }
    RequestId::parse(raw, "request_id").map(Some)
}

/// A validated `MergeCarts` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRequest {
    pub guest: CartId,
    pub user: CartId,
    pub mode: MergeMode,
    pub consistency: Consistency,
}

impl MergeRequest {
    pub fn from_wire(req: pb::MergeCartsRequest, limits: &Limits) -> Result<Self, CartError> {
        let guest = CartId::parse(&req.guest_cart_id, limits).map_err(|e| rename(e, "guest_cart_id"))?;
        if guest.owner() != OwnerKind::Guest {
            return Err(CartError::InvalidArgument {
                field: "guest_cart_id",
                reason: format!("{guest} must start with \"guest:\""),
            });
        }
        let user = CartId::parse(&req.user_cart_id, limits).map_err(|e| rename(e, "user_cart_id"))?;
        if user.owner() != OwnerKind::User {
            return Err(CartError::InvalidArgument {
                field: "user_cart_id",
                reason: format!("{user} must start with \"user:\""),
            });
        }
        let mode = match pb::MergeMode::try_from(req.mode) {
            Ok(pb::MergeMode::Unspecified | pb::MergeMode::Merge) => MergeMode::Merge,
            Ok(pb::MergeMode::Replace) => MergeMode::Replace,
            Err(_) => {
                return Err(CartError::InvalidArgument {
                    field: "mode",
                    reason: format!("unknown merge mode {}", req.mode),
                })
            }
        };
        Ok(MergeRequest {
            guest,
            user,
            mode,
            consistency: req.consistency.into(),
        })
    }
}

/// A cart id error reported under another field name.
fn rename(e: CartError, field: &'static str) -> CartError {
    match e {
        CartError::InvalidArgument { reason, .. } => CartError::InvalidArgument { field, reason },
        other => other,
    }
}

/// A validated `Checkout` request (the version decoded and checked against the cart id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutRequest {
    pub request: CartRequest,
    pub request_id: RequestId,
}

impl CheckoutRequest {
    pub fn from_wire(req: pb::CheckoutRequest, limits: &Limits) -> Result<Self, CartError> {
        let cart_id = CartId::parse(&req.cart_id, limits)?;
        let version = cart_crdt::codec::decode_version(&req.version, &cart_id, "version")?;
        let request_id = request_id(&req.request_id)?.ok_or_else(|| CartError::InvalidArgument {
            field: "request_id",
            reason: "is required for a checkout (a retry with the same id returns the same order)".into(),
        })?;
        Ok(CheckoutRequest {
            request: CartRequest {
                cart_id,
                op: CartOp::Checkout {
                    version: Box::new(version),
                },
                consistency: req.consistency.into(),
                request: Some(request_id),
                deadline_ms: None,
            },
            request_id,
        })
    }
}

impl From<&Order> for pb::Order {
    fn from(o: &Order) -> Self {
        pb::Order {
            lines: o
                .lines
                .iter()
                .map(|l| pb::OrderLine {
                    product_id: l.product_id.to_string(),
                    quantity: to_wire_quantity(l.quantity),
                    snapshot: Some(l.snapshot.clone().into()),
                })
                .collect(),
            coupons: o.coupons.iter().map(|c| c.to_string()).collect(),
            totals: o
                .totals()
                .into_iter()
                .map(|m| pb::Money {
                    currency: m.currency,
                    amount_minor: m.amount_minor,
                })
                .collect(),
            version_at_ms: o.version_at_ms,
        }
    }
}

/// An order as a client reads it back (product ids and snapshots trusted as stored).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderView {
    pub lines: Vec<LineView>,
    pub coupons: Vec<String>,
    pub totals: Vec<Money>,
    pub version_at_ms: u64,
}

impl From<pb::Order> for OrderView {
    fn from(o: pb::Order) -> Self {
        OrderView {
            lines: o
                .lines
                .into_iter()
                .map(|l| line_view(l.product_id, l.quantity, l.snapshot, None))
                .collect(),
            coupons: o.coupons,
            totals: o.totals.into_iter().map(money_view).collect(),
            version_at_ms: o.version_at_ms,
        }
    }
}

/// A validated read request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetRequest {
    pub cart_id: CartId,
    pub consistency: Consistency,
}

impl GetRequest {
    pub fn from_wire(req: pb::GetCartRequest, limits: &Limits) -> Result<Self, CartError> {
        Ok(GetRequest {
            cart_id: CartId::parse(&req.cart_id, limits)?,
            consistency: req.consistency.into(),
        })
    }
}

/// A wire request that becomes one cart operation.
pub trait IntoDomain {
    fn into_domain(self, limits: &Limits) -> Result<CartRequest, CartError>;
}

fn request(
    cart_id: &str,
    op: CartOp,
    consistency: Option<pb::Consistency>,
    request: &str,
    limits: &Limits,
) -> Result<CartRequest, CartError> {
    Ok(CartRequest {
        cart_id: CartId::parse(cart_id, limits)?,
        op,
        consistency: consistency.into(),
        request: request_id(request)?,
        deadline_ms: None,
    })
}

impl IntoDomain for pb::AddItemRequest {
    fn into_domain(self, limits: &Limits) -> Result<CartRequest, CartError> {
        // Validate in field order so the first bad field is the one reported.
        let cart_id = CartId::parse(&self.cart_id, limits)?;
        let product_id = ProductId::parse(&self.product_id, limits)?;
        let quantity = validate::add_quantity(self.quantity, limits)?;
        let snapshot = snapshot_from_wire(self.snapshot, limits)?;
        Ok(CartRequest {
            cart_id,
            op: CartOp::AddItem {
                product_id,
                quantity,
                snapshot,
            },
            consistency: self.consistency.into(),
            request: request_id(&self.request_id)?,
            deadline_ms: None,
        })
    }
}

impl IntoDomain for pb::SetQuantityRequest {
    fn into_domain(self, limits: &Limits) -> Result<CartRequest, CartError> {
        let cart_id = CartId::parse(&self.cart_id, limits)?;
        let product_id = ProductId::parse(&self.product_id, limits)?;
        let quantity = validate::set_quantity(self.quantity, limits)?;
        Ok(CartRequest {
            cart_id,
            op: CartOp::SetQuantity { product_id, quantity },
            consistency: self.consistency.into(),
            request: request_id(&self.request_id)?,
            deadline_ms: None,
        })
    }
}

impl IntoDomain for pb::AdjustQuantityRequest {
    fn into_domain(self, limits: &Limits) -> Result<CartRequest, CartError> {
        let cart_id = CartId::parse(&self.cart_id, limits)?;
        let product_id = ProductId::parse(&self.product_id, limits)?;
        let delta = validate::adjust_delta(self.delta, limits)?;
        Ok(CartRequest {
            cart_id,
            op: CartOp::AdjustQuantity { product_id, delta },
            consistency: self.consistency.into(),
            request: request_id(&self.request_id)?,
            deadline_ms: None,
        })
    }
}

/// Requests shaped `{cart_id, product_id, consistency}`.
macro_rules! product_request {
    ($wire:ty, $variant:ident) => {
        impl IntoDomain for $wire {
            fn into_domain(self, limits: &Limits) -> Result<CartRequest, CartError> {
                let cart_id = CartId::parse(&self.cart_id, limits)?;
                let product_id = ProductId::parse(&self.product_id, limits)?;
                Ok(CartRequest {
                    cart_id,
                    op: CartOp::$variant { product_id },
                    consistency: self.consistency.into(),
                    request: request_id(&self.request_id)?,
                    deadline_ms: None,
                })
            }
        }
    };
}

product_request!(pb::RemoveItemRequest, RemoveItem);
product_request!(pb::SaveForLaterRequest, SaveForLater);
product_request!(pb::MoveToCartRequest, MoveToCart);

/// Requests shaped `{cart_id, code, consistency}`.
macro_rules! coupon_request {
    ($wire:ty, $variant:ident) => {
        impl IntoDomain for $wire {
            fn into_domain(self, limits: &Limits) -> Result<CartRequest, CartError> {
                let cart_id = CartId::parse(&self.cart_id, limits)?;
                let code = CouponCode::parse(&self.code, limits)?;
                Ok(CartRequest {
                    cart_id,
                    op: CartOp::$variant { code },
                    consistency: self.consistency.into(),
                    request: request_id(&self.request_id)?,
                    deadline_ms: None,
                })
            }
        }
    };
}

coupon_request!(pb::ApplyCouponRequest, ApplyCoupon);
coupon_request!(pb::RemoveCouponRequest, RemoveCoupon);

impl IntoDomain for pb::RefreshItemsRequest {
    fn into_domain(self, limits: &Limits) -> Result<CartRequest, CartError> {
        let cart_id = CartId::parse(&self.cart_id, limits)?;
        let items = self
            .items
            .into_iter()
            .map(|i| {
                let product_id = ProductId::parse(&i.product_id, limits)?;
                if i.catalog_version == 0 {
                    return Err(CartError::InvalidArgument {
                        field: "items.catalog_version",
                        reason: format!("{product_id}: must be at least 1"),
                    });
                }
                Ok(RefreshItem {
                    product_id,
                    refresh: Refresh {
                        catalog_version: i.catalog_version,
                        snapshot: snapshot_from_wire(i.snapshot, limits)?,
                        available: i.available,
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CartRequest {
            cart_id,
            op: CartOp::RefreshItems { items },
            consistency: self.consistency.into(),
            request: request_id(&self.request_id)?,
            deadline_ms: None,
        })
    }
}

impl IntoDomain for pb::ClearCartRequest {
    fn into_domain(self, limits: &Limits) -> Result<CartRequest, CartError> {
        request(&self.cart_id, CartOp::Clear, self.consistency, &self.request_id, limits)
    }
}

/// A snapshot is required on AddItem; its fields are checked by [`validate::snapshot`].
pub fn snapshot_from_wire(snapshot: Option<pb::ItemSnapshot>, limits: &Limits) -> Result<ItemSnapshot, CartError> {
    let s = snapshot.ok_or_else(|| CartError::InvalidArgument {
        field: "snapshot",
        reason: "is required".into(),
    })?;
    validate::snapshot(
        SnapshotInput {
            name: s.name,
            unit_price_minor: s.unit_price_minor,
            currency: s.currency,
            image_url: s.image_url,
            attributes: s.attributes,
        },
        limits,
    )
}

impl From<ItemSnapshot> for pb::ItemSnapshot {
    fn from(s: ItemSnapshot) -> Self {
        pb::ItemSnapshot {
            name: s.name,
            unit_price_minor: i64::try_from(s.unit_price_minor).unwrap_or(i64::MAX),
            currency: s.currency,
            image_url: s.image_url.unwrap_or_default(),
            attributes: s.attributes,
        }
    }
}

/// Wire snapshots coming *back* from a server are trusted as stored; negative prices clamp to 0.
fn snapshot_to_domain(s: Option<pb::ItemSnapshot>) -> ItemSnapshot {
    let s = s.unwrap_or_default();
    ItemSnapshot {
        name: s.name,
        unit_price_minor: s.unit_price_minor.max(0) as u64,
        currency: s.currency,
        image_url: (!s.image_url.is_empty()).then_some(s.image_url),
        attributes: s.attributes,
    }
}

/// A line as a client reads it back (quantities below 0 read as 0).
fn line_view(
    product_id: String,
    quantity: i64,
    snapshot: Option<pb::ItemSnapshot>,
    current: Option<pb::CurrentItem>,
) -> LineView {
    LineView {
        product_id,
        quantity: quantity.max(0) as u64,
        snapshot: snapshot_to_domain(snapshot),
        current: current.map(current_view),
    }
}

fn current_view(c: pb::CurrentItem) -> Current {
    Current {
        catalog_version: c.catalog_version,
        snapshot: snapshot_to_domain(c.snapshot),
        available: c.available,
        price_changed: c.price_changed,
    }
}

fn current_wire(c: Current) -> pb::CurrentItem {
    pb::CurrentItem {
        catalog_version: c.catalog_version,
        snapshot: Some(c.snapshot.into()),
        available: c.available,
        price_changed: c.price_changed,
    }
}

fn money_view(m: pb::Money) -> Money {
    Money {
        currency: m.currency,
        amount_minor: m.amount_minor,
    }
}

fn to_wire_quantity(q: u64) -> i64 {
    i64::try_from(q).unwrap_or(i64::MAX)
}

impl From<CartView> for pb::Cart {
    fn from(v: CartView) -> Self {
        pb::Cart {
            cart_id: v.cart_id,
            owner: match v.owner {
                OwnerKind::User => pb::OwnerKind::User,
                OwnerKind::Guest => pb::OwnerKind::Guest,
            } as i32,
            lines: v
                .lines
                .into_iter()
                .map(|l| pb::Line {
                    product_id: l.product_id,
                    quantity: to_wire_quantity(l.quantity),
                    snapshot: Some(l.snapshot.into()),
                    current: l.current.map(current_wire),
                })
                .collect(),
            saved: v
                .saved
                .into_iter()
                .map(|s| pb::SavedItem {
                    product_id: s.product_id,
                    quantity: to_wire_quantity(s.quantity),
                    snapshot: Some(s.snapshot.into()),
                    current: s.current.map(current_wire),
                })
                .collect(),
            coupons: v.coupons,
            subtotals: v
                .subtotals
                .into_iter()
                .map(|m| pb::Money {
                    currency: m.currency,
                    amount_minor: m.amount_minor,
                })
                .collect(),
            touched_at_ms: v.touched_at_ms,
            version: v.version,
            expires_at_ms: v.expires_at_ms,
            merged_into: v.merged_into.unwrap_or_default(),
            pricing: v.pricing.as_ref().map(pb::PricingSummary::from),
        }
    }
}

fn wire_amount(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn domain_amount(v: i64) -> u64 {
    v.max(0) as u64
}

impl From<&PricingSummary> for pb::PricingSummary {
    fn from(s: &PricingSummary) -> Self {
        pb::PricingSummary {
            rules_version: s.rules_version,
            region: s.region.clone(),
            currencies: s
                .currencies
                .iter()
                .map(|c| pb::CurrencyPricing {
                    currency: c.currency.clone(),
                    subtotal_minor: wire_amount(c.subtotal),
                    discounts: c
                        .discounts
                        .iter()
                        .map(|d| pb::AppliedDiscount {
                            code: d.code.clone(),
                            amount_minor: wire_amount(d.amount),
                            free_shipping: d.free_shipping,
                        })
                        .collect(),
                    discount_total_minor: wire_amount(c.discount_total),
                    tax_minor: wire_amount(c.tax),
                    tax_included_minor: wire_amount(c.tax_included),
                    shipping_minor: wire_amount(c.shipping),
                    total_minor: wire_amount(c.total),
                    not_applied: c
                        .not_applied
                        .iter()
                        .map(|n| pb::CouponNotApplied {
                            code: n.code.clone(),
                            reason: n.reason.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl From<pb::PricingSummary> for PricingSummary {
    fn from(s: pb::PricingSummary) -> Self {
        PricingSummary {
            rules_version: s.rules_version,
            region: s.region,
            currencies: s
                .currencies
                .into_iter()
                .map(|c| CurrencySummary {
                    currency: c.currency,
                    subtotal: domain_amount(c.subtotal_minor),
                    discounts: c
                        .discounts
                        .into_iter()
                        .map(|d| Discount {
                            code: d.code,
                            amount: domain_amount(d.amount_minor),
                            free_shipping: d.free_shipping,
                        })
                        .collect(),
                    discount_total: domain_amount(c.discount_total_minor),
                    tax: domain_amount(c.tax_minor),
                    tax_included: domain_amount(c.tax_included_minor),
                    shipping: domain_amount(c.shipping_minor),
                    total: domain_amount(c.total_minor),
                    not_applied: c
                        .not_applied
                        .into_iter()
                        .map(|n| NotApplied {
                            code: n.code,
                            reason: n.reason,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Requests that may ask for their reply's cart to be priced (a `pricing` field).
pub trait Priced {
    fn pricing_context(&self) -> Option<&pb::PricingContext>;
}

macro_rules! priced {
    ($($wire:ty),*) => {
        $(impl Priced for $wire {
            fn pricing_context(&self) -> Option<&pb::PricingContext> {
                self.pricing.as_ref()
            }
        })*
    };
}

priced!(
    pb::GetCartRequest,
    pb::AddItemRequest,
    pb::SetQuantityRequest,
    pb::AdjustQuantityRequest,
    pb::RemoveItemRequest,
    pb::ClearCartRequest,
    pb::SaveForLaterRequest,
    pb::MoveToCartRequest,
    pb::ApplyCouponRequest,
    pb::RemoveCouponRequest,
    pb::RefreshItemsRequest
);

impl From<pb::Cart> for CartView {
    fn from(c: pb::Cart) -> Self {
        let owner = match pb::OwnerKind::try_from(c.owner) {
            Ok(pb::OwnerKind::Guest) => OwnerKind::Guest,
            _ => OwnerKind::User,
        };
        CartView {
            cart_id: c.cart_id,
            owner,
            lines: c
                .lines
                .into_iter()
                .map(|l| line_view(l.product_id, l.quantity, l.snapshot, l.current))
                .collect(),
            saved: c
                .saved
                .into_iter()
                .map(|s| SavedView {
                    product_id: s.product_id,
                    quantity: s.quantity.max(0) as u64,
                    snapshot: snapshot_to_domain(s.snapshot),
                    current: s.current.map(current_view),
                })
                .collect(),
            coupons: c.coupons,
            subtotals: c.subtotals.into_iter().map(money_view).collect(),
            touched_at_ms: c.touched_at_ms,
            merged_into: (!c.merged_into.is_empty()).then_some(c.merged_into),
            version: c.version,
            expires_at_ms: c.expires_at_ms,
            pricing: c.pricing.map(PricingSummary::from),
        }
    }
}
