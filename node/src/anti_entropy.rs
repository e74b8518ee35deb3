//! Anti-entropy: converging replicas that hints missed, without any read of the carts.
//!
//! Every `anti_entropy_interval`, a node picks the next peer that is up and compares, for the carts
//! both replicate, a digest of [`BUCKETS`] buckets (XOR of `hash(cart id, cart context)`; equal
//! contexts mean equal carts).
//! For buckets that differ it fetches the peer's `(cart id, hash)` list, and for each cart that
//! differs (at most `anti_entropy_keys_per_round`) pulls the peer's state, merges it locally and
//! pushes the merge back. Digests are computed by scanning the local replicas: O(carts) per round,
//! fine for the cart counts of one node; a Merkle tree kept up to date on write would replace it.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::sync::Arc;

use cart_crdt::CartId;
use cart_proto::replica_pb::{BucketKeysRequest, DigestRequest, ReadRequest, ReplicateRequest};
use fnv::FnvHasher;

use crate::coordinator::Coordinator;
use crate::error::NodeError;

/// Digest buckets.
pub const BUCKETS: usize = 256;
/// Buckets examined per round at most.
pub const BUCKETS_PER_ROUND: usize = 64;
const SCAN_PAGE: usize = 1024;

fn hash(parts: &[&[u8]]) -> u64 {
    let mut h = FnvHasher::default();
    for p in parts {
        h.write(p);
        h.write_u8(0xff);
    }
    h.finish()
}

fn bucket_of(key: &[u8]) -> usize {
    (hash(&[key]) % BUCKETS as u64) as usize
}

/// Calls `f(cart id, bucket, hash of the canonical state)` for every local replica that `peer`
/// replicates too.
fn for_shared(coordinator: &Coordinator, peer: &str, mut f: impl FnMut(String, usize, u64)) -> Result<(), NodeError> {
    let cluster = &coordinator.cluster;
    // Owners by the newest layout version (while carts move into it, the transfer moves them).
    let topology = cluster.topology();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = coordinator.store.scan_carts(after.as_deref(), SCAN_PAGE)?;
        let Some((last, _)) = page.last() else { return Ok(()) };
        after = Some(last.clone());
        for (key, _) in page {
            let owners = topology.current.owners(&key);
            let shared = owners.iter().any(|m| m == peer) && owners.contains(&cluster.self_id);
            if shared {
                // The stored base may lag its deltas: hash the current cart's context (equal
                // contexts mean equal carts, and it is a few bytes where the cart is kilobytes).
                let Ok(id) = CartId::parse(&String::from_utf8_lossy(&key), coordinator.store.limits()) else {
                    continue;
                };
                // Skipped (and repaired by nobody) if it cannot be read: one bad cart must not stop
                // anti-entropy for every other one.
                let context = match coordinator.store.peek(&id) {
                    Ok(cart) => cart_crdt::codec::encode_context(cart.context())?,
                    Err(e) => {
                        tracing::warn!(cart_id = %id, error = %e, "anti-entropy skips an unreadable cart");
                        continue;
                    }
                };
                f(id.to_string(), bucket_of(&key), hash(&[&key, &context]));
            }
        }
    }
}

/// The bucket digest of the carts this node and `peer` both replicate.
pub fn digest(coordinator: &Coordinator, peer: &str) -> Result<Vec<u64>, NodeError> {
    let mut buckets = vec![0u64; BUCKETS];
    for_shared(coordinator, peer, |_, b, h| buckets[b] ^= h)?;
    Ok(buckets)
}

/// `(cart id, hash)` of the shared carts in `wanted` buckets.
pub fn bucket_keys(coordinator: &Coordinator, peer: &str, wanted: &[u32]) -> Result<Vec<(String, u64)>, NodeError> {
    let wanted: BTreeSet<usize> = wanted.iter().map(|b| *b as usize).collect();
    let mut out = Vec::new();
    for_shared(coordinator, peer, |key, b, h| {
        if wanted.contains(&b) {
            out.push((key, h));
        }
    })?;
    Ok(out)
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
        if peers.is_empty() {
            continue;
        }
        peers.sort();
        let peer = peers[next % peers.len()].clone();
        next = next.wrapping_add(1);
        match exchange(&coordinator, &peer).await {
            Ok(0) => {}
            Ok(repaired) => tracing::info!(peer, repaired, "anti-entropy repaired carts"),
            Err(e) => tracing::debug!(peer, error = %e, "anti-entropy exchange failed"),
        }
    }
}

/// One digest exchange with `peer`; returns how many carts were repaired.
pub async fn exchange(coordinator: &Coordinator, peer_id: &str) -> Result<usize, NodeError> {
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
    let differing: Vec<u32> = (0..BUCKETS)
        .filter(|b| theirs.get(*b).copied().unwrap_or(0) != mine[*b])
        .take(BUCKETS_PER_ROUND)
        .map(|b| b as u32)
        .collect();
    if differing.is_empty() {
        return Ok(0);
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
    let my_keys: BTreeMap<String, u64> = bucket_keys(coordinator, peer_id, &differing)?.into_iter().collect();
    let stale: BTreeSet<&String> = their_keys
        .iter()
        .filter(|(k, h)| my_keys.get(*k) != Some(h))
        .map(|(k, _)| k)
        .chain(my_keys.keys().filter(|k| !their_keys.contains_key(*k)))
        .take(cluster.config.anti_entropy_keys_per_round)
        .collect();
    let mut repaired = 0;
    for key in stale {
        let Ok(id) = CartId::parse(key, coordinator.store.limits()) else {
            continue;
        };
        if repair_one(coordinator, peer_id, &id).await? {
            repaired += 1;
        }
    }
    Ok(repaired)
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
