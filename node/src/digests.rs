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
//! Never persisted, never trusted across a restart: rebuilt by one scan at start
//! ([`RangeDigests::reset`] then pages of [`CartStore::digest_page`]). A layout change does not
//! rebuild: the digests *move* ([`RangeDigests::relayout`], [`relayout`]): one pass over the
//! `leaves` index (keys only) finds the carts whose replica set the new layout changes, and only
//! those are read and their hash moved from the old set's tree to the new one's; the trees of the
//! stretches of the ring that kept their replica set are left as they are.
//!
//! While a scan (a rebuild or a move) runs, each cart is counted exactly once, under its lock:
//! a write to a cart the scan has passed updates the trees by the new layout; one to a cart it
//! has not reached is left to the scan (a rebuild reads the cart as it is then) or applied by the
//! old layout (a move then moves the cart's current hash). A cart created while a page of the
//! scan is being read or walked may or may not be in that page: it is counted at once and the
//! scan skips it (the `early` set: the carts created ahead of the cursor while a page was read,
//! or inside the page being walked; each leaves it when the cursor passes it).
//!
//! A move trusts the `leaves` index to list every cart held. The start-up rebuild checks and
//! completes it; if it could not (a degraded store, a storage error), the index is marked
//! incomplete, a layout change rebuilds instead of moving, and the hand-over waits
//! ([`DigestState::index_complete`]). Digests only ever follow a newer layout: a rebuild or move
//! for an older version than the one they follow is not started.

use std::collections::{BTreeSet, HashMap};
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
type Placement = Arc<(Ring, usize)>;

/// A scan in progress: a rebuild (in the `carts` tree's key order) or a move to a new layout
/// (in the `leaves` index's order).
struct Scan {
    /// `Some`: moving from this placement; `None`: rebuilding from empty trees.
    from: Option<Placement>,
    /// The position of the last cart counted (empty before the first).
    cursor: Vec<u8>,
    /// The last position of the page being walked; `None` while a page is being read.
    page_end: Option<Vec<u8>>,
    /// Positions ahead of the cursor counted when created (see the module doc).
    early: BTreeSet<Vec<u8>>,
}

impl Scan {
    /// A cart's position in the scan's order.
    fn position(&self, key: &[u8]) -> Vec<u8> {
        match self.from {
            Some(_) => leaf_index_key(key),
            None => key.to_vec(),
        }
    }
}

struct Inner {
    /// Bumped by every reset and move: a scan that sees another generation stops.
    generation: u64,
    layout_version: u64,
    ring: Option<Placement>,
    /// Sorted owners → leaves.
    sets: HashMap<Vec<String>, Leaves>,
    memo: Option<SetMemo>,
    /// `None`: ready.
    scan: Option<Scan>,
    carts: u64,
    /// No rebuild since start found a held cart missing from the `leaves` index and failed to add it.
    index_complete: bool,
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
                memo: None,
                scan: Some(Scan {
                    from: None,
                    cursor: Vec::new(),
                    page_end: None,
                    early: BTreeSet::new(),
                }),
                carts: 0,
                index_complete: false,
            }),
        }
    }
}

/// What `status` shows of the digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestState {
    pub ready: bool,
    /// A move to a new layout (rather than a rebuild) is running.
    pub moving: bool,
    pub layout_version: u64,
    pub carts: u64,
    /// Ready or moving, and the last rebuild found the `leaves` index complete (or completed it).
    pub index_complete: bool,
}

/// Whether `key` has the same replica set by both placements.
pub fn same_set(from: &Placement, to: &Placement, key: &[u8]) -> bool {
    set_in(from, key) == set_in(to, key)
}

fn set_in(placement: &Placement, key: &[u8]) -> Vec<String> {
    let mut owners: Vec<String> = placement
        .0
        .preference_list(key, placement.1)
        .iter()
        .map(|m| m.node_id.clone())
        .collect();
    owners.sort();
    owners
}

/// Replica sets of recently changed keys by one placement (the current ring): a hot cart written
/// many times a second walks the ring once, not on every write. It holds its placement, so a
/// placement it is compared with by pointer is never another one at a reused address.
struct SetMemo {
    placement: Placement,
    sets: HashMap<Box<[u8]>, Vec<String>>,
}

/// Keys a [`SetMemo`] holds at most: full, it is emptied and fills again (~150 bytes a key).
const SET_MEMO_KEYS: usize = 4096;

fn xor_in(sets: &mut HashMap<Vec<String>, Leaves>, set: &[String], key: &[u8], hash: u64) {
    match sets.get_mut(set) {
        Some(leaves) => leaves[leaf_of(key)] ^= hash,
        None => {
            let mut leaves: Leaves = Box::new([0; LEAVES]);
            leaves[leaf_of(key)] ^= hash;
            sets.insert(set.to_vec(), leaves);
        }
    }
}

impl Inner {
    /// XORs `hash` into the tree of `key`'s set by `placement`.
    fn xor(&mut self, placement: Option<Placement>, key: &[u8], hash: u64) {
        let Some(placement) = placement else {
            return;
        };
        if !self.ring.as_ref().is_some_and(|ring| Arc::ptr_eq(ring, &placement)) {
            // The old placement of a move: rare, not memoized.
            return xor_in(&mut self.sets, &set_in(&placement, key), key, hash);
        }
        let memo = match &mut self.memo {
            Some(memo) if Arc::ptr_eq(&memo.placement, &placement) => memo,
            memo => memo.insert(SetMemo {
                placement: placement.clone(),
                sets: HashMap::new(),
            }),
        };
        if let Some(set) = memo.sets.get(key) {
            return xor_in(&mut self.sets, set, key, hash);
        }
        if memo.sets.len() >= SET_MEMO_KEYS {
            memo.sets.clear();
        }
        let set = memo.sets.entry(key.into()).or_insert(set_in(&placement, key));
        xor_in(&mut self.sets, set, key, hash);
    }

    fn scan_of(&mut self, generation: u64) -> Option<&mut Scan> {
        match self.generation == generation {
            true => self.scan.as_mut(),
            false => None,
        }
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn placement_of(layout: &Layout) -> Option<Placement> {
    Ring::new(layout.members.clone())
        .ok()
        .map(|r| Arc::new((r, layout.n as usize)))
}

impl RangeDigests {
    /// Starts over for `layout` (at start, and on a layout change that cannot move): empty
    /// trees, a rebuild pending. Returns the generation the rebuild must carry; `None` if the
    /// digests already follow a newer layout.
    pub fn reset(&self, layout: &Layout) -> Option<u64> {
        let ring = placement_of(layout);
        let mut inner = lock(&self.inner);
        if layout.version < inner.layout_version {
            return None;
        }
        inner.generation += 1;
        inner.layout_version = layout.version;
        inner.ring = ring;
        inner.sets.clear();
        inner.scan = Some(Scan {
            from: None,
            cursor: Vec::new(),
            page_end: None,
            early: BTreeSet::new(),
        });
        inner.carts = 0;
        inner.index_complete = true; // until the rebuild finds a gap it cannot fill
        Some(inner.generation)
    }

    /// Starts moving the ready digests to `layout`: returns the generation the move must carry,
    /// or `None` when they cannot move (a scan is running, the leaf index may be incomplete, a
    /// layout has no placement, or `layout` is not newer) and a [`RangeDigests::reset`] and
    /// rebuild must follow.
    pub fn relayout(&self, layout: &Layout) -> Option<u64> {
        let ring = placement_of(layout)?;
        let mut inner = lock(&self.inner);
        if inner.scan.is_some() || !inner.index_complete || layout.version <= inner.layout_version {
            return None;
        }
        let from = inner.ring.replace(ring)?;
        inner.generation += 1;
        inner.layout_version = layout.version;
        inner.scan = Some(Scan {
            from: Some(from),
            cursor: Vec::new(),
            page_end: None,
            early: BTreeSet::new(),
        });
        Some(inner.generation)
    }

    /// A cart's hash changed from `old` to `new` (the store calls this under the cart's lock).
    pub fn changed(&self, key: &[u8], old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        let mut inner = lock(&self.inner);
        let mut placement = inner.ring.clone();
        if let Some(scan) = inner.scan.as_mut() {
            let position = scan.position(key);
            if position > scan.cursor && !scan.early.contains(&position) {
                let in_page = scan.page_end.as_ref().is_none_or(|end| position <= *end);
                if old.is_none() && in_page {
                    // Created while its page is read or walked: the page may miss it.
                    scan.early.insert(position);
                } else {
                    match &scan.from {
                        // The rebuild will count the cart as it is then.
                        None => return,
                        // The move will move its hash from where the old layout put it.
                        Some(from) => placement = Some(from.clone()),
                    }
                }
            }
        }
        match (old, new) {
            (None, Some(_)) => inner.carts += 1,
            (Some(_), None) => inner.carts = inner.carts.saturating_sub(1),
            _ => {}
        }
        inner.xor(placement, key, old.unwrap_or(0) ^ new.unwrap_or(0));
    }

    /// The scan of `generation` is about to read its next page; false when a newer reset or move
    /// made it obsolete.
    pub fn reading(&self, generation: u64) -> bool {
        let mut inner = lock(&self.inner);
        let Some(scan) = inner.scan_of(generation) else {
            return false;
        };
        scan.page_end = None;
        let cursor = scan.cursor.clone();
        scan.early.retain(|p| *p > cursor);
        true
    }

    /// The scan of `generation` read a page ending at `last` (a position in its order).
    pub fn page_read(&self, generation: u64, last: &[u8]) -> bool {
        let mut inner = lock(&self.inner);
        let Some(scan) = inner.scan_of(generation) else {
            return false;
        };
        scan.page_end = Some(last.to_vec());
        true
    }

    /// Counts one cart met by the rebuild of `generation` (under the cart's lock); false when a
    /// newer reset or move made that rebuild obsolete.
    pub fn scanned(&self, generation: u64, key: &[u8], hash: Option<u64>) -> bool {
        let mut inner = lock(&self.inner);
        let Some(scan) = inner.scan_of(generation) else {
            return false;
        };
        let position = scan.position(key);
        let early = scan.early.remove(&position);
        scan.cursor = position;
        if let (Some(h), false) = (hash, early) {
            let placement = inner.ring.clone();
            inner.xor(placement, key, h);
            inner.carts += 1;
        }
        true
    }

    /// The old and new placements of the move of `generation` (to decide, outside the lock,
    /// which carts must move); `None` when a newer reset or move made the move obsolete.
    pub fn move_placements(&self, generation: u64) -> Option<(Placement, Placement)> {
        let inner = lock(&self.inner);
        if inner.generation != generation {
            return None;
        }
        match (&inner.scan, &inner.ring) {
            (Some(Scan { from: Some(from), .. }), Some(to)) => Some((from.clone(), to.clone())),
            _ => None,
        }
    }

    /// A rebuild found a held cart missing from the `leaves` index and could not add it.
    pub fn index_gap(&self) {
        lock(&self.inner).index_complete = false;
    }

    /// Moves one cart's current `hash` from its old set's tree to its new one (the move of
    /// `generation`, under the cart's lock); false when a newer reset or move made it obsolete.
    pub fn moved(&self, generation: u64, key: &[u8], hash: Option<u64>) -> bool {
        let mut inner = lock(&self.inner);
        let Some(scan) = inner.scan_of(generation) else {
            return false;
        };
        let position = scan.position(key);
        let early = scan.early.remove(&position);
        scan.cursor = position;
        let from = scan.from.clone();
        if let (Some(h), false) = (hash, early) {
            let to = inner.ring.clone();
            inner.xor(from, key, h);
            inner.xor(to, key, h);
        }
        true
    }

    /// The move of `generation` walked its page up to `position` (carts that kept their set).
    pub fn passed(&self, generation: u64, position: &[u8]) -> bool {
        let mut inner = lock(&self.inner);
        let Some(scan) = inner.scan_of(generation) else {
            return false;
        };
        if position > scan.cursor.as_slice() {
            scan.cursor = position.to_vec();
        }
        true
    }

    /// The scan of `generation` reached the end.
    pub fn built(&self, generation: u64) {
        let mut inner = lock(&self.inner);
        if inner.generation == generation {
            inner.scan = None;
        }
    }

    pub fn state(&self) -> DigestState {
        let inner = lock(&self.inner);
        DigestState {
            ready: inner.scan.is_none(),
            moving: inner.scan.as_ref().is_some_and(|s| s.from.is_some()),
            layout_version: inner.layout_version,
            carts: inner.carts,
            index_complete: inner.index_complete && inner.scan.as_ref().is_none_or(|s| s.from.is_some()),
        }
    }

    /// The leaf-wise XOR of every replica set holding both `me` and `peer`; `None` while a scan
    /// runs.
    pub fn shared(&self, me: &str, peer: &str) -> Option<Vec<u64>> {
        self.shared_at(me, peer, None)
    }

    /// [`RangeDigests::shared`], and `None` unless the digests follow layout `version` (when
    /// given): a leaf compares carts only by the placement it was built for.
    pub fn shared_at(&self, me: &str, peer: &str, version: Option<u64>) -> Option<Vec<u64>> {
        let inner = lock(&self.inner);
        if inner.scan.is_some() || version.is_some_and(|v| v != inner.layout_version) {
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

/// Follows `layout`: moves the digests to it when they are ready ([`RangeDigests::relayout`]),
/// else rebuilds them by one scan (at start, or when a scan was running). Both are throttled: at
/// most `carts_per_sec` carts visited, and after each page a sleep at least as long as the page
/// took, so the scan uses at most half of one core and requests and heartbeats keep being
/// served. A newer layout makes the scan stop. Progress shows in `cartctl status`.
pub async fn follow(
    store: &crate::store::CartStore,
    layout: &Layout,
    carts_per_sec: usize,
) -> Result<(), crate::error::NodeError> {
    match store.digests.relayout(layout) {
        Some(generation) => scan(store, layout, generation, true, carts_per_sec).await,
        None => rebuild(store, layout, carts_per_sec).await,
    }
}

/// [`follow`] until it succeeds with a complete leaf index, or a newer layout takes over: a failed
/// scan (a storage error) or one that left the index incomplete (a degraded store) is tried
/// again, one second later and doubling to a minute, at most `FOLLOW_ATTEMPTS` times (a node
/// whose storage stays broken restarts, and rebuilds then).
pub async fn follow_until_ready(store: &crate::store::CartStore, layout: &Layout, carts_per_sec: usize) {
    let mut backoff = std::time::Duration::from_secs(1);
    for attempt in 1..=FOLLOW_ATTEMPTS {
        let outcome = follow(store, layout, carts_per_sec).await;
        let state = store.digests.state();
        if state.layout_version > layout.version {
            return; // a newer layout's scan took over
        }
        match outcome {
            Ok(()) if state.ready && state.index_complete => return,
            Ok(()) if !state.ready => return, // a newer scan of this layout took over
            Ok(()) => tracing::warn!(
                attempt,
                "anti-entropy digests built, but the leaf index is incomplete; rebuilding later"
            ),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "anti-entropy digests could not be built; trying again later")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(60));
    }
    tracing::error!(
        layout = layout.version,
        "anti-entropy digests still not built; anti-entropy and hand-over wait for a restart"
    );
}

/// How many times [`follow_until_ready`] tries.
pub const FOLLOW_ATTEMPTS: u32 = 10;

/// Rebuilds the digests for `layout` from empty trees by one scan of the store (see [`follow`]).
pub async fn rebuild(
    store: &crate::store::CartStore,
    layout: &Layout,
    carts_per_sec: usize,
) -> Result<(), crate::error::NodeError> {
    match store.digests.reset(layout) {
        Some(generation) => scan(store, layout, generation, false, carts_per_sec).await,
        None => Ok(()), // the digests follow a newer layout already
    }
}

async fn scan(
    store: &crate::store::CartStore,
    layout: &Layout,
    generation: u64,
    moving: bool,
    carts_per_sec: usize,
) -> Result<(), crate::error::NodeError> {
    let page_every = std::time::Duration::from_secs_f64(REBUILD_PAGE as f64 / carts_per_sec.max(1) as f64);
    let started = tokio::time::Instant::now();
    let mut after: Option<Vec<u8>> = None;
    let (mut visited, mut moved) = (0u64, 0u64);
    loop {
        let page_started = tokio::time::Instant::now();
        let step = match moving {
            true => store.move_page(generation, after.as_deref(), REBUILD_PAGE)?,
            false => store.digest_page(generation, after.as_deref(), REBUILD_PAGE)?,
        };
        let Some(page) = step else { break };
        visited += page.visited as u64;
        moved += page.moved as u64;
        after = Some(page.last);
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
        let took = started.elapsed();
        match moving {
            true => tracing::info!(
                carts = state.carts,
                visited,
                moved,
                layout = layout.version,
                ?took,
                "anti-entropy digests moved to a new layout (only the carts whose replica set changed were read)"
            ),
            false => tracing::info!(
                carts = state.carts,
                layout = layout.version,
                ?took,
                "anti-entropy digests built"
            ),
        }
    }
    Ok(())
}

/// One page of a digest scan: its last position, carts visited and carts whose hash moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub last: Vec<u8>,
    pub visited: usize,
    pub moved: usize,
}

/// Carts counted per page of a rebuild or a move.
pub const REBUILD_PAGE: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(nodes: usize) -> Layout {
        let members = (1..=nodes)
            .map(|i| cart_ring::Member {
                node_id: format!("n{i}"),
                addr: format!("127.0.0.1:{}", 7000 + i),
                weight: 1,
                zone: String::new(),
            })
            .collect();
        let mut layout = Layout::initial(members, 3, 2, 2);
        layout.version = nodes as u64;
        layout
    }

    fn all_pairs(d: &RangeDigests) -> Vec<Option<Vec<u64>>> {
        let mut out = Vec::new();
        for a in 1..=6 {
            for b in 1..=6 {
                out.push(d.shared(&format!("n{a}"), &format!("n{b}")));
            }
        }
        out
    }

    /// The memo of replica sets gives every key its set by the current placement: past its
    /// bound (emptied and refilled) and after a new layout (a new placement).
    #[test]
    fn memoized_sets_are_the_sets_of_the_current_layout() {
        for (first, second) in [(layout(5), layout(6)), (layout(6), layout(5))] {
            let d = RangeDigests::default();
            let mut want: HashMap<Vec<String>, Leaves> = HashMap::new();
            for (round, mut l) in [first, second].into_iter().enumerate() {
                l.version = round as u64 + 1;
                let g = d.reset(&l).expect("newer layout");
                d.built(g);
                want.clear();
                let placement = placement_of(&l).expect("a placement");
                // Each key twice (memo hits), more keys than the memo holds.
                for i in 0..SET_MEMO_KEYS + 500 {
                    let key = format!("user:{i}");
                    for h in [i as u64 + 1, (round as u64 + 7) << 32] {
                        d.changed(key.as_bytes(), None, Some(h));
                        d.changed(key.as_bytes(), Some(h), None);
                        d.changed(key.as_bytes(), None, Some(h));
                        let leaves = want
                            .entry(set_in(&placement, key.as_bytes()))
                            .or_insert_with(|| Box::new([0; LEAVES]));
                        leaves[leaf_of(key.as_bytes())] ^= h;
                    }
                }
                let inner = lock(&d.inner);
                assert_eq!(inner.sets.len(), want.len());
                for (set, leaves) in &want {
                    assert_eq!(inner.sets.get(set), Some(leaves), "set {set:?}");
                }
            }
        }
    }

    /// A cart created while a page of a scan is read may or may not be in that page: either way
    /// it is counted once, in its set by the new layout (without the `early` set, a cart missing
    /// from its page would be counted never by a rebuild, or in its old set by a move).
    #[test]
    fn a_cart_created_during_a_page_is_counted_once() {
        let (five, six) = (layout(5), layout(6));
        let key = (0..)
            .map(|i| format!("user:{i}"))
            .find(|k| {
                let (a, b) = (placement_of(&five).unwrap(), placement_of(&six).unwrap());
                set_in(&a, k.as_bytes()) != set_in(&b, k.as_bytes())
            })
            .expect("a cart whose replica set the sixth node changes");
        let key = key.as_bytes();
        for moving in [false, true] {
            for in_page in [false, true] {
                let d = RangeDigests::default();
                let ready = d.reset(&five).expect("first layout");
                d.built(ready);
                let g = match moving {
                    true => d.relayout(&six).expect("ready digests move"),
                    false => d.reset(&six).expect("newer layout"),
                };
                let position = match moving {
                    true => leaf_index_key(key),
                    false => key.to_vec(),
                };
                let mut end = position.clone();
                end.push(0xff);
                assert!(d.reading(g));
                d.changed(key, None, Some(7));
                assert!(d.page_read(g, &end));
                if in_page {
                    match moving {
                        true => assert!(d.moved(g, key, Some(7))),
                        false => assert!(d.scanned(g, key, Some(7))),
                    }
                }
                if moving {
                    assert!(d.passed(g, &end));
                }
                d.built(g);

                let want = RangeDigests::default();
                let w = want.reset(&six).expect("first layout");
                assert!(want.scanned(w, key, Some(7)));
                want.built(w);
                assert_eq!(
                    all_pairs(&d),
                    all_pairs(&want),
                    "moving {moving}, in its page {in_page}"
                );
                assert_eq!(d.state().carts, 1);
            }
        }
    }
}
