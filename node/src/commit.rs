//! Group commit: writers that finished their `put` wait here for a flush that started after it.
//! One flusher task drains every waiter queued so far and serves them all with a single flush,
//! so under load the flush cost is shared by the whole batch. Writers count their puts
//! ([`GroupCommit::note_write`]); a caller finding every counted write already flushed returns at
//! once.
//!
//! **Commit window** (`[storage] commit_window_ms`): when writers have lately been arriving at
//! least one per window, the flusher holds a batch back for the window before it flushes, so the
//! writers that come meanwhile share that flush instead of each paying the next one. Below that
//! pace a flush starts at once; a lone writer writing in a loop (holding back brings no one in)
//! is held back only about once in 20 flushes, when the flusher tries again. Every flush is an
//! `fdatasync`: on the storefront benchmark the window took the cluster's flushes from ~0.34 per
//! operation to ~0.07, and the servers' CPU per operation down by 6–24% (bench/README.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::storage::{Storage, StorageError};

/// Waiters queued beyond this make writers wait for room (back-pressure, never unbounded).
pub const COMMIT_QUEUE_MAX: usize = 8192;

type Waiter = oneshot::Sender<Result<(), StorageError>>;

#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Waiter>,
    progress: Arc<Progress>,
}

/// Writes counted so far, and how many of them a completed flush covers.
#[derive(Default)]
struct Progress {
    written: AtomicU64,
    flushed: AtomicU64,
}

impl GroupCommit {
    /// Starts the flusher task on the current tokio runtime; `window` is the commit window
    /// (zero: every batch is flushed at once).
    pub fn start(storage: Arc<dyn Storage>, metrics: Arc<Metrics>, window: Duration) -> Self {
        let (queue, rx) = mpsc::channel(COMMIT_QUEUE_MAX);
        let progress = Arc::new(Progress::default());
        tokio::spawn(flusher(storage, rx, progress.clone(), metrics, Pace::new(window)));
        GroupCommit { queue, progress }
    }

    /// Counts a completed `put` (call it after the put).
    pub fn note_write(&self) {
        self.progress.written.fetch_add(1, Ordering::SeqCst);
    }

    /// Returns once every `put` that completed (and was counted) before this call is durable.
    pub async fn durable(&self) -> Result<(), StorageError> {
        if self.progress.flushed.load(Ordering::SeqCst) >= self.progress.written.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let stopped = || StorageError {
            operation: "flush",
            reason: "the flusher has stopped".into(),
        };
        self.queue.send(tx).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn flusher(
    storage: Arc<dyn Storage>,
    mut rx: mpsc::Receiver<Waiter>,
    progress: Arc<Progress>,
    metrics: Arc<Metrics>,
    mut pace: Pace,
) {
    let mut batch = Vec::new();
    let mut failing = false;
    while rx.recv_many(&mut batch, COMMIT_QUEUE_MAX).await > 0 {
        if pace.arrived(batch.len(), Instant::now()) {
            tokio::time::sleep(pace.window).await;
            let before = batch.len();
            while batch.len() < COMMIT_QUEUE_MAX {
                match rx.try_recv() {
                    Ok(waiter) => batch.push(waiter),
                    Err(_) => break,
                }
            }
            pace.joined(batch.len() - before);
        }
        // Every write counted by now completed its put before this flush starts.
        let covers = progress.written.load(Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        let result = storage.flush().await;
        metrics.flush_seconds.observe(started.elapsed().as_secs_f64());
        metrics.commit_batch.observe(batch.len() as f64);
        if result.is_ok() {
            progress.flushed.fetch_max(covers, Ordering::SeqCst);
        }
        // Logged when flushes start failing and when they work again, not once per batch.
        match (&result, failing) {
            (Err(e), false) => tracing::error!(error = %e, waiters = batch.len(), "group commit flush failed"),
            (Ok(()), true) => tracing::info!("group commit flushes work again"),
            _ => {}
        }
        failing = result.is_err();
        for waiter in batch.drain(..) {
            // A waiter whose request was cancelled has dropped its receiver; nothing to do.
            let _ = waiter.send(result.clone());
        }
    }
}

/// The flusher's estimate of how fast writers arrive and of what holding a batch back gains,
/// and its commit window.
#[derive(Debug)]
struct Pace {
    window: Duration,
    /// Exponentially weighted means of the gap between batches (seconds) and of the writers
    /// that came in each gap: their ratio is the pace (a mean of per-gap rates would make two
    /// writers 100 µs apart look like 10,000 a second).
    gap: f64,
    writers: f64,
    /// Writers that joined a held-back batch, a weighted mean over the batches held: a lone
    /// writer that writes fast (each write waits for the one before) gains nothing, so it stops
    /// being held back, and is tried again now and then.
    gain: f64,
    /// When the previous batch began, and the writers that joined it while it waited.
    since: Option<Instant>,
    joined: usize,
}

/// The weight of the newest gap in [`Pace::rate`] and of the newest held batch in [`Pace::gain`].
const PACE_WEIGHT: f64 = 0.2;
/// Below this gain batches are not held back; each batch not held for it moves the gain back
/// towards 1 by [`PACE_RETRY`] of the way (a new try every ~20 batches).
const PACE_MIN_GAIN: f64 = 0.5;
const PACE_RETRY: f64 = 0.01;

impl Pace {
    fn new(window: Duration) -> Self {
        Pace {
            window,
            // A quiet start: the pace rises as writers come.
            gap: 1.0,
            writers: 0.0,
            gain: 1.0,
            since: None,
            joined: 0,
        }
    }

    /// A batch begins with `waiters` queued since the previous one began: whether to hold it
    /// back for the window (writers lately arrived at least one per window, and holding back
    /// lately brought more of them in).
    fn arrived(&mut self, waiters: usize, now: Instant) -> bool {
        if self.window.is_zero() {
            return false;
        }
        if let Some(since) = self.since {
            let gap = now.saturating_duration_since(since).as_secs_f64();
            self.gap = (1.0 - PACE_WEIGHT) * self.gap + PACE_WEIGHT * gap;
            self.writers = (1.0 - PACE_WEIGHT) * self.writers + PACE_WEIGHT * (waiters + self.joined) as f64;
        }
        self.since = Some(now);
        self.joined = 0;
        if self.rate() * self.window.as_secs_f64() < 1.0 {
            return false;
        }
        if self.gain < PACE_MIN_GAIN {
            self.gain += PACE_RETRY * (1.0 - self.gain);
            return false;
        }
        true
    }

    /// Writers per second lately.
    fn rate(&self) -> f64 {
        if self.gap <= 0.0 {
            return 0.0;
        }
        self.writers / self.gap
    }

    /// Writers that joined the held-back batch (counted in the next gap, and in the gain).
    fn joined(&mut self, writers: usize) {
        self.joined += writers;
        self.gain = (1.0 - PACE_WEIGHT) * self.gain + PACE_WEIGHT * writers as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_holds_batches_back_only_while_writers_come_at_least_one_per_window() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let mut pace = Pace::new(Duration::from_millis(2));
        // One writer every 10 ms: never held back.
        assert!((0..20).all(|i| !pace.arrived(1, ms(10 * i))));
        // Then two every millisecond: held back once the mean catches up, and from then on
        // (two more writers join each held batch).
        let busy: Vec<bool> = (0..20)
            .map(|i| {
                let held = pace.arrived(2, ms(200 + i));
                if held {
                    pace.joined(2);
                }
                held
            })
            .collect();
        assert!(!busy[0], "{busy:?}");
        assert!(busy[10..].iter().all(|&held| held), "{busy:?}");
        // Back to one writer every 10 ms: it lets go again.
        let quiet: Vec<bool> = (0..20).map(|i| pace.arrived(1, ms(300 + 10 * i))).collect();
        assert!(quiet[10..].iter().all(|&held| !held), "{quiet:?}");
    }

    #[test]
    fn a_lone_fast_writer_is_seldom_held_back() {
        // One writer whose next write starts when the last is durable: one per millisecond,
        // and holding back never brings another one in.
        let start = Instant::now();
        let mut pace = Pace::new(Duration::from_millis(2));
        let mut held = 0;
        for i in 0..1000u64 {
            if pace.arrived(1, start + Duration::from_millis(i)) {
                held += 1;
                pace.joined(0);
            }
        }
        assert!((1..=100).contains(&held), "held {held} of 1000");
    }

    #[test]
    fn writers_that_joined_a_held_batch_count_towards_the_pace() {
        let start = Instant::now();
        let mut with = Pace::new(Duration::from_millis(2));
        let mut without = Pace::new(Duration::from_millis(2));
        for i in 0..10u64 {
            let at = start + Duration::from_millis(3 * i);
            with.arrived(1, at);
            with.joined(3);
            without.arrived(1, at);
        }
        assert!(with.rate() > 3.0 * without.rate(), "{with:?} {without:?}");
    }

    #[test]
    fn the_pace_is_writers_over_time_not_a_mean_of_bursts() {
        // Pairs of writers 100 µs apart, every 5 ms: 400 a second, fewer than one per 2 ms
        // window, so never held back (a mean of per-gap rates would say ~5,000 a second).
        let start = Instant::now();
        let mut pace = Pace::new(Duration::from_millis(2));
        let mut held = 0;
        for i in 0..200u64 {
            let at = start + Duration::from_millis(5 * i);
            held += usize::from(pace.arrived(1, at));
            held += usize::from(pace.arrived(1, at + Duration::from_micros(100)));
        }
        assert_eq!(held, 0, "{pace:?}");
        assert!((300.0..500.0).contains(&pace.rate()), "{pace:?}");
    }

    #[test]
    fn a_zero_window_never_holds_back() {
        let start = Instant::now();
        let mut pace = Pace::new(Duration::ZERO);
        assert!((0..100).all(|i| !pace.arrived(100, start + Duration::from_micros(i))));
    }
}
