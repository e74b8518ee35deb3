//! Group commit: writers that finished their `put` wait here for a flush that started after it.
//! One flusher task drains every waiter queued so far and serves them all with a single flush,
//! so under load the flush cost is shared by the whole batch.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::storage::{Storage, StorageError};

/// Waiters queued beyond this make writers wait for room (back-pressure, never unbounded).
pub const COMMIT_QUEUE_MAX: usize = 8192;

type Waiter = oneshot::Sender<Result<(), StorageError>>;

#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Waiter>,
}

impl GroupCommit {
    /// Starts the flusher task on the current tokio runtime.
    pub fn start(storage: Arc<dyn Storage>) -> Self {
        let (queue, rx) = mpsc::channel(COMMIT_QUEUE_MAX);
        tokio::spawn(flusher(storage, rx));
        GroupCommit { queue }
    }

    /// Returns once every `put` that completed before this call is durable.
    pub async fn durable(&self) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || StorageError {
            operation: "flush",
            reason: "the flusher has stopped".into(),
        };
        self.queue.send(tx).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn flusher(storage: Arc<dyn Storage>, mut rx: mpsc::Receiver<Waiter>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, COMMIT_QUEUE_MAX).await > 0 {
        let result = storage.flush().await;
        if let Err(e) = &result {
            tracing::error!(error = %e, waiters = batch.len(), "group commit flush failed");
        }
        for waiter in batch.drain(..) {
            // A waiter whose request was cancelled has dropped its receiver; nothing to do.
            let _ = waiter.send(result.clone());
        }
    }
}
