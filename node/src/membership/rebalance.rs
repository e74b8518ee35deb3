//! Moving carts into a new layout version without losing any (Garage's layout transitions).
//!
//! While two versions are live, writes reach the owners of both (`Plan::extras`) and reads follow
//! the previous one. Each node, once every involved node reports the new version (so every write
//! coordinated from then on reaches the new owners) and one request timeout has passed (writes
//! routed by the old version have finished), walks the `leaves` index of the carts it holds (keys
//! only: a cart is read only if the new version adds an owner for it) and sends each such whole
//! cart to the owners the new version adds for it. The scan's position is stored after every page, so
//! a node killed mid-transfer resumes where it was. Done, the node reports the version as synced
//! in its heartbeats. When every involved node is synced, the previous version is dropped, and
//! each node hands over once more, then deletes, the carts it no longer owns (only if unchanged
//! since the hand-over). The transfer is throttled (`transfer_carts_per_sec`) and yields between
//! pages, so it never holds the runtime that serves requests and heartbeats.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cart_crdt::{codec, CartId};
use cart_proto::admin_pb::TransferProgress;
use cart_proto::replica_pb::{DigestRequest, ReadRequest, ReplicateRequest};
use serde::{Deserialize, Serialize};

use super::{from_json, json, Membership};
use crate::cluster::Topology;
use crate::error::NodeError;

/// Carts per page of the transfer scan.
pub const PAGE: usize = 128;
const CURSOR_KEY: &[u8] = b"layout.cursor";
const CLEANUP_KEY: &[u8] = b"layout.cleanup";

/// What `cluster show` and `status` report about the transfer on this node.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub from_version: u64,
    pub to_version: u64,
    pub phase: String,
    pub carts_scanned: u64,
    pub carts_sent: u64,
    pub bytes_sent: u64,
    pub carts_dropped: u64,
    /// Carts the delete pass looked at so far.
    pub cleanup_scanned: u64,
    pub waiting_for: Vec<String>,
    pub waiting_reason: String,
    /// When every node was first seen routing by the new version.
    acked_at: Option<tokio::time::Instant>,
}

impl Progress {
    pub fn to_proto(&self) -> Option<TransferProgress> {
        (self.to_version > 0).then(|| TransferProgress {
            from_version: self.from_version,
            to_version: self.to_version,
            phase: self.phase.clone(),
            carts_scanned: self.carts_scanned,
            carts_total: 0,
            carts_sent: self.carts_sent,
            bytes_sent: self.bytes_sent,
            waiting_for: self.waiting_for.clone(),
            waiting_reason: self.waiting_reason.clone(),
            carts_dropped: self.carts_dropped,
            cleanup_scanned: self.cleanup_scanned,
        })
    }
}

/// Where a hand-over scan is (stored after each page).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    version: u64,
    /// `true` for the delete pass after the previous version was dropped.
    cleanup: bool,
    /// A position in the `leaves` index (a cursor of an older version, a cart id, is not:
    /// that scan starts over, sending again is harmless).
    #[serde(default)]
    by_index: bool,
    after: Option<Vec<u8>>,
    sent: u64,
    bytes: u64,
    scanned: u64,
    /// Sends spared because the new owner's leaf digest equals this node's.
    #[serde(default)]
    skipped: u64,
}

fn owns(owners: &[String], me: &str) -> bool {
    owners.iter().any(|o| o == me)
}

/// Per new owner, which leaves of the digests of the carts it and this node both replicate are
/// equal on both sides (the anti-entropy exchange's first step), fetched once per page. `None`
/// (compare nothing) while either side's digests are being built or moved, while this node's
/// follow another layout than the walk's, or when the owner does not answer in time.
#[derive(Default)]
struct LeafViews(std::collections::HashMap<String, Option<Vec<bool>>>);

impl LeafViews {
    async fn same(&mut self, m: &Membership, target: &str, version: u64, leaf: usize) -> bool {
        if !self.0.contains_key(target) {
            let view = equal_leaves(m, target, version).await;
            self.0.insert(target.to_owned(), view);
        }
        self.0
            .get(target)
            .and_then(|v| v.as_ref())
            .is_some_and(|v| v.get(leaf).copied().unwrap_or(false))
    }
}

/// `None` also when this node's digests do not follow `version`, the layout the walk plans by:
/// a leaf holds a cart's hash only where its placement puts this node and `target` together.
async fn equal_leaves(m: &Membership, target: &str, version: u64) -> Option<Vec<bool>> {
    let mine = m.store.digests.shared_at(&m.cluster.self_id, target, Some(version))?;
    let peer = m.cluster.peer(target)?;
    let mut client = peer.client();
    let call = client.digest(m.cluster.request(DigestRequest {
        from_node: m.cluster.self_id.clone(),
    }));
    let theirs = m
        .cluster
        .within(m.cluster.config.peer_timeout, call)
        .await
        .ok()?
        .into_inner()
        .buckets;
    (theirs.len() == mine.len()).then(|| mine.iter().zip(&theirs).map(|(a, b)| a == b).collect())
}

fn progress(m: &Membership) -> std::sync::MutexGuard<'_, Progress> {
    m.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Nodes whose hand-over a transition waits for: members of either version, except those the
/// new version retired (replaced as dead).
fn involved(topology: &Topology) -> Vec<String> {
    let retired = &topology.current.layout.retired;
    topology
        .members()
        .into_keys()
        .filter(|id| !retired.iter().any(|r| r == id))
        .map(str::to_owned)
        .collect()
}

/// Whether a delete pass after a transition is still to run (a commit waits for it).
pub fn cleanup_pending(m: &Membership) -> Result<bool, NodeError> {
    Ok(m.store.meta_get(CLEANUP_KEY)?.is_some())
}

/// Records that the carts of versions before `version` are to be deleted here once every node
/// has left them behind.
pub async fn mark_cleanup(m: &Membership, version: u64) -> Result<(), NodeError> {
    m.store.meta_put(CLEANUP_KEY, &version.to_be_bytes()).await
}

/// One step of the transfer state machine (called every heartbeat interval).
pub async fn step(m: &Membership, stop: &tokio::sync::watch::Receiver<bool>) -> Result<(), NodeError> {
    let topology = m.cluster.topology();
    let Some(previous) = &topology.previous else {
        if let Some(version) = m.store.meta_get(CLEANUP_KEY)? {
            let version = <[u8; 8]>::try_from(version.as_slice()).map_or(0, u64::from_be_bytes);
            // Deleting is safe only once no node reads or writes by the old version any more.
            let behind: Vec<String> = m
                .cluster
                .peers()
                .iter()
                .filter(|p| topology.current.layout.is_member(&p.member.node_id))
                .filter(|p| p.finished_version.load(Ordering::SeqCst) < version)
                .map(|p| p.member.node_id.clone())
                .collect();
            if !behind.is_empty() {
                let mut p = progress(m);
                p.phase = "cleanup".into();
                p.waiting_reason = format!("waiting for these nodes to stop routing by versions before {version}");
                p.waiting_for = behind;
                return Ok(());
            }
            if !hand_over(m, &topology, version, true, stop).await? {
                return Ok(());
            }
            m.store.meta_delete(CLEANUP_KEY).await?;
            let mut p = progress(m);
            p.phase = "done".into();
            p.waiting_for.clear();
            p.waiting_reason.clear();
        }
        return Ok(());
    };
    let to = topology.current.layout.version;
    let me = m.cluster.self_id.clone();
    let nodes = involved(&topology);
    let reported = |id: &str, synced: bool| -> u64 {
        if id == me {
            return match synced {
                true => m.cluster.synced_version.load(Ordering::SeqCst),
                false => to,
            };
        }
        m.cluster.peer(id).map_or(0, |p| match synced {
            true => p.synced_version.load(Ordering::SeqCst),
            false => p.layout_version.load(Ordering::SeqCst),
        })
    };
    {
        let mut p = progress(m);
        if p.to_version != to {
            *p = Progress {
                from_version: previous.layout.version,
                to_version: to,
                ..Progress::default()
            };
        }
    }
    let behind: Vec<String> = nodes.iter().filter(|id| reported(id, false) < to).cloned().collect();
    if !behind.is_empty() {
        let mut p = progress(m);
        p.phase = "waiting".into();
        p.waiting_reason = format!("these nodes have not reported layout version {to} yet (down?)");
        p.waiting_for = behind;
        p.acked_at = None;
        return Ok(());
    }
    if m.cluster.synced_version.load(Ordering::SeqCst) < to {
        // Writes routed by the older version may still be running: give them one timeout.
        let acked_at = *progress(m).acked_at.get_or_insert_with(tokio::time::Instant::now);
        if acked_at.elapsed() < m.cluster.config.request_timeout {
            return Ok(());
        }
        progress(m).phase = "sending".into();
        if !hand_over(m, &topology, to, false, stop).await? {
            return Ok(()); // stopped
        }
        m.set_synced(to).await?;
        tracing::info!(version = to, "this node has handed over its carts to their new owners");
    }
    let waiting: Vec<String> = nodes.iter().filter(|id| reported(id, true) < to).cloned().collect();
    if !waiting.is_empty() {
        let mut p = progress(m);
        p.phase = "sent".into();
        p.waiting_reason = format!("waiting for these nodes to hand over their carts for version {to}");
        p.waiting_for = waiting;
        return Ok(());
    }
    mark_cleanup(m, to).await?;
    m.finish_transition(to).await?;
    progress(m).phase = "cleanup".into();
    Ok(())
}

/// Sends every cart this node holds to the owners `topology` adds for it (`cleanup`: to every
/// owner, then deletes it here, for the carts this node no longer owns). Resumes from the stored
/// cursor; returns `false` if `stop` fired first or the leaf index is still being checked.
async fn hand_over(
    m: &Membership,
    topology: &Topology,
    version: u64,
    cleanup: bool,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<bool, NodeError> {
    // The walk lists carts from the `leaves` index, which the start-up rebuild checks and
    // completes (a data folder of an older version may lack entries): wait until it has.
    if !m.store.digests.state().index_complete {
        let mut p = progress(m);
        p.waiting_reason = "waiting for the digest rebuild to check and complete the leaf index".into();
        p.waiting_for.clear();
        return Ok(false);
    }
    let mut cursor: Cursor = match m.store.meta_get(CURSOR_KEY)? {
        Some(bytes) => from_json(&bytes, "transfer cursor")?,
        None => Cursor::default(),
    };
    if cursor.version != version || cursor.cleanup != cleanup || !cursor.by_index {
        cursor = Cursor {
            version,
            cleanup,
            by_index: true,
            ..Cursor::default()
        };
    }
    let rate = m.cluster.config.transfer_carts_per_sec.max(1) as f64;
    let me = m.cluster.self_id.as_str();
    loop {
        if *stop.borrow() {
            return Ok(false);
        }
        let started = tokio::time::Instant::now();
        // Keys only: the carts that stay where they are are never read.
        let page = m.store.indexed_carts(cursor.after.as_deref(), PAGE)?;
        let Some(last) = page.last().cloned() else { break };
        let mut leaves = LeafViews::default();
        let mut sends = Vec::new();
        for position in &page {
            let Some(key) = position.get(2..) else { continue };
            let Ok(id) = CartId::parse(&String::from_utf8_lossy(key), m.store.limits()) else {
                continue;
            };
            let now_owners = topology.current.owners(key);
            let targets: Vec<String> = match (cleanup, &topology.previous) {
                (true, _) if now_owners.iter().any(|o| o == me) => continue,
                (true, _) => now_owners,
                (false, Some(previous)) => {
                    let before = previous.owners(key);
                    now_owners
                        .into_iter()
                        .filter(|o| !before.contains(o) && o != me)
                        .collect()
                }
                (false, None) => continue,
            };
            // The anti-entropy exchange first: a new owner that replicates the cart with this
            // node and shows the same leaf already holds it (as it is here now).
            let targets: Vec<String> = match cleanup || !owns(&topology.current.owners(key), me) {
                true => targets,
                false => {
                    let mut kept = Vec::with_capacity(targets.len());
                    for target in targets {
                        let leaf = crate::digests::leaf_of(key);
                        match leaves.same(m, &target, topology.current.layout.version, leaf).await {
                            true => cursor.skipped += 1,
                            false => kept.push(target),
                        }
                    }
                    kept
                }
            };
            if targets.is_empty() {
                continue;
            }
            let cart = match m.store.peek(&id) {
                Ok(cart) => cart,
                Err(e) => {
                    tracing::warn!(cart_id = %id, error = %e, "transfer skips an unreadable cart");
                    continue;
                }
            };
            if *cart.context() == cart_crdt::Context::default() {
                continue; // listed by the index, since dropped
            }
            let state = codec::encode(&cart)?;
            sends.push(send_to_all(m, id, cart, state, targets, cleanup));
        }
        let outcomes = futures::future::join_all(sends).await;
        let mut failed = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok((bytes, dropped)) => {
                    // A cart every new owner already had is not counted as sent.
                    cursor.sent += u64::from(bytes > 0);
                    cursor.bytes += bytes;
                    if dropped {
                        progress(m).carts_dropped += 1;
                    }
                }
                Err(e) => failed.push(e),
            }
        }
        if let Some(first) = failed.first() {
            // The page is sent again next step (merging twice is harmless).
            progress(m).waiting_reason = format!("{} carts of a page not handed over: {first}", failed.len());
            return Err(NodeError::Config {
                reason: format!("transfer to a new owner failed: {first}"),
            });
        }
        cursor.scanned += page.len() as u64;
        cursor.after = Some(last);
        m.store.meta_put(CURSOR_KEY, &json(&cursor)?).await?;
        {
            // The hand-over's figures stay as they were once the delete pass runs.
            let mut p = progress(m);
            if cleanup {
                p.cleanup_scanned = cursor.scanned;
            } else {
                p.carts_scanned = cursor.scanned;
                p.carts_sent = cursor.sent;
                p.bytes_sent = cursor.bytes;
            }
            p.waiting_reason.clear();
            p.waiting_for.clear();
        }
        // Throttle: at most `rate` carts per second, and always yield between pages.
        let budget = Duration::from_secs_f64(page.len() as f64 / rate);
        tokio::time::sleep(budget.saturating_sub(started.elapsed()).max(Duration::from_millis(1))).await;
    }
    if !cleanup {
        tracing::info!(
            version,
            scanned = cursor.scanned,
            sent = cursor.sent,
            skipped_by_digest = cursor.skipped,
            "hand-over walked every cart held"
        );
    }
    m.store.meta_delete(CURSOR_KEY).await?;
    Ok(true)
}

/// Sends one whole cart to every target (durable there on success); for `cleanup`, then drops
/// the local replica if unchanged since. Returns the bytes sent and whether it was dropped.
async fn send_to_all(
    m: &Membership,
    id: CartId,
    cart: std::sync::Arc<cart_crdt::Cart>,
    state: Vec<u8>,
    targets: Vec<String>,
    cleanup: bool,
) -> Result<(u64, bool), String> {
    let mut bytes = 0;
    let context = match cleanup {
        false => codec::encode_context(cart.context()).map_err(|e| e.to_string())?,
        true => Vec::new(),
    };
    for target in &targets {
        let peer = m
            .cluster
            .peer(target)
            .ok_or_else(|| format!("no channel to new owner {target}"))?;
        // Every old owner hands over, so the new owner usually has the cart already from the
        // first of them: a digest read (batched) spares the others the send, the merge and the
        // flush. Not for the delete pass, which must know the owner's own replica holds it.
        if !cleanup {
            let known = peer.read(ReadRequest {
                cart_id: id.to_string(),
                known_context: context.clone(),
                catch_up: false,
            });
            let same = m.cluster.within(m.cluster.config.peer_timeout, known).await;
            if same.is_ok_and(|reply| reply.unchanged) {
                continue;
            }
        }
        let call = peer.replicate(ReplicateRequest {
            cart_id: id.to_string(),
            state: state.clone(),
            hint_for: String::new(),
            deps: Vec::new(),
        });
        m.cluster
            .within(m.cluster.config.request_timeout, call)
            .await
            .map_err(|s| format!("{target}: {:?} {}", s.code(), s.message()))?;
        bytes += state.len() as u64;
    }
    // Never delete what this node owns in a live version now (a newer layout may have arrived
    // since the page was planned).
    let owned_now = || {
        let topology = m.cluster.topology();
        let key = id.as_str().as_bytes();
        let me = &m.cluster.self_id;
        topology.current.owners(key).contains(me)
            || topology.previous.as_ref().is_some_and(|p| p.owners(key).contains(me))
    };
    let dropped = match cleanup && !owned_now() {
        true => m
            .store
            .drop_replica(&id, cart.context())
            .await
            .map_err(|e| e.to_string())?,
        false => false,
    };
    Ok((bytes, dropped))
}
