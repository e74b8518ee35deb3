//! Counting outcomes and latencies: one [`Recorder`] per worker, merged once at the end.
//!
//! Latencies go into HDR histograms in microseconds with 3 significant digits. Only completed
//! operations (`Ok` and `NotFound`) are timed; errors are counted by code and dropped (open-loop
//! sends that found the in-flight bound full) are counted, neither is timed.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::profile::OpKind;
use crate::target::Outcome;

/// Largest latency a histogram holds (an hour); larger values are clamped to it.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram (µs, 1 µs … 1 h, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, SIGNIFICANT_DIGITS).expect("static histogram bounds are valid")
}

/// Records `latency` in whole microseconds (at least 1, at most an hour).
pub fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(us.clamp(1, HISTOGRAM_MAX_US));
}

fn merge_histogram(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Both come from `new_histogram` and values are clamped into range, so adding cannot fail.
    into.add(from).expect("histograms share their bounds");
}

/// Tallies for one operation kind.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Latency of completed operations (`Ok` and `NotFound`).
    pub latency_us: Histogram<u64>,
    pub not_found: u64,
    pub errors: u64,
    pub dropped: u64,
    /// Errors by code (`UNAVAILABLE`, `ABANDONED`, …).
    pub error_codes: BTreeMap<String, u64>,
}

impl OpStats {
    fn new() -> Self {
        OpStats {
            latency_us: new_histogram(),
            not_found: 0,
            errors: 0,
            dropped: 0,
            error_codes: BTreeMap::new(),
        }
    }

    /// Counts one answer; an error's code and message are handed back.
    fn record(&mut self, outcome: Outcome, latency: Duration) -> Option<(String, String)> {
        match outcome {
            Outcome::Ok => record_latency(&mut self.latency_us, latency),
            Outcome::NotFound => {
                self.not_found += 1;
                record_latency(&mut self.latency_us, latency);
            }
            Outcome::Error { code, message } => {
                self.errors += 1;
                *self.error_codes.entry(code.clone()).or_default() += 1;
                return Some((code, message));
            }
        }
        None
    }

    fn merge(&mut self, other: &OpStats) {
        merge_histogram(&mut self.latency_us, &other.latency_us);
        self.not_found += other.not_found;
        self.errors += other.errors;
        self.dropped += other.dropped;
        for (code, n) in &other.error_codes {
            *self.error_codes.entry(code.clone()).or_default() += n;
        }
    }
}

/// Everything one worker saw. Not shared: each worker owns one, the runner merges them.
#[derive(Debug, Clone)]
pub struct Recorder {
    ops: Vec<OpStats>,
    /// A stretch of the run reported apart (e.g. while a node was paused), and the tallies
    /// inside it and outside it (all kinds folded).
    window: Option<Window>,
    phases: [OpStats; 2],
    /// Open loop only: how late each send left compared with its intended time.
    schedule_lag_us: Histogram<u64>,
    /// The first message seen per error code, to explain the counts.
    error_examples: BTreeMap<String, String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// `[start, end)` of a run, from its start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Window {
    pub start: Duration,
    pub end: Duration,
}

impl Window {
    pub fn contains(&self, at: Duration) -> bool {
        self.start <= at && at < self.end
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self::with_window(None)
    }

    pub fn with_window(window: Option<Window>) -> Self {
        Recorder {
            ops: (0..OpKind::COUNT).map(|_| OpStats::new()).collect(),
            window,
            phases: [OpStats::new(), OpStats::new()],
            schedule_lag_us: new_histogram(),
            error_examples: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, kind: OpKind, outcome: Outcome, latency: Duration) {
        if let Some((code, message)) = self.ops[kind.index()].record(outcome, latency) {
            self.error_examples.entry(code).or_insert(message);
        }
    }

    /// [`Recorder::record`] of a request sent (or due) `at` after the run started: it also
    /// counts inside or outside the window, when there is one.
    pub fn record_at(&mut self, kind: OpKind, outcome: Outcome, latency: Duration, at: Duration) {
        if let Some(w) = self.window {
            self.phases[usize::from(!w.contains(at))].record(outcome.clone(), latency);
        }
        self.record(kind, outcome, latency);
    }

    /// An open-loop send due `at` after the start, skipped because the in-flight bound was full.
    pub fn record_dropped(&mut self, kind: OpKind, at: Duration) {
        self.ops[kind.index()].dropped += 1;
        if let Some(w) = self.window {
            self.phases[usize::from(!w.contains(at))].dropped += 1;
        }
    }

    /// The window's tallies: (inside, outside), when the run has a window.
    pub fn phases(&self) -> Option<(Window, &OpStats, &OpStats)> {
        self.window.map(|w| (w, &self.phases[0], &self.phases[1]))
    }

    pub fn record_schedule_lag(&mut self, lag: Duration) {
        record_latency(&mut self.schedule_lag_us, lag);
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in self.ops.iter_mut().zip(&other.ops) {
            mine.merge(theirs);
        }
        self.window = self.window.or(other.window);
        for (mine, theirs) in self.phases.iter_mut().zip(&other.phases) {
            mine.merge(theirs);
        }
        merge_histogram(&mut self.schedule_lag_us, &other.schedule_lag_us);
        for (code, message) in &other.error_examples {
            self.error_examples
                .entry(code.clone())
                .or_insert_with(|| message.clone());
        }
    }

    pub fn op(&self, kind: OpKind) -> &OpStats {
        &self.ops[kind.index()]
    }

    /// All kinds folded into one.
    pub fn overall(&self) -> OpStats {
        let mut all = OpStats::new();
        for stats in &self.ops {
            all.merge(stats);
        }
        all
    }

    pub fn schedule_lag(&self) -> &Histogram<u64> {
        &self.schedule_lag_us
    }

    pub fn error_examples(&self) -> &BTreeMap<String, String> {
        &self.error_examples
    }
}

/// The numbers a report shows for one operation kind (or all of them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Completed operations, `not_found` included, errors and dropped excluded.
    pub count: u64,
    pub not_found: u64,
    pub errors: u64,
    pub dropped: u64,
    /// `count` per second of the run's elapsed time.
    pub ops_per_s: f64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Summary {
    pub fn of(stats: &OpStats, elapsed: Duration) -> Self {
        let h = &stats.latency_us;
        let secs = elapsed.as_secs_f64();
        Summary {
            count: h.len(),
            not_found: stats.not_found,
            errors: stats.errors,
            dropped: stats.dropped,
            ops_per_s: if secs > 0.0 { round2(h.len() as f64 / secs) } else { 0.0 },
            mean_us: if h.is_empty() { 0.0 } else { round2(h.mean()) },
            p50_us: quantile(h, 0.50),
            p95_us: quantile(h, 0.95),
            p99_us: quantile(h, 0.99),
            p999_us: quantile(h, 0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
        }
    }
}

/// Latency percentiles of a bare histogram (used for the open-loop schedule lag).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        LatencySummary {
            count: h.len(),
            p50_us: quantile(h, 0.50),
            p99_us: quantile(h, 0.99),
            p999_us: quantile(h, 0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
        }
    }
}

fn quantile(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str) -> Outcome {
        Outcome::Error {
            code: code.into(),
            message: format!("{code} happened"),
        }
    }

    #[test]
    fn a_window_splits_the_requests_by_when_they_were_due() {
        let window = Window {
            start: Duration::from_secs(10),
            end: Duration::from_secs(20),
        };
        let mut r = Recorder::with_window(Some(window));
        let at = Duration::from_secs;
        r.record_at(OpKind::GetCart, Outcome::Ok, Duration::from_micros(100), at(5));
        r.record_at(OpKind::GetCart, Outcome::Ok, Duration::from_millis(900), at(10));
        r.record_at(
            OpKind::AddItem,
            err("DEADLINE_EXCEEDED"),
            Duration::from_secs(2),
            at(19),
        );
        r.record_at(OpKind::AddItem, Outcome::Ok, Duration::from_micros(200), at(20));
        r.record_dropped(OpKind::AddItem, at(15));
        let mut other = Recorder::with_window(Some(window));
        other.record_at(OpKind::GetCart, Outcome::Ok, Duration::from_millis(800), at(12));
        r.merge(&other);
        let (w, inside, outside) = r.phases().expect("a window");
        assert_eq!(w, window);
        let inside = Summary::of(inside, Duration::from_secs(10));
        let outside = Summary::of(outside, Duration::from_secs(20));
        assert_eq!((inside.count, inside.errors, inside.dropped), (2, 1, 1));
        assert!(inside.p50_us >= 800_000, "{inside:?}");
        assert_eq!((outside.count, outside.errors, outside.dropped), (2, 0, 0));
        assert!(outside.max_us < 1_000, "{outside:?}");
        // The per-kind tallies hold everything.
        assert_eq!(Summary::of(&r.overall(), Duration::from_secs(30)).count, 4);
        assert!(Recorder::new().phases().is_none());
    }

    #[test]
    fn counts_outcomes_apart() {
        let mut r = Recorder::new();
        r.record(OpKind::AddItem, Outcome::Ok, Duration::from_micros(100));
        r.record(OpKind::RemoveItem, Outcome::NotFound, Duration::from_micros(200));
        r.record(OpKind::AddItem, err("UNAVAILABLE"), Duration::from_micros(300));
        r.record_dropped(OpKind::AddItem, Duration::ZERO);
        let add = Summary::of(r.op(OpKind::AddItem), Duration::from_secs(1));
        assert_eq!((add.count, add.not_found, add.errors, add.dropped), (1, 0, 1, 1));
        let remove = Summary::of(r.op(OpKind::RemoveItem), Duration::from_secs(1));
        assert_eq!((remove.count, remove.not_found, remove.errors), (1, 1, 0));
        let all = Summary::of(&r.overall(), Duration::from_secs(1));
        assert_eq!((all.count, all.not_found, all.errors, all.dropped), (2, 1, 1, 1));
        assert_eq!(r.overall().error_codes.get("UNAVAILABLE"), Some(&1));
        assert_eq!(
            r.error_examples().get("UNAVAILABLE").map(String::as_str),
            Some("UNAVAILABLE happened")
        );
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut r = Recorder::new();
        for us in 1..=10_000u64 {
            r.record(OpKind::GetCart, Outcome::Ok, Duration::from_micros(us));
        }
        let s = Summary::of(r.op(OpKind::GetCart), Duration::from_secs(2));
        assert_eq!(s.count, 10_000);
        assert_eq!(s.ops_per_s, 5_000.0);
        // 3 significant digits: within 0.1% of the exact value.
        for (got, exact) in [
            (s.p50_us, 5_000),
            (s.p95_us, 9_500),
            (s.p99_us, 9_900),
            (s.p999_us, 9_990),
            (s.max_us, 10_000),
        ] {
            assert!(got.abs_diff(exact) <= exact / 1000 + 1, "{got} vs {exact}");
        }
    }

    #[test]
    fn merging_workers_adds_everything_up() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.record(OpKind::AddItem, Outcome::Ok, Duration::from_micros(10));
        b.record(OpKind::AddItem, Outcome::Ok, Duration::from_millis(10));
        b.record(OpKind::AddItem, err("ABANDONED"), Duration::ZERO);
        b.record_schedule_lag(Duration::from_micros(50));
        a.merge(&b);
        let s = Summary::of(a.op(OpKind::AddItem), Duration::from_secs(1));
        assert_eq!((s.count, s.errors), (2, 1));
        assert!(s.max_us >= 9_990);
        assert_eq!(a.schedule_lag().len(), 1);
    }

    #[test]
    fn empty_and_extreme_latencies_do_not_panic() {
        let mut r = Recorder::new();
        let empty = Summary::of(r.op(OpKind::GetCart), Duration::ZERO);
        assert_eq!(
            (empty.count, empty.p99_us, empty.max_us, empty.ops_per_s),
            (0, 0, 0, 0.0)
        );
        r.record(OpKind::GetCart, Outcome::Ok, Duration::ZERO);
        r.record(OpKind::GetCart, Outcome::Ok, Duration::from_secs(100_000));
        let s = Summary::of(r.op(OpKind::GetCart), Duration::from_secs(1));
        assert_eq!(s.count, 2);
        assert!(s.max_us >= HISTOGRAM_MAX_US - HISTOGRAM_MAX_US / 1000);
    }
}
