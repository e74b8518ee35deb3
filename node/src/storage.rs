//! The storage seam: a small key-value trait with a sled engine for real nodes and an in-memory
//! engine for tests and simulation.
//!
//! Durability: `put` makes a value visible; only a completed `flush` makes it survive a crash.
//! sled's flush uses `sync_file_range(2)`, not `fsync`: a flushed write survives `kill -9` of the
//! process, but not a power loss or kernel crash. Engines that need stronger guarantees (fjall,
//! with a real `fdatasync`) slot in behind the same trait.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;

use thiserror::Error;

/// A boxed flush future (the trait stays object-safe).
pub type FlushFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send + 'a>>;

/// The separate keyspaces a node keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tree {
    /// Cart id → encoded cart.
    Carts,
    /// Node-local facts (the actor id).
    Meta,
}

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Carts => "carts",
            Tree::Meta => "meta",
        }
    }
}

#[derive(Debug, Clone, Error)]
#[error("storage {operation} failed: {reason}")]
pub struct StorageError {
    pub operation: &'static str,
    pub reason: String,
}

impl StorageError {
    fn new(operation: &'static str, e: impl std::fmt::Display) -> Self {
        StorageError {
            operation,
            reason: e.to_string(),
        }
    }
}

pub trait Storage: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StorageError>;
    /// Makes every completed `put` durable. Callers share flushes through [`crate::commit`].
    fn flush(&self) -> FlushFuture<'_>;
}

/// sled 0.34: one tree per [`Tree`].
pub struct SledStorage {
    db: sled::Db,
    carts: sled::Tree,
    meta: sled::Tree,
}

impl SledStorage {
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| StorageError::new("open", format!("{}: {e}", dir.display())))?;
        let open_tree = |t: Tree| db.open_tree(t.name()).map_err(|e| StorageError::new("open", e));
        Ok(SledStorage {
            carts: open_tree(Tree::Carts)?,
            meta: open_tree(Tree::Meta)?,
            db,
        })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        match tree {
            Tree::Carts => &self.carts,
            Tree::Meta => &self.meta,
        }
    }
}

impl Storage for SledStorage {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let value = self.tree(tree).get(key).map_err(|e| StorageError::new("get", e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.tree(tree)
            .insert(key, value)
            .map_err(|e| StorageError::new("put", e))?;
        Ok(())
    }

    fn flush(&self) -> FlushFuture<'_> {
        // One flush of the shared page cache covers every tree.
        Box::pin(async move {
            self.db.flush_async().await.map_err(|e| StorageError::new("flush", e))?;
            Ok(())
        })
    }
}

type MemoryMap = BTreeMap<(Tree, Vec<u8>), Vec<u8>>;

/// A process-local map; `flush` is a no-op. For tests and deterministic simulation.
#[derive(Default)]
pub struct MemoryStorage {
    map: Mutex<MemoryMap>,
}

impl MemoryStorage {
    fn map(&self) -> Result<std::sync::MutexGuard<'_, MemoryMap>, StorageError> {
        self.map
            .lock()
            .map_err(|_| StorageError::new("lock", "memory storage mutex poisoned"))
    }
}

impl Storage for MemoryStorage {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.map()?.get(&(tree, key.to_vec())).cloned())
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.map()?.insert((tree, key.to_vec()), value.to_vec());
        Ok(())
    }

    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}
