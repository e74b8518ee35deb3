//! `cart-ring`: where carts live. A consistent-hash ring built from a membership, giving each key
//! its preference list (the first N distinct nodes) and, beyond it, the fallbacks a sloppy quorum
//! uses while an owner is down.
//!
//! Contract:
//! - Every node, client and version computes the same ring from the same membership: keys and node
//!   ids are hashed as their raw bytes through small wrapper types (the underlying crate's
//!   positions depend on the Rust type hashed), and `tests/golden.rs` pins preference lists.
//! - A member of weight `w` gets `w × VNODES_PER_WEIGHT` virtual nodes.
//! - Zone-aware placement (Cassandra's NetworkTopologyStrategy walk): a key's N owners are the
//!   first N nodes on its walk, skipping nodes of a zone already taken while untaken zones remain;
//!   the skipped nodes come first among the fallbacks. With one zone (the default, `""`) this is the
//!   plain ring walk.
//! - [`layout`]: the versioned cluster layout (members, zones, weights, N/R/W), the operator's
//!   staged changes and their validation, and the pure arithmetic of a plan (what moves where).
//!
//! Pure and synchronous: no IO, no async, no notion of which nodes are up.

pub mod layout;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Virtual nodes per unit of weight (DESIGN §5: 128–256).
pub const VNODES_PER_WEIGHT: usize = 128;
/// The largest weight a member may have.
pub const MAX_WEIGHT: u32 = 16;

/// One node of the cluster as the ring sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    pub node_id: String,
    /// `HOST:PORT` of the node's gRPC server.
    pub addr: String,
    pub weight: u32,
    /// Failure domain (rack, availability zone); `""` when the operator names none.
    #[serde(default)]
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RingError {
    #[error("the membership is empty")]
    Empty,
    #[error("node_id {node_id:?} appears more than once")]
    DuplicateNode { node_id: String },
    #[error("node {node_id:?} has weight {weight}; it must be between 1 and {MAX_WEIGHT}")]
    BadWeight { node_id: String, weight: u32 },
}

/// A node id hashed as its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeKey(String);

impl Hash for NodeKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

/// A key hashed as its raw bytes.
struct KeyBytes<'a>(&'a [u8]);

impl Hash for KeyBytes<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// The ring's hash: XXH3-64 with seed 0, a fixed, specified algorithm (so every build and version
/// agrees) that spreads short sequential ids evenly (the crate's default FNV put 46% of
/// `guest:0..1000` on one of five nodes).
type RingHasher = xxhash_rust::xxh3::Xxh3Builder;

/// The ring of a membership.
pub struct Ring {
    inner: consistent_hash_ring::Ring<NodeKey, RingHasher>,
    /// Sorted by node id.
    members: Vec<Member>,
    /// Distinct zones among the members.
    zones: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl Ring {
    pub fn new(members: impl IntoIterator<Item = Member>) -> Result<Ring, RingError> {
        let mut members: Vec<Member> = members.into_iter().collect();
        members.sort();
        if members.is_empty() {
            return Err(RingError::Empty);
        }
        let mut seen = BTreeSet::new();
        for m in &members {
            if !seen.insert(m.node_id.as_str()) {
                return Err(RingError::DuplicateNode {
                    node_id: m.node_id.clone(),
                });
            }
            if m.weight == 0 || m.weight > MAX_WEIGHT {
                return Err(RingError::BadWeight {
                    node_id: m.node_id.clone(),
                    weight: m.weight,
                });
            }
        }
        let weighted: Vec<(NodeKey, usize)> = members
            .iter()
            .map(|m| (NodeKey(m.node_id.clone()), m.weight as usize * VNODES_PER_WEIGHT))
            .collect();
        let inner = consistent_hash_ring::RingBuilder::new(RingHasher::new())
            .weighted_nodes_iter(weighted.into_iter())
            .build();
        let zones = members.iter().map(|m| m.zone.as_str()).collect::<BTreeSet<_>>().len();
        Ok(Ring { inner, members, zones })
    }

    /// Members sorted by node id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.node_id.as_str().cmp(node_id))
            .ok()
            .map(|i| &self.members[i])
    }

    /// Every node, distinct, in the ring's own order for `key` (no zones).
    fn raw_walk<'a>(&'a self, key: &[u8]) -> impl Iterator<Item = &'a Member> + 'a {
        self.inner
            .replicas(KeyBytes(key))
            .filter_map(move |node| self.member(&node.0))
    }

    /// Every node, distinct, in the order placement offers them for `key` with `n` replicas: the
    /// first `n` are the preference list (one per zone while untaken zones remain), the rest are
    /// sloppy-quorum fallbacks in order (the nodes skipped for their zone first).
    pub fn walk<'a>(&'a self, key: &[u8], n: usize) -> impl Iterator<Item = &'a Member> + 'a {
        let mut raw = self.raw_walk(key);
        let mut owners: Vec<&Member> = Vec::with_capacity(n);
        let mut skipped: Vec<&Member> = Vec::new();
        if self.zones == 1 {
            owners.extend(raw.by_ref().take(n));
        } else {
            let mut zones_taken: Vec<&str> = Vec::with_capacity(n);
            while owners.len() < n {
                let Some(m) = raw.next() else { break };
                let zone_free = !zones_taken.contains(&m.zone.as_str());
                if zone_free || zones_taken.len() >= self.zones {
                    if zone_free {
                        zones_taken.push(&m.zone);
                    }
                    owners.push(m);
                } else {
                    skipped.push(m);
                }
            }
            // Fewer nodes than n in untaken zones: fill from the skipped ones, in ring order.
            while owners.len() < n && !skipped.is_empty() {
                owners.push(skipped.remove(0));
            }
        }
        owners.into_iter().chain(skipped).chain(raw)
    }

    /// The first `n` distinct nodes for `key` (fewer if the cluster is smaller), on `n` different
    /// zones where the ring has that many.
    pub fn preference_list<'a>(&'a self, key: &[u8], n: usize) -> Vec<&'a Member> {
        self.walk(key, n).take(n).collect()
    }

    /// How many distinct zones the members are in.
    pub fn zone_count(&self) -> usize {
        self.zones
    }

    /// Fraction of the hash space each node is the first owner of (sums to 1).
    pub fn shares(&self) -> BTreeMap<&str, f64> {
        let mut shares: BTreeMap<&str, f64> = self.members.iter().map(|m| (m.node_id.as_str(), 0.0)).collect();
        for range in self.inner.resident_ranges() {
            let len = (*range.keys().end() - *range.keys().start()) as f64 + 1.0;
            if let Some(s) = shares.get_mut(range.node().0.as_str()) {
                *s += len / 2f64.powi(64);
            }
        }
        shares
    }
}

/// A stable fingerprint of a membership (FNV-1a over the sorted members), so clients can tell
/// when it changed.
pub fn membership_version(members: &[Member]) -> u64 {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for m in sorted {
        for part in [
            m.node_id.as_bytes(),
            b"\0",
            m.addr.as_bytes(),
            b"\0",
            &m.weight.to_be_bytes(),
            b"\0",
            m.zone.as_bytes(),
            b"\n",
        ] {
            for b in part {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}
