//! Hinted handoff: hints this node holds are offered to their owners once those are up again, with
//! exponential backoff per owner while they fail, and deleted only after the owner has persisted
//! them (a hint that changed meanwhile is kept and sent again).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cart_crdt::CartId;
use cart_proto::replica_pb::ReplicateRequest;
use tokio::time::Instant;

use crate::coordinator::Coordinator;
use crate::store::hint_cart_id;

/// Hints sent to one owner per pass at most.
pub const HINT_BATCH: usize = 256;
/// The longest wait between attempts to a failing owner.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub async fn run(coordinator: Arc<Coordinator>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let interval = coordinator.cluster.config.hint_interval;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff: BTreeMap<String, (Instant, Duration)> = BTreeMap::new();
    loop {
        tokio::select! {
            biased; // fixed branch order: deterministic under simulation
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        for (owner, count) in coordinator.store.hint_counts() {
            if count == 0 || !coordinator.cluster.is_up(&owner) || owner == coordinator.cluster.self_id {
                continue;
            }
            if backoff.get(&owner).is_some_and(|(until, _)| Instant::now() < *until) {
                continue;
            }
            match deliver(&coordinator, &owner).await {
                Ok(delivered) => {
                    backoff.remove(&owner);
                    if delivered > 0 {
                        tracing::info!(owner, delivered, "hints handed off");
                    }
                }
                Err(reason) => {
                    let wait = backoff.get(&owner).map_or(interval, |(_, w)| (*w * 2).min(BACKOFF_MAX));
                    tracing::debug!(owner, ?wait, reason, "hint delivery failed; backing off");
                    backoff.insert(owner, (Instant::now() + wait, wait));
                }
            }
        }
    }
}

/// Sends one batch of `owner`'s hints; returns how many were delivered and deleted.
async fn deliver(coordinator: &Coordinator, owner: &str) -> Result<usize, String> {
    let cluster = &coordinator.cluster;
    let peer = cluster.peer(owner).ok_or_else(|| format!("unknown owner {owner}"))?;
    let batch = coordinator
        .store
        .hints_for(owner, None, HINT_BATCH)
        .map_err(|e| e.to_string())?;
    let mut delivered = 0;
    for (key, state) in batch {
        let Some(id) = hint_cart_id(&key).and_then(|raw| CartId::parse(raw, coordinator.store.limits()).ok()) else {
            continue;
        };
        let request = cluster.request(ReplicateRequest {
            cart_id: id.to_string(),
            state: state.clone(),
            hint_for: String::new(),
            deps: Vec::new(),
        });
        match peer.client().replicate(request).await {
            Ok(_) => {
                cluster.record(owner, Ok(()));
                if coordinator
                    .store
                    .remove_hint(owner, &id, &state)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    delivered += 1;
                }
            }
            Err(status) => {
                cluster.record(owner, Err(&status));
                return Err(format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }
    Ok(delivered)
}
