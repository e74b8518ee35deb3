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

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The separate keyspaces a node keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tree {
    /// Cart id → encoded cart (the base state; see `Deltas`).
    Carts,
    /// `cart id \0 seq` (u32, big-endian) → encoded delta written after the cart's base. A cart
    /// is its base merged with its deltas.
    Deltas,
    /// Node-local facts (the actor id).
    Meta,
    /// `owner \0 cart id` → encoded cart held for a down owner (hinted handoff).
    Hints,
    /// `leaf (u16, big-endian) cart id` → empty: the carts of one anti-entropy digest leaf as a
    /// contiguous range (see `digests`). Written before a cart's first base; may hold entries
    /// for carts since dropped (readers skip them).
    Leaves,
}

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Carts => "carts",
            Tree::Deltas => "deltas",
            Tree::Meta => "meta",
            Tree::Hints => "hints",
            Tree::Leaves => "leaves",
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
    /// Deletes `key` (absent is fine).
    fn delete(&self, tree: Tree, key: &[u8]) -> Result<(), StorageError>;
    /// Deletes `key` only if it still holds `expected`; returns whether it did.
    fn delete_if(&self, tree: Tree, key: &[u8], expected: &[u8]) -> Result<bool, StorageError>;
    /// Up to `limit` entries with keys starting with `prefix` and greater than `after`, in key order.
    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError>;
    /// Makes every completed `put` durable. Callers share flushes through [`crate::commit`].
    fn flush(&self) -> FlushFuture<'_>;
}

/// sled 0.34: one tree per [`Tree`].
pub struct SledStorage {
    db: sled::Db,
    carts: sled::Tree,
    deltas: sled::Tree,
    meta: sled::Tree,
    hints: sled::Tree,
    leaves: sled::Tree,
}

impl SledStorage {
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|e| StorageError::new("open", format!("{}: {e}", dir.display())))?;
        let open_tree = |t: Tree| db.open_tree(t.name()).map_err(|e| StorageError::new("open", e));
        Ok(SledStorage {
            carts: open_tree(Tree::Carts)?,
            deltas: open_tree(Tree::Deltas)?,
            meta: open_tree(Tree::Meta)?,
            hints: open_tree(Tree::Hints)?,
            leaves: open_tree(Tree::Leaves)?,
            db,
        })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        match tree {
            Tree::Carts => &self.carts,
            Tree::Deltas => &self.deltas,
            Tree::Meta => &self.meta,
            Tree::Hints => &self.hints,
            Tree::Leaves => &self.leaves,
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

    fn delete(&self, tree: Tree, key: &[u8]) -> Result<(), StorageError> {
        self.tree(tree)
            .remove(key)
            .map_err(|e| StorageError::new("delete", e))?;
        Ok(())
    }

    fn delete_if(&self, tree: Tree, key: &[u8], expected: &[u8]) -> Result<bool, StorageError> {
        let swapped = self
            .tree(tree)
            .compare_and_swap(key, Some(expected), None::<&[u8]>)
            .map_err(|e| StorageError::new("delete", e))?;
        Ok(swapped.is_ok())
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let tree = self.tree(tree);
        let iter = match after {
            Some(after) => tree.range::<&[u8], _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => tree.range::<&[u8], _>(prefix..),
        };
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(|e| StorageError::new("scan", e))?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
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

    fn delete(&self, tree: Tree, key: &[u8]) -> Result<(), StorageError> {
        self.map()?.remove(&(tree, key.to_vec()));
        Ok(())
    }

    fn delete_if(&self, tree: Tree, key: &[u8], expected: &[u8]) -> Result<bool, StorageError> {
        let mut map = self.map()?;
        let k = (tree, key.to_vec());
        if map.get(&k).is_some_and(|v| v == expected) {
            map.remove(&k);
            return Ok(true);
        }
        Ok(false)
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let map = self.map()?;
        let start = (tree, after.unwrap_or(prefix).to_vec());
        let lower = match after {
            Some(_) => std::ops::Bound::Excluded(start),
            None => std::ops::Bound::Included(start),
        };
        Ok(map
            .range((lower, std::ops::Bound::Unbounded))
            .take_while(|((t, k), _)| *t == tree && k.starts_with(prefix))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(s: &dyn Storage) {
        for k in ["a\0x", "a\0y", "a\0z", "b\0x"] {
            s.put(Tree::Hints, k.as_bytes(), k.as_bytes()).unwrap();
        }
        let keys = |after: Option<&[u8]>, limit| -> Vec<String> {
            s.scan(Tree::Hints, b"a\0", after, limit)
                .unwrap()
                .into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect()
        };
        assert_eq!(keys(None, 10), ["a\0x", "a\0y", "a\0z"]);
        assert_eq!(keys(None, 2), ["a\0x", "a\0y"]);
        assert_eq!(keys(Some(b"a\0x"), 10), ["a\0y", "a\0z"]);
        assert!(s.scan(Tree::Carts, b"", None, 10).unwrap().is_empty());
        assert!(!s.delete_if(Tree::Hints, b"a\0x", b"other").unwrap());
        assert!(s.delete_if(Tree::Hints, b"a\0x", b"a\0x").unwrap());
        assert_eq!(s.get(Tree::Hints, b"a\0x").unwrap(), None);
        s.delete(Tree::Hints, b"a\0y").unwrap();
        s.delete(Tree::Hints, b"absent").unwrap();
        assert_eq!(keys(None, 10), ["a\0z"]);
    }

    #[test]
    fn memory_and_sled_agree() {
        exercise(&MemoryStorage::default());
        let dir = tempfile::tempdir().unwrap();
        exercise(&SledStorage::open(dir.path()).unwrap());
    }
}
