//! The open-loop timetable: when each request *should* leave.
//!
//! Request `i` is due at `start + i / rate`, independent of how fast earlier requests came
//! back. Latency is measured from that intended time, so a stalled target shows up as latency
//! for every request that should have been sent during the stall (no coordinated omission).

use std::ops::Add;
use std::time::Duration;

/// Fixed-rate send times starting at `start`. Generic over the instant type so it works with
/// `std` and `tokio` instants alike.
#[derive(Debug, Clone, Copy)]
pub struct OpenLoopSchedule<I> {
    start: I,
    rate_per_s: f64,
}

impl<I> OpenLoopSchedule<I>
where
    I: Copy + Add<Duration, Output = I>,
{
    /// `rate_per_s` must be finite and positive (the CLI checks it).
    pub fn new(start: I, rate_per_s: f64) -> Self {
        debug_assert!(rate_per_s.is_finite() && rate_per_s > 0.0);
        OpenLoopSchedule { start, rate_per_s }
    }

    /// How long after `start` request `i` is due. Computed from `i` (not by adding intervals) so
    /// rounding never accumulates.
    pub fn offset(&self, i: u64) -> Duration {
        let nanos = (i as f64 * 1e9 / self.rate_per_s).round();
        Duration::from_nanos(nanos as u64)
    }

    /// When request `i` is due.
    pub fn intended(&self, i: u64) -> I {
        self.start + self.offset(i)
    }

    /// How many requests fall strictly inside the first `window` (those with `offset < window`).
    pub fn due_within(&self, window: Duration) -> u64 {
        // Estimate from the rate, then correct for float rounding at the boundary.
        let mut n = (window.as_secs_f64() * self.rate_per_s).ceil() as u64;
        while n > 0 && self.offset(n - 1) >= window {
            n -= 1;
        }
        while self.offset(n) < window {
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn intended_times_are_evenly_spaced_from_start() {
        let start = Instant::now();
        let s = OpenLoopSchedule::new(start, 2_000.0);
        assert_eq!(s.intended(0), start);
        assert_eq!(s.offset(1), Duration::from_micros(500));
        assert_eq!(s.offset(2_000), Duration::from_secs(1));
        assert_eq!(s.intended(10_000), start + Duration::from_secs(5));
        for i in 0..10_000 {
            assert_eq!(s.offset(i + 1) - s.offset(i), Duration::from_micros(500));
        }
    }

    #[test]
    fn fractional_rates_do_not_drift() {
        let s = OpenLoopSchedule::new(Duration::ZERO, 3.0);
        assert_eq!(s.offset(3), Duration::from_secs(1));
        assert_eq!(s.offset(3_000_000), Duration::from_secs(1_000_000));
        let third = s.offset(1);
        assert_eq!(third, Duration::from_nanos(333_333_333));
        let s = OpenLoopSchedule::new(Duration::ZERO, 0.5);
        assert_eq!(s.offset(1), Duration::from_secs(2));
    }

    #[test]
    fn counts_requests_due_inside_a_window() {
        let s = OpenLoopSchedule::new(Duration::ZERO, 2_000.0);
        assert_eq!(s.due_within(Duration::from_secs(5)), 10_000);
        assert_eq!(s.due_within(Duration::ZERO), 0);
        assert_eq!(s.due_within(Duration::from_nanos(1)), 1);
        assert_eq!(s.due_within(Duration::from_micros(500)), 1);
        assert_eq!(s.due_within(Duration::from_micros(501)), 2);
        let s = OpenLoopSchedule::new(Duration::ZERO, 3.0);
        assert_eq!(s.due_within(Duration::from_secs(1)), 3);
        assert_eq!(s.due_within(Duration::from_millis(1_001)), 4);
    }
}
