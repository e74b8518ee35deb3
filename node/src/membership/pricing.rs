//! The pricing rules as a cluster-wide document, by the same mechanism as the layout: set
//! through [`Membership::propose`] (Paxos at a majority of the current members, so two
//! concurrent sets never give two documents one version), stored in the `meta` tree, its version
//! on every heartbeat, fetched (`GetPricing`, [`Membership::fetch`]) by a node that sees a newer one. Pricing itself is
//! the pure function `cart_crdt::pricing::price`; this module only keeps the document.

use std::sync::Arc;

use cart_crdt::pricing::PricingRules;
use cart_proto::replica_pb::PricingDoc;

use super::{from_json, json, DocKind, Membership};
use crate::error::NodeError;
use crate::store::CartStore;

const CURRENT_KEY: &[u8] = b"pricing.current";
/// How long a set waits for the members to report the new version.
pub const SPREAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
pub(super) const PAXOS_KEY: &[u8] = b"pricing.paxos";

/// The stored pricing rules, if the cluster set any.
pub fn load(store: &CartStore) -> Result<Option<PricingRules>, NodeError> {
    store
        .meta_get(CURRENT_KEY)?
        .map(|bytes| from_json(&bytes, "stored pricing rules"))
        .transpose()
}

/// The rules as `GetPricing` sends them (empty bytes: none).
pub fn doc(rules: &PricingRules) -> Result<PricingDoc, NodeError> {
    Ok(PricingDoc {
        rules: if rules.version == 0 { Vec::new() } else { json(rules)? },
    })
}

impl Membership {
    /// Sets `text` (TOML) as the next version of the pricing rules. A bad document is refused
    /// whole (`INVALID_ARGUMENT` naming the key); `ABORTED` when another set took the version.
    pub async fn set_pricing(&self, text: &str) -> Result<Arc<PricingRules>, NodeError> {
        let mut rules = PricingRules::parse(text)?;
        rules.version = self.cluster.pricing().version + 1;
        let version = rules.version;
        let Some(chosen) = self.propose(DocKind::Pricing, version, json(&rules)?).await? else {
            return Err(NodeError::PricingConflict {
                reason: format!("version {version} was set by another node first: show it and set again"),
            });
        };
        let chosen: PricingRules = from_json(&chosen, "chosen pricing rules")?;
        self.learn_pricing(chosen.clone()).await?;
        if chosen != rules {
            return Err(NodeError::PricingConflict {
                reason: format!("another document (proposed earlier) became version {version} instead of yours"),
            });
        }
        tracing::info!(version, "set new pricing rules");
        self.await_spread(version).await;
        Ok(self.cluster.pricing())
    }

    /// Waits (at most [`SPREAD_WAIT`]) until every member this node sees up reports pricing
    /// `version` on its heartbeat, so that a storefront told "set" finds the rules on every
    /// healthy node. A member that is down learns them when it is back.
    async fn await_spread(&self, version: u64) {
        let deadline = tokio::time::Instant::now() + SPREAD_WAIT;
        loop {
            let behind: Vec<String> = self
                .cluster
                .peers()
                .into_iter()
                .filter(|p| p.is_up() && p.pricing_version.load(std::sync::atomic::Ordering::SeqCst) < version)
                .map(|p| p.member.node_id.clone())
                .collect();
            if behind.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    version,
                    ?behind,
                    "pricing rules not reported by every member yet; they learn them by heartbeat"
                );
                return;
            }
            tokio::time::sleep(self.cluster.config.heartbeat_interval / 4).await;
        }
    }

    /// Installs `rules` if newer than this node's: durable first, then used for replies.
    pub async fn learn_pricing(&self, rules: PricingRules) -> Result<bool, NodeError> {
        rules.check()?;
        let _guard = self.lock.lock().await;
        if rules.version <= self.cluster.pricing().version {
            return Ok(false);
        }
        self.store.meta_put(CURRENT_KEY, &json(&rules)?).await?;
        let version = rules.version;
        self.cluster.set_pricing(Arc::new(rules));
        tracing::info!(version, "installed pricing rules");
        Ok(true)
    }
}
