//! Hinted handoff: hints this node holds are offered to their owners once those are up again, with
//! exponential backoff per owner while they fail, and deleted only after the owner has persisted
//! them (a hint that changed meanwhile is kept and sent again). Hints for a node that is no longer
//! in any live layout version (it left, or was replaced) go to the cart's owners in the newest one.

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
        let members: Vec<String> = coordinator
            .cluster
            .topology()
            .members()
            .into_keys()
            .map(str::to_owned)
            .collect();
        for (owner, count) in coordinator.store.hint_counts() {
            let departed = !members.contains(&owner);
            if count == 0 || (!departed && !coordinator.cluster.is_up(&owner)) || owner == coordinator.cluster.self_id {
                continue;
            }
            if backoff.get(&owner).is_some_and(|(until, _)| Instant::now() < *until) {
                continue;
            }
            match deliver(&coordinator, &owner).await {
                Ok(delivered) => {
                    backoff.remove(&owner);
                    coordinator.store.metrics.handoffs.inc_by(delivered as u64);
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

/// Sends one batch of `owner`'s hints (to the cart's current owners if `owner` departed);
/// returns how many were delivered and deleted.
async fn deliver(coordinator: &Coordinator, owner: &str) -> Result<usize, String> {
    let cluster = &coordinator.cluster;
    let Some(peer) = cluster.peer(owner) else {
        return deliver_to_new_owners(coordinator, owner).await;
    };
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

/// The hints of a node that left: each goes to every owner of its cart in the newest layout
/// version (merged here when this node is one), then is deleted.
async fn deliver_to_new_owners(coordinator: &Coordinator, departed: &str) -> Result<usize, String> {
    let cluster = &coordinator.cluster;
    let batch = coordinator
        .store
        .hints_for(departed, None, HINT_BATCH)
        .map_err(|e| e.to_string())?;
    let topology = cluster.topology();
    let mut delivered = 0;
    for (key, state) in batch {
        let Some(id) = hint_cart_id(&key).and_then(|raw| CartId::parse(raw, coordinator.store.limits()).ok()) else {
            continue;
        };
        for owner in topology.current.owners(id.as_str().as_bytes()) {
            if owner == cluster.self_id {
                let cart = cart_crdt::codec::decode(&state).map_err(|e| e.to_string())?;
                coordinator.store.merge(&id, cart).await.map_err(|e| e.to_string())?;
                continue;
            }
            let peer = cluster.peer(&owner).ok_or_else(|| format!("no channel to {owner}"))?;
            let request = cluster.request(ReplicateRequest {
                cart_id: id.to_string(),
                state: state.clone(),
                hint_for: String::new(),
                deps: Vec::new(),
            });
            let outcome = peer.client().replicate(request).await;
            cluster.record(&owner, outcome.as_ref().map(|_| ()));
            outcome.map_err(|status| format!("{owner}: {:?}: {}", status.code(), status.message()))?;
        }
        if coordinator
            .store
            .remove_hint(departed, &id, &state)
            .await
            .map_err(|e| e.to_string())?
        {
            delivered += 1;
        }
    }
    Ok(delivered)
}
