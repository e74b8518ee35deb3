//! Local cart storage with per-key serialised read-modify-write and group-committed durability.
//!
//! Write path: take the key's lock → load → apply the op (pure, in `cart-crdt`) → put → wait for
//! a group-commit flush → release. The lock is held until the write is durable, so nobody (not a
//! reader, not another writer) can observe or build on state that a crash could still lose; a
//! lost write never leaves its dot in anyone's hands to be reused after restart.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use cart_crdt::{codec, Actor, Cart, CartId, CartOp, Limits, WriteCtx};
use tokio::sync::{Mutex, MutexGuard, Semaphore};

use crate::clock::Clock;
use crate::commit::GroupCommit;
use crate::error::NodeError;
use crate::storage::{Storage, StorageError, Tree};

/// Lock shards: keys hash onto these; two keys sharing a shard merely queue.
pub const KEY_LOCK_SHARDS: usize = 4096;

const ACTOR_KEY: &[u8] = b"actor";

pub struct CartStore {
    storage: Arc<dyn Storage>,
    commit: GroupCommit,
    locks: Box<[Mutex<()>]>,
    actor: Actor,
    clock: Arc<dyn Clock>,
    limits: Limits,
    write_permits: Semaphore,
    max_inflight_writes: usize,
}

impl CartStore {
    /// Opens the store; `fresh_actor` is drawn only when the storage has no actor yet (new disk).
    pub fn open(
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
        limits: Limits,
        max_inflight_writes: usize,
        fresh_actor: u64,
    ) -> Result<Self, NodeError> {
        let actor = load_or_create_actor(storage.as_ref(), fresh_actor)?;
        Ok(CartStore {
            commit: GroupCommit::start(storage.clone()),
            storage,
            locks: (0..KEY_LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
            actor,
            clock,
            limits,
            write_permits: Semaphore::new(max_inflight_writes),
            max_inflight_writes,
        })
    }

    pub fn actor(&self) -> Actor {
        self.actor
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The cart as durably stored (an absent cart is empty).
    pub async fn read(&self, id: &CartId) -> Result<Cart, NodeError> {
        let _guard = self.lock(id).await;
        self.load(id)
    }

    /// Applies `op` and returns the new cart once it is durable. On error nothing is stored.
    pub async fn write(&self, id: &CartId, op: &CartOp) -> Result<Cart, NodeError> {
        let _permit = self.write_permits.try_acquire().map_err(|_| NodeError::Overloaded {
            what: "writes",
            limit: self.max_inflight_writes,
        })?;
        let _guard = self.lock(id).await;
        let mut cart = self.load(id)?;
        let ctx = WriteCtx {
            actor: self.actor,
            now_ms: self.clock.now_ms(),
            limits: &self.limits,
        };
        cart.apply(&ctx, op)?;
        self.storage
            .put(Tree::Carts, id.as_str().as_bytes(), &codec::encode(&cart)?)?;
        self.commit.durable().await?;
        Ok(cart)
    }

    /// Flushes everything written so far (used at shutdown).
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.commit.durable().await
    }

    fn load(&self, id: &CartId) -> Result<Cart, NodeError> {
        match self.storage.get(Tree::Carts, id.as_str().as_bytes())? {
            Some(bytes) => Ok(codec::decode(&bytes)?),
            None => Ok(Cart::default()),
        }
    }

    async fn lock(&self, id: &CartId) -> MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        id.hash(&mut h);
        self.locks[(h.finish() % KEY_LOCK_SHARDS as u64) as usize].lock().await
    }
}

fn load_or_create_actor(storage: &dyn Storage, fresh: u64) -> Result<Actor, NodeError> {
    if let Some(bytes) = storage.get(Tree::Meta, ACTOR_KEY)? {
        let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| StorageError {
            operation: "get",
            reason: format!("stored actor id has {} bytes, expected 8", bytes.len()),
        })?;
        return Ok(Actor(u64::from_be_bytes(raw)));
    }
    storage.put(Tree::Meta, ACTOR_KEY, &fresh.to_be_bytes())?;
    Ok(Actor(fresh))
}
