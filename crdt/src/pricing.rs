//! What a cart costs: a pure function `(cart view, rules, region, now) → summary`.
//!
//! - [`PricingRules`] is the cluster's pricing document (TOML): coupons, and per region the tax
//!   and the shipping. [`PricingRules::parse`] refuses a bad document whole, naming the key and
//!   the reason; nothing here reads a clock or a file.
//! - [`price`] computes, per currency of the cart's lines: the subtotal, each discount with its
//!   coupon, the tax, the shipping and the total, plus each applied coupon that does not apply
//!   now and why. Every currency is priced on its own (a cart in two currencies is two bills).
//! - Integer minor units throughout. **One rounding rule**: every division rounds to the nearest
//!   minor unit, halves away from zero ([`div_round`]).
//! - Laws (property-tested): `total = subtotal − discount_total + tax + shipping`; every amount is
//!   ≥ 0 and the discounts never exceed the subtotal; the result does not depend on the order of
//!   the lines or of the applied coupons; equal documents give equal results.
//!
//! The steps, per currency:
//! 1. `subtotal` = Σ quantity × unit price of the lines (lines marked unavailable excluded).
//! 2. Coupons, in code order: unknown, not yet valid, expired, minimum subtotal not met, no
//!    amount in this currency, or no eligible line → not applied, with the reason. Of those
//!    left, a coupon that does not combine goes alone: the cart gets the best of "each
//!    non-combining coupon alone" and "all combining coupons together" (larger discount, then
//!    free shipping, then the first code); the others are listed as "does not combine".
//! 3. Discounts: a percent coupon takes its percent of its eligible lines' amount; a fixed one
//!    its amount, at most its eligible amount; together never more than the subtotal (each
//!    coupon is cut to what is left, in code order).
//! 4. Tax, by the region's rate (or the line category's, from the snapshot attribute
//!    `category`): the discount is spread over the lines in proportion to their amounts
//!    (largest remainder, exact), then per rate: tax-exclusive regions add `net × rate`;
//!    tax-inclusive regions add nothing (`tax` = 0) and report the tax the net contains,
//!    `net × rate / (1 + rate)`, as `tax_included`.
//! 5. Shipping: the region's flat rate in this currency, 0 when the discounted subtotal reaches
//!    its free-shipping threshold or a free-shipping coupon applies (shipping is not taxed).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::CartError;
use crate::snapshot::Money;
use crate::view::CartView;

/// The snapshot attribute a category-specific tax rate or a coupon's category restriction reads.
pub const CATEGORY_ATTRIBUTE: &str = "category";
/// Coupons a document may define at most.
pub const COUPONS_MAX: usize = 10_000;
/// Regions a document may define at most.
pub const REGIONS_MAX: usize = 1_000;
/// The largest amount in minor units a document may name, and the largest subtotal a currency of
/// a cart may reach to be priced (10^15: beyond any cart; it keeps every product of the
/// computation within u128).
pub const AMOUNT_MAX: u64 = 1_000_000_000_000_000;
/// The largest document (TOML text) the cluster takes.
pub const DOCUMENT_MAX_BYTES: usize = 256 * 1024;
/// Products or categories a coupon may name at most.
pub const RESTRICTION_MAX: usize = 1_000;
/// A region code: 1-32 upper-case letters, digits or '-'.
pub fn valid_region(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 32
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
}

/// Amounts per currency (ISO 4217 code → minor units).
pub type Amounts = BTreeMap<String, u64>;

/// The cluster's pricing document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingRules {
    /// Set by the cluster when the document is committed (0 in a file; ignored there).
    #[serde(default)]
    pub version: u64,
    /// Whether `ApplyCoupon` takes a code the document does not define (it then shows as
    /// "unknown code" in summaries). Default false: such a code is refused.
    #[serde(default)]
    pub accept_unknown_coupons: bool,
    #[serde(default)]
    pub coupons: Vec<Coupon>,
    /// Region code (e.g. `DE`, `US-CA`) → its tax and shipping.
    #[serde(default)]
    pub regions: BTreeMap<String, Region>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coupon {
    pub code: String,
    /// Whole percent off the eligible lines (1–100).
    #[serde(default)]
    pub percent_off: Option<u32>,
    /// A fixed amount off, per currency (a currency not listed: the coupon does not apply).
    #[serde(default)]
    pub amount_off: Option<Amounts>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub free_shipping: bool,
    /// The subtotal a currency must reach for the coupon to apply (a currency not listed: none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub min_subtotal: Amounts,
    /// RFC 3339 (`2026-11-27T00:00:00Z`): not before.
    #[serde(default)]
    pub valid_from: Option<String>,
    /// RFC 3339: not from then on.
    #[serde(default)]
    pub valid_until: Option<String>,
    /// Whether it goes with other coupons (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub combinable: bool,
    /// Only these products count (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<String>,
    /// Only lines of these categories count (snapshot attribute `category`; empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
}

fn yes() -> bool {
    true
}

fn is_true(v: &bool) -> bool {
    *v
}

fn is_false(v: &bool) -> bool {
    !*v
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Whether the unit prices include the tax (VAT regions) or the tax is added (US states).
    #[serde(default)]
    pub tax_inclusive: bool,
    /// The tax rate in basis points (1900 = 19%).
    #[serde(default)]
    pub tax_rate_bp: u32,
    /// Rates of categories that differ (category → basis points).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub category_rates_bp: BTreeMap<String, u32>,
    #[serde(default)]
    pub shipping: Shipping,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shipping {
    /// The flat rate per currency (a currency not listed ships free).
    #[serde(default)]
    pub flat: Amounts,
    /// Free from this discounted subtotal on, per currency.
    #[serde(default)]
    pub free_above: Amounts,
}

/// What a request prices for: where the customer is, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricingContext {
    /// A region of the document; empty: no tax and no shipping.
    pub region: String,
    /// Milliseconds since the Unix epoch (coupon validity).
    pub now_ms: u64,
}

/// The bill of one cart, per currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricingSummary {
    /// The version of the rules it was priced with.
    pub rules_version: u64,
    pub region: String,
    /// Sorted by currency code.
    pub currencies: Vec<CurrencySummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencySummary {
    pub currency: String,
    pub subtotal: u64,
    /// The coupons that apply, in code order.
    pub discounts: Vec<Discount>,
    pub discount_total: u64,
    /// Tax added to the total (0 in tax-inclusive regions).
    pub tax: u64,
    /// Tax the total contains (tax-inclusive regions; 0 elsewhere).
    pub tax_included: u64,
    pub shipping: u64,
    pub total: u64,
    /// Applied coupons that do not apply now, in code order, with why.
    pub not_applied: Vec<NotApplied>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discount {
    pub code: String,
    pub amount: u64,
    /// The coupon makes shipping free.
    pub free_shipping: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotApplied {
    pub code: String,
    pub reason: String,
}

impl CurrencySummary {
    pub fn money(&self, amount: u64) -> Money {
        Money {
            currency: self.currency.clone(),
            amount_minor: i64::try_from(amount).unwrap_or(i64::MAX),
        }
    }
}

/// A pricing document refused: the key (`coupons[1].percent_off`, `regions.DE.tax_rate_bp`)
/// and why. Nothing of the document is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pricing rules: {key}: {reason}")]
pub struct PricingError {
    pub key: String,
    pub reason: String,
}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> PricingError {
    PricingError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The reason of a field check borrowed from the cart's validation.
fn reason(e: CartError) -> String {
    match e {
        CartError::InvalidArgument { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// `n / d` rounded to the nearest integer, halves away from zero (the one rounding rule).
pub fn div_round(n: u128, d: u128) -> u128 {
    debug_assert!(d > 0);
    (n + d / 2) / d
}

fn rfc3339_ms(key: &str, text: &str) -> Result<u64, PricingError> {
    let at =
        humantime::parse_rfc3339_weak(text).map_err(|e| bad(key, format!("{text:?} is not an RFC 3339 time: {e}")))?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad(key, format!("{text:?} is before 1970")))?
        .as_millis();
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn check_amounts(key: &str, amounts: &Amounts) -> Result<(), PricingError> {
    for (currency, amount) in amounts {
        crate::validate::currency(currency).map_err(|e| bad(format!("{key}.{currency}"), reason(e)))?;
        if *amount > AMOUNT_MAX {
            return Err(bad(
                format!("{key}.{currency}"),
                format!("{amount} is over {AMOUNT_MAX}"),
            ));
        }
    }
    Ok(())
}

fn check_rate(key: &str, bp: u32) -> Result<(), PricingError> {
    if bp > 10_000 {
        return Err(bad(key, format!("{bp} basis points is over 100%")));
    }
    Ok(())
}

impl PricingRules {
    /// Parses and checks a document: any bad key refuses the whole of it (`INVALID_ARGUMENT`
    /// naming the key, e.g. `coupons[1].percent_off`).
    pub fn parse(text: &str) -> Result<Self, PricingError> {
        if text.len() > DOCUMENT_MAX_BYTES {
            return Err(bad(
                "document",
                format!("{} bytes; at most {DOCUMENT_MAX_BYTES}", text.len()),
            ));
        }
        let rules: PricingRules = toml::from_str(text).map_err(|e: toml::de::Error| {
            let key = e.span().map_or("document".to_owned(), |span| {
                format!(
                    "line {}",
                    text.as_bytes()[..span.start.min(text.len())]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count()
                        + 1
                )
            });
            bad(key, e.message())
        })?;
        rules.check()?;
        Ok(rules)
    }

    /// The checks of [`PricingRules::parse`] (also run on a document that arrives encoded).
    pub fn check(&self) -> Result<(), PricingError> {
        if self.coupons.len() > COUPONS_MAX {
            return Err(bad(
                "coupons",
                format!("{} coupons; at most {COUPONS_MAX}", self.coupons.len()),
            ));
        }
        if self.regions.len() > REGIONS_MAX {
            return Err(bad(
                "regions",
                format!("{} regions; at most {REGIONS_MAX}", self.regions.len()),
            ));
        }
        let mut codes = std::collections::BTreeSet::new();
        let limits = crate::limits::Limits::default();
        for (i, c) in self.coupons.iter().enumerate() {
            let key = |field: &str| format!("coupons[{i}].{field}");
            crate::ids::CouponCode::parse(&c.code, &limits).map_err(|e| bad(key("code"), reason(e)))?;
            if !codes.insert(c.code.as_str()) {
                return Err(bad(key("code"), format!("{:?} is defined twice", c.code)));
            }
            match (c.percent_off, &c.amount_off) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        key("amount_off"),
                        "a coupon takes percent_off or amount_off, not both",
                    ))
                }
                (None, None) if !c.free_shipping => {
                    return Err(bad(
                        key("code"),
                        "gives nothing: set percent_off, amount_off or free_shipping",
                    ))
                }
                (Some(p), None) if !(1..=100).contains(&p) => {
                    return Err(bad(key("percent_off"), format!("{p} must be between 1 and 100")))
                }
                (None, Some(amounts)) => check_amounts(&key("amount_off"), amounts)?,
                _ => {}
            }
            check_amounts(&key("min_subtotal"), &c.min_subtotal)?;
            for (field, list) in [("products", &c.products), ("categories", &c.categories)] {
                if list.len() > RESTRICTION_MAX {
                    return Err(bad(
                        key(field),
                        format!("{} entries; at most {RESTRICTION_MAX}", list.len()),
                    ));
                }
            }
            let from = c
                .valid_from
                .as_deref()
                .map(|t| rfc3339_ms(&key("valid_from"), t))
                .transpose()?;
            let until = c
                .valid_until
                .as_deref()
                .map(|t| rfc3339_ms(&key("valid_until"), t))
                .transpose()?;
            if let (Some(from), Some(until)) = (from, until) {
                if from >= until {
                    return Err(bad(key("valid_until"), "must be later than valid_from"));
                }
            }
        }
        for (name, r) in &self.regions {
            let key = |field: &str| format!("regions.{name}.{field}");
            if name.is_empty()
                || name.len() > 32
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(bad(
                    format!("regions.{name}"),
                    "a region code is 1-32 upper-case letters, digits or '-' (e.g. DE, US-CA)",
                ));
            }
            check_rate(&key("tax_rate_bp"), r.tax_rate_bp)?;
            for (category, bp) in &r.category_rates_bp {
                check_rate(&key(&format!("category_rates_bp.{category}")), *bp)?;
            }
            check_amounts(&key("shipping.flat"), &r.shipping.flat)?;
            check_amounts(&key("shipping.free_above"), &r.shipping.free_above)?;
        }
        Ok(())
    }

    pub fn coupon(&self, code: &str) -> Option<&Coupon> {
        self.coupons.iter().find(|c| c.code == code)
    }

    /// The document as TOML (what `cartctl pricing show` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// One line as pricing sees it.
struct Item<'a> {
    product_id: &'a str,
    category: Option<&'a str>,
    amount: u128,
}

/// A coupon that passed the checks for one currency, and what it would take.
struct Candidate<'a> {
    coupon: &'a Coupon,
    /// Its discount before the cut to what the subtotal leaves.
    amount: u128,
}

/// Prices `view` by `rules` for `ctx`. `unavailable` names products excluded from the totals
/// (marked so by a refresh). An unknown region prices without tax and shipping; the caller
/// refuses it beforehand where that is an error ([`PricingRules::regions`]). A currency whose
/// subtotal passes [`AMOUNT_MAX`] is refused (`key` `pricing`): beyond any real cart, and it keeps
/// the arithmetic exact.
pub fn price(
    view: &CartView,
    rules: &PricingRules,
    ctx: &PricingContext,
    unavailable: &dyn Fn(&str) -> bool,
) -> Result<PricingSummary, PricingError> {
    let region = rules.regions.get(&ctx.region);
    let mut by_currency: BTreeMap<&str, Vec<Item>> = BTreeMap::new();
    for line in &view.lines {
        // The current data when a refresh brought it; a line marked unavailable stays out.
        let snapshot = line.priced_snapshot();
        let items = by_currency.entry(snapshot.currency.as_str()).or_default();
        if !line.available() || unavailable(&line.product_id) {
            continue;
        }
        items.push(Item {
            product_id: &line.product_id,
            category: snapshot.attributes.get(CATEGORY_ATTRIBUTE).map(String::as_str),
            amount: u128::from(line.quantity) * u128::from(snapshot.unit_price_minor),
        });
    }
    let mut codes: Vec<&str> = view.coupons.iter().map(String::as_str).collect();
    codes.sort_unstable();
    codes.dedup();
    let currencies = by_currency
        .into_iter()
        .map(|(currency, mut items)| {
            let subtotal: u128 = items.iter().map(|i| i.amount).sum();
            if subtotal > u128::from(AMOUNT_MAX) {
                return Err(bad(
                    "pricing",
                    format!("the {currency} subtotal {subtotal} is over {AMOUNT_MAX} minor units, the most a cart is priced at"),
                ));
            }
            // Line order must not matter: sort by product (a cart holds a product once).
            items.sort_by(|a, b| a.product_id.cmp(b.product_id));
            Ok(price_currency(currency, &items, &codes, rules, region, ctx.now_ms))
        })
        .collect::<Result<_, _>>()?;
    Ok(PricingSummary {
        rules_version: rules.version,
        region: ctx.region.clone(),
        currencies,
    })
}

fn clamp(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

fn eligible(coupon: &Coupon, item: &Item) -> bool {
    (coupon.products.is_empty() || coupon.products.iter().any(|p| p == item.product_id))
        && (coupon.categories.is_empty() || item.category.is_some_and(|c| coupon.categories.iter().any(|k| k == c)))
}

/// Why `coupon` does not apply to this currency's lines now, or its discount before the cut.
fn check_coupon(coupon: &Coupon, currency: &str, items: &[Item], subtotal: u128, now_ms: u64) -> Result<u128, String> {
    // Validity was checked when the document was accepted; a time that no longer parses
    // cannot occur, and would count as no bound.
    let bound = |t: &Option<String>| t.as_deref().and_then(|t| rfc3339_ms("", t).ok());
    if let Some(from) = bound(&coupon.valid_from) {
        if now_ms < from {
            return Err(format!(
                "not valid before {}",
                coupon.valid_from.as_deref().unwrap_or_default()
            ));
        }
    }
    if let Some(until) = bound(&coupon.valid_until) {
        if now_ms >= until {
            return Err(format!(
                "expired at {}",
                coupon.valid_until.as_deref().unwrap_or_default()
            ));
        }
    }
    if let Some(min) = coupon.min_subtotal.get(currency) {
        if subtotal < u128::from(*min) {
            return Err(format!(
                "minimum subtotal {} not met",
                crate::snapshot::format_money(i64::try_from(*min).unwrap_or(i64::MAX), currency)
            ));
        }
    }
    let base: u128 = items.iter().filter(|i| eligible(coupon, i)).map(|i| i.amount).sum();
    if base == 0 && (coupon.percent_off.is_some() || coupon.amount_off.is_some()) {
        return Err("no eligible items".into());
    }
    match (coupon.percent_off, &coupon.amount_off) {
        (Some(p), _) => Ok(div_round(base * u128::from(p), 100)),
        (None, Some(amounts)) => match amounts.get(currency) {
            Some(a) => Ok(u128::from(*a).min(base)),
            None => Err(format!("no amount in {currency}")),
        },
        (None, None) => Ok(0),
    }
}

fn price_currency(
    currency: &str,
    items: &[Item],
    codes: &[&str],
    rules: &PricingRules,
    region: Option<&Region>,
    now_ms: u64,
) -> CurrencySummary {
    let subtotal: u128 = items.iter().map(|i| i.amount).sum();
    let mut not_applied = Vec::new();
    let mut candidates = Vec::new();
    for code in codes {
        let Some(coupon) = rules.coupon(code) else {
            not_applied.push(NotApplied {
                code: (*code).to_owned(),
                reason: "unknown code".into(),
            });
            continue;
        };
        match check_coupon(coupon, currency, items, subtotal, now_ms) {
            Ok(amount) => candidates.push(Candidate { coupon, amount }),
            Err(reason) => not_applied.push(NotApplied {
                code: (*code).to_owned(),
                reason,
            }),
        }
    }
    // The best combination: each non-combining coupon alone, or all combining ones together.
    let worth = |set: &[&Candidate]| {
        let discount: u128 = set.iter().map(|c| c.amount).sum::<u128>().min(subtotal);
        (discount, set.iter().any(|c| c.coupon.free_shipping))
    };
    let together: Vec<&Candidate> = candidates.iter().filter(|c| c.coupon.combinable).collect();
    let mut best = together.clone();
    for alone in candidates.iter().filter(|c| !c.coupon.combinable) {
        let option = vec![alone];
        let (a, b) = (worth(&option), worth(&best));
        // Larger discount, then free shipping; a tie keeps the earlier option (code order:
        // the combining set is considered first, then single coupons in code order).
        if a > b {
            best = option;
        }
    }
    let chosen: Vec<&str> = best.iter().map(|c| c.coupon.code.as_str()).collect();
    for c in &candidates {
        if !chosen.contains(&c.coupon.code.as_str()) {
            let with = if c.coupon.combinable {
                format!("does not combine with {}", chosen.join(", "))
            } else {
                "does not combine with other coupons".into()
            };
            not_applied.push(NotApplied {
                code: c.coupon.code.clone(),
                reason: with,
            });
        }
    }
    not_applied.sort_by(|a, b| a.code.cmp(&b.code));
    let mut left = subtotal;
    let mut discounts = Vec::new();
    for c in &best {
        let amount = c.amount.min(left);
        left -= amount;
        discounts.push(Discount {
            code: c.coupon.code.clone(),
            amount: clamp(amount),
            free_shipping: c.coupon.free_shipping,
        });
    }
    let discount_total = subtotal - left;
    let free_shipping = discounts.iter().any(|d| d.free_shipping);
    let (mut tax, mut tax_included, mut shipping) = (0u128, 0u128, 0u128);
    if let Some(region) = region {
        // Spread the discount over the lines by amount, exactly (largest remainder).
        let nets = spread(items, discount_total, subtotal);
        let mut per_rate: BTreeMap<u32, u128> = BTreeMap::new();
        for (item, net) in items.iter().zip(nets) {
            let rate = item
                .category
                .and_then(|c| region.category_rates_bp.get(c))
                .copied()
                .unwrap_or(region.tax_rate_bp);
            *per_rate.entry(rate).or_default() += net;
        }
        for (rate, net) in per_rate {
            let rate = u128::from(rate);
            if region.tax_inclusive {
                tax_included += div_round(net * rate, 10_000 + rate);
            } else {
                tax += div_round(net * rate, 10_000);
            }
        }
        let goods = subtotal - discount_total;
        let free_above = region.shipping.free_above.get(currency).map(|a| u128::from(*a));
        shipping = match region.shipping.flat.get(currency) {
            _ if free_shipping || items.is_empty() => 0,
            _ if free_above.is_some_and(|t| goods >= t) => 0,
            Some(flat) => u128::from(*flat),
            None => 0,
        };
    }
    let total = subtotal - discount_total + tax + shipping;
    CurrencySummary {
        currency: currency.to_owned(),
        subtotal: clamp(subtotal),
        discounts,
        discount_total: clamp(discount_total),
        tax: clamp(tax),
        tax_included: clamp(tax_included),
        shipping: clamp(shipping),
        total: clamp(total),
        not_applied,
    }
}

/// Each item's amount less its share of `discount` (shares in proportion to the amounts, the
/// remainder to the largest fractions, ties to the earlier item): the nets sum to
/// `subtotal − discount` exactly.
fn spread(items: &[Item], discount: u128, subtotal: u128) -> Vec<u128> {
    if discount == 0 || subtotal == 0 {
        return items.iter().map(|i| i.amount).collect();
    }
    let mut shares: Vec<(u128, u128)> = items
        .iter()
        .map(|i| {
            let exact = i.amount * discount;
            (exact / subtotal, exact % subtotal)
        })
        .collect();
    let mut short = discount - shares.iter().map(|s| s.0).sum::<u128>();
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|a, b| shares[*b].1.cmp(&shares[*a].1).then(a.cmp(b)));
    for i in order {
        if short == 0 {
            break;
        }
        shares[i].0 += 1;
        short -= 1;
    }
    items
        .iter()
        .zip(shares)
        .map(|(i, (share, _))| i.amount - share)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ItemSnapshot;
    use crate::view::LineView;
    use proptest::prelude::*;

    /// The document of the worked examples: the README's example, `cluster-config/pricing.toml`.
    pub(crate) const RULES: &str = include_str!("../../cluster-config/pricing.toml");

    /// 2026-12-04T00:00:00Z.
    const NOW: u64 = 1_796_342_400_000;

    fn line(product: &str, quantity: u64, price: u64, currency: &str, category: Option<&str>) -> LineView {
        let mut snapshot = ItemSnapshot::new(product, price, currency);
        if let Some(c) = category {
            snapshot = snapshot.with_attribute(CATEGORY_ATTRIBUTE, c);
        }
        LineView {
            product_id: product.into(),
            quantity,
            snapshot,
            current: None,
        }
    }

    fn view(lines: Vec<LineView>, coupons: &[&str]) -> CartView {
        CartView {
            cart_id: "user:1".into(),
            owner: crate::ids::OwnerKind::User,
            lines,
            saved: Vec::new(),
            coupons: coupons.iter().map(|c| c.to_string()).collect(),
            subtotals: Vec::new(),
            touched_at_ms: 0,
            merged_into: None,
            version: String::new(),
            expires_at_ms: 0,
            pricing: None,
        }
    }

    fn priced(lines: Vec<LineView>, coupons: &[&str], region: &str) -> PricingSummary {
        let rules = PricingRules::parse(RULES).expect("the example document parses");
        let ctx = PricingContext {
            region: region.into(),
            now_ms: NOW,
        };
        price(&view(lines, coupons), &rules, &ctx, &|_| false).unwrap()
    }

    /// (subtotal, discounts, tax, tax included, shipping, total, not applied) of one currency.
    type Row = (u64, Vec<(&'static str, u64)>, u64, u64, u64, u64, Vec<&'static str>);

    type OwnedRow = (u64, Vec<(String, u64)>, u64, u64, u64, u64, Vec<String>);

    fn row(c: &CurrencySummary) -> OwnedRow {
        (
            c.subtotal,
            c.discounts.iter().map(|d| (d.code.clone(), d.amount)).collect(),
            c.tax,
            c.tax_included,
            c.shipping,
            c.total,
            c.not_applied
                .iter()
                .map(|n| format!("{}: {}", n.code, n.reason))
                .collect(),
        )
    }

    fn expect(summary: &PricingSummary, currency: &str, want: Row) {
        let got = summary
            .currencies
            .iter()
            .find(|c| c.currency == currency)
            .unwrap_or_else(|| panic!("no {currency} in {summary:?}"));
        let want = (
            want.0,
            want.1.into_iter().map(|(c, a)| (c.to_string(), a)).collect(),
            want.2,
            want.3,
            want.4,
            want.5,
            want.6.into_iter().map(String::from).collect(),
        );
        assert_eq!(row(got), want, "{currency}");
    }

    #[test]
    fn worked_examples_match_the_hand_computed_figures() {
        // DE, VAT 20% included: 3000 contains 3000 × 20/120 = 500; under the 5000 threshold.
        let s = priced(vec![line("a", 2, 1500, "EUR", None)], &[], "DE");
        expect(&s, "EUR", (3000, vec![], 0, 500, 495, 3495, vec![]));
        // 10% of 5500 = 550; 4950 < 5000 ships for 495; VAT in 4950 = 825.
        let lines = || vec![line("a", 2, 1500, "EUR", None), line("b", 1, 2500, "EUR", None)];
        let s = priced(lines(), &["TENOFF"], "DE");
        expect(&s, "EUR", (5500, vec![("TENOFF", 550)], 0, 825, 495, 5445, vec![]));
        // Percent and fixed combined: 550 + 500; VAT in 4450 = 741.67 → 742.
        let s = priced(lines(), &["FIVE", "TENOFF"], "DE");
        expect(
            &s,
            "EUR",
            (5500, vec![("FIVE", 500), ("TENOFF", 550)], 0, 742, 495, 4945, vec![]),
        );
        // Not combined: SOLO's 30% (1650) beats TENOFF's 550 and goes alone; VAT in 3850 = 642.
        let s = priced(lines(), &["TENOFF", "SOLO"], "DE");
        expect(
            &s,
            "EUR",
            (
                5500,
                vec![("SOLO", 1650)],
                0,
                642,
                495,
                4345,
                vec!["TENOFF: does not combine with SOLO"],
            ),
        );
        // The free-shipping threshold: 6000 ≥ 5000.
        let s = priced(vec![line("a", 4, 1500, "EUR", None)], &[], "DE");
        expect(&s, "EUR", (6000, vec![], 0, 1000, 0, 6000, vec![]));
        // A free-shipping coupon.
        let s = priced(vec![line("a", 1, 1000, "EUR", None)], &["SHIPFREE"], "DE");
        expect(&s, "EUR", (1000, vec![("SHIPFREE", 0)], 0, 167, 0, 1000, vec![]));
        // US-CA, 7.25% added: 5998 − 500 = 5498, tax 398.605 → 399, shipping 899.
        let s = priced(vec![line("a", 2, 2999, "USD", None)], &["FIVE"], "US-CA");
        expect(&s, "USD", (5998, vec![("FIVE", 500)], 399, 0, 899, 6796, vec![]));
        // Expired, minimum not met, unknown.
        let s = priced(
            vec![line("a", 1, 1500, "USD", None)],
            &["SUMMER", "FIVE", "BOGUS"],
            "US-CA",
        );
        expect(
            &s,
            "USD",
            (
                1500,
                vec![],
                109,
                0,
                899,
                2508,
                vec![
                    "BOGUS: unknown code",
                    "FIVE: minimum subtotal 20.00 USD not met",
                    "SUMMER: expired at 2026-09-01T00:00:00Z",
                ],
            ),
        );
        // Category rates and a category coupon with nothing eligible: books 7% in 1070 = 70,
        // the shirt's 20% in 2400 = 400.
        let s = priced(
            vec![
                line("book", 1, 1070, "EUR", Some("books")),
                line("shirt", 1, 2400, "EUR", None),
            ],
            &["SHOES15"],
            "DE",
        );
        expect(
            &s,
            "EUR",
            (3470, vec![], 0, 470, 495, 3965, vec!["SHOES15: no eligible items"]),
        );
        // A category coupon takes its lines only: 15% of 4000.
        let s = priced(
            vec![
                line("boot", 1, 4000, "EUR", Some("shoes")),
                line("sock", 1, 1000, "EUR", None),
            ],
            &["SHOES15"],
            "DE",
        );
        expect(&s, "EUR", (5000, vec![("SHOES15", 600)], 0, 733, 495, 4895, vec![]));
    }

    #[test]
    fn two_currencies_two_coupons_one_expired_with_inclusive_vat() {
        // The cart of the Python test (client/tests/python): EUR and USD, TENOFF and
        // the expired SUMMER, region DE.
        let s = priced(
            vec![line("mug", 1, 1000, "EUR", None), line("tee", 2, 1500, "USD", None)],
            &["SUMMER", "TENOFF"],
            "DE",
        );
        assert_eq!(s.region, "DE");
        // EUR: 1000 − 100 = 900, VAT in it 150, ships for 495.
        expect(
            &s,
            "EUR",
            (
                1000,
                vec![("TENOFF", 100)],
                0,
                150,
                495,
                1395,
                vec!["SUMMER: expired at 2026-09-01T00:00:00Z"],
            ),
        );
        // USD: 3000 − 300 = 2700, VAT 450, DE has no USD shipping rate.
        expect(
            &s,
            "USD",
            (
                3000,
                vec![("TENOFF", 300)],
                0,
                450,
                0,
                2700,
                vec!["SUMMER: expired at 2026-09-01T00:00:00Z"],
            ),
        );
    }

    #[test]
    fn unavailable_lines_are_out_of_the_totals() {
        let rules = PricingRules::parse(RULES).unwrap();
        let v = view(
            vec![line("a", 1, 1000, "EUR", None), line("b", 1, 9000, "EUR", None)],
            &[],
        );
        let ctx = PricingContext {
            region: "DE".into(),
            now_ms: NOW,
        };
        let s = price(&v, &rules, &ctx, &|p| p == "b").unwrap();
        assert_eq!((s.currencies[0].subtotal, s.currencies[0].total), (1000, 1495));
    }

    #[test]
    fn a_bad_document_is_refused_naming_the_key() {
        let refused = |text: &str| PricingRules::parse(text).unwrap_err();
        let e = refused("[[coupons]]\ncode = \"X\"\npercent_off = 150\n");
        assert_eq!(e.key, "coupons[0].percent_off", "{e}");
        let e = refused("[[coupons]]\ncode = \"X\"\namount_off = { eur = 5 }\n");
        assert_eq!(e.key, "coupons[0].amount_off.eur", "{e}");
        let e =
            refused("[[coupons]]\ncode = \"X\"\npercent_off = 5\n[[coupons]]\ncode = \"X\"\nfree_shipping = true\n");
        assert!(e.key == "coupons[1].code" && e.reason.contains("twice"), "{e}");
        let e = refused("[regions.DE]\ntax_rate_bp = 20000\n");
        assert_eq!(e.key, "regions.DE.tax_rate_bp", "{e}");
        let e = refused("[regions.de]\n");
        assert_eq!(e.key, "regions.de", "{e}");
        let e = refused("[[coupons]]\ncode = \"X\"\npercent_off = 5\nvalid_until = \"soon\"\n");
        assert_eq!(e.key, "coupons[0].valid_until", "{e}");
        let e = refused("[[coupons]]\ncode = \"X\"\npercnt_off = 5\n");
        assert!(e.reason.contains("percnt_off") && e.key.starts_with("line 3"), "{e}");
        let e = refused("[[coupons]]\ncode = \"X\"\n");
        assert!(e.reason.contains("gives nothing"), "{e}");
    }

    #[test]
    fn a_subtotal_beyond_the_bound_is_refused_not_wrapped() {
        let rules = PricingRules::parse(RULES).unwrap();
        let ctx = PricingContext {
            region: "DE".into(),
            now_ms: NOW,
        };
        let huge = (0..400)
            .map(|i| line(&format!("p{i}"), 1_000_000, 1_000_000_000_000, "EUR", None))
            .collect();
        let e = price(&view(huge, &["SOLO", "TENOFF"]), &rules, &ctx, &|_| false).unwrap_err();
        assert_eq!(e.key, "pricing", "{e}");
        let big = PricingRules::parse(&"#".repeat(DOCUMENT_MAX_BYTES + 1)).unwrap_err();
        assert_eq!(big.key, "document", "{big}");
    }

    #[test]
    fn the_document_survives_a_round_trip() {
        let rules = PricingRules::parse(RULES).unwrap();
        assert_eq!(PricingRules::parse(&rules.to_toml()).unwrap(), rules);
    }

    fn arb_line() -> impl Strategy<Value = LineView> {
        (
            0u8..40,
            1u64..100,
            0u64..200_000,
            prop::sample::select(vec!["EUR", "USD"]),
            prop::sample::select(vec![None, Some("books"), Some("shoes")]),
        )
            .prop_map(|(p, q, price, cur, cat)| line(&format!("p{p}"), q, price, cur, cat))
    }

    fn arb_cart() -> impl Strategy<Value = (Vec<LineView>, Vec<&'static str>, &'static str, u64)> {
        (
            prop::collection::vec(arb_line(), 0..12).prop_map(|mut lines| {
                // A cart holds a product once.
                lines.sort_by(|a, b| a.product_id.cmp(&b.product_id));
                lines.dedup_by(|a, b| a.product_id == b.product_id);
                lines
            }),
            prop::sample::subsequence(
                vec!["TENOFF", "FIVE", "SUMMER", "SOLO", "SHIPFREE", "SHOES15", "BOGUS"],
                0..=7,
            ),
            prop::sample::select(vec!["DE", "US-CA", ""]),
            prop::sample::select(vec![NOW, 1_780_000_000_000]),
        )
    }

    proptest! {
        #[test]
        fn the_pricing_laws_hold((lines, coupons, region, now) in arb_cart(), seed in any::<u64>()) {
            let rules = PricingRules::parse(RULES).unwrap();
            let ctx = PricingContext { region: region.into(), now_ms: now };
            let s = price(&view(lines.clone(), &coupons), &rules, &ctx, &|_| false).unwrap();
            for c in &s.currencies {
                prop_assert_eq!(c.total, c.subtotal - c.discount_total + c.tax + c.shipping);
                prop_assert!(c.discount_total <= c.subtotal);
                prop_assert_eq!(c.discount_total, c.discounts.iter().map(|d| d.amount).sum::<u64>());
                prop_assert!(c.tax_included <= c.subtotal - c.discount_total);
                let expected: u64 = lines.iter().filter(|l| l.snapshot.currency == c.currency)
                    .map(|l| l.quantity * l.snapshot.unit_price_minor).sum();
                prop_assert_eq!(c.subtotal, expected);
            }
            // Independent of the order of lines and coupons.
            let mut shuffled = lines.clone();
            let mut codes = coupons.clone();
            let n = shuffled.len().max(1);
            shuffled.rotate_left((seed as usize) % n);
            if seed % 2 == 1 { shuffled.reverse(); }
            codes.reverse();
            let again = price(&view(shuffled, &codes), &rules, &ctx, &|_| false).unwrap();
            prop_assert_eq!(&again, &s);
            // Stable across a reload of the same document.
            let reloaded = PricingRules::parse(&rules.to_toml()).unwrap();
            prop_assert_eq!(&price(&view(lines, &coupons), &reloaded, &ctx, &|_| false).unwrap(), &s);
        }
    }
}
