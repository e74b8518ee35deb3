//! Group commit: writers that finished their `put` wait here for a flush that started after it.
//! One flusher task drains every waiter queued so far and serves them all with a single flush,
//! so under load the flush cost is shared by the whole batch. Writers count their puts
//! ([`GroupCommit::note_write`]); a caller finding every counted write already flushed returns at
//! once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    /// Starts the flusher task on the current tokio runtime.
    pub fn start(storage: Arc<dyn Storage>, metrics: Arc<Metrics>) -> Self {
        let (queue, rx) = mpsc::channel(COMMIT_QUEUE_MAX);
        let progress = Arc::new(Progress::default());
        tokio::spawn(flusher(storage, rx, progress.clone(), metrics));
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
) {
    let mut batch = Vec::new();
    let mut failing = false;
    while rx.recv_many(&mut batch, COMMIT_QUEUE_MAX).await > 0 {
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
