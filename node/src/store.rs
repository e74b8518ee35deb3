//! Local cart storage with per-key serialised read-modify-write and group-committed durability:
//! the node's own replicas (`carts` and `deltas` trees) and the hints it holds for down owners
//! (`hints` tree).
//!
//! A replica is stored as a *base* (the whole cart) plus the *deltas* written after it: a write
//! stores only its delta (a few hundred bytes, not the whole cart), and once [`DELTAS_PER_BASE`]
//! deltas are stored and they add up to a quarter of the base (or [`DELTAS_PER_BASE_MAX`] are
//! stored), the next write stores the whole cart again and drops the deltas: a big cart (a hot
//! one holds ~1,000 request records, ~70 KB) is rewritten less often than a small one. Loading merges
//! base and deltas; merging is idempotent, so a crash between storing a base and dropping the
//! deltas it covers loses nothing and double-counts nothing.
//!
//! Write path: take the key's lock → load → apply the op (pure, in `cart-crdt`) → put → release →
//! wait for a group-commit flush → answer. The lock covers only the read-modify-write (so two ops
//! never build on the same state and reuse a dot), not the flush, so a hot cart takes many writes
//! per flush and reads never wait for one.
//!
//! A read may therefore see a write that is not durable yet, and pass it on (read repair). If the
//! node then crashes before the flush, that write's dot would be free to be issued again for other
//! content — which merges would silently drop. So a node that did not shut down cleanly comes back
//! as a new actor (a new incarnation): its old dots are never reused.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use cart_crdt::{codec, Actor, Cart, CartId, CartOp, Context, Expiry, Limits, RequestId, WriteCtx};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Semaphore;

use crate::clock::Clock;
use crate::commit::GroupCommit;
use crate::digests::{entry_hash, leaf_index_key, leaf_prefix, RangeDigests, ScanPage};
use crate::error::NodeError;
use crate::faults::{StorageHealth, Watched};
use crate::metrics::Metrics;
use crate::storage::{KeyValue, Storage, StorageError, Tree};

/// Lock shards: keys hash onto these; two keys sharing a shard merely queue.
pub const KEY_LOCK_SHARDS: usize = 4096;

const ACTOR_KEY: &[u8] = b"actor";
/// Present only between a clean shutdown and the next start.
const CLEAN_SHUTDOWN_KEY: &[u8] = b"clean-shutdown";

/// Decoded carts kept in memory, so hot carts are not loaded and decoded on every request (and
/// carts that do not exist are not looked up again): up to this many bytes by
/// [`Cart::approx_bytes`] (`[storage] cache_mb` sets it). Entries are replaced under the cart's
/// lock whenever the stored cart changes.
pub const CART_CACHE_BYTES_DEFAULT: u64 = 128 << 20;
/// What a cache entry costs beyond its cart (key, bookkeeping): an absent cart weighs this.
const CACHE_ENTRY_BYTES: u64 = 128;

/// Deltas stored after a cart's base before the next write may store the whole cart again: it
/// does once the deltas add up to [`DELTAS_BASE_FRACTION`] of the base's bytes.
pub const DELTAS_PER_BASE: u32 = 16;
/// Deltas stored after a base at most, whatever their size.
pub const DELTAS_PER_BASE_MAX: u32 = 256;
/// The deltas' bytes, as a fraction (1/N) of the base's, that bring a new base.
const DELTAS_BASE_FRACTION: u64 = 4;

/// A replicated state bigger than this is stored as a new base rather than as a delta.
pub const DELTA_BYTES_MAX: usize = 2048;

/// A cart as held in memory, with where its stored form stands.
#[derive(Clone)]
struct Held {
    cart: Arc<Cart>,
    stored: Stored,
}

impl Held {
    /// `stored.weight` when it has one, else the cart measured now.
    fn new(cart: Arc<Cart>, mut stored: Stored) -> Self {
        if stored.weight == 0 {
            stored.weight = CACHE_ENTRY_BYTES + cart.approx_bytes() as u64;
        }
        Held { cart, stored }
    }

    /// Its weight in the cache (bytes).
    fn weight(&self) -> u64 {
        self.stored.weight
    }
}

/// The cart cache's weigher: each entry's estimate, made when it was cached.
#[derive(Clone)]
struct HeldWeight;

impl quick_cache::Weighter<CartId, Held> for HeldWeight {
    fn weight(&self, _id: &CartId, held: &Held) -> u64 {
        held.weight()
    }
}

type CartCache = quick_cache::sync::Cache<CartId, Held, HeldWeight>;

/// Bytes each shard of the cart cache holds at least: quick_cache refuses an entry heavier than
/// its shard, and a hot cart (~1,100 request records) weighs ~150 KB; fewer shards than cores ×
/// 4 (quick_cache's default) when the budget is small.
const CACHE_SHARD_BYTES_MIN: u64 = 8 << 20;

fn cart_cache(bytes: u64) -> CartCache {
    let bytes = bytes.max(1);
    // The estimate only sizes the hash table: a cart of a few lines weighs ~1 KiB.
    let items = usize::try_from(bytes / 1024).unwrap_or(usize::MAX).max(16);
    let most = std::thread::available_parallelism().map_or(4, |n| n.get() * 4) as u64;
    let shards = (bytes / CACHE_SHARD_BYTES_MIN).clamp(1, most);
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(items)
        .weight_capacity(bytes)
        .shards(usize::try_from(shards).unwrap_or(1))
        .build();
    match options {
        Ok(options) => CartCache::with_options(options, HeldWeight, Default::default(), Default::default()),
        // Unreachable (both required settings are set); the library's own sharding then.
        Err(_) => CartCache::with_weighter(items, bytes, HeldWeight),
    }
}

/// Where a cart's stored form stands.
#[derive(Clone, Copy, Default)]
struct Stored {
    /// Whether a base is stored (a cart's first write stores one, so the `carts` tree lists every
    /// cart this node holds).
    based: bool,
    /// The highest delta sequence number stored after the base (0: none).
    last_seq: u32,
    /// Bytes of the stored base, and of the deltas after it.
    base_bytes: u64,
    delta_bytes: u64,
    /// The cart's weight in the cache ([`Held`]; 0: not measured yet): measured when its base
    /// was stored or it was loaded, then grown by each delta's own estimate, so a write to a big
    /// cart does not walk all of it again. An upper bound (what a delta supersedes is not taken
    /// off) until the next base, at most a quarter of the base's bytes or
    /// [`DELTAS_PER_BASE`] deltas later.
    weight: u64,
}

impl Stored {
    /// Whether one more delta (of `bytes`) is stored as such, rather than as a new base.
    fn takes_delta(&self, bytes: usize) -> bool {
        if !self.based || bytes > DELTA_BYTES_MAX || self.last_seq >= DELTAS_PER_BASE_MAX {
            return false;
        }
        self.last_seq < DELTAS_PER_BASE || self.delta_bytes * DELTAS_BASE_FRACTION < self.base_bytes
    }
}

/// What a local write produced: the new cart, the write's delta (encoded), which is what the
/// other replicas need to merge, and the context of the cart it was applied to (encoded): a
/// replica merges the delta only once it has seen all of that.
#[derive(Debug, Clone)]
pub struct Written {
    pub cart: Arc<Cart>,
    pub delta: Arc<Vec<u8>>,
    pub deps: Arc<Vec<u8>>,
    /// The request id was applied here before: nothing was applied now, and `delta` is the
    /// whole cart (deps empty), for the other replicas to catch up with.
    pub repeated: bool,
}

pub struct CartStore {
    storage: Arc<dyn Storage>,
    commit: GroupCommit,
    locks: Box<[Mutex<()>]>,
    actor: Actor,
    clock: Arc<dyn Clock>,
    limits: Limits,
    expiry: Expiry,
    write_permits: Semaphore,
    max_inflight_writes: usize,
    hints: HintCounts,
    cache: CartCache,
    /// Anti-entropy digests of the replicas, kept up to date by every change below.
    pub digests: RangeDigests,
    /// Whether the storage takes writes (every engine failure is recorded here).
    pub health: Arc<StorageHealth>,
    /// The node's metrics (here because every part of the node holds the store).
    pub metrics: Arc<Metrics>,
}

impl CartStore {
    /// Opens the store. `fresh_actor` becomes this node's actor when the storage has none yet (a
    /// new disk) or when the last run did not shut down cleanly (a new incarnation).
    pub async fn open(
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
        limits: Limits,
        max_inflight_writes: usize,
        fresh_actor: u64,
    ) -> Result<Self, NodeError> {
        let health = Arc::new(StorageHealth::default());
        let storage: Arc<dyn Storage> = Arc::new(Watched::new(storage, health.clone()));
        let actor = incarnation(storage.as_ref(), fresh_actor)?;
        storage.flush().await?;
        let hints = HintCounts::load(storage.as_ref())?;
        let metrics = Arc::new(Metrics::new());
        Ok(CartStore {
            commit: GroupCommit::start(storage.clone(), metrics.clone(), std::time::Duration::ZERO),
            metrics,
            storage,
            locks: (0..KEY_LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
            actor,
            clock,
            limits,
            expiry: Expiry::DEFAULT,
            write_permits: Semaphore::new(max_inflight_writes),
            max_inflight_writes,
            hints,
            cache: cart_cache(CART_CACHE_BYTES_DEFAULT),
            digests: RangeDigests::default(),
            health,
        })
    }

    pub fn actor(&self) -> Actor {
        self.actor
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Sets the cart cache's budget in bytes ([`CART_CACHE_BYTES_DEFAULT`] unless set). Call it
    /// right after [`CartStore::open`]: the cache starts empty.
    pub fn with_cache_bytes(mut self, bytes: u64) -> Self {
        self.cache = cart_cache(bytes);
        self
    }

    /// Sets the group commit's window (see [`crate::commit`]; none by default). Call it right
    /// after [`CartStore::open`], before any write: the flusher is started anew (the first one
    /// stops with its queue).
    pub fn with_commit_window(mut self, window: std::time::Duration) -> Self {
        self.commit = GroupCommit::start(self.storage.clone(), self.metrics.clone(), window);
        self
    }

    /// Sets how long carts live (the default is [`Expiry::DEFAULT`]).
    pub fn with_expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = expiry;
        self
    }

    pub fn expiry(&self) -> &Expiry {
        &self.expiry
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Whether this state of the cart has expired now (a pure function of the state and the
    /// clock: every replica decides alike, see `cart_crdt::Expiry`).
    pub fn expired(&self, id: &CartId, cart: &Cart) -> bool {
        self.expiry.expired(id, cart.touched_at_ms(), self.clock.now_ms())
    }

    /// This node's replica (an absent cart is empty).
    pub fn read(&self, id: &CartId) -> Result<Arc<Cart>, NodeError> {
        if let Some(held) = self.cache.get(id) {
            return Ok(held.cart);
        }
        let _guard = self.lock(id);
        Ok(self.held_locked(id)?.cart)
    }

    /// This node's replica merged with every hint it holds for the cart; `None` if it holds
    /// nothing at all.
    pub fn read_with_hints(&self, id: &CartId) -> Result<Option<Arc<Cart>>, NodeError> {
        let mut hints = Vec::new();
        // Only owners this node holds hints for can have one for this cart (usually none at all).
        if self.hints.total() > 0 {
            for (owner, _) in self.hints.snapshot().into_iter().filter(|(_, n)| *n > 0) {
                if let Some(bytes) = self.storage.get(Tree::Hints, &hint_key(&owner, id))? {
                    hints.push(codec::decode(&bytes)?);
                }
            }
        }
        let replica = self.read(id)?;
        let present = *replica != Cart::default();
        if hints.is_empty() {
            return Ok(present.then_some(replica));
        }
        let mut merged = (*replica).clone();
        for hint in hints {
            merged.merge(hint);
        }
        Ok(Some(Arc::new(merged)))
    }

    /// The replica to modify, owned: taken out of the cache (no copy unless a reader still holds
    /// it) or loaded. The caller holds the cart's lock and stores the result with
    /// [`CartStore::store_locked`], or the cache simply misses next time.
    /// Puts back a cart taken with [`CartStore::take_locked`] that this write left unchanged.
    fn put_back(&self, id: &CartId, cart: Arc<Cart>, stored: Stored) {
        self.cache.insert(id.clone(), Held::new(cart, stored));
    }

    fn take_locked(&self, id: &CartId) -> Result<(Cart, Stored), NodeError> {
        let Held { cart, stored, .. } = match self.cache.remove(id) {
            Some((_, held)) => held,
            None => self.load(id)?,
        };
        Ok((Arc::try_unwrap(cart).unwrap_or_else(|shared| (*shared).clone()), stored))
    }

    /// The replica, from the cache or storage (caller holds the cart's lock, so a miss cannot
    /// race a writer and cache a stale cart).
    fn held_locked(&self, id: &CartId) -> Result<Held, NodeError> {
        if let Some(held) = self.cache.get(id) {
            return Ok(held);
        }
        let held = self.load(id)?;
        self.cache.insert(id.clone(), held.clone());
        Ok(held)
    }

    /// The replica as [`CartStore::read`] gives it, but a cache miss is loaded without being
    /// cached: for scans over every cart (anti-entropy), which must not push hot carts out.
    pub fn peek(&self, id: &CartId) -> Result<Arc<Cart>, NodeError> {
        if let Some(held) = self.cache.get(id) {
            return Ok(held.cart);
        }
        let _guard = self.lock(id);
        match self.cache.get(id) {
            Some(held) => Ok(held.cart),
            None => Ok(self.load(id)?.cart),
        }
    }

    /// Base merged with every delta stored after it.
    fn load(&self, id: &CartId) -> Result<Held, NodeError> {
        let (cart, stored) = load_stored(self.storage.as_ref(), id.as_str())?;
        Ok(Held::new(Arc::new(cart.unwrap_or_default()), stored))
    }

    /// Stores a changed replica (caller holds the cart's lock): as one more delta when `delta`
    /// holds its encoding and there is room, else as a new base that replaces the deltas. With
    /// the encoding comes the delta's own size estimate ([`Cart::approx_bytes`]), added to the
    /// cart's weight while it takes deltas.
    fn store_locked(
        &self,
        id: &CartId,
        cart: Cart,
        was: Stored,
        delta: Option<(&[u8], usize)>,
    ) -> Result<Arc<Cart>, NodeError> {
        let stored = match delta {
            Some((delta, grown)) if was.takes_delta(delta.len()) => {
                let seq = was.last_seq + 1;
                self.put(Tree::Deltas, &delta_key(id, seq), delta)?;
                Stored {
                    last_seq: seq,
                    delta_bytes: was.delta_bytes + delta.len() as u64,
                    weight: match was.weight {
                        0 => 0,
                        // Less the delta's own `Cart`: the entries join the stored one.
                        w => w.saturating_add(grown.saturating_sub(std::mem::size_of::<Cart>()) as u64),
                    },
                    ..was
                }
            }
            _ => {
                if !was.based {
                    // Before the first base: a crash in between leaves an index entry with no
                    // cart (skipped by readers), never a cart its leaf does not list.
                    self.storage
                        .put(Tree::Leaves, &leaf_index_key(id.as_str().as_bytes()), b"")?;
                }
                let base = codec::encode(&cart)?;
                self.storage.put(Tree::Carts, id.as_str().as_bytes(), &base)?;
                // After the base: a crash in between leaves deltas the base already holds, and so
                // does a failed delete (a leftover merges idempotently, so it is only logged).
                for seq in 1..=was.last_seq {
                    if let Err(e) = self.storage.delete(Tree::Deltas, &delta_key(id, seq)) {
                        tracing::warn!(cart_id = %id, seq, error = %e, "cannot drop a delta the base holds");
                    }
                }
                // One count for the base and its deletes: a flush from now on covers them all.
                self.commit.note_write();
                Stored {
                    based: true,
                    last_seq: 0,
                    base_bytes: base.len() as u64,
                    delta_bytes: 0,
                    weight: 0,
                }
            }
        };
        let cart = Arc::new(cart);
        self.cache.insert(id.clone(), Held::new(cart.clone(), stored));
        Ok(cart)
    }

    /// Applies `op` as this node's actor and returns the new cart and the op's delta once it is
    /// durable. On error nothing is stored. (The coordinator uses [`CartStore::write_with`].)
    #[cfg(test)]
    pub async fn write(&self, id: &CartId, op: &CartOp) -> Result<Written, NodeError> {
        self.write_with(id, op, None, |_| {}).await
    }

    /// [`CartStore::apply_with`], then waits until the write is durable.
    pub async fn write_with(
        &self,
        id: &CartId,
        op: &CartOp,
        request: Option<RequestId>,
        applied: impl FnOnce(&Written),
    ) -> Result<Written, NodeError> {
        let written = self.apply_with(id, op, request, applied)?;
        self.commit.durable().await?;
        Ok(written)
    }

    /// Applies `op` as this node's actor and returns the new cart and the op's delta, not yet
    /// durable (the caller awaits [`CartStore::durable`]); on error nothing is stored (and while
    /// the storage is degraded nothing is tried). `applied` is called with the write while the
    /// cart's lock is still held: what it hands on (the coordinator queues the delta for the
    /// other replicas) is handed on in the order the writes were applied.
    ///
    /// A `request` id this replica has applied before applies nothing: the write is the whole
    /// cart, `repeated`, for the coordinator to bring W replicas up to it. An expired cart is
    /// written as a new one (its entries forgotten, stored as a new base: an old base with the
    /// new write's delta would bring them back on load).
    pub fn apply_with(
        &self,
        id: &CartId,
        op: &CartOp,
        request: Option<RequestId>,
        applied: impl FnOnce(&Written),
    ) -> Result<Written, NodeError> {
        let _permit = self.write_permit()?;
        let written = {
            let _guard = self.lock(id);
            let (mut cart, stored) = self.take_locked(id)?;
            if request.is_some_and(|r| cart.seen_request(r)) {
                let cart = Arc::new(cart);
                self.put_back(id, cart.clone(), stored);
                let written = Written {
                    delta: Arc::new(codec::encode(&cart)?),
                    deps: Arc::new(Vec::new()),
                    cart,
                    repeated: true,
                };
                applied(&written);
                return Ok(written);
            }
            let now_ms = self.clock.now_ms();
            let expired = self.expiry.expired(id, cart.touched_at_ms(), now_ms);
            if expired {
                if let CartOp::Checkout { .. } = op {
                    self.put_back(id, Arc::new(cart), stored);
                    return Err(NodeError::Cart(cart_crdt::CartError::Stale {
                        field: "version",
                        reason: "the cart expired since that version was read".into(),
                    }));
                }
                cart.forget_expired();
            }
            let ctx = WriteCtx {
                actor: self.actor,
                now_ms,
                limits: &self.limits,
                request,
            };
            let deps = Arc::new(codec::encode_context(cart.context())?);
            let old_hash = entry_hash(id.as_str().as_bytes(), cart.context())?;
            let delta = match cart.apply(&ctx, op) {
                Ok(delta) => delta,
                Err(refused) => {
                    // A refused op changed nothing: the cart goes back to the cache as it was.
                    self.put_back(id, Arc::new(cart), stored);
                    return Err(refused.into());
                }
            };
            let grown = delta.as_cart().approx_bytes();
            let delta = Arc::new(codec::encode(delta.as_cart())?);
            let as_delta = (!expired).then_some((&delta[..], grown));
            let written = Written {
                cart: self.store_locked(id, cart, stored, as_delta)?,
                delta,
                deps,
                repeated: false,
            };
            let new_hash = entry_hash(id.as_str().as_bytes(), written.cart.context())?;
            self.digests.changed(id.as_str().as_bytes(), old_hash, new_hash);
            applied(&written);
            written
        };
        Ok(written)
    }

    /// Merges a replica's state into this node's replica; durable on return. Returns the merged
    /// state and whether it changed anything here.
    pub async fn merge(&self, id: &CartId, incoming: Cart) -> Result<(Arc<Cart>, bool), NodeError> {
        let merged = self.merge_unflushed(id, incoming, None, None)?;
        // Even when nothing changed here, what is stored may still await its flush.
        self.commit.durable().await?;
        Ok(merged)
    }

    /// [`CartStore::merge`] without waiting for the flush: the caller must call
    /// [`CartStore::durable`] before acknowledging (one flush for a whole batch). `encoded` is
    /// `incoming`'s encoding when the caller has it (a replicated delta): small ones are stored
    /// as they came, as a delta. `deps`, for a delta, is the context it was built on: unless this
    /// replica has seen all of it, nothing is merged and the answer is
    /// [`NodeError::MissingHistory`] (a replica never holds a write without its causal past, so
    /// writes coordinated here always build on complete carts).
    pub fn merge_unflushed(
        &self,
        id: &CartId,
        incoming: Cart,
        encoded: Option<&[u8]>,
        deps: Option<&Context>,
    ) -> Result<(Arc<Cart>, bool), NodeError> {
        let _permit = self.write_permit()?;
        let _guard = self.lock(id);
        let current = self.held_locked(id)?;
        if deps.is_some_and(|deps| !current.cart.context().covers(deps)) {
            return Err(NodeError::MissingHistory {
                cart_id: id.to_string(),
            });
        }
        if current.cart.covers(&incoming) {
            return Ok((current.cart, false)); // seen it all already (a repeat, or an older state)
        }
        // An expired state is dropped on arrival, and one held here is replaced, never merged:
        // no hint, repair or returning replica can revive an expired cart.
        let now_ms = self.clock.now_ms();
        if self.expiry.expired(id, incoming.touched_at_ms(), now_ms) {
            return Ok((current.cart, false));
        }
        let replace = self.expiry.expired(id, current.cart.touched_at_ms(), now_ms);
        let key = id.as_str().as_bytes();
        let old_hash = entry_hash(key, current.cart.context())?;
        drop(current);
        let (mut cart, stored) = self.take_locked(id)?;
        // Only a state that came encoded may be stored as a delta, so only it is weighed here
        // (a new base is measured whole).
        let mut encoded = encoded.map(|bytes| (bytes, incoming.approx_bytes()));
        if replace {
            // The expired entries go; the dots they used stay seen, so this node never issues
            // them again (a replica whose clock is behind may still hold them).
            cart.replace_expired(incoming);
            encoded = None;
        } else {
            cart.merge(incoming);
        }
        // A request this replica applied that another applied first: taken back now (stored as
        // a new base; the other replicas get it by anti-entropy or their next read).
        if cart.settle(self.actor, now_ms, &self.limits).is_some() {
            encoded = None;
        }
        let merged = self.store_locked(id, cart, stored, encoded)?;
        self.digests.changed(key, old_hash, entry_hash(key, merged.context())?);
        Ok((merged, true))
    }

    /// Returns once everything stored so far is durable.
    pub async fn durable(&self) -> Result<(), NodeError> {
        Ok(self.commit.durable().await?)
    }

    /// Merges a cart into the hint held for `owner`; durable on return. Refused (false) when the
    /// node already holds `hints_max` hints and this would be a new one.
    pub async fn add_hint(
        &self,
        owner: &str,
        id: &CartId,
        incoming: Cart,
        hints_max: usize,
    ) -> Result<bool, NodeError> {
        let stored = self.add_hint_unflushed(owner, id, incoming, hints_max)?;
        self.commit.durable().await?;
        Ok(stored)
    }

    /// [`CartStore::add_hint`] without waiting for the flush (see [`CartStore::merge_unflushed`]).
    pub fn add_hint_unflushed(
        &self,
        owner: &str,
        id: &CartId,
        incoming: Cart,
        hints_max: usize,
    ) -> Result<bool, NodeError> {
        self.writable()?;
        let key = hint_key(owner, id);
        let _guard = self.lock(id);
        let existed = self.storage.get(Tree::Hints, &key)?.is_some();
        if !existed && self.hints.total() >= hints_max {
            return Ok(false);
        }
        self.merge_hint(&key, incoming)?;
        if !existed {
            self.hints.add(owner, 1);
        }
        Ok(true)
    }

    /// Up to `limit` hints held for `owner`, after the cart id `after`.
    pub fn hints_for(&self, owner: &str, after: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, NodeError> {
        Ok(self.storage.scan(Tree::Hints, &hint_prefix(owner), after, limit)?)
    }

    /// Deletes a delivered hint, unless it changed since it was read (then it is sent again).
    pub async fn remove_hint(&self, owner: &str, id: &CartId, delivered: &[u8]) -> Result<bool, NodeError> {
        let removed = {
            let _guard = self.lock(id);
            self.storage.delete_if(Tree::Hints, &hint_key(owner, id), delivered)?
        };
        if removed {
            self.hints.add(owner, -1);
            self.commit.note_write();
            self.commit.durable().await?;
        }
        Ok(removed)
    }

    /// Hints held per owner.
    /// How long hints have been held without the backlog emptying (`None`: none held).
    pub fn hints_held_for(&self) -> Option<std::time::Duration> {
        let since = *self.hints.since.lock().ok()?;
        since.map(|s| s.elapsed())
    }

    /// Decoded carts in the cache.
    pub fn carts_cached(&self) -> usize {
        self.cache.len()
    }

    pub fn hint_counts(&self) -> BTreeMap<String, usize> {
        self.hints.snapshot()
    }

    /// Drops every hint (operator action); returns how many. Each under its cart's lock, so a
    /// hint being added meanwhile is either dropped with the rest or kept and counted.
    pub async fn discard_hints(&self) -> Result<u64, NodeError> {
        let mut discarded = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = self.storage.scan(Tree::Hints, b"", after.as_deref(), 1024)?;
            let Some((last, _)) = batch.last() else { break };
            after = Some(last.clone());
            for (key, value) in batch {
                let owner = String::from_utf8_lossy(key.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
                let Some(id) = hint_cart_id(&key).and_then(|raw| CartId::parse(raw, &self.limits).ok()) else {
                    continue;
                };
                let _guard = self.lock(&id);
                if self.storage.delete_if(Tree::Hints, &key, &value)? {
                    self.hints.add(&owner, -1);
                    discarded += 1;
                }
            }
        }
        self.commit.note_write();
        self.commit.durable().await?;
        Ok(discarded)
    }

    /// A value of the `meta` tree (layout, membership state).
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, NodeError> {
        Ok(self.storage.get(Tree::Meta, key)?)
    }

    /// Stores a value in the `meta` tree; durable on return.
    pub async fn meta_put(&self, key: &[u8], value: &[u8]) -> Result<(), NodeError> {
        self.put(Tree::Meta, key, value)?;
        self.durable().await
    }

    /// Deletes a value of the `meta` tree; durable on return.
    pub async fn meta_delete(&self, key: &[u8]) -> Result<(), NodeError> {
        self.storage.delete(Tree::Meta, key)?;
        self.commit.note_write();
        self.durable().await
    }

    /// Drops this node's replica of a cart it no longer owns (base, deltas, cache entry), but
    /// only if its context is still `handed_over` (what its new owners were sent): a write that
    /// arrived since keeps it for the next pass. Durable on return.
    pub async fn drop_replica(&self, id: &CartId, handed_over: &Context) -> Result<bool, NodeError> {
        {
            let _guard = self.lock(id);
            let current = self.held_locked(id)?;
            if current.cart.context() != handed_over {
                return Ok(false);
            }
            self.delete_locked(id, current.cart.context())?;
        }
        self.durable().await?;
        Ok(true)
    }

    /// Deletes this node's replica of a cart whose context is `context` (caller holds the
    /// cart's lock): digests, cache, base, deltas, leaf index.
    fn delete_locked(&self, id: &CartId, context: &Context) -> Result<(), NodeError> {
        let key = id.as_str().as_bytes();
        self.digests.changed(key, entry_hash(key, context)?, None);
        self.cache.remove(id);
        self.storage.delete(Tree::Carts, key)?;
        let prefix = delta_prefix(id.as_str());
        loop {
            let page = self.storage.scan(Tree::Deltas, &prefix, None, 64)?;
            if page.is_empty() {
                break;
            }
            for (key, _) in page {
                self.storage.delete(Tree::Deltas, &key)?;
            }
        }
        self.storage.delete(Tree::Leaves, &leaf_index_key(key))?;
        self.commit.note_write();
        Ok(())
    }

    /// The expiry sweeper's step: deletes the expired carts among one page of this node's
    /// replicas (after `after`). Returns the page's last key (`None` at
    /// the end) and how many carts it deleted; durable on return.
    pub async fn sweep_page(&self, after: Option<&[u8]>, limit: usize) -> Result<(Option<Vec<u8>>, usize), NodeError> {
        self.writable()?;
        let page = self.storage.scan(Tree::Carts, b"", after, limit)?;
        let last = page.last().map(|(key, _)| key.clone());
        let mut swept = 0;
        for (key, _) in page {
            let Ok(id) = CartId::parse(&String::from_utf8_lossy(&key), &self.limits) else {
                continue;
            };
            let _guard = self.lock(&id);
            let cart = match self.cache.get(&id) {
                Some(held) => held.cart,
                None => self.load(&id)?.cart,
            };
            // Deleted (its dots forgotten) only once every node within the skew bound reads it
            // as expired too, and so replaces rather than merges what this node writes next.
            if self.expiry.forgettable(&id, cart.touched_at_ms(), self.clock.now_ms()) {
                self.delete_locked(&id, cart.context())?;
                swept += 1;
            }
        }
        if swept > 0 {
            self.durable().await?;
        }
        Ok((last, swept))
    }

    /// Counts one page of carts (after `after`) into the digests being rebuilt as `generation`,
    /// each under its lock (see `digests`); `None` at the end (or when a newer rebuild or move
    /// took over).
    pub fn digest_page(
        &self,
        generation: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Option<ScanPage>, NodeError> {
        if !self.digests.reading(generation) {
            return Ok(None);
        }
        let page = self.storage.scan(Tree::Carts, b"", after, limit)?;
        let Some((last, _)) = page.last() else { return Ok(None) };
        let last = last.clone();
        if !self.digests.page_read(generation, &last) {
            return Ok(None);
        }
        let visited = page.len();
        for (key, _) in page {
            let hash = match CartId::parse(&String::from_utf8_lossy(&key), &self.limits) {
                Ok(id) => {
                    let _guard = self.lock(&id);
                    let hash = self.current_hash(&id)?;
                    self.complete_leaf_index(&key);
                    if !self.digests.scanned(generation, &key, hash) {
                        return Ok(None);
                    }
                    continue;
                }
                Err(_) => None,
            };
            if !self.digests.scanned(generation, &key, hash) {
                return Ok(None);
            }
        }
        Ok(Some(ScanPage {
            last,
            visited,
            moved: 0,
        }))
    }

    /// One page of the `leaves` index (after the index key `after`) for the move of the digests
    /// to a new layout as `generation`: only the carts whose replica set changed are read (under
    /// their lock) and their hash moved; the others cost a lookup of their owners. `None` at the
    /// end (or when a newer rebuild or move took over).
    pub fn move_page(
        &self,
        generation: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Option<ScanPage>, NodeError> {
        if !self.digests.reading(generation) {
            return Ok(None);
        }
        let page = self.storage.scan(Tree::Leaves, b"", after, limit)?;
        let Some((last, _)) = page.last() else { return Ok(None) };
        let last = last.clone();
        if !self.digests.page_read(generation, &last) {
            return Ok(None);
        }
        let Some((from, to)) = self.digests.move_placements(generation) else {
            return Ok(None);
        };
        let visited = page.len();
        let mut moved = 0;
        for (position, _) in page {
            let Some(key) = position.get(2..) else { continue };
            if crate::digests::same_set(&from, &to, key) {
                continue;
            }
            let Ok(id) = CartId::parse(&String::from_utf8_lossy(key), &self.limits) else {
                continue;
            };
            let _guard = self.lock(&id);
            let hash = self.current_hash(&id)?;
            if !self.digests.moved(generation, key, hash) {
                return Ok(None);
            }
            moved += 1;
        }
        if !self.digests.passed(generation, &last) {
            return Ok(None);
        }
        Ok(Some(ScanPage { last, visited, moved }))
    }

    /// A cart's digest hash as this replica holds it now (caller holds its lock); `None` for a
    /// cart not held, or one that cannot be read (logged: one bad cart must not stop a scan).
    fn current_hash(&self, id: &CartId) -> Result<Option<u64>, NodeError> {
        let cart = match self.cache.get(id) {
            Some(held) => Ok(held.cart),
            None => self.load(id).map(|h| h.cart),
        };
        match cart {
            Ok(cart) => Ok(entry_hash(id.as_str().as_bytes(), cart.context())?),
            Err(e) => {
                tracing::warn!(cart_id = %id, error = %e, "a digest scan skips an unreadable cart");
                Ok(None)
            }
        }
    }

    /// Adds a held cart's `leaves` entry if it is missing: the index is checked by every
    /// rebuild, never trusted (one written by an older version, or lost in a crash, is completed
    /// here). A degraded store leaves that to the rebuild after its restart; a failure is logged.
    fn complete_leaf_index(&self, key: &[u8]) {
        let indexed = leaf_index_key(key);
        let completed = match self.storage.get(Tree::Leaves, &indexed) {
            Ok(Some(_)) => Ok(()),
            Ok(None) if self.health.is_degraded() => Err(NodeError::Config {
                reason: "the store is degraded".into(),
            }),
            Ok(None) => self.put(Tree::Leaves, &indexed, b""),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = completed {
            // A move or a hand-over would not see this cart: both wait for a complete index.
            self.digests.index_gap();
            let cart_id = String::from_utf8_lossy(key);
            tracing::warn!(%cart_id, error = %e, "digest rebuild cannot complete the leaf index");
        }
    }

    /// Up to `limit` cart ids of digest leaf `leaf` after `after` (an id of that leaf), in key
    /// order, from the `leaves` index: a contiguous range, no scan of other carts. May list a
    /// cart since dropped (it then reads as empty).
    pub fn leaf_carts(&self, leaf: usize, after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, NodeError> {
        let prefix = leaf_prefix(leaf);
        let after = after.map(leaf_index_key);
        Ok(self
            .storage
            .scan(Tree::Leaves, &prefix, after.as_deref(), limit)?
            .into_iter()
            .map(|(k, _)| k[prefix.len()..].to_vec())
            .collect())
    }

    /// Up to `limit` positions of the `leaves` index (`leaf u16 ++ cart id`) after `after`: every
    /// cart this node holds, keys only (no cart is read). May list a cart since dropped.
    pub fn indexed_carts(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, NodeError> {
        Ok(self
            .storage
            .scan(Tree::Leaves, b"", after, limit)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Up to `limit` stored bases (cart id, encoded base, which may lag the cart's deltas) after
    /// `after`, in key order: the list of carts this node holds.
    pub fn scan_carts(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, NodeError> {
        Ok(self.storage.scan(Tree::Carts, b"", after, limit)?)
    }

    /// Waits (up to `grace`) for writes still running, then flushes and records a clean shutdown,
    /// so the next start keeps this actor. If writes are still running after `grace`, no marker is
    /// written: the next start takes a new incarnation. A failed engine is not waited for at all
    /// (a sled flush that was running when a write failed may never return), and the last flush
    /// gets `grace` too: closing always ends.
    pub async fn close(&self, grace: std::time::Duration) -> Result<(), StorageError> {
        // Writes applied since a failure may never reach the disk: the next start must take a
        // new incarnation, so no clean-shutdown marker (even if the engine took it).
        let failed = || {
            tracing::warn!("the storage engine failed: the next start takes a new incarnation");
            Err(StorageError {
                operation: "flush",
                reason: "the storage engine failed: nothing more is flushed".into(),
            })
        };
        if self.health.engine_failed() {
            return failed();
        }
        let all = u32::try_from(self.max_inflight_writes).unwrap_or(u32::MAX);
        let Ok(Ok(_quiet)) = tokio::time::timeout(grace, self.write_permits.acquire_many(all)).await else {
            tracing::warn!("writes still running at shutdown: the next start takes a new incarnation");
            return self.durable_within(grace).await;
        };
        if self.health.engine_failed() {
            return failed();
        }
        self.storage.put(Tree::Meta, CLEAN_SHUTDOWN_KEY, b"1")?;
        self.commit.note_write();
        self.durable_within(grace).await
    }

    async fn durable_within(&self, grace: std::time::Duration) -> Result<(), StorageError> {
        match tokio::time::timeout(grace, self.commit.durable()).await {
            Ok(done) => done,
            Err(_) => Err(StorageError {
                operation: "flush",
                reason: format!("no flush finished within {} ms", grace.as_millis()),
            }),
        }
    }

    /// Merges `incoming` into the hint stored at `key` (caller holds the cart's lock).
    fn merge_hint(&self, key: &[u8], incoming: Cart) -> Result<(), NodeError> {
        let id = hint_cart_id(key).and_then(|id| CartId::parse(id, &self.limits).ok());
        if id.is_some_and(|id| self.expired(&id, &incoming)) {
            return Ok(()); // an expired state is never kept, not even as a hint
        }
        let mut cart = self.load_hint(Tree::Hints, key)?;
        cart.merge(incoming);
        self.put(Tree::Hints, key, &codec::encode(&cart)?)
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), NodeError> {
        self.storage.put(tree, key, value)?;
        self.commit.note_write();
        Ok(())
    }

    /// `Degraded` while the storage takes no writes.
    fn writable(&self) -> Result<(), NodeError> {
        match self.health.degraded() {
            Some(reason) => Err(NodeError::Degraded { reason }),
            None => Ok(()),
        }
    }

    /// Room for one more write, refused (before anything is applied) while the storage is
    /// degraded or too many writes are in flight.
    fn write_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, NodeError> {
        self.writable()?;
        self.write_permits.try_acquire().map_err(|_| NodeError::Overloaded {
            what: "writes",
            limit: self.max_inflight_writes,
        })
    }

    fn load_hint(&self, tree: Tree, key: &[u8]) -> Result<Cart, NodeError> {
        match self.storage.get(tree, key)? {
            Some(bytes) => Ok(codec::decode(&bytes)?),
            None => Ok(Cart::default()),
        }
    }

    /// The cart's lock shard. Held only for a synchronous read-modify-write, never across an await.
    fn lock(&self, id: &CartId) -> MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        id.hash(&mut h);
        self.locks[(h.finish() % KEY_LOCK_SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A replica as stored: its base merged with every delta stored after it (`None` when nothing is
/// stored), and where the stored form stands. Checkers read replicas straight from storage
/// with this too.
pub fn read_stored(storage: &dyn Storage, cart_id: &str) -> Result<Option<Cart>, NodeError> {
    Ok(load_stored(storage, cart_id)?.0)
}

fn load_stored(storage: &dyn Storage, cart_id: &str) -> Result<(Option<Cart>, Stored), NodeError> {
    let base = storage.get(Tree::Carts, cart_id.as_bytes())?;
    let based = base.is_some();
    let base_bytes = base.as_ref().map_or(0, |b| b.len() as u64);
    let mut cart = match base {
        Some(bytes) => Some(codec::decode(&bytes)?),
        None => None,
    };
    let prefix = delta_prefix(cart_id);
    let mut last_seq = 0;
    let mut delta_bytes = 0;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = storage.scan(Tree::Deltas, &prefix, after.as_deref(), 64)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (key, bytes) in page {
            cart.get_or_insert_with(Cart::default).merge(codec::decode(&bytes)?);
            last_seq = last_seq.max(delta_seq(&key));
            delta_bytes += bytes.len() as u64;
        }
    }
    Ok((
        cart,
        Stored {
            based,
            last_seq,
            base_bytes,
            delta_bytes,
            weight: 0,
        },
    ))
}

fn delta_prefix(id: &str) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.push(0);
    k
}

fn delta_key(id: &CartId, seq: u32) -> Vec<u8> {
    let mut k = delta_prefix(id.as_str());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number at the end of a delta key (0 for a malformed key).
fn delta_seq(key: &[u8]) -> u32 {
    key.len()
        .checked_sub(4)
        .and_then(|at| key[at..].try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

fn hint_prefix(owner: &str) -> Vec<u8> {
    let mut k = owner.as_bytes().to_vec();
    k.push(0);
    k
}

fn hint_key(owner: &str, id: &CartId) -> Vec<u8> {
    let mut k = hint_prefix(owner);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

/// The cart id of a hint key (`owner \0 cart id`).
pub fn hint_cart_id(key: &[u8]) -> Option<&str> {
    let at = key.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&key[at + 1..]).ok()
}

/// Hints held per owner, counted at open and kept up to date.
struct HintCounts {
    per_owner: StdMutex<BTreeMap<String, usize>>,
    total: AtomicUsize,
    /// Since when hints have been held without the backlog reaching 0 (for the metrics).
    since: StdMutex<Option<std::time::Instant>>,
}

impl HintCounts {
    fn load(storage: &dyn Storage) -> Result<Self, NodeError> {
        let mut per_owner: BTreeMap<String, usize> = BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = storage.scan(Tree::Hints, b"", after.as_deref(), 4096)?;
            let Some((last, _)) = batch.last() else { break };
            after = Some(last.clone());
            for (key, _) in &batch {
                let owner = key.split(|b| *b == 0).next().unwrap_or_default();
                *per_owner
                    .entry(String::from_utf8_lossy(owner).into_owned())
                    .or_default() += 1;
            }
        }
        let total = per_owner.values().sum();
        Ok(HintCounts {
            per_owner: StdMutex::new(per_owner),
            total: AtomicUsize::new(total),
            since: StdMutex::new((total > 0).then(std::time::Instant::now)),
        })
    }

    fn add(&self, owner: &str, delta: isize) {
        if let Ok(mut map) = self.per_owner.lock() {
            let n = map.entry(owner.to_owned()).or_default();
            *n = n.saturating_add_signed(delta);
        }
        let before = self.total.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
            Some(t.saturating_add_signed(delta))
        });
        let after = before.map_or(0, |t| t.saturating_add_signed(delta));
        if let Ok(mut since) = self.since.lock() {
            match (after, *since) {
                (0, _) => *since = None,
                (_, None) => *since = Some(std::time::Instant::now()),
                _ => {}
            }
        }
    }

    fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    fn snapshot(&self) -> BTreeMap<String, usize> {
        self.per_owner.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// This run's actor: the stored one after a clean shutdown, else `fresh` (new disk, or a crash
/// that may have lost writes whose dots others saw). Consumes the clean-shutdown marker.
fn incarnation(storage: &dyn Storage, fresh: u64) -> Result<Actor, NodeError> {
    let stored = match storage.get(Tree::Meta, ACTOR_KEY)? {
        Some(bytes) => Some(u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
            StorageError {
                operation: "get",
                reason: format!("stored actor id has {} bytes, expected 8", bytes.len()),
            }
        })?)),
        None => None,
    };
    let clean = storage.get(Tree::Meta, CLEAN_SHUTDOWN_KEY)?;
    let actor = match (stored, &clean) {
        (Some(actor), Some(_)) => actor,
        (Some(old), None) => {
            tracing::warn!(old = %Actor(old), new = %Actor(fresh), "last run did not shut down cleanly: new incarnation");
            fresh
        }
        (None, _) => fresh,
    };
    storage.put(Tree::Meta, ACTOR_KEY, &actor.to_be_bytes())?;
    if let Some(marker) = clean {
        storage.delete_if(Tree::Meta, CLEAN_SHUTDOWN_KEY, &marker)?;
    }
    Ok(Actor(actor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::storage::MemoryStorage;
    use cart_crdt::validate::{self, SnapshotInput};
    use cart_crdt::ProductId;
    use std::collections::BTreeSet;

    async fn open(storage: &Arc<MemoryStorage>, actor: u64) -> CartStore {
        CartStore::open(storage.clone(), Arc::new(SystemClock), Limits::DEFAULT, 64, actor)
            .await
            .unwrap()
    }

    fn add(product: &str) -> CartOp {
        let limits = Limits::DEFAULT;
        CartOp::AddItem {
            product_id: ProductId::parse(product, &limits).unwrap(),
            quantity: 1,
            snapshot: validate::snapshot(
                SnapshotInput {
                    name: format!("Item {product}"),
                    unit_price_minor: 100,
                    currency: "EUR".into(),
                    image_url: String::new(),
                    attributes: Default::default(),
                },
                &limits,
            )
            .unwrap(),
        }
    }

    fn stored(storage: &MemoryStorage, tree: Tree) -> usize {
        storage.scan(tree, b"", None, usize::MAX).unwrap().len()
    }

    /// The cart cache keeps to its budget in bytes: carts pushed out are read from storage
    /// again, the same; a cart that grows weighs more.
    #[tokio::test]
    async fn the_cart_cache_keeps_to_its_byte_budget() {
        let storage = Arc::new(MemoryStorage::default());
        let budget = 64 << 10;
        let store = open(&storage, 1).await.with_cache_bytes(budget);
        let ids: Vec<CartId> = (0..200)
            .map(|i| CartId::parse(&format!("user:c{i}"), &Limits::DEFAULT).unwrap())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            for line in 0..(1 + i % 5) {
                store.write(id, &add(&format!("sku-{line}"))).await.unwrap();
            }
        }
        assert!(store.cache.weight() <= budget, "{} > {budget}", store.cache.weight());
        assert!(store.cache.len() < ids.len(), "some carts were pushed out");
        for (i, id) in ids.iter().enumerate() {
            let cart = store.read(id).unwrap();
            let products: BTreeSet<_> = cart.lines().iter().map(|l| l.product_id.clone()).collect();
            assert_eq!(products.len(), 1 + i % 5, "{id}");
        }
        let one = Held::new(store.read(&ids[0]).unwrap(), Stored::default());
        let five = Held::new(store.read(&ids[4]).unwrap(), Stored::default());
        assert!(
            five.weight() > one.weight() + 4 * 40,
            "{} vs {}",
            five.weight(),
            one.weight()
        );
    }

    /// Adds `product` with request id `request-{i}` (each such write leaves a request record).
    async fn add_once(store: &CartStore, id: &CartId, product: &str, i: usize) {
        let request = RequestId::parse(&format!("request-{i}"), "request_id").unwrap();
        store
            .write_with(id, &add(product), Some(request), |_| {})
            .await
            .unwrap();
    }

    /// A cart's cache weight grows by each delta's own estimate rather than being measured on
    /// every write: never below the cart measured, not far above it, and measured again with
    /// each new base.
    #[tokio::test]
    async fn cache_weight_grows_by_deltas_and_is_measured_at_each_base() {
        let storage = Arc::new(MemoryStorage::default());
        let store = open(&storage, 1).await;
        let id = CartId::parse("user:weighed", &Limits::DEFAULT).unwrap();
        let (mut bases, mut deltas, mut worst) = (0, 0, 0.0f64);
        for i in 0..400 {
            add_once(&store, &id, &format!("sku-{}", i % 20), i).await;
            let held = store.cache.get(&id).expect("the cart is cached");
            let measured = CACHE_ENTRY_BYTES + held.cart.approx_bytes() as u64;
            assert!(held.weight() >= measured, "write {i}: {} < {measured}", held.weight());
            worst = worst.max(held.weight() as f64 / measured as f64);
            match held.stored.last_seq {
                0 => {
                    assert_eq!(held.weight(), measured, "write {i}: a new base is measured");
                    bases += 1;
                }
                _ => deltas += 1,
            }
        }
        assert!(bases >= 2 && deltas > bases, "{bases} bases, {deltas} deltas");
        // 1.59x here: a line's superseded running total stays counted until the next base.
        assert!(worst < 1.75, "weight up to {worst:.2}x the cart measured");
    }

    /// A small budget is one shard: a cart heavier than a per-core share of it is still cached.
    #[tokio::test]
    async fn a_big_cart_fits_a_small_cache() {
        let storage = Arc::new(MemoryStorage::default());
        let store = open(&storage, 1).await.with_cache_bytes(1 << 20);
        let id = CartId::parse("user:heavy", &Limits::DEFAULT).unwrap();
        for i in 0..150 {
            add_once(&store, &id, &format!("sku-{}", i % 100), i).await;
        }
        let held = store.cache.get(&id).expect("the cart is cached");
        assert!(held.weight() > (1 << 20) / 64, "{} bytes", held.weight());
    }

    /// A big cart (one holding many request records) takes deltas until they add up to a
    /// quarter of its base, beyond `DELTAS_PER_BASE`; and reads back the same from storage.
    #[tokio::test]
    async fn a_big_cart_takes_more_deltas_before_its_next_base() {
        let storage = Arc::new(MemoryStorage::default());
        let store = open(&storage, 7).await;
        let id = CartId::parse("user:big", &Limits::DEFAULT).unwrap();
        let limits = Limits::DEFAULT;
        let adjust = |product: &str| CartOp::AdjustQuantity {
            product_id: ProductId::parse(product, &limits).unwrap(),
            delta: 1,
        };
        store.write(&id, &add("sku-0")).await.unwrap();
        let mut most = 0;
        for i in 0..600 {
            let request = RequestId::parse(&format!("request-{i}"), "request_id").unwrap();
            store
                .write_with(&id, &adjust("sku-0"), Some(request), |_| {})
                .await
                .unwrap();
            let deltas = stored(&storage, Tree::Deltas);
            assert!(deltas <= DELTAS_PER_BASE_MAX as usize);
            most = most.max(deltas);
        }
        assert!(
            most > DELTAS_PER_BASE as usize,
            "at most {most} deltas after a 30 KB base"
        );
        let written = store.read(&id).unwrap();
        store.close(std::time::Duration::from_secs(1)).await.unwrap();
        let reopened = open(&storage, 8).await;
        assert_eq!(*reopened.read(&id).unwrap(), *written);
    }

    /// Writes store deltas after a base, at most `DELTAS_PER_BASE` of them, and a store opened
    /// afresh on the same storage (no cache) reads the same cart as the one that wrote it.
    #[tokio::test]
    async fn a_cart_is_its_base_plus_a_bounded_number_of_deltas() {
        let storage = Arc::new(MemoryStorage::default());
        let store = open(&storage, 7).await;
        let id = CartId::parse("user:deltas", &Limits::DEFAULT).unwrap();
        for i in 0..(2 * DELTAS_PER_BASE + 5) {
            store.write(&id, &add(&format!("sku-{}", i % 7))).await.unwrap();
            assert!(stored(&storage, Tree::Deltas) <= DELTAS_PER_BASE as usize);
            assert_eq!(stored(&storage, Tree::Carts), 1, "the first write stores a base");
        }
        assert!(stored(&storage, Tree::Deltas) > 0, "recent writes are deltas");
        let written = store.read(&id).unwrap();
        store.close(std::time::Duration::from_secs(1)).await.unwrap();
        let reopened = open(&storage, 8).await;
        assert_eq!(*reopened.read(&id).unwrap(), *written);
    }

    /// A node whose engine failed while a flush hangs (sled after ENOSPC) still closes, at once
    /// and without a clean-shutdown marker; a healthy one whose flush hangs closes after `grace`
    /// with an error (its marker is then as durable as the writes before it).
    #[tokio::test]
    async fn closing_ends_even_when_a_flush_never_does() {
        use crate::faults::{Fault, FaultyStorage};
        let grace = std::time::Duration::from_millis(200);
        let id = CartId::parse("user:stuck", &Limits::DEFAULT).unwrap();
        for fail in [true, false] {
            let faulty = Arc::new(FaultyStorage::new(Arc::new(MemoryStorage::default())));
            let store = CartStore::open(faulty.clone(), Arc::new(SystemClock), Limits::DEFAULT, 64, 7)
                .await
                .unwrap();
            let store = Arc::new(store);
            faulty.set(Some(Fault::SlowFlush(std::time::Duration::from_secs(3600))));
            // A write whose flush never ends.
            let (writer, stuck) = (store.clone(), id.clone());
            tokio::spawn(async move { writer.write(&stuck, &add("sku-1")).await });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if fail {
                faulty.set(Some(Fault::NoSpace));
                assert!(store.write(&id, &add("sku-2")).await.is_err());
            }
            let began = std::time::Instant::now();
            let closed = tokio::time::timeout(std::time::Duration::from_secs(10), store.close(grace)).await;
            let closed = closed.expect("close returned");
            assert!(closed.is_err(), "no clean close: {closed:?}");
            assert!(began.elapsed() < std::time::Duration::from_secs(5));
            if fail {
                assert_eq!(
                    store.storage.get(Tree::Meta, CLEAN_SHUTDOWN_KEY).unwrap(),
                    None,
                    "no clean-shutdown marker after an engine failure"
                );
            }
        }
    }

    /// Deltas the base already holds (a crash between storing a base and dropping its deltas)
    /// change nothing when merged again.
    #[tokio::test]
    async fn leftover_deltas_merge_idempotently() {
        let storage = Arc::new(MemoryStorage::default());
        let store = open(&storage, 7).await;
        let id = CartId::parse("user:leftover", &Limits::DEFAULT).unwrap();
        // The first write stores the base, the next ones fill the deltas.
        for i in 0..=DELTAS_PER_BASE {
            store.write(&id, &add(&format!("sku-{i}"))).await.unwrap();
        }
        let leftovers = storage.scan(Tree::Deltas, b"", None, usize::MAX).unwrap();
        assert_eq!(leftovers.len(), DELTAS_PER_BASE as usize);
        // This write stores a new base and drops the deltas; put them back as a crash would.
        store.write(&id, &add("sku-last")).await.unwrap();
        assert_eq!(stored(&storage, Tree::Deltas), 0);
        for (key, value) in &leftovers {
            storage.put(Tree::Deltas, key, value).unwrap();
        }
        let written = store.read(&id).unwrap();
        let reopened = open(&storage, 8).await;
        assert_eq!(*reopened.read(&id).unwrap(), *written);
    }

    /// A delta that arrives before a write it was built on is refused (nothing merged), so a
    /// replica never coordinates a write on a cart missing part of its past; once the earlier
    /// delta (or the whole cart) is there, the later one applies.
    #[tokio::test]
    async fn a_delta_ahead_of_its_past_is_refused() {
        let writer = open(&Arc::new(MemoryStorage::default()), 1).await;
        let replica = open(&Arc::new(MemoryStorage::default()), 2).await;
        let id = CartId::parse("user:causal", &Limits::DEFAULT).unwrap();
        let first = writer.write(&id, &add("sku-1")).await.unwrap();
        let second = writer.write(&id, &add("sku-1")).await.unwrap();
        let deps = |w: &Written| codec::decode_context(&w.deps).unwrap();
        let delta = |w: &Written| codec::decode(&w.delta).unwrap();
        let refused = replica.merge_unflushed(&id, delta(&second), Some(&second.delta), Some(&deps(&second)));
        assert!(matches!(refused, Err(NodeError::MissingHistory { .. })), "{refused:?}");
        assert_eq!(*replica.read(&id).unwrap(), Cart::default(), "nothing merged");
        replica
            .merge_unflushed(&id, delta(&first), Some(&first.delta), Some(&deps(&first)))
            .unwrap();
        replica
            .merge_unflushed(&id, delta(&second), Some(&second.delta), Some(&deps(&second)))
            .unwrap();
        assert_eq!(*replica.read(&id).unwrap(), *writer.read(&id).unwrap());
    }

    /// A small replicated delta is stored as it came; a big state becomes a base.
    #[tokio::test]
    async fn replicated_deltas_are_stored_as_received() {
        let storage = Arc::new(MemoryStorage::default());
        let writer = open(&Arc::new(MemoryStorage::default()), 1).await;
        let replica = open(&storage, 2).await;
        let id = CartId::parse("user:replica", &Limits::DEFAULT).unwrap();
        for i in 0..3 {
            let written = writer.write(&id, &add(&format!("sku-{i}"))).await.unwrap();
            let delta = codec::decode(&written.delta).unwrap();
            let deps = codec::decode_context(&written.deps).unwrap();
            let (_, changed) = replica
                .merge_unflushed(&id, delta.clone(), Some(&written.delta), Some(&deps))
                .unwrap();
            assert!(changed);
            let (_, again) = replica.merge_unflushed(&id, delta, Some(&written.delta), None).unwrap();
            assert!(!again, "a repeated delta changes nothing");
        }
        assert_eq!(stored(&storage, Tree::Carts), 1);
        assert_eq!(stored(&storage, Tree::Deltas), 2);
        assert_eq!(*replica.read(&id).unwrap(), *writer.read(&id).unwrap());
    }

    /// Version `nodes - 4` of a cluster of `nodes` members.
    fn members(nodes: usize) -> cart_ring::layout::Layout {
        let members = (1..=nodes)
            .map(|i| cart_ring::Member {
                node_id: format!("n{i}"),
                addr: format!("127.0.0.1:{}", 7000 + i),
                weight: 1,
                zone: String::new(),
            })
            .collect();
        let mut layout = cart_ring::layout::Layout::initial(members, 3, 2, 2);
        layout.version = nodes as u64 - 4;
        layout
    }

    fn five() -> cart_ring::layout::Layout {
        members(5)
    }

    /// Every pair's digest, as the exchange sees it (pairs among n1..n6).
    fn pairs(store: &CartStore) -> Vec<Vec<u64>> {
        let mut out = Vec::new();
        for a in 1..=6 {
            for b in 1..=6 {
                if a != b {
                    out.push(store.digests.shared(&format!("n{a}"), &format!("n{b}")).expect("ready"));
                }
            }
        }
        out
    }

    async fn some_writes(store: &CartStore, round: usize) {
        for i in 0..60 {
            let id = CartId::parse(&format!("user:{}", (i * 7 + round) % 50), &Limits::DEFAULT).unwrap();
            store.write(&id, &add(&format!("p{round}-{i}"))).await.unwrap();
        }
    }

    /// Digests kept up to date by writes, merges and drops equal digests rebuilt from scratch,
    /// also when the writes land while a rebuild is half way (before and after its cursor).
    #[tokio::test]
    async fn digests_kept_on_write_equal_a_rebuild() {
        let storage = Arc::new(MemoryStorage::default());
        let store = open(&storage, 1).await;
        let layout = five();
        crate::digests::rebuild(&store, &layout, usize::MAX).await.unwrap();
        assert!(
            pairs(&store).iter().all(|d| d.iter().all(|l| *l == 0)),
            "empty store, zero digests"
        );
        some_writes(&store, 0).await;
        // A merge of another replica's writes, and a dropped cart.
        let other = open(&Arc::new(MemoryStorage::default()), 2).await;
        some_writes(&other, 1).await;
        let id = CartId::parse("user:3", &Limits::DEFAULT).unwrap();
        store.merge(&id, (*other.read(&id).unwrap()).clone()).await.unwrap();
        let gone = CartId::parse("user:4", &Limits::DEFAULT).unwrap();
        let ctx = store.read(&gone).unwrap().context().clone();
        assert!(store.drop_replica(&gone, &ctx).await.unwrap());
        let kept = pairs(&store);
        assert!(
            kept.iter().any(|d| d.iter().any(|l| *l != 0)),
            "writes show in the digests"
        );
        crate::digests::rebuild(&store, &layout, usize::MAX).await.unwrap();
        assert_eq!(pairs(&store), kept, "incremental digests differ from a rebuild");
        assert_eq!(store.digests.state().carts, 49);

        // A rebuild interrupted by writes on both sides of its cursor.
        let generation = store.digests.reset(&layout).expect("same version");
        assert!(store.digests.shared("n1", "n2").is_none(), "not ready while rebuilding");
        let first = store.digest_page(generation, None, 20).unwrap().expect("a first page");
        some_writes(&store, 2).await;
        let mut after = Some(first.last);
        while let Some(page) = store.digest_page(generation, after.as_deref(), 20).unwrap() {
            after = Some(page.last);
        }
        store.digests.built(generation);
        let interleaved = pairs(&store);
        crate::digests::rebuild(&store, &layout, usize::MAX).await.unwrap();
        assert_eq!(
            pairs(&store),
            interleaved,
            "writes during a rebuild were counted wrongly"
        );
    }

    /// A layout change moves the digests of the carts whose replica set changed, and only those:
    /// the result equals a rebuild for the new layout, also with writes, new carts and a drop
    /// landing half way through the move (before and after its cursor), and with a move back.
    #[tokio::test]
    async fn digests_moved_to_a_new_layout_equal_a_rebuild() {
        let storage = Arc::new(MemoryStorage::default());
        let store = open(&storage, 1).await;
        crate::digests::rebuild(&store, &five(), usize::MAX).await.unwrap();
        for round in 0..4 {
            some_writes(&store, round).await;
        }
        let six = members(6);
        let generation = store.digests.relayout(&six).expect("ready digests move");
        assert!(store.digests.shared("n1", "n2").is_none(), "not ready while moving");
        assert!(store.digests.state().moving);
        let first = store.move_page(generation, None, 10).unwrap().expect("a first page");
        assert_eq!(first.visited, 10);
        some_writes(&store, 4).await;
        for i in 0..30 {
            let id = CartId::parse(&format!("guest:new-{i}"), &Limits::DEFAULT).unwrap();
            store.write(&id, &add("x")).await.unwrap();
        }
        let gone = CartId::parse("user:4", &Limits::DEFAULT).unwrap();
        let ctx = store.read(&gone).unwrap().context().clone();
        assert!(store.drop_replica(&gone, &ctx).await.unwrap());
        let (mut visited, mut moved) = (first.visited, first.moved);
        let mut after = Some(first.last);
        while let Some(page) = store.move_page(generation, after.as_deref(), 10).unwrap() {
            visited += page.visited;
            moved += page.moved;
            after = Some(page.last);
        }
        store.digests.built(generation);
        assert!(store.digests.state().ready);
        // The 49 carts held before the move, and the new ones indexed after the first page.
        assert!((49..=79).contains(&visited), "visited {visited}");
        assert!(
            moved > 0 && moved < visited,
            "only the carts whose set changed move: {moved} of {visited}"
        );
        let kept = pairs(&store);
        assert!(kept.iter().any(|d| d.iter().any(|l| *l != 0)));
        let carts = store.digests.state().carts;
        crate::digests::rebuild(&store, &six, usize::MAX).await.unwrap();
        assert_eq!(pairs(&store), kept, "moved digests differ from a rebuild");
        assert_eq!(store.digests.state().carts, carts);

        // And back (as version 3), through the function a layout change calls.
        let mut back_to_five = five();
        back_to_five.version = 3;
        crate::digests::follow(&store, &back_to_five, usize::MAX).await.unwrap();
        let back = pairs(&store);
        assert_eq!(store.digests.state().layout_version, 3);
        crate::digests::rebuild(&store, &back_to_five, usize::MAX)
            .await
            .unwrap();
        assert_eq!(pairs(&store), back, "moving back differs from a rebuild");
        // An older layout (a task of an earlier change that runs late) changes nothing.
        crate::digests::follow(&store, &six, usize::MAX).await.unwrap();
        assert_eq!(store.digests.state().layout_version, 3);
        assert_eq!(pairs(&store), back);
    }

    /// Every cart of a leaf, from the `leaves` index (what a repair lists).
    fn listed(store: &CartStore) -> BTreeSet<Vec<u8>> {
        (0..crate::digests::LEAVES)
            .flat_map(|leaf| {
                let mut out = Vec::new();
                let mut after: Option<Vec<u8>> = None;
                while let Some(last) = {
                    let page = store.leaf_carts(leaf, after.as_deref(), 3).unwrap();
                    for key in &page {
                        assert_eq!(crate::digests::leaf_of(key), leaf, "a cart listed under another leaf");
                    }
                    out.extend(page.iter().cloned());
                    page.last().cloned()
                } {
                    after = Some(last);
                }
                out
            })
            .collect()
    }

    /// The `leaves` index lists every cart held, under its own leaf, and no dropped one; an
    /// index lost (a crash, an older version's data) is completed by the next rebuild.
    #[tokio::test]
    async fn leaf_index_lists_each_cart_under_its_leaf() {
        let storage = Arc::new(MemoryStorage::default());
        let store = open(&storage, 1).await;
        some_writes(&store, 0).await;
        let held = |store: &CartStore| -> BTreeSet<Vec<u8>> {
            store
                .scan_carts(None, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(held(&store).len(), 50);
        assert_eq!(listed(&store), held(&store));
        let gone = CartId::parse("user:4", &Limits::DEFAULT).unwrap();
        let ctx = store.read(&gone).unwrap().context().clone();
        assert!(store.drop_replica(&gone, &ctx).await.unwrap());
        assert_eq!(listed(&store), held(&store), "a dropped cart is still listed");

        for (key, _) in storage.scan(Tree::Leaves, b"", None, 10).unwrap() {
            storage.delete(Tree::Leaves, &key).unwrap();
        }
        assert_eq!(listed(&store).len(), 39, "ten entries deleted behind the store's back");
        crate::digests::rebuild(&store, &five(), usize::MAX).await.unwrap();
        assert_eq!(listed(&store), held(&store), "the rebuild did not complete the index");
    }
}
