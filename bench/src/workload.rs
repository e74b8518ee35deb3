//! Turning a profile into a stream of concrete operations: which cart, which product, how many.
//!
//! Carts come from a fixed population `user:bench-0 … user:bench-<N-1>`, drawn either uniformly
//! or Zipfian (rank 1 = `user:bench-0` is the hottest). Products come from a pool of
//! [`SKU_POOL`] SKUs, so a cart never holds more than that many lines. SetQuantity targets a line
//! the same generator recently added, so it usually finds the line present.

use std::collections::VecDeque;

use clap::ValueEnum;
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution as _;
use rand::{Rng, RngExt};
use rand_distr::Zipf;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::BenchError;
use crate::profile::{OpKind, Profile};

/// Distinct products the bench adds; bounds every cart to this many lines.
pub const SKU_POOL: u32 = 50;

/// Coupon codes ApplyCoupon / RemoveCoupon choose from.
pub const COUPONS: [&str; 4] = ["BENCH5", "BENCH10", "FREESHIP", "WELCOME"];

/// Zipf exponent (θ) used by `--distribution zipf`.
pub const ZIPF_THETA: f64 = 0.99;

/// Recently added (cart, SKU) pairs a generator remembers for SetQuantity.
const RECENT_LINES: usize = 256;

/// How carts are chosen from the population (`--distribution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDistribution {
    Zipf,
    Uniform,
    /// Carts 0, 1, 2, … in turn across every client (wrapping): a preload that writes each cart
    /// of the key space once.
    Sequential,
}

/// Draws cart indexes in `0..population`.
#[derive(Debug, Clone)]
pub enum CartPicker {
    Uniform {
        population: u64,
    },
    Zipf {
        population: u64,
        zipf: Zipf<f64>,
    },
    /// Shared by every clone: the next index to hand out.
    Sequential {
        population: u64,
        next: Arc<AtomicU64>,
    },
}

impl CartPicker {
    pub fn new(distribution: KeyDistribution, population: u64) -> Result<Self, BenchError> {
        if population == 0 {
            return Err(BenchError::InvalidOption {
                option: "--carts",
                reason: "must be at least 1".into(),
            });
        }
        Ok(match distribution {
            KeyDistribution::Uniform => CartPicker::Uniform { population },
            KeyDistribution::Sequential => CartPicker::Sequential {
                population,
                next: Arc::new(AtomicU64::new(0)),
            },
            KeyDistribution::Zipf => {
                let zipf = Zipf::new(population as f64, ZIPF_THETA).map_err(|e| BenchError::InvalidOption {
                    option: "--carts",
                    reason: e.to_string(),
                })?;
                CartPicker::Zipf { population, zipf }
            }
        })
    }

    /// A cart index in `0..population`; under Zipf, index 0 is the most popular.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            CartPicker::Uniform { population } => rng.random_range(0..*population),
            CartPicker::Sequential { population, next } => next.fetch_add(1, Ordering::Relaxed) % *population,
            CartPicker::Zipf { population, zipf } => {
                // Zipf yields ranks 1..=n as floats; clamp guards the float edge.
                let rank = zipf.sample(rng) as u64;
                rank.clamp(1, *population) - 1
            }
        }
    }
}

/// The cart id for a population index.
pub fn cart_id(index: u64) -> String {
    format!("user:bench-{index}")
}

/// The one cart of the `add-to-size` profile for carts of `lines` lines.
pub fn size_cart_id(lines: u32) -> String {
    format!("user:size-{lines}")
}

/// The AddItems that fill the `add-to-size` cart: one of quantity 1 for each of `sku-000 …
/// sku-<lines-1>`. Sent again to a filled cart, they raise quantities and add no line.
pub fn prefill_ops(lines: u32) -> impl Iterator<Item = Op> {
    (0..lines).map(move |i| Op::AddItem {
        cart_id: size_cart_id(lines),
        sku: Sku(i),
        quantity: 1,
    })
}

/// A product of the bench catalog, `sku-000 … sku-049`, with a fixed price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sku(pub u32);

impl Sku {
    pub fn product_id(self) -> String {
        format!("sku-{:03}", self.0)
    }

    pub fn name(self) -> String {
        format!("Bench item {}", self.0)
    }

    /// Unit price in EUR cents: 4.99, 5.99, … (fixed per SKU so snapshots never conflict).
    pub fn unit_price_minor(self) -> u64 {
        499 + 100 * u64::from(self.0)
    }
}

/// One concrete request, ready for a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    GetCart { cart_id: String },
    AddItem { cart_id: String, sku: Sku, quantity: u32 },
    SetQuantity { cart_id: String, sku: Sku, quantity: u32 },
    RemoveItem { cart_id: String, sku: Sku },
    ApplyCoupon { cart_id: String, code: &'static str },
    RemoveCoupon { cart_id: String, code: &'static str },
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::GetCart { .. } => OpKind::GetCart,
            Op::AddItem { .. } => OpKind::AddItem,
            Op::SetQuantity { .. } => OpKind::SetQuantity,
            Op::RemoveItem { .. } => OpKind::RemoveItem,
            Op::ApplyCoupon { .. } => OpKind::ApplyCoupon,
            Op::RemoveCoupon { .. } => OpKind::RemoveCoupon,
        }
    }

    pub fn cart_id(&self) -> &str {
        match self {
            Op::GetCart { cart_id }
            | Op::AddItem { cart_id, .. }
            | Op::SetQuantity { cart_id, .. }
            | Op::RemoveItem { cart_id, .. }
            | Op::ApplyCoupon { cart_id, .. }
            | Op::RemoveCoupon { cart_id, .. } => cart_id,
        }
    }
}

/// What a workload is made of; cheap to copy into every worker.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub profile: Profile,
    pub carts: CartPicker,
    /// `add-to-size` only: lines of its one cart (at least 1; the CLI checks). Ignored otherwise.
    pub cart_lines: u32,
}

/// A stateful operation generator; one per worker (or per dispatcher), never shared.
pub struct Workload {
    /// `Some(lines)` for `add-to-size`: every op is +1 on a line of `user:size-<lines>`.
    sized_cart: Option<u32>,
    kinds: Vec<OpKind>,
    mix: WeightedIndex<u32>,
    carts: CartPicker,
    /// (cart index, SKU) pairs this generator added lately, newest last.
    recent: VecDeque<(u64, Sku)>,
}

impl Workload {
    pub fn new(spec: WorkloadSpec) -> Self {
        let mix = spec.profile.mix();
        let kinds = mix.iter().map(|(k, _)| *k).collect();
        // The mixes are static and non-empty with positive weights (see profile tests).
        let mix = WeightedIndex::new(mix.iter().map(|(_, w)| *w)).expect("profile mix has positive weights");
        Workload {
            sized_cart: (spec.profile == Profile::AddToSize).then_some(spec.cart_lines.max(1)),
            kinds,
            mix,
            carts: spec.carts,
            recent: VecDeque::with_capacity(RECENT_LINES),
        }
    }

    /// Which kind of operation comes next.
    pub fn next_kind<R: Rng + ?Sized>(&self, rng: &mut R) -> OpKind {
        self.kinds[self.mix.sample(rng)]
    }

    pub fn next_op<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Op {
        let kind = self.next_kind(rng);
        self.op_of_kind(kind, rng)
    }

    fn op_of_kind<R: Rng + ?Sized>(&mut self, kind: OpKind, rng: &mut R) -> Op {
        if let Some(lines) = self.sized_cart {
            // An existing line, so the cart keeps exactly `lines` lines during the run.
            return Op::AddItem {
                cart_id: size_cart_id(lines),
                sku: Sku(rng.random_range(0..lines)),
                quantity: 1,
            };
        }
        match kind {
            OpKind::GetCart => Op::GetCart {
                cart_id: cart_id(self.carts.pick(rng)),
            },
            OpKind::AddItem => {
                let cart = self.carts.pick(rng);
                let sku = random_sku(rng);
                self.remember(cart, sku);
                Op::AddItem {
                    cart_id: cart_id(cart),
                    sku,
                    quantity: 1,
                }
            }
            OpKind::SetQuantity => {
                let (cart, sku) = self
                    .recent_line(rng)
                    .unwrap_or_else(|| (self.carts.pick(rng), random_sku(rng)));
                Op::SetQuantity {
                    cart_id: cart_id(cart),
                    sku,
                    quantity: rng.random_range(1..=3),
                }
            }
            OpKind::RemoveItem => Op::RemoveItem {
                cart_id: cart_id(self.carts.pick(rng)),
                sku: random_sku(rng),
            },
            OpKind::ApplyCoupon => Op::ApplyCoupon {
                cart_id: cart_id(self.carts.pick(rng)),
                code: random_coupon(rng),
            },
            OpKind::RemoveCoupon => Op::RemoveCoupon {
                cart_id: cart_id(self.carts.pick(rng)),
                code: random_coupon(rng),
            },
        }
    }

    fn remember(&mut self, cart: u64, sku: Sku) {
        if self.recent.len() == RECENT_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back((cart, sku));
    }

    fn recent_line<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<(u64, Sku)> {
        if self.recent.is_empty() {
            return None;
        }
        Some(self.recent[rng.random_range(0..self.recent.len())])
    }
}

fn random_sku<R: Rng + ?Sized>(rng: &mut R) -> Sku {
    Sku(rng.random_range(0..SKU_POOL))
}

fn random_coupon<R: Rng + ?Sized>(rng: &mut R) -> &'static str {
    COUPONS[rng.random_range(0..COUPONS.len())]
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;

    const DRAWS: usize = 200_000;

    fn spec(profile: Profile, distribution: KeyDistribution, carts: u64) -> WorkloadSpec {
        WorkloadSpec {
            profile,
            carts: CartPicker::new(distribution, carts).expect("valid picker"),
            cart_lines: 10,
        }
    }

    #[test]
    fn profile_mix_proportions_match_the_spec() {
        for profile in Profile::value_variants() {
            let mut rng = SmallRng::seed_from_u64(7);
            let mut workload = Workload::new(spec(*profile, KeyDistribution::Uniform, 1_000));
            let mut counts = [0usize; OpKind::COUNT];
            for _ in 0..DRAWS {
                counts[workload.next_op(&mut rng).kind().index()] += 1;
            }
            for kind in OpKind::ALL {
                let expected = profile
                    .mix()
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map_or(0.0, |(_, w)| f64::from(*w));
                let seen = counts[kind.index()] as f64 * 100.0 / DRAWS as f64;
                assert!(
                    (seen - expected).abs() < 1.0,
                    "{}: {kind} drawn {seen:.2}% of the time, spec says {expected}%",
                    profile.name()
                );
            }
        }
    }

    #[test]
    fn add_profile_adds_quantity_one_from_the_sku_pool() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut workload = Workload::new(spec(Profile::Add, KeyDistribution::Zipf, 10_000));
        let mut skus = HashSet::new();
        for _ in 0..10_000 {
            match workload.next_op(&mut rng) {
                Op::AddItem { quantity, sku, .. } => {
                    assert_eq!(quantity, 1);
                    assert!(sku.0 < SKU_POOL);
                    skus.insert(sku.0);
                }
                other => panic!("add profile issued {other:?}"),
            }
        }
        assert_eq!(skus.len(), SKU_POOL as usize, "every SKU gets used");
    }

    #[test]
    fn zipf_stays_in_the_population_and_is_skewed() {
        let population = 10_000u64;
        let picker = CartPicker::new(KeyDistribution::Zipf, population).expect("valid picker");
        let mut rng = SmallRng::seed_from_u64(42);
        let mut counts = vec![0u64; population as usize];
        for _ in 0..DRAWS {
            let i = picker.pick(&mut rng);
            assert!(i < population, "index {i} outside the population");
            counts[i as usize] += 1;
        }
        let top_1_percent: u64 = counts[..(population / 100) as usize].iter().sum();
        let share = top_1_percent as f64 / DRAWS as f64;
        // θ = 0.99 over 10k keys puts ~55% of the draws on the top 100 keys; uniform would give 1%.
        assert!(share > 0.4, "top 1% of carts got only {:.1}% of draws", share * 100.0);
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[1000]);
        assert!(counts[population as usize - 1] < counts[0] / 100);
    }

    #[test]
    fn uniform_stays_in_the_population_and_is_flat() {
        let population = 1_000u64;
        let picker = CartPicker::new(KeyDistribution::Uniform, population).expect("valid picker");
        let mut rng = SmallRng::seed_from_u64(3);
        let mut counts = vec![0u64; population as usize];
        for _ in 0..DRAWS {
            let i = picker.pick(&mut rng);
            assert!(i < population);
            counts[i as usize] += 1;
        }
        let top_1_percent: u64 = counts[..10].iter().sum();
        let share = top_1_percent as f64 / DRAWS as f64;
        assert!(share < 0.02, "uniform top 1% share {share}");
    }

    #[test]
    fn sequential_hands_out_each_cart_once_across_clones_then_wraps() {
        let picker = CartPicker::new(KeyDistribution::Sequential, 5).expect("valid picker");
        let other = picker.clone();
        let mut rng = SmallRng::seed_from_u64(1);
        let drawn: Vec<u64> = (0..7)
            .map(|i| {
                if i % 2 == 0 {
                    picker.pick(&mut rng)
                } else {
                    other.pick(&mut rng)
                }
            })
            .collect();
        assert_eq!(drawn, vec![0, 1, 2, 3, 4, 0, 1]);
    }

    #[test]
    fn population_of_one_always_picks_cart_zero() {
        for d in [
            KeyDistribution::Zipf,
            KeyDistribution::Uniform,
            KeyDistribution::Sequential,
        ] {
            let picker = CartPicker::new(d, 1).expect("valid picker");
            let mut rng = SmallRng::seed_from_u64(9);
            assert!((0..1_000).all(|_| picker.pick(&mut rng) == 0));
        }
        assert!(CartPicker::new(KeyDistribution::Zipf, 0).is_err());
    }

    #[test]
    fn set_quantity_targets_a_recently_added_line() {
        let mut rng = SmallRng::seed_from_u64(5);
        let mut workload = Workload::new(spec(Profile::BlackFriday, KeyDistribution::Zipf, 10_000));
        let mut added = HashSet::new();
        let mut set_ops = 0;
        for _ in 0..20_000 {
            match workload.next_op(&mut rng) {
                Op::AddItem { cart_id, sku, .. } => {
                    added.insert((cart_id, sku.0));
                }
                Op::SetQuantity { cart_id, sku, quantity } => {
                    assert!((1..=3).contains(&quantity));
                    if !added.is_empty() {
                        assert!(added.contains(&(cart_id, sku.0)), "set_quantity on a line never added");
                        set_ops += 1;
                    }
                }
                _ => {}
            }
        }
        assert!(set_ops > 500);
    }

    #[test]
    fn same_seed_same_stream() {
        let s = spec(Profile::Storefront, KeyDistribution::Zipf, 10_000);
        let (mut a, mut b) = (Workload::new(s.clone()), Workload::new(s));
        let (mut ra, mut rb) = (SmallRng::seed_from_u64(11), SmallRng::seed_from_u64(11));
        for _ in 0..1_000 {
            assert_eq!(a.next_op(&mut ra), b.next_op(&mut rb));
        }
    }

    #[test]
    fn add_to_size_adds_one_to_existing_lines_of_its_one_cart() {
        let mut rng = SmallRng::seed_from_u64(2);
        let mut s = spec(Profile::AddToSize, KeyDistribution::Zipf, 10_000);
        s.cart_lines = 100;
        let mut workload = Workload::new(s.clone());
        let mut skus = HashSet::new();
        for _ in 0..20_000 {
            match workload.next_op(&mut rng) {
                Op::AddItem { cart_id, sku, quantity } => {
                    assert_eq!((cart_id.as_str(), quantity), ("user:size-100", 1));
                    assert!(sku.0 < 100, "{sku:?} is not one of the pre-filled lines");
                    skus.insert(sku.0);
                }
                other => panic!("add-to-size issued {other:?}"),
            }
        }
        assert_eq!(skus.len(), 100, "every line gets adds");
        s.cart_lines = 1;
        let mut one = Workload::new(s);
        assert!((0..100).all(|_| one.next_op(&mut rng)
            == Op::AddItem {
                cart_id: "user:size-1".into(),
                sku: Sku(0),
                quantity: 1
            }));
    }

    #[test]
    fn prefill_adds_each_line_once() {
        let ops: Vec<Op> = prefill_ops(1_000).collect();
        assert_eq!(ops.len(), 1_000);
        let skus: HashSet<String> = ops
            .iter()
            .map(|op| match op {
                Op::AddItem {
                    cart_id,
                    sku,
                    quantity: 1,
                } if cart_id == "user:size-1000" => sku.product_id(),
                other => panic!("unexpected prefill op {other:?}"),
            })
            .collect();
        assert_eq!(skus.len(), 1_000);
        assert!(skus.contains("sku-000") && skus.contains("sku-999"));
    }

    #[test]
    fn ids_are_what_the_node_expects() {
        assert_eq!(cart_id(7), "user:bench-7");
        assert_eq!(Sku(7).product_id(), "sku-007");
        assert_eq!(Sku(0).unit_price_minor(), 499);
    }
}
