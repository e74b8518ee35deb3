//! Anti-entropy: converging replicas that hints missed, without any read of the carts.
//!
//! Every `anti_entropy_interval`, a node picks the next peer that is up and compares, for the carts
//! both replicate, the leaves of their range digests ([`crate::digests`]: per replica set, XOR of
//! `hash(cart id, cart context)` per leaf, kept up to date on every write; equal contexts mean
//! equal carts). Comparing costs O(leaves), not O(carts): an idle cluster does no scan at all.
//! For leaves that differ it fetches the peer's `(cart id, hash)` list, and for each cart that
//! differs (at most `anti_entropy_keys_per_round`) pulls the peer's state, merges it locally and
//! pushes the merge back. A differing leaf's keys are one contiguous range of the `leaves` index
//! (about carts / 1024 ids), so a repair reads only the leaves that differ, never the whole store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cart_crdt::CartId;
use cart_proto::replica_pb::{BucketKeysRequest, DigestRequest, ReadRequest, ReplicateRequest};

use crate::coordinator::Coordinator;
use crate::digests::{entry_hash, LEAVES};
use crate::error::NodeError;

/// Leaves examined per round at most.
pub const BUCKETS_PER_ROUND: usize = 64;
const SCAN_PAGE: usize = 1024;

/// `(cart id, hash)` of the local replicas that `peer` replicates too and whose leaf is in
/// `wanted`: a range read of the `leaves` index per wanted leaf (about carts / [`LEAVES`] ids
/// each), a page at a time, yielding between pages.
pub async fn bucket_keys(
    coordinator: &Coordinator,
    peer: &str,
    wanted: &[u32],
) -> Result<Vec<(String, u64)>, NodeError> {
    let wanted: BTreeSet<usize> = wanted.iter().map(|b| *b as usize).filter(|b| *b < LEAVES).collect();
    let cluster = &coordinator.cluster;
    // Owners by the newest layout version (while carts move into it, the transfer moves them).
    let topology = cluster.topology();
    let mut out = Vec::new();
    for leaf in wanted {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = coordinator.store.leaf_carts(leaf, after.as_deref(), SCAN_PAGE)?;
            let Some(last) = page.last() else { break };
            after = Some(last.clone());
            for key in page {
                let owners = topology.current.owners(&key);
                if !(owners.iter().any(|m| m == peer) && owners.contains(&cluster.self_id)) {
                    continue;
                }
                let Ok(id) = CartId::parse(&String::from_utf8_lossy(&key), coordinator.store.limits()) else {
                    continue;
                };
                // Skipped (and repaired by nobody) if it cannot be read: one bad cart must not
                // stop anti-entropy for every other one.
                match coordinator.store.peek(&id) {
                    Ok(cart) => {
                        if let Some(h) = entry_hash(&key, cart.context())? {
                            out.push((id.to_string(), h));
                        }
                    }
                    Err(e) => tracing::warn!(cart_id = %id, error = %e, "anti-entropy skips an unreadable cart"),
                }
            }
            tokio::task::yield_now().await;
        }
    }
    Ok(out)
}

/// The leaves of the carts this node and `peer` both replicate; `UNAVAILABLE` while the digests
/// are being rebuilt.
pub fn digest(coordinator: &Coordinator, peer: &str) -> Result<Vec<u64>, NodeError> {
    coordinator
        .store
        .digests
        .shared(&coordinator.cluster.self_id, peer)
        .ok_or(NodeError::Rebuilding)
}

/// Runs one exchange per interval until `stop` fires.
pub async fn run(coordinator: Arc<Coordinator>, mut stop: tokio::sync::watch::Receiver<bool>) {
    // The first exchange comes one interval after start (a restarting node first takes its
    // hints; anti-entropy is the slow path).
    let every = coordinator.cluster.config.anti_entropy_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0usize;
    loop {
        tokio::select! {
            biased; // fixed branch order: deterministic under simulation
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let mut peers: Vec<String> = coordinator
            .cluster
            .peers()
            .into_iter()
            .filter(|p| p.is_up())
            .map(|p| p.member.node_id.clone())
            .collect();
        // A node whose storage takes no writes could not merge what it finds.
        if peers.is_empty() || coordinator.store.health.is_degraded() {
            continue;
        }
        peers.sort();
        let peer = peers[next % peers.len()].clone();
        next = next.wrapping_add(1);
        match exchange(&coordinator, &peer).await {
            Ok(Found { repaired: 0, .. }) => {}
            Ok(Found { repaired, .. }) => tracing::info!(peer, repaired, "anti-entropy repaired carts"),
            Err(e) => tracing::debug!(peer, error = %e, "anti-entropy exchange failed"),
        }
    }
}

/// What the last exchange with one peer found (for `cartctl status`).
#[derive(Debug, Clone, Default)]
pub struct PeerStats {
    pub last: Option<tokio::time::Instant>,
    pub took: std::time::Duration,
    pub differing_carts: usize,
    pub repaired: usize,
    pub error: Option<String>,
}

/// Per peer, the last exchange.
#[derive(Default)]
pub struct Stats(std::sync::Mutex<BTreeMap<String, PeerStats>>);

impl Stats {
    pub fn get(&self, peer: &str) -> Option<PeerStats> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(peer)
            .cloned()
    }

    fn record(&self, peer: &str, stats: PeerStats) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(peer.to_owned(), stats);
    }
}

/// What one exchange found.
#[derive(Debug, Clone, Copy, Default)]
pub struct Found {
    pub differing_carts: usize,
    pub repaired: usize,
}

/// One digest exchange with `peer`, recorded in the coordinator's anti-entropy stats.
pub async fn exchange(coordinator: &Coordinator, peer_id: &str) -> Result<Found, NodeError> {
    let started = tokio::time::Instant::now();
    let outcome = exchange_once(coordinator, peer_id).await;
    let (found, error) = match &outcome {
        Ok(found) => (*found, None),
        Err(e) => (Found::default(), Some(e.to_string())),
    };
    let metrics = &coordinator.store.metrics;
    metrics.anti_entropy_differing.inc_by(found.differing_carts as u64);
    metrics.anti_entropy_repaired.inc_by(found.repaired as u64);
    coordinator.anti_entropy.record(
        peer_id,
        PeerStats {
            last: Some(tokio::time::Instant::now()),
            took: started.elapsed(),
            differing_carts: found.differing_carts,
            repaired: found.repaired,
            error,
        },
    );
    outcome
}

async fn exchange_once(coordinator: &Coordinator, peer_id: &str) -> Result<Found, NodeError> {
    let cluster = &coordinator.cluster;
    let peer = cluster.peer(peer_id).ok_or_else(|| NodeError::Config {
        reason: format!("unknown peer {peer_id}"),
    })?;
    let mine = digest(coordinator, peer_id)?;
    let theirs = peer
        .client()
        .digest(cluster.request(DigestRequest {
            from_node: cluster.self_id.clone(),
        }))
        .await
        .map_err(NodeError::Remote)?
        .into_inner()
        .buckets;
    let differing: Vec<u32> = (0..LEAVES)
        .filter(|b| theirs.get(*b).copied().unwrap_or(0) != mine[*b])
        .take(BUCKETS_PER_ROUND)
        .map(|b| b as u32)
        .collect();
    if differing.is_empty() {
        return Ok(Found::default());
    }
    let their_keys: BTreeMap<String, u64> = peer
        .client()
        .bucket_keys(cluster.request(BucketKeysRequest {
            from_node: cluster.self_id.clone(),
            buckets: differing.clone(),
        }))
        .await
        .map_err(NodeError::Remote)?
        .into_inner()
        .keys
        .into_iter()
        .map(|k| (k.cart_id, k.hash))
        .collect();
    let my_keys: BTreeMap<String, u64> = bucket_keys(coordinator, peer_id, &differing)
        .await?
        .into_iter()
        .collect();
    let stale: BTreeSet<&String> = their_keys
        .iter()
        .filter(|(k, h)| my_keys.get(*k) != Some(h))
        .map(|(k, _)| k)
        .chain(my_keys.keys().filter(|k| !their_keys.contains_key(*k)))
        .take(cluster.config.anti_entropy_keys_per_round)
        .collect();
    let differing_carts = stale.len();
    let mut repaired = 0;
    for key in stale {
        let Ok(id) = CartId::parse(key, coordinator.store.limits()) else {
            continue;
        };
        if repair_one(coordinator, peer_id, &id).await? {
            repaired += 1;
        }
    }
    Ok(Found {
        differing_carts,
        repaired,
    })
}

/// Pulls the peer's state of one cart, merges it here, pushes the merge back.
async fn repair_one(coordinator: &Coordinator, peer_id: &str, id: &CartId) -> Result<bool, NodeError> {
    let cluster = &coordinator.cluster;
    let Some(peer) = cluster.peer(peer_id) else {
        return Ok(false);
    };
    let theirs = peer
        .client()
        .read(cluster.request(ReadRequest {
            cart_id: id.to_string(),
            known_context: Vec::new(),
            catch_up: false,
        }))
        .await
        .map_err(NodeError::Remote)?
        .into_inner()
        .state;
    let incoming = if theirs.is_empty() {
        None
    } else {
        Some(cart_crdt::codec::decode(&theirs)?)
    };
    let (merged, changed_here) = coordinator
        .store
        .merge(id, incoming.clone().unwrap_or_default())
        .await?;
    let changed_there = incoming.as_ref() != Some(&*merged);
    if changed_there {
        peer.client()
            .replicate(cluster.request(ReplicateRequest {
                cart_id: id.to_string(),
                state: cart_crdt::codec::encode(&merged)?,
                hint_for: String::new(),
                deps: Vec::new(),
            }))
            .await
            .map_err(NodeError::Remote)?;
    }
    Ok(changed_here || changed_there)
}
