//! Tail-latency tools shared by `cart-client` and the node's coordinator ("The Tail at Scale"):
//!
//! - [`HedgeDelay`]: how long to wait for an answer before asking another replica — a high
//!   percentile of recent answer times (a rotating HDR histogram), within bounds. The p99 by
//!   default rather than the p95: a quiet cluster then wants about 1% of calls hedged, so a
//!   budget of a few percent keeps most of its tokens for a node that stalls.
//! - [`HedgeBudget`]: hedges may add at most a set fraction of extra requests (a token bucket
//!   that each request fills a little and each hedge empties by one).
//! - [`Outliers`]: a replica that keeps losing hedges or failing (a paused process, a slow disk,
//!   a node that answers pings but nothing else) is set aside — tried last — for a while that
//!   doubles while it stays slow, like Envoy's outlier ejection. When the period ends it is on
//!   probation (a circuit breaker's half-open state): one call at a time tries it first, one
//!   good answer restores it, one slow answer sets it aside again at once.
//!
//! Everything here is bounded (one histogram pair, one entry per address asked) and cheap to
//! call on every request (a mutex held for a few hundred nanoseconds).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// Answers per histogram window: the delay is the p95 of the last full window.
const WINDOW_SAMPLES: u64 = 1_000;
/// Answers needed before the first window's p95 is trusted (until then, `initial`).
const WARM_SAMPLES: u64 = 100;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Window {
    current: Histogram<u64>,
    /// The quantile of the last full window (µs), once there is one.
    at_quantile_us: Option<u64>,
}

/// The quantile of answer times [`HedgeDelay::new`] hedges at.
pub const HEDGE_QUANTILE: f64 = 0.99;

/// The hedge delay: a quantile of recent answer times, clamped to `[min, max]`.
pub struct HedgeDelay {
    window: Mutex<Window>,
    quantile: f64,
    initial: Duration,
    min: Duration,
    max: Duration,
}

impl HedgeDelay {
    /// Hedges at [`HEDGE_QUANTILE`]; `initial` is used until enough answers were seen.
    pub fn new(initial: Duration, min: Duration, max: Duration) -> Self {
        Self::at_quantile(HEDGE_QUANTILE, initial, min, max)
    }

    pub fn at_quantile(quantile: f64, initial: Duration, min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        HedgeDelay {
            window: Mutex::new(Window {
                current: Self::histogram(),
                at_quantile_us: None,
            }),
            quantile: quantile.clamp(0.0, 1.0),
            initial: initial.clamp(min, max),
            min,
            max,
        }
    }

    fn histogram() -> Histogram<u64> {
        // 1 µs … 1 h with 2 significant digits: a few KiB.
        Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static histogram bounds are valid")
    }

    /// Records how long a successful answer took.
    pub fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 3_600_000_000);
        let mut w = lock(&self.window);
        w.current.saturating_record(us);
        let n = w.current.len();
        if n >= WINDOW_SAMPLES || (w.at_quantile_us.is_none() && n >= WARM_SAMPLES && n.is_multiple_of(WARM_SAMPLES)) {
            w.at_quantile_us = Some(w.current.value_at_quantile(self.quantile));
            if n >= WINDOW_SAMPLES {
                w.current.reset();
            }
        }
    }

    /// How long to wait before hedging now.
    pub fn delay(&self) -> Duration {
        match lock(&self.window).at_quantile_us {
            Some(us) => Duration::from_micros(us).clamp(self.min, self.max),
            None => self.initial,
        }
    }
}

/// Extra requests allowed as a fraction of requests: each request earns `fraction` of a token,
/// a hedge spends one; at most `burst` tokens are kept.
pub struct HedgeBudget {
    tokens: Mutex<f64>,
    fraction: f64,
    burst: f64,
}

impl HedgeBudget {
    pub fn new(fraction: f64, burst: f64) -> Self {
        HedgeBudget {
            tokens: Mutex::new(burst),
            fraction: fraction.clamp(0.0, 1.0),
            burst: burst.max(1.0),
        }
    }

    /// A request was sent.
    pub fn earn(&self) {
        let mut t = lock(&self.tokens);
        *t = (*t + self.fraction).min(self.burst);
    }

    /// Whether a hedge may be sent now (and, if so, pays for it).
    pub fn spend(&self) -> bool {
        let mut t = lock(&self.tokens);
        if *t >= 1.0 {
            *t -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A replica set aside after this many slow or failed answers in a row…
pub const OUTLIER_STREAK: u32 = 3;
/// …for this long the first time, doubling each time it is set aside again soon after…
pub const OUTLIER_EJECT_MIN: Duration = Duration::from_secs(1);
/// …up to this long.
pub const OUTLIER_EJECT_MAX: Duration = Duration::from_secs(30);
/// A replica on probation gets one call first at a time: another after this long without its
/// verdict (the call may have gone to other replicas first).
pub const OUTLIER_PROBE_EVERY: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Replica {
    /// Slow or failed answers in a row.
    streak: u32,
    /// Set aside until then.
    until: Option<Instant>,
    /// Times set aside without a good answer in between (the next period doubles); not zero
    /// after the period: on probation.
    ejections: u32,
    /// On probation: when a call was last let through to it first.
    probed: Option<Instant>,
}

impl Replica {
    fn aside(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| t > now)
    }

    /// Set aside no more, but not yet answered well since.
    fn on_probation(&self, now: Instant) -> bool {
        self.ejections > 0 && !self.aside(now)
    }
}

/// Which replicas are set aside for being slow, by address (or node id).
#[derive(Default)]
pub struct Outliers {
    replicas: Mutex<HashMap<String, Replica>>,
}

impl Outliers {
    /// `key` answered in time.
    pub fn good(&self, key: &str) {
        let mut map = lock(&self.replicas);
        if let Some(r) = map.get_mut(key) {
            r.streak = 0;
            if r.until.is_none_or(|t| t <= Instant::now()) {
                r.until = None;
                r.ejections = 0;
                r.probed = None;
            }
        }
    }

    /// `key` lost a hedge, timed out or could not be reached. Whether that set it aside now.
    /// Of `population` replicas, at most a third (at least one) are set aside at once: when
    /// most look slow, the cause is elsewhere (a replica they all wait on, the client's own
    /// machine), and setting them aside would leave only the worst to try first.
    pub fn slow(&self, key: &str, population: usize) -> bool {
        let mut map = lock(&self.replicas);
        let now = Instant::now();
        let aside = map.values().filter(|r| r.aside(now)).count();
        let r = map.entry(key.to_owned()).or_default();
        r.streak += 1;
        // On probation one slow answer is enough.
        let streak = if r.on_probation(now) { 1 } else { OUTLIER_STREAK };
        if r.streak < streak || r.aside(now) || aside >= (population / 3).max(1) {
            return false;
        }
        let period = OUTLIER_EJECT_MIN
            .saturating_mul(1 << r.ejections.min(16))
            .min(OUTLIER_EJECT_MAX);
        r.until = Some(now + period);
        r.ejections = r.ejections.saturating_add(1);
        r.streak = 0;
        r.probed = None;
        true
    }

    /// Whether `key` is set aside now.
    pub fn ejected(&self, key: &str) -> bool {
        let now = Instant::now();
        lock(&self.replicas).get(key).is_some_and(|r| r.aside(now))
    }

    /// Whether a call should try `key` later than the others: it is set aside, or on probation
    /// and another call was let through to it first less than [`OUTLIER_PROBE_EVERY`] ago (this
    /// call is then the one let through, when it is not).
    pub fn try_later(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut map = lock(&self.replicas);
        let Some(r) = map.get_mut(key) else { return false };
        if r.aside(now) {
            return true;
        }
        if !r.on_probation(now) {
            return false;
        }
        if r.probed.is_some_and(|t| now < t + OUTLIER_PROBE_EVERY) {
            return true;
        }
        r.probed = Some(now);
        false
    }

    /// Forgets replicas `keep` does not name (membership changed).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.replicas).retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_follows_a_quantile_of_a_window_within_bounds() {
        let d = HedgeDelay::at_quantile(
            0.95,
            Duration::from_millis(50),
            Duration::from_millis(1),
            Duration::from_millis(500),
        );
        assert_eq!(d.delay(), Duration::from_millis(50), "initial until warm");
        for i in 0..WARM_SAMPLES {
            // 95 answers of 2 ms, 5 of 100 ms.
            d.record(Duration::from_millis(if i % 20 == 0 { 100 } else { 2 }));
        }
        let p95 = d.delay();
        assert!(
            p95 >= Duration::from_millis(2) && p95 < Duration::from_millis(3),
            "{p95:?}"
        );
        for _ in 0..WINDOW_SAMPLES {
            d.record(Duration::from_secs(10));
        }
        assert_eq!(d.delay(), Duration::from_millis(500), "clamped to max");
        // Windows are counted in answers: two of them replace whatever came before.
        for _ in 0..2 * WINDOW_SAMPLES {
            d.record(Duration::from_micros(10));
        }
        assert_eq!(d.delay(), Duration::from_millis(1), "clamped to min");
    }

    #[test]
    fn the_budget_allows_the_fraction_after_the_burst() {
        let b = HedgeBudget::new(0.05, 2.0);
        let mut hedges = 0;
        for _ in 0..1_000 {
            b.earn();
            if b.spend() {
                hedges += 1;
            }
        }
        assert!((50..=52).contains(&hedges), "{hedges}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_is_set_aside_after_a_streak_and_for_longer_when_it_stays_slow() {
        let o = Outliers::default();
        assert!(!o.slow("a", 3) && !o.slow("a", 3));
        o.good("a");
        assert!(!o.slow("a", 3) && !o.slow("a", 3), "a good answer restarts the streak");
        assert!(o.slow("a", 3));
        assert!(o.ejected("a") && !o.ejected("b"));
        for _ in 0..OUTLIER_STREAK {
            o.slow("b", 3);
        }
        assert!(!o.ejected("b"), "one of three at most");
        for _ in 0..OUTLIER_STREAK {
            o.slow("b", 6);
        }
        assert!(o.ejected("b"), "two of six");
        tokio::time::advance(OUTLIER_EJECT_MIN + Duration::from_millis(1)).await;
        assert!(!o.ejected("a"));
        tokio::time::advance(OUTLIER_EJECT_MIN + Duration::from_millis(1)).await;
        for _ in 0..OUTLIER_STREAK {
            o.slow("a", 3);
        }
        tokio::time::advance(OUTLIER_EJECT_MIN + Duration::from_millis(1)).await;
        assert!(o.ejected("a"), "set aside twice as long the second time");
        tokio::time::advance(OUTLIER_EJECT_MIN).await;
        assert!(!o.ejected("a"));
        o.good("a");
        for _ in 0..OUTLIER_STREAK {
            o.slow("a", 3);
        }
        tokio::time::advance(OUTLIER_EJECT_MIN + Duration::from_millis(1)).await;
        assert!(!o.ejected("a"), "a good answer after the period resets the doubling");
        o.retain(|k| k != "a");
        assert!(!o.ejected("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn after_its_period_a_replica_gets_one_call_at_a_time_until_it_answers_well() {
        let o = Outliers::default();
        assert!(!o.try_later("a"), "unknown: tried in order");
        for _ in 0..OUTLIER_STREAK {
            o.slow("a", 3);
        }
        assert!(o.try_later("a"), "set aside");
        tokio::time::advance(OUTLIER_EJECT_MIN + Duration::from_millis(1)).await;
        assert!(!o.ejected("a"));
        assert!(!o.try_later("a"), "on probation: the first call tries it");
        assert!(o.try_later("a") && o.try_later("a"), "the next wait for its verdict");
        tokio::time::advance(OUTLIER_PROBE_EVERY).await;
        assert!(!o.try_later("a"), "no verdict for a while: another call tries it");
        assert!(o.slow("a", 3), "one slow answer on probation sets it aside again");
        assert!(o.ejected("a") && o.try_later("a"));
        tokio::time::advance(2 * OUTLIER_EJECT_MIN + Duration::from_millis(1)).await;
        assert!(!o.try_later("a"), "probation again after the doubled period");
        o.good("a");
        assert!(!o.try_later("a") && !o.try_later("a"), "one good answer restores it");
        assert!(!o.slow("a", 3), "and a streak is needed again");
    }
}
