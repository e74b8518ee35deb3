//! Membership: the cluster layout as a durable, versioned, cluster-wide document — and the one
//! mechanism every such document uses (the pricing rules are the other, [`pricing`]).
//!
//! - **Stored** in the node's `meta` tree: the current layout, the previous one while carts move
//!   out of it, this node's synced version, the changes an operator staged on this node, and the
//!   Paxos acceptor state of the version being decided.
//! - **Spread** by heartbeats: every ping (both ways) carries the sender's layout version; a node
//!   that sees a newer one fetches the live versions from that peer (`GetLayout`) and installs them.
//! - **Committed** through [`paxos`] at a majority of the current members: two concurrent commits
//!   never give two layouts of one version.
//! - **Moved into** by [`rebalance`]: once every node routes writes by the new version, each
//!   node hands the carts it holds to their new owners; when every node has, the previous
//!   version is dropped and carts a node no longer owns are deleted there.

pub mod paxos;
pub mod pricing;
pub mod rebalance;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cart_proto::replica_pb::{
    GetLayoutRequest, GetPricingRequest, LayoutAcceptRequest, LayoutDoc, LayoutPrepareRequest,
};
use cart_ring::layout::{Change, Layout};
use tokio::sync::Mutex;

use crate::cluster::{Cluster, Connect};
use crate::error::NodeError;
use crate::store::CartStore;
use paxos::{Acceptor, Ballot, Prepared};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A cluster-wide document agreed through [`paxos`]: one Paxos instance per version, among the
/// current layout's members; stored in the `meta` tree; its version on every heartbeat; fetched
/// by a node that sees a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    Layout,
    Pricing,
}

impl DocKind {
    /// The `kind` of the Paxos messages.
    pub fn wire(self) -> &'static str {
        match self {
            DocKind::Layout => "",
            DocKind::Pricing => "pricing",
        }
    }

    pub fn from_wire(kind: &str) -> Result<Self, NodeError> {
        match kind {
            "" => Ok(DocKind::Layout),
            "pricing" => Ok(DocKind::Pricing),
            other => Err(NodeError::BadPeerMessage {
                reason: format!("unknown document kind {other:?}"),
            }),
        }
    }

    /// Whether `doc` is the JSON of a document of this kind.
    fn decodes(self, doc: &[u8]) -> bool {
        match self {
            DocKind::Layout => serde_json::from_slice::<Layout>(doc).is_ok(),
            DocKind::Pricing => serde_json::from_slice::<cart_crdt::pricing::PricingRules>(doc).is_ok(),
        }
    }

    fn paxos_key(self) -> &'static [u8] {
        match self {
            DocKind::Layout => PAXOS_KEY,
            DocKind::Pricing => pricing::PAXOS_KEY,
        }
    }
}

const CURRENT_KEY: &[u8] = b"layout.current";
const PREVIOUS_KEY: &[u8] = b"layout.previous";
const SYNCED_KEY: &[u8] = b"layout.synced";
const STAGED_KEY: &[u8] = b"layout.staged";
const PAXOS_KEY: &[u8] = b"layout.paxos";

/// The live layout versions as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub current: Layout,
    pub previous: Option<Layout>,
    pub synced: u64,
}

pub(crate) fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, NodeError> {
    serde_json::to_vec(value).map_err(|e| NodeError::Config {
        reason: format!("encode membership state: {e}"),
    })
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, NodeError> {
    serde_json::from_slice(bytes).map_err(|e| NodeError::BadPeerMessage {
        reason: format!("{what}: {e}"),
    })
}

/// The stored layout versions, if this node has any yet.
pub fn load(store: &CartStore) -> Result<Option<Stored>, NodeError> {
    let Some(current) = store.meta_get(CURRENT_KEY)? else {
        return Ok(None);
    };
    let current: Layout = from_json(&current, "stored layout")?;
    let previous = match store.meta_get(PREVIOUS_KEY)? {
        Some(bytes) => Some(from_json(&bytes, "stored previous layout")?),
        None => None,
    };
    let synced = store
        .meta_get(SYNCED_KEY)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_be_bytes);
    Ok(Some(Stored {
        current,
        previous,
        synced,
    }))
}

/// The live layout versions stored in `storage`, current and previous (for tools that read a
/// node's storage directly, as the simulation's checker does).
pub fn stored_layouts(storage: &dyn crate::storage::Storage) -> Result<Option<(Layout, Option<Layout>)>, NodeError> {
    let Some(current) = storage.get(crate::storage::Tree::Meta, CURRENT_KEY)? else {
        return Ok(None);
    };
    let previous = match storage.get(crate::storage::Tree::Meta, PREVIOUS_KEY)? {
        Some(bytes) => Some(from_json(&bytes, "stored previous layout")?),
        None => None,
    };
    Ok(Some((from_json(&current, "stored layout")?, previous)))
}

/// Stores the live versions (previous first deleted or written, then current: a crash between
/// the two leaves the older pair, which the next heartbeat corrects).
pub async fn save(store: &CartStore, current: &Layout, previous: Option<&Layout>) -> Result<(), NodeError> {
    match previous {
        Some(p) => store.meta_put(PREVIOUS_KEY, &json(p)?).await?,
        None => store.meta_delete(PREVIOUS_KEY).await?,
    }
    store.meta_put(CURRENT_KEY, &json(current)?).await
}

/// The live versions as a `LayoutDoc` (the `GetLayout` reply).
pub fn doc(cluster: &Cluster) -> Result<LayoutDoc, NodeError> {
    let topology = cluster.topology();
    Ok(LayoutDoc {
        current: json(&topology.current.layout)?,
        previous: match &topology.previous {
            Some(p) => json(&p.layout)?,
            None => Vec::new(),
        },
    })
}

/// Decodes a `LayoutDoc`.
pub fn parse_doc(doc: &LayoutDoc) -> Result<(Layout, Option<Layout>), NodeError> {
    let current: Layout = from_json(&doc.current, "layout")?;
    current.validate().map_err(|e| NodeError::BadPeerMessage {
        reason: format!("layout version {}: {e}", current.version),
    })?;
    let previous = match doc.previous.is_empty() {
        true => None,
        false => Some(from_json(&doc.previous, "previous layout")?),
    };
    Ok((current, previous))
}

/// Asks `seed` for the cluster's layout (a node started with `--join`), trying for up to
/// `attempts` × 500 ms.
pub async fn fetch_from_seed(
    seed: &str,
    secret: &str,
    tls: Option<&crate::security::TlsSettings>,
    connect: &Connect,
    attempts: u32,
) -> Result<(Layout, Option<Layout>), NodeError> {
    let endpoint = crate::security::peer_endpoint(seed, tls).map_err(|e| NodeError::Config {
        reason: format!("--join {e}"),
    })?;
    let secret: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        secret.parse().map_err(|_| NodeError::Config {
            reason: "[cluster] secret must be printable ASCII".into(),
        })?;
    let channel = connect(endpoint.connect_timeout(std::time::Duration::from_secs(2)));
    let mut client = cart_proto::replica_pb::replica_service_client::ReplicaServiceClient::with_interceptor(
        channel,
        crate::cluster::SecretInterceptor::new(secret),
    );
    let mut last = String::new();
    for _ in 0..attempts.max(1) {
        match client.get_layout(GetLayoutRequest {}).await {
            Ok(reply) => return parse_doc(&reply.into_inner()),
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                return Err(NodeError::Config {
                    reason: format!("--join {seed}: the seed refused us: {}", status.message()),
                })
            }
            Err(status) => last = format!("{:?}: {}", status.code(), status.message()),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Err(NodeError::Config {
        reason: format!("--join {seed}: no layout from the seed ({last})"),
    })
}

/// What the admin API and the background task share.
pub struct Membership {
    pub store: Arc<CartStore>,
    pub cluster: Arc<Cluster>,
    /// Serialises installs, commits and acceptor steps on this node.
    lock: Mutex<()>,
    pub progress: std::sync::Mutex<rebalance::Progress>,
}

impl Membership {
    pub fn new(store: Arc<CartStore>, cluster: Arc<Cluster>) -> Self {
        Membership {
            store,
            cluster,
            lock: Mutex::new(()),
            progress: std::sync::Mutex::new(rebalance::Progress::default()),
        }
    }

    /// Installs newer live versions learned from a peer (older or equal ones are ignored).
    pub async fn learn(&self, current: Layout, previous: Option<Layout>) -> Result<bool, NodeError> {
        let _guard = self.lock.lock().await;
        let mine = self.cluster.topology().current.layout.version;
        if current.version <= mine {
            return Ok(false);
        }
        tracing::info!(
            from = mine,
            to = current.version,
            members = current.members.len(),
            moving = previous.is_some(),
            "installing a newer cluster layout"
        );
        // A jump past the end of our own transition: its delete pass is still owed.
        let topology = self.cluster.topology();
        if topology.previous.is_some() && previous.as_ref().is_none_or(|p| p.version >= mine) {
            rebalance::mark_cleanup(self, mine).await?;
        }
        // Dial first, store second: a layout this node cannot install is never stored.
        self.cluster.install(current.clone(), previous.clone())?;
        save(&self.store, &current, previous.as_ref()).await?;
        // Replica sets follow the new version: the digests of the carts whose set changed move
        // (in the background).
        follow_layout(
            self.store.clone(),
            current,
            self.cluster.config.digest_rebuild_carts_per_sec,
        );
        Ok(true)
    }

    /// Drops the previous version once every node handed its carts over (rebalance decides).
    pub async fn finish_transition(&self, version: u64) -> Result<(), NodeError> {
        let _guard = self.lock.lock().await;
        let topology = self.cluster.topology();
        if topology.current.layout.version != version || topology.previous.is_none() {
            return Ok(());
        }
        let current = topology.current.layout.clone();
        save(&self.store, &current, None).await?;
        self.cluster.install(current, None)?;
        tracing::info!(
            version,
            "every node has handed over its carts: the previous layout is dropped"
        );
        Ok(())
    }

    /// Records that this node handed over every cart it holds for `version`.
    pub async fn set_synced(&self, version: u64) -> Result<(), NodeError> {
        self.store.meta_put(SYNCED_KEY, &version.to_be_bytes()).await?;
        self.cluster.synced_version.fetch_max(version, Ordering::SeqCst);
        Ok(())
    }

    pub fn staged(&self) -> Result<Vec<Change>, NodeError> {
        match self.store.meta_get(STAGED_KEY)? {
            Some(bytes) => from_json(&bytes, "staged changes"),
            None => Ok(Vec::new()),
        }
    }

    /// Stages one more change (validated with the ones already staged against the current
    /// layout); returns every staged change.
    pub async fn stage(&self, change: Change) -> Result<Vec<Change>, NodeError> {
        let _guard = self.lock.lock().await;
        let current = self.cluster.topology().current.layout.clone();
        let all = current.stage(&self.staged()?, change).map_err(refused)?;
        self.store.meta_put(STAGED_KEY, &json(&all)?).await?;
        Ok(all)
    }

    pub async fn discard(&self) -> Result<(), NodeError> {
        let _guard = self.lock.lock().await;
        self.store.meta_delete(STAGED_KEY).await
    }

    /// The promised round of the acceptor state of `kind` (whatever the document).
    fn promised_round(&self, kind: DocKind) -> Result<u64, NodeError> {
        match self.store.meta_get(kind.paxos_key())? {
            Some(bytes) => Ok(from_json::<Acceptor<serde_json::Value>>(&bytes, "acceptor state")?
                .promised
                .round),
            None => Ok(0),
        }
    }

    fn acceptor<D: Serialize + DeserializeOwned>(&self, kind: DocKind) -> Result<Acceptor<D>, NodeError> {
        match self.store.meta_get(kind.paxos_key())? {
            Some(bytes) => from_json(&bytes, "acceptor state"),
            None => Ok(Acceptor::default()),
        }
    }

    /// The newest installed version of `kind` here.
    fn installed(&self, kind: DocKind) -> u64 {
        match kind {
            DocKind::Layout => self.cluster.topology().current.layout.version,
            DocKind::Pricing => self.cluster.pricing().version,
        }
    }

    /// Phase 1 as an acceptor of `kind` (durable before it answers); what it accepted before,
    /// as the document's JSON.
    pub async fn on_prepare(
        &self,
        kind: DocKind,
        version: u64,
        ballot: &Ballot,
    ) -> Result<(Prepared<Vec<u8>>, u64), NodeError> {
        let _guard = self.lock.lock().await;
        let installed = self.installed(kind);
        let answer = match kind {
            DocKind::Layout => self.prepare_as::<Layout>(kind, version, ballot, installed).await?,
            DocKind::Pricing => {
                self.prepare_as::<cart_crdt::pricing::PricingRules>(kind, version, ballot, installed)
                    .await?
            }
        };
        Ok((answer, installed))
    }

    async fn prepare_as<D: Clone + Serialize + DeserializeOwned>(
        &self,
        kind: DocKind,
        version: u64,
        ballot: &Ballot,
        installed: u64,
    ) -> Result<Prepared<Vec<u8>>, NodeError> {
        let mut acceptor = self.acceptor::<D>(kind)?;
        let answer = acceptor.prepare(version, ballot, installed);
        self.store.meta_put(kind.paxos_key(), &json(&acceptor)?).await?;
        Ok(match answer {
            Prepared::Promise(Some((ballot, doc))) => Prepared::Promise(Some((ballot, json(&doc)?))),
            Prepared::Promise(None) => Prepared::Promise(None),
            Prepared::Refused { promised } => Prepared::Refused { promised },
            Prepared::Decided => Prepared::Decided,
        })
    }

    /// Phase 2 as an acceptor of `kind` (durable before it answers); `doc` is the JSON of the
    /// proposed document, checked before it is accepted.
    pub async fn on_accept(
        &self,
        kind: DocKind,
        version: u64,
        ballot: &Ballot,
        doc: &[u8],
    ) -> Result<(bool, u64), NodeError> {
        let _guard = self.lock.lock().await;
        let installed = self.installed(kind);
        let ok = match kind {
            DocKind::Layout => {
                let layout: Layout = from_json(doc, "proposed layout")?;
                self.accept_as(kind, version, ballot, &layout, installed).await?
            }
            DocKind::Pricing => {
                let rules: cart_crdt::pricing::PricingRules = from_json(doc, "proposed pricing rules")?;
                rules.check()?;
                if rules.version != version {
                    return Err(NodeError::BadPeerMessage {
                        reason: format!(
                            "pricing rules of version {} proposed as version {version}",
                            rules.version
                        ),
                    });
                }
                self.accept_as(kind, version, ballot, &rules, installed).await?
            }
        };
        Ok((ok, installed))
    }

    async fn accept_as<D: Clone + Serialize + DeserializeOwned>(
        &self,
        kind: DocKind,
        version: u64,
        ballot: &Ballot,
        doc: &D,
        installed: u64,
    ) -> Result<bool, NodeError> {
        let mut acceptor = self.acceptor::<D>(kind)?;
        let ok = acceptor.accept(version, ballot, doc, installed);
        if ok {
            self.store.meta_put(kind.paxos_key(), &json(&acceptor)?).await?;
        }
        Ok(ok)
    }

    /// Runs Paxos for `version` of `kind` among the current layout's members, proposing `own`
    /// (JSON) unless an acceptor already accepted another document: the chosen document's JSON,
    /// or `None` when some acceptor had installed `version` already (the proposer is behind).
    pub async fn propose(&self, kind: DocKind, version: u64, own: Vec<u8>) -> Result<Option<Vec<u8>>, NodeError> {
        let current = self.cluster.topology().current.layout.clone();
        let acceptors: Vec<String> = current.members.iter().map(|m| m.node_id.clone()).collect();
        let majority = acceptors.len() / 2 + 1;
        let mut round = self.promised_round(kind)? + 1;
        // Proposers that collide back off by a delay of their own (from their id: deterministic
        // under simulation, different per node), so one of them gets through.
        let stagger = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.cluster.self_id.hash(&mut h);
            std::time::Duration::from_millis(10 + h.finish() % 40)
        };
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(stagger * attempt).await;
            }
            let ballot = Ballot {
                round,
                proposer: self.cluster.self_id.clone(),
            };
            let (promises, highest, decided) = self.prepare_all(kind, &acceptors, version, &ballot).await;
            if decided {
                return Ok(None);
            }
            if promises.len() < majority {
                round = round.max(highest) + 1;
                continue;
            }
            let proposal = paxos::choose(&own, &promises);
            let accepted = self.accept_all(kind, &acceptors, version, &ballot, &proposal).await;
            if accepted < majority {
                round = round.max(highest) + 1;
                continue;
            }
            return Ok(Some(proposal));
        }
        Err(NodeError::NoMajority {
            reason: format!(
                "no majority ({majority} of {}) of the current members agreed to version {version}; are they up?",
                acceptors.len(),
            ),
        })
    }

    /// Commits the staged changes as the next version. Refused while carts still move into the
    /// current version, or when nothing is staged; `ABORTED` when another commit took the version
    /// (the staged changes stay, to re-plan against the new layout).
    ///
    /// While carts move, only replacements are accepted (a node that died mid-transfer would
    /// otherwise block it for good): the next version then moves carts straight from the old
    /// read version, which still holds every acknowledged write.
    pub async fn commit(&self) -> Result<Layout, NodeError> {
        let topology = self.cluster.topology();
        let staged = self.staged()?;
        let replaces_only = !staged.is_empty() && staged.iter().all(|c| matches!(c, Change::Replace { .. }));
        if let Some(previous) = &topology.previous {
            if !replaces_only {
                return Err(refused(format!(
                    "carts are still moving from version {} to {}; commit once `cartctl cluster show` says the transfer is done (a dead node that blocks it can be replaced: `cartctl cluster replace`)",
                    previous.layout.version, topology.current.layout.version
                )));
            }
        } else if !replaces_only && rebalance::cleanup_pending(self)? {
            return Err(refused(
                "this node is still deleting carts it handed over in the last change; commit once `cartctl cluster show` says done (a dead node that blocks it can be replaced: `cartctl cluster replace`)",
            ));
        }
        let current = topology.current.layout.clone();
        let next = current.apply(&staged).map_err(refused)?;
        let Some(chosen) = self.propose(DocKind::Layout, next.version, json(&next)?).await? else {
            return Err(NodeError::LayoutConflict {
                reason: format!(
                    "version {} was already committed by another commit; your staged changes are kept: re-plan",
                    next.version
                ),
            });
        };
        let proposal: Layout = from_json(&chosen, "chosen layout")?;
        // Chosen: install here; the others learn it from heartbeats.
        // The version carts move out of: the read version, which holds everything.
        let previous = Some(topology.read().layout.clone());
        self.learn(proposal.clone(), previous).await?;
        if proposal != next {
            return Err(NodeError::LayoutConflict {
                reason: format!(
                    "another commit of version {} (proposed earlier) was completed instead of yours; your staged changes are kept: re-plan",
                    next.version
                ),
            });
        }
        self.discard().await?;
        tracing::info!(version = proposal.version, "committed a new cluster layout");
        Ok(proposal)
    }

    /// Phase 1 at every acceptor: the prior acceptances (JSON) of those that promised, the
    /// highest promised round seen, and whether some acceptor already installed the version.
    async fn prepare_all(
        &self,
        kind: DocKind,
        acceptors: &[String],
        version: u64,
        ballot: &Ballot,
    ) -> (Vec<Option<(Ballot, Vec<u8>)>>, u64, bool) {
        let calls = acceptors.iter().map(|node| async move {
            if *node == self.cluster.self_id {
                return self.on_prepare(kind, version, ballot).await.ok().map(|(p, _)| p);
            }
            let peer = self.cluster.peer(node)?;
            let request = self.cluster.request(LayoutPrepareRequest {
                version,
                round: ballot.round,
                proposer: ballot.proposer.clone(),
                kind: kind.wire().into(),
            });
            let reply = self
                .cluster
                .within(self.cluster.config.peer_timeout, peer.client().layout_prepare(request))
                .await
                .ok()?
                .into_inner();
            // An acceptor that refuses without a promised round has moved past this version.
            if reply.current_version >= version || (!reply.promised && reply.promised_round == 0) {
                return Some(Prepared::Decided);
            }
            if !reply.promised {
                return Some(Prepared::Refused {
                    promised: Ballot {
                        round: reply.promised_round,
                        proposer: String::new(),
                    },
                });
            }
            // A prior acceptance that is no valid document is dropped with its answer.
            if !reply.accepted_layout.is_empty() && !kind.decodes(&reply.accepted_layout) {
                return None;
            }
            let prior = (!reply.accepted_layout.is_empty()).then_some((
                Ballot {
                    round: reply.accepted_round,
                    proposer: reply.accepted_proposer,
                },
                reply.accepted_layout,
            ));
            Some(Prepared::Promise(prior))
        });
        let mut promises = Vec::new();
        let (mut highest, mut decided) = (0, false);
        for answer in futures::future::join_all(calls).await.into_iter().flatten() {
            match answer {
                Prepared::Promise(prior) => promises.push(prior),
                Prepared::Refused { promised } => highest = highest.max(promised.round),
                Prepared::Decided => decided = true,
            }
        }
        (promises, highest, decided)
    }

    /// Phase 2 at every acceptor: how many accepted `doc` (JSON).
    async fn accept_all(
        &self,
        kind: DocKind,
        acceptors: &[String],
        version: u64,
        ballot: &Ballot,
        doc: &[u8],
    ) -> usize {
        let calls = acceptors.iter().map(|node| async move {
            if *node == self.cluster.self_id {
                return self.on_accept(kind, version, ballot, doc).await.is_ok_and(|(ok, _)| ok);
            }
            let Some(peer) = self.cluster.peer(node) else {
                return false;
            };
            let request = self.cluster.request(LayoutAcceptRequest {
                version,
                round: ballot.round,
                proposer: ballot.proposer.clone(),
                layout: doc.to_vec(),
                kind: kind.wire().into(),
            });
            self.cluster
                .within(self.cluster.config.peer_timeout, peer.client().layout_accept(request))
                .await
                .is_ok_and(|r| r.into_inner().accepted)
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    /// Fetches `kind` from `node` (the live layout versions, or the pricing rules) and installs
    /// it if newer than this node's.
    pub async fn fetch(&self, kind: DocKind, node: &str) -> Result<bool, NodeError> {
        let Some(peer) = self.cluster.peer(node) else {
            return Ok(false);
        };
        let (cluster, limit, mut client) = (&self.cluster, self.cluster.config.peer_timeout, peer.client());
        match kind {
            DocKind::Layout => {
                let call = client.get_layout(cluster.request(GetLayoutRequest {}));
                let reply = cluster.within(limit, call).await.map_err(NodeError::Remote)?;
                let (current, previous) = parse_doc(&reply.into_inner())?;
                self.learn(current, previous).await
            }
            DocKind::Pricing => {
                let call = client.get_pricing(cluster.request(GetPricingRequest {}));
                let reply = cluster
                    .within(limit, call)
                    .await
                    .map_err(NodeError::Remote)?
                    .into_inner();
                if reply.rules.is_empty() {
                    return Ok(false);
                }
                self.learn_pricing(from_json(&reply.rules, "pricing rules")?).await
            }
        }
    }
}

/// Moves (or, at start, builds) the anti-entropy digests for `layout` in a task of its own.
pub fn follow_layout(store: Arc<CartStore>, layout: Layout, carts_per_sec: usize) {
    tokio::spawn(async move {
        crate::digests::follow_until_ready(&store, &layout, carts_per_sec).await;
    });
}

/// A refused membership request (`FAILED_PRECONDITION` with the reason).
fn refused(reason: impl std::fmt::Display) -> NodeError {
    NodeError::LayoutRefused {
        reason: reason.to_string(),
    }
}

/// Runs membership in the background until `stop` fires: fetches newer layouts that heartbeats
/// reveal, and moves carts into a new version ([`rebalance`]).
pub async fn run(membership: Arc<Membership>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let period = membership.cluster.config.heartbeat_interval;
    loop {
        tokio::select! {
            biased; // fixed branch order: deterministic under simulation
            _ = stop.changed() => return,
            _ = membership.cluster.newer_layout.notified() => {}
            _ = tokio::time::sleep(period) => {}
        }
        // A heartbeat showed a peer with a newer version of a document: fetch it from there.
        for (kind, newer_from) in [
            (DocKind::Layout, &membership.cluster.newer_from),
            (DocKind::Pricing, &membership.cluster.newer_pricing_from),
        ] {
            let from = newer_from
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(node) = from {
                if let Err(e) = membership.fetch(kind, &node).await {
                    tracing::warn!(peer = node, ?kind, error = %e, "cannot fetch the newer document");
                }
            }
        }
        if let Err(e) = rebalance::step(&membership, &stop).await {
            tracing::warn!(error = %e, "layout transfer step failed; retrying");
        }
    }
}
