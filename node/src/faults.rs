//! Storage faults contained: a node whose disk fails (full, I/O errors) stops taking writes and
//! says so, instead of failing the client's write.
//!
//! - [`StorageHealth`] is the node's verdict on its own storage: healthy, or degraded with a
//!   reason (the engine failed, or free space is below the low watermark). The store refuses
//!   every write before applying anything while degraded (`UNAVAILABLE`, outcome known, see
//!   `NodeError::Degraded`); the coordinator then completes the client's write through the other
//!   owners; heartbeats carry the verdict so peers and clients stop sending writes here. Reads
//!   go on.
//! - [`Watched`] wraps the engine and records its first failed `put`, `delete` or `flush` in the
//!   health: a failed engine stays broken (sled after an I/O error, fjall poisons itself), so the verdict sticks until the engine is
//!   reopened (the node restarts itself in place once space is back, see `cartd`).
//! - [`FaultyStorage`] wraps any engine with faults switched on and off at run time (ENOSPC and
//!   EIO on writes, EIO on flush, a slow flush, a flush that "succeeds" but keeps nothing): for
//!   unit tests and the simulation's storage nemesis.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::storage::{FlushFuture, KeyValue, Storage, StorageError, Tree};

/// Why a node does not take writes (none: healthy).
#[derive(Default)]
pub struct StorageHealth {
    reasons: Mutex<Reasons>,
    /// Whether any reason is set (stored under the lock): the one check on every write's path.
    any: AtomicBool,
}

#[derive(Default)]
struct Reasons {
    /// The engine's first failure since it was opened (sticky).
    failed: Option<String>,
    /// Free space below the low watermark (cleared when space returns).
    low_space: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StorageHealth {
    /// Why the node refuses writes now, if it does.
    pub fn degraded(&self) -> Option<String> {
        if !self.is_degraded() {
            return None;
        }
        let reasons = lock(&self.reasons);
        reasons.failed.clone().or_else(|| reasons.low_space.clone())
    }

    /// Whether the node refuses writes now (one atomic load).
    pub fn is_degraded(&self) -> bool {
        self.any.load(Ordering::SeqCst)
    }

    /// Whether the engine itself failed (only reopening it clears that).
    pub fn engine_failed(&self) -> bool {
        lock(&self.reasons).failed.is_some()
    }

    /// Changes the reasons under the lock and stores the flag before releasing it.
    fn update<T>(&self, change: impl FnOnce(&mut Reasons) -> T) -> T {
        let mut reasons = lock(&self.reasons);
        let out = change(&mut reasons);
        self.any.store(
            reasons.failed.is_some() || reasons.low_space.is_some(),
            Ordering::SeqCst,
        );
        out
    }

    /// Records an engine failure (the first one is kept).
    pub fn fail(&self, e: &StorageError) {
        self.update(|r| {
            if r.failed.is_none() {
                tracing::error!(error = %e, "storage failed: this node takes no writes until its storage recovers");
                r.failed = Some(format!("storage {} failed: {}", e.operation, e.reason));
            }
        });
    }

    /// The engine was reopened (or a simulated fault healed): writes may go on.
    pub fn engine_recovered(&self) {
        if self.update(|r| r.failed.take()).is_some() {
            tracing::info!("storage recovered: this node takes writes again");
        }
    }

    /// Sets or clears the low-space verdict from a measurement of free space.
    pub fn free_space(&self, free_bytes: u64, watermark_bytes: u64) {
        self.update(|r| {
            if free_bytes < watermark_bytes {
                if r.low_space.is_none() {
                    tracing::warn!(
                        free_bytes,
                        watermark_bytes,
                        "disk space below the low watermark: this node takes no writes"
                    );
                }
                r.low_space = Some(format!(
                    "disk space low: {} MiB free, below the low watermark of {} MiB (min_free_disk_mb)",
                    free_bytes >> 20,
                    watermark_bytes >> 20
                ));
            } else if r.low_space.take().is_some() {
                tracing::info!(free_bytes, "disk space back above the low watermark");
            }
        });
    }
}

/// An engine whose failures are recorded in a [`StorageHealth`].
pub struct Watched {
    inner: Arc<dyn Storage>,
    health: Arc<StorageHealth>,
}

impl Watched {
    pub fn new(inner: Arc<dyn Storage>, health: Arc<StorageHealth>) -> Self {
        Watched { inner, health }
    }

    fn watch<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if let Err(e) = &result {
            self.health.fail(e);
        }
        result
    }
}

impl Storage for Watched {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(tree, key)
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.watch(self.inner.put(tree, key, value))
    }

    fn delete(&self, tree: Tree, key: &[u8]) -> Result<(), StorageError> {
        self.watch(self.inner.delete(tree, key))
    }

    fn delete_if(&self, tree: Tree, key: &[u8], expected: &[u8]) -> Result<bool, StorageError> {
        self.watch(self.inner.delete_if(tree, key, expected))
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        self.inner.scan(tree, prefix, after, limit)
    }

    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async move {
            // A failed engine is not asked again (sled stays broken): the first failure stands.
            if let Some(earlier) = lock(&self.health.reasons).failed.clone() {
                return Err(StorageError {
                    operation: "flush",
                    reason: format!("not tried, the engine failed earlier ({earlier})"),
                });
            }
            let result = self.inner.flush().await;
            self.watch(result)
        })
    }
}

/// A fault [`FaultyStorage`] injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every put/delete fails with "No space left on device".
    NoSpace,
    /// Every put/delete fails with an I/O error.
    WriteError,
    /// Every flush fails with an I/O error.
    FlushError,
    /// Every flush takes this long first.
    SlowFlush(Duration),
    /// Flushes "succeed" but keep nothing: a crash (see [`FaultyStorage::crash`]) loses every
    /// write since the fault began.
    LyingFlush,
}

/// A write to undo in a crash: tree, key, the value before (`None`: absent).
type Undo = (Tree, Vec<u8>, Option<Vec<u8>>);

/// Wraps an engine with faults switched on and off at run time.
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    fault: Mutex<Option<Fault>>,
    /// Writes made while the flush lied: (tree, key, value before) to undo on a crash.
    unflushed: Mutex<Vec<Undo>>,
    injected: AtomicU64,
}

impl FaultyStorage {
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        FaultyStorage {
            inner,
            fault: Mutex::new(None),
            unflushed: Mutex::new(Vec::new()),
            injected: AtomicU64::new(0),
        }
    }

    /// Switches a fault on (`Some`) or every fault off (`None`).
    pub fn set(&self, fault: Option<Fault>) {
        if fault != Some(Fault::LyingFlush) {
            lock(&self.unflushed).clear(); // what the liar kept is flushed for real from now on
        }
        *lock(&self.fault) = fault;
    }

    /// Operations failed by a fault so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// A crash while the flush lied: every write since then is undone.
    pub fn crash(&self) -> Result<(), StorageError> {
        let undo = std::mem::take(&mut *lock(&self.unflushed));
        for (tree, key, before) in undo.into_iter().rev() {
            match before {
                Some(v) => self.inner.put(tree, &key, &v)?,
                None => self.inner.delete(tree, &key)?,
            }
        }
        Ok(())
    }

    /// Before a put or delete of `key`: fails it under a write fault; while the flush lies,
    /// remembers the value it replaces (undone by a crash).
    fn before_write(&self, operation: &'static str, tree: Tree, key: &[u8]) -> Result<(), StorageError> {
        let reason = match *lock(&self.fault) {
            Some(Fault::NoSpace) => "No space left on device (os error 28)",
            Some(Fault::WriteError) => "Input/output error (os error 5)",
            Some(Fault::LyingFlush) => {
                let before = self.inner.get(tree, key)?;
                lock(&self.unflushed).push((tree, key.to_vec(), before));
                return Ok(());
            }
            _ => return Ok(()),
        };
        self.injected.fetch_add(1, Ordering::SeqCst);
        Err(StorageError {
            operation,
            reason: format!("injected: {reason}"),
        })
    }
}

impl Storage for FaultyStorage {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(tree, key)
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.before_write("put", tree, key)?;
        self.inner.put(tree, key, value)
    }

    fn delete(&self, tree: Tree, key: &[u8]) -> Result<(), StorageError> {
        self.before_write("delete", tree, key)?;
        self.inner.delete(tree, key)
    }

    fn delete_if(&self, tree: Tree, key: &[u8], expected: &[u8]) -> Result<bool, StorageError> {
        self.before_write("delete", tree, key)?;
        self.inner.delete_if(tree, key, expected)
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        self.inner.scan(tree, prefix, after, limit)
    }

    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async move {
            let fault = *lock(&self.fault);
            match fault {
                Some(Fault::FlushError) => {
                    self.injected.fetch_add(1, Ordering::SeqCst);
                    return Err(StorageError {
                        operation: "flush",
                        reason: "injected: Input/output error (os error 5)".into(),
                    });
                }
                Some(Fault::SlowFlush(delay)) => tokio::time::sleep(delay).await,
                Some(Fault::LyingFlush) => return Ok(()),
                _ => {}
            }
            self.inner.flush().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[tokio::test]
    async fn faults_fail_writes_and_the_health_records_the_first() {
        let faulty = Arc::new(FaultyStorage::new(Arc::new(MemoryStorage::default())));
        let health = Arc::new(StorageHealth::default());
        let watched = Watched::new(faulty.clone(), health.clone());
        watched.put(Tree::Meta, b"a", b"1").unwrap();
        assert_eq!(health.degraded(), None);

        faulty.set(Some(Fault::NoSpace));
        let err = watched.put(Tree::Meta, b"b", b"2").unwrap_err();
        assert!(err.reason.contains("No space left"), "{err}");
        assert_eq!(
            watched.get(Tree::Meta, b"b").unwrap(),
            None,
            "a failed put stores nothing"
        );
        assert_eq!(
            watched.get(Tree::Meta, b"a").unwrap().as_deref(),
            Some(&b"1"[..]),
            "reads go on"
        );
        let reason = health.degraded().expect("degraded");
        assert!(reason.contains("put") && reason.contains("No space left"), "{reason}");

        faulty.set(None);
        let err = watched.flush().await.unwrap_err();
        assert!(
            err.reason.contains("No space left"),
            "a failed engine is not flushed again: {err}"
        );
        assert!(health.engine_failed(), "sticky until the engine is reopened");
        health.engine_recovered();
        assert_eq!(health.degraded(), None);
        watched.flush().await.unwrap();

        faulty.set(Some(Fault::FlushError));
        watched.put(Tree::Meta, b"c", b"3").unwrap();
        assert!(watched.flush().await.is_err());
        assert!(health.degraded().unwrap().contains("flush"), "{:?}", health.degraded());
        assert_eq!(faulty.injected(), 2);
    }

    #[tokio::test]
    async fn a_lying_flush_loses_its_writes_in_a_crash() {
        let faulty = FaultyStorage::new(Arc::new(MemoryStorage::default()));
        faulty.put(Tree::Carts, b"kept", b"1").unwrap();
        faulty.flush().await.unwrap();
        faulty.set(Some(Fault::LyingFlush));
        faulty.put(Tree::Carts, b"kept", b"2").unwrap();
        faulty.put(Tree::Carts, b"lost", b"1").unwrap();
        faulty.flush().await.unwrap();
        faulty.crash().unwrap();
        assert_eq!(faulty.get(Tree::Carts, b"kept").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(faulty.get(Tree::Carts, b"lost").unwrap(), None);
    }

    #[test]
    fn low_space_comes_and_goes_with_the_measurement() {
        let health = StorageHealth::default();
        health.free_space(10 << 20, 64 << 20);
        let reason = health.degraded().expect("below the watermark");
        assert!(
            reason.contains("10 MiB free") && reason.contains("min_free_disk_mb"),
            "{reason}"
        );
        health.free_space(100 << 20, 64 << 20);
        assert_eq!(health.degraded(), None);
    }
}
