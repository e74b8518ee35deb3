//! The storage seam: a small key-value trait with two engines for real nodes (fjall, the
//! default, and sled) and an in-memory engine for tests and simulation.
//!
//! Durability: `put` makes a value visible; only a completed `flush` makes it survive a crash.
//! - fjall (`engine = "fjall"`): a flush writes the journal's buffer and calls `fdatasync(2)` on
//!   it, so a flushed write survives `kill -9`, a kernel crash and a power loss (on a disk that
//!   honours the flush).
//! - sled (`engine = "sled"`): its flush uses `sync_file_range(2)`, not `fsync`: a flushed write
//!   survives `kill -9` of the process, but not a power loss or kernel crash.
//!
//! [`open`] picks the engine; each keeps its files apart (fjall under `DATA_DIR/fjall`, sled in
//! `DATA_DIR` itself), and a data directory written by one engine is refused by the other.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

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

/// Which engine keeps a node's data (`[storage] engine` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// fjall 3 (an LSM tree): group-commit flushes end in `fdatasync`.
    #[default]
    Fjall,
    /// sled 0.34: flushes end in `sync_file_range` (survive `kill -9`, not a power loss).
    Sled,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Fjall => "fjall",
            Engine::Sled => "sled",
        }
    }
}

/// The folder fjall keeps its files in, inside the node's data directory.
const FJALL_DIR: &str = "fjall";
/// A file sled always writes in its directory (how a sled data directory is recognised).
const SLED_MARKER: &str = "conf";

/// Opens `engine` on `dir`. A directory that already holds the other engine's data is refused
/// (switching engines means a new, empty directory: the node then refills from its peers).
pub fn open(engine: Engine, dir: &Path) -> Result<Arc<dyn Storage>, StorageError> {
    let fjall_dir = dir.join(FJALL_DIR);
    let refuse = |found: Engine| {
        StorageError::new(
            "open",
            format!(
                "{} holds {} data but the config says engine = \"{}\"; set [storage] engine = \"{}\" or start from an empty data_dir",
                dir.display(),
                found.name(),
                engine.name(),
                found.name()
            ),
        )
    };
    match engine {
        Engine::Fjall => {
            if dir.join(SLED_MARKER).exists() && !fjall_dir.exists() {
                return Err(refuse(Engine::Sled));
            }
            Ok(Arc::new(FjallStorage::open(&fjall_dir)?))
        }
        Engine::Sled => {
            if fjall_dir.exists() {
                return Err(refuse(Engine::Fjall));
            }
            Ok(Arc::new(SledStorage::open(dir)?))
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

/// Where [`Storage::scan`] starts: after `after`, else at `prefix`.
fn scan_from<'a>(prefix: &'a [u8], after: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    match after {
        Some(after) => (Bound::Excluded(after), Bound::Unbounded),
        None => (Bound::Included(prefix), Bound::Unbounded),
    }
}

/// The first `limit` entries of an engine's ordered `entries` while their keys start with
/// `prefix` (the rest of a [`Storage::scan`], shared by the engines).
fn take_prefixed<K: AsRef<[u8]>, V: AsRef<[u8]>, E: std::fmt::Display>(
    entries: impl Iterator<Item = Result<(K, V), E>>,
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<KeyValue>, StorageError> {
    let mut out = Vec::new();
    for entry in entries {
        if out.len() >= limit {
            break;
        }
        let (k, v) = entry.map_err(|e| StorageError::new("scan", e))?;
        if !k.as_ref().starts_with(prefix) {
            break;
        }
        out.push((k.as_ref().to_vec(), v.as_ref().to_vec()));
    }
    Ok(out)
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
        let entries = self.tree(tree).range::<&[u8], _>(scan_from(prefix, after));
        take_prefixed(entries, prefix, limit)
    }

    fn flush(&self) -> FlushFuture<'_> {
        // One flush of the shared page cache covers every tree.
        Box::pin(async move {
            self.db.flush_async().await.map_err(|e| StorageError::new("flush", e))?;
            Ok(())
        })
    }
}

/// Journals fjall keeps at most before it flushes memtables to free them (its minimum; the
/// default, 512 MiB, let journals fill a 256 MiB disk holding 3 MB of carts).
const FJALL_JOURNALS_MAX_BYTES: u64 = 64 << 20;
/// Memtable size per keyspace before it is written out as a table (fjall's default is 64 MiB:
/// with five keyspaces the journals they pin stayed on disk for minutes).
const FJALL_MEMTABLE_BYTES: u64 = 8 << 20;

/// fjall 3: one keyspace per [`Tree`] in one database (one journal). Writes go to the journal's
/// buffer only (`manual_journal_persist`); [`Storage::flush`] writes the buffer out and
/// `fdatasync`s the journal, on a blocking thread, so one flush makes every earlier `put` of
/// every tree durable. The sync holds the journal's lock, so a `put` meanwhile waits for
/// it (on an async worker: a disk slow to sync slows the whole node, which the slow-node handling
/// of clients and coordinators then routes around). fjall has no compare-and-delete, so the writes of the two trees that use
/// [`Storage::delete_if`] (hints, meta) run under one lock.
pub struct FjallStorage {
    db: fjall::Database,
    carts: fjall::Keyspace,
    deltas: fjall::Keyspace,
    meta: fjall::Keyspace,
    hints: fjall::Keyspace,
    leaves: fjall::Keyspace,
    /// Held by every write of `hints` and `meta` (see [`FjallStorage::guard`]).
    checked_writes: Mutex<()>,
}

impl FjallStorage {
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let db = fjall::Database::builder(dir)
            .manual_journal_persist(true)
            .max_journaling_size(FJALL_JOURNALS_MAX_BYTES)
            .open()
            .map_err(|e| StorageError::new("open", format!("{}: {e}", dir.display())))?;
        let open_keyspace = |t: Tree| {
            db.keyspace(t.name(), || {
                fjall::KeyspaceCreateOptions::default()
                    .manual_journal_persist(true)
                    .max_memtable_size(FJALL_MEMTABLE_BYTES)
            })
            .map_err(|e| StorageError::new("open", e))
        };
        Ok(FjallStorage {
            carts: open_keyspace(Tree::Carts)?,
            deltas: open_keyspace(Tree::Deltas)?,
            meta: open_keyspace(Tree::Meta)?,
            hints: open_keyspace(Tree::Hints)?,
            leaves: open_keyspace(Tree::Leaves)?,
            db,
            checked_writes: Mutex::new(()),
        })
    }

    fn keyspace(&self, tree: Tree) -> &fjall::Keyspace {
        match tree {
            Tree::Carts => &self.carts,
            Tree::Deltas => &self.deltas,
            Tree::Meta => &self.meta,
            Tree::Hints => &self.hints,
            Tree::Leaves => &self.leaves,
        }
    }

    /// The lock that makes `delete_if` atomic against other writes of its trees; `None` for the
    /// trees without `delete_if` (the write path's carts, deltas and leaves take no lock).
    fn guard(&self, tree: Tree) -> Result<Option<std::sync::MutexGuard<'_, ()>>, StorageError> {
        match tree {
            Tree::Hints | Tree::Meta => self
                .checked_writes
                .lock()
                .map(Some)
                .map_err(|_| StorageError::new("lock", "fjall write lock poisoned")),
            Tree::Carts | Tree::Deltas | Tree::Leaves => Ok(None),
        }
    }
}

impl Storage for FjallStorage {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let value = self.keyspace(tree).get(key).map_err(|e| StorageError::new("get", e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let _guard = self.guard(tree)?;
        self.keyspace(tree)
            .insert(key, value)
            .map_err(|e| StorageError::new("put", e))
    }

    fn delete(&self, tree: Tree, key: &[u8]) -> Result<(), StorageError> {
        let _guard = self.guard(tree)?;
        self.keyspace(tree)
            .remove(key)
            .map_err(|e| StorageError::new("delete", e))
    }

    fn delete_if(&self, tree: Tree, key: &[u8], expected: &[u8]) -> Result<bool, StorageError> {
        let _guard = self.guard(tree)?;
        let keyspace = self.keyspace(tree);
        let current = keyspace.get(key).map_err(|e| StorageError::new("delete", e))?;
        if current.as_deref() != Some(expected) {
            return Ok(false);
        }
        keyspace.remove(key).map_err(|e| StorageError::new("delete", e))?;
        Ok(true)
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let entries = self
            .keyspace(tree)
            .range::<&[u8], _>(scan_from(prefix, after))
            .map(fjall::Guard::into_inner);
        take_prefixed(entries, prefix, limit)
    }

    fn flush(&self) -> FlushFuture<'_> {
        // The journal is shared by every keyspace: one fdatasync covers every tree. It blocks
        // (and holds the journal's lock, so puts wait for it): off the async workers.
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || db.persist(fjall::PersistMode::SyncData))
                .await
                .map_err(|e| StorageError::new("flush", e))?
                .map_err(|e| StorageError::new("flush", e))
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
            Some(_) => Bound::Excluded(start),
            None => Bound::Included(start),
        };
        Ok(map
            .range((lower, Bound::Unbounded))
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
    fn every_engine_agrees() {
        exercise(&MemoryStorage::default());
        for engine in [Engine::Sled, Engine::Fjall] {
            let dir = tempfile::tempdir().unwrap();
            exercise(&*open(engine, dir.path()).unwrap());
        }
    }

    #[tokio::test]
    async fn fjall_reopens_with_its_data() {
        // (Dropping the database writes its buffer out too: that a flush alone makes writes
        // durable is what the kill -9 tests in node/tests/durability.rs check.)
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(Engine::Fjall, dir.path()).unwrap();
            s.put(Tree::Carts, b"c1", b"v1").unwrap();
            s.put(Tree::Hints, b"n2\0c1", b"h").unwrap();
            s.flush().await.unwrap();
        }
        let s = open(Engine::Fjall, dir.path()).unwrap();
        assert_eq!(s.get(Tree::Carts, b"c1").unwrap().as_deref(), Some(&b"v1"[..]));
        assert_eq!(s.get(Tree::Hints, b"n2\0c1").unwrap().as_deref(), Some(&b"h"[..]));
        assert_eq!(s.get(Tree::Deltas, b"c1").unwrap(), None);
    }

    #[test]
    fn a_data_dir_of_one_engine_is_refused_by_the_other() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(Engine::Sled, dir.path()).unwrap());
        let e = open(Engine::Fjall, dir.path())
            .err()
            .expect("fjall must refuse sled's directory");
        assert!(e.to_string().contains("holds sled data"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        drop(open(Engine::Fjall, dir.path()).unwrap());
        let e = open(Engine::Sled, dir.path())
            .err()
            .expect("sled must refuse fjall's directory");
        assert!(e.to_string().contains("holds fjall data"), "{e}");
    }
}
