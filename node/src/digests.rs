//! Anti-entropy digests maintained on write, not rebuilt by scanning (Riak's "tictac" AAE).
//!
//! Per replica set of the current layout (the sorted owners a stretch of the ring maps to), a
//! tree of [`LEAVES`] leaves, each the XOR of `hash(cart id, cart context)` over that set's carts
//! whose id hashes to the leaf. XOR makes every change O(1): a write XORs its cart's old hash out
//! of the leaf and the new one in ([`RangeDigests::changed`], called by the store under the
//! cart's lock). The digest a node shows a peer is the leaf-wise XOR of the sets both belong to;
//! equal leaves mean equal carts (equal contexts mean equal carts), so an exchange compares leaves
//! and lists keys only for the leaves that differ.
//!
//! Never persisted, never trusted across a restart: rebuilt by one scan at start and whenever the
//! layout changes ([`RangeDigests::reset`] then pages of [`CartStore::digest_page`]). While it is
//! rebuilding, a write to a cart the scan has not reached yet is left to the scan (it will read
//! the cart as it is then); a write to one it passed updates the leaf. Both happen under the
//! cart's lock, so each cart is counted exactly once.

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::{Arc, Mutex};

use cart_crdt::{CartError, Context};
use cart_ring::layout::Layout;
use cart_ring::Ring;

/// Leaves per replica set.
pub const LEAVES: usize = 1024;

/// The leaf of a cart id.
pub fn leaf_of(key: &[u8]) -> usize {
    let mut h = fnv::FnvHasher::default();
    h.write(key);
    (h.finish() % LEAVES as u64) as usize
}

/// The key of a cart in the `leaves` index: its leaf (u16, big-endian), then its id, so that the
/// carts of one leaf are one contiguous range.
pub fn leaf_index_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len());
    out.extend_from_slice(&(leaf_of(key) as u16).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The prefix of one leaf's range in the `leaves` index.
pub fn leaf_prefix(leaf: usize) -> [u8; 2] {
    (leaf as u16).to_be_bytes()
}

/// The hash a cart contributes to its leaf: of its id and its encoded context (`None` for a cart
/// this node does not hold: an empty context).
pub fn entry_hash(key: &[u8], context: &Context) -> Result<Option<u64>, CartError> {
    if *context == Context::default() {
        return Ok(None);
    }
    let mut h = fnv::FnvHasher::default();
    h.write(key);
    h.write_u8(0xff);
    h.write(&cart_crdt::codec::encode_context(context)?);
    Ok(Some(h.finish()))
}

type Leaves = Box<[u64; LEAVES]>;

struct Inner {
    /// Bumped by every reset: a rebuild that sees another generation stops.
    generation: u64,
    layout_version: u64,
    ring: Option<Arc<(Ring, usize)>>,
    /// Sorted owners → leaves.
    sets: HashMap<Vec<String>, Leaves>,
    /// While rebuilding: the last key counted (`Some(empty)` before the first). `None`: ready.
    scanned_to: Option<Vec<u8>>,
    carts: u64,
}

/// The digests of this node's replicas (see the module doc).
pub struct RangeDigests {
    inner: Mutex<Inner>,
}

impl Default for RangeDigests {
    fn default() -> Self {
        RangeDigests {
            inner: Mutex::new(Inner {
                generation: 0,
                layout_version: 0,
                ring: None,
                sets: HashMap::new(),
                scanned_to: Some(Vec::new()),
                carts: 0,
            }),
        }
    }
}

/// What `status` shows of the digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestState {
    pub ready: bool,
    pub layout_version: u64,
    pub carts: u64,
}

impl Inner {
    fn set_of(&self, key: &[u8]) -> Option<Vec<String>> {
        let ring = self.ring.as_ref()?;
        let mut owners: Vec<String> = ring
            .0
            .preference_list(key, ring.1)
            .iter()
            .map(|m| m.node_id.clone())
            .collect();
        owners.sort();
        Some(owners)
    }

    fn xor(&mut self, key: &[u8], hash: u64) {
        let Some(set) = self.set_of(key) else { return };
        let leaves = self.sets.entry(set).or_insert_with(|| Box::new([0; LEAVES]));
        leaves[leaf_of(key)] ^= hash;
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RangeDigests {
    /// Starts over for `layout` (at start and on every layout change): empty trees, a rebuild
    /// pending. Returns the generation the rebuild must carry.
    pub fn reset(&self, layout: &Layout) -> u64 {
        let ring = Ring::new(layout.members.clone())
            .ok()
            .map(|r| Arc::new((r, layout.n as usize)));
        let mut inner = lock(&self.inner);
        inner.generation += 1;
        inner.layout_version = layout.version;
        inner.ring = ring;
        inner.sets.clear();
        inner.scanned_to = Some(Vec::new());
        inner.carts = 0;
        inner.generation
    }

    /// A cart's hash changed from `old` to `new` (the store calls this under the cart's lock).
    pub fn changed(&self, key: &[u8], old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        let mut inner = lock(&self.inner);
        if inner.scanned_to.as_ref().is_some_and(|to| key > to.as_slice()) {
            return; // the rebuild has not reached it: it will count the cart as it is then
        }
        match (old, new) {
            (None, Some(_)) => inner.carts += 1,
            (Some(_), None) => inner.carts = inner.carts.saturating_sub(1),
            _ => {}
        }
        inner.xor(key, old.unwrap_or(0) ^ new.unwrap_or(0));
    }

    /// Counts one cart met by the rebuild of `generation` (under the cart's lock); false when a
    /// newer reset made that rebuild obsolete.
    pub fn scanned(&self, generation: u64, key: &[u8], hash: Option<u64>) -> bool {
        let mut inner = lock(&self.inner);
        if inner.generation != generation {
            return false;
        }
        if let Some(h) = hash {
            inner.xor(key, h);
            inner.carts += 1;
        }
        inner.scanned_to = Some(key.to_vec());
        true
    }

    /// The rebuild of `generation` reached the end.
    pub fn built(&self, generation: u64) {
        let mut inner = lock(&self.inner);
        if inner.generation == generation {
            inner.scanned_to = None;
        }
    }

    pub fn state(&self) -> DigestState {
        let inner = lock(&self.inner);
        DigestState {
            ready: inner.scanned_to.is_none(),
            layout_version: inner.layout_version,
            carts: inner.carts,
        }
    }

    /// The leaf-wise XOR of every replica set holding both `me` and `peer`; `None` while
    /// rebuilding.
    pub fn shared(&self, me: &str, peer: &str) -> Option<Vec<u64>> {
        let inner = lock(&self.inner);
        if inner.scanned_to.is_some() {
            return None;
        }
        let mut out = vec![0u64; LEAVES];
        for (set, leaves) in &inner.sets {
            if set.iter().any(|n| n == me) && set.iter().any(|n| n == peer) {
                for (o, l) in out.iter_mut().zip(leaves.iter()) {
                    *o ^= *l;
                }
            }
        }
        Some(out)
    }
}

/// Rebuilds the digests for `layout` by one scan of the store, a page at a time, throttled: at
/// most `carts_per_sec`, and after each page it sleeps at least as long as the page took, so a
/// rebuild uses at most half of one core and requests and heartbeats keep being served. A newer
/// rebuild (a newer layout) makes this one stop. Progress (carts counted so far) shows in
/// `cartctl status`.
pub async fn rebuild(
    store: &crate::store::CartStore,
    layout: &Layout,
    carts_per_sec: usize,
) -> Result<(), crate::error::NodeError> {
    let page_every = std::time::Duration::from_secs_f64(REBUILD_PAGE as f64 / carts_per_sec.max(1) as f64);
    let generation = store.digests.reset(layout);
    let started = tokio::time::Instant::now();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page_started = tokio::time::Instant::now();
        let Some(last) = store.digest_page(generation, after.as_deref(), REBUILD_PAGE)? else {
            break;
        };
        after = Some(last);
        let took = page_started.elapsed();
        let pause = took.max(page_every.saturating_sub(took));
        if pause.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(pause).await;
        }
    }
    store.digests.built(generation);
    let state = store.digests.state();
    if state.ready && state.layout_version == layout.version {
        tracing::info!(carts = state.carts, layout = layout.version, took = ?started.elapsed(), "anti-entropy digests built");
    }
    Ok(())
}

/// Carts counted per page of a rebuild.
pub const REBUILD_PAGE: usize = 256;
