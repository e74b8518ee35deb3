//! The admin API: membership for ring-aware clients, status for `cartctl status`, membership
//! changes for `cartctl cluster` (staged on the asked node, committed through `membership`), and
//! the debug calls tests and operators use (a node's own replica of a cart, discarding hints).

use std::sync::Arc;

use cart_crdt::CartId;
use cart_proto::admin_pb::admin_service_server::AdminService;
use cart_proto::admin_pb::{
    ClusterStatusReply, ClusterStatusRequest, CommitLayoutRequest, DiscardHintsReply, DiscardHintsRequest,
    DiscardStagedRequest, GetMembershipRequest, GetPricingRequest, LayoutInfo, LayoutReply, LocalReadReply,
    LocalReadRequest, Member, Membership, Move, NodeStatus, PlanLayoutReply, PlanLayoutRequest, PricingReply,
    SetPricingRequest, ShowLayoutRequest, StageChangeRequest, StagedChange,
};
use cart_proto::pb;
use cart_ring::layout::{Change, Layout};
use cart_ring::Ring;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use tonic::{Request, Response, Status};

use crate::coordinator::Coordinator;
use crate::error::NodeError;
use crate::replica::check_secret;

pub struct AdminApi {
    coordinator: Arc<Coordinator>,
}

/// Synthetic keys a plan's movement estimate is computed on.
const PLAN_SAMPLES: usize = 20_000;

/// What `cartctl status` and the status page show: every member as this node sees it, the hint
/// backlog, anti-entropy per peer, the layout and any transfer in progress.
pub fn cluster_status(coordinator: &Coordinator) -> ClusterStatusReply {
    let cluster = &coordinator.cluster;
    let topology = cluster.topology();
    let shares = topology.current.ring.shares();
    let held = coordinator.store.hint_counts();
    let nodes = topology
        .members()
        .into_values()
        .map(|m| {
            let (layout_version, synced_version) = match cluster.peer(&m.node_id) {
                Some(p) => (
                    p.layout_version.load(Ordering::SeqCst),
                    p.synced_version.load(Ordering::SeqCst),
                ),
                None => (
                    topology.current.layout.version,
                    cluster.synced_version.load(Ordering::SeqCst),
                ),
            };
            let ae = coordinator.anti_entropy.get(&m.node_id).unwrap_or_default();
            NodeStatus {
                ae_last_ms_ago: ae.last.map_or(-1, |t| t.elapsed().as_millis() as i64),
                ae_took_ms: ae.took.as_millis() as u64,
                ae_differing: ae.differing_carts as u64,
                ae_repaired: ae.repaired as u64,
                ae_error: ae.error.unwrap_or_default(),
                node_id: m.node_id.clone(),
                addr: m.addr.clone(),
                up: cluster.is_up(&m.node_id),
                degraded: cluster.degraded(&m.node_id).unwrap_or_default(),
                ring_share: shares.get(m.node_id.as_str()).copied().unwrap_or(0.0),
                hints_held: held.get(&m.node_id).copied().unwrap_or(0) as u64,
                zone: m.zone.clone(),
                weight: m.weight,
                layout_version,
                synced_version,
            }
        })
        .collect();
    let transfer = coordinator
        .membership
        .progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .to_proto();
    let digests = coordinator.store.digests.state();
    ClusterStatusReply {
        asked_node: cluster.self_id.clone(),
        nodes,
        hint_backlog: held.values().sum::<usize>() as u64,
        layout_version: topology.current.layout.version,
        transfer,
        asked_is_member: cluster.is_member(),
        digests_ready: digests.ready,
        digest_carts: digests.carts,
        digests_moving: digests.moving,
    }
}

impl AdminApi {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        AdminApi { coordinator }
    }

    /// Refuses a call without the cluster secret.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        check_secret(
            self.coordinator.cluster.config.secret.clone(),
            self.coordinator.store.metrics.clone(),
        )(Request::from_parts(request.metadata().clone(), Default::default(), ()))?;
        Ok(())
    }

    fn layout_reply(&self) -> Result<LayoutReply, Status> {
        let membership = &self.coordinator.membership;
        let topology = self.coordinator.cluster.topology();
        let progress = membership
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .to_proto();
        Ok(LayoutReply {
            asked_node: self.coordinator.cluster.self_id.clone(),
            current: Some(layout_info(&topology.current.layout)),
            previous: topology.previous.as_ref().map(|p| layout_info(&p.layout)),
            staged: membership.staged()?.iter().map(staged_change).collect(),
            transfer: progress,
            ring_shares: shares_of(&topology.current.ring),
        })
    }

    /// Carts and bytes of the replicas this node holds (a scan of its base records).
    fn local_totals(&self) -> Result<(u64, u64), NodeError> {
        let (mut carts, mut bytes) = (0u64, 0u64);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.coordinator.store.scan_carts(after.as_deref(), 4096)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            carts += page.len() as u64;
            bytes += page.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum::<u64>();
        }
        Ok((carts, bytes))
    }
}

fn member_pb(m: &cart_ring::Member) -> Member {
    Member {
        node_id: m.node_id.clone(),
        addr: m.addr.clone(),
        weight: m.weight,
        zone: m.zone.clone(),
    }
}

fn layout_info(l: &Layout) -> LayoutInfo {
    LayoutInfo {
        version: l.version,
        members: l.members.iter().map(member_pb).collect(),
        n: l.n,
        r: l.r,
        w: l.w,
        retired: l.retired.clone(),
    }
}

fn staged_change(c: &Change) -> StagedChange {
    match c {
        Change::Join(m) => StagedChange {
            kind: "join".into(),
            node_id: m.node_id.clone(),
            addr: m.addr.clone(),
            zone: m.zone.clone(),
            weight: m.weight,
            replaces: String::new(),
        },
        Change::Leave { node_id } => StagedChange {
            kind: "leave".into(),
            node_id: node_id.clone(),
            ..StagedChange::default()
        },
        Change::Replace { old, new } => StagedChange {
            kind: "replace".into(),
            node_id: new.node_id.clone(),
            addr: new.addr.clone(),
            zone: new.zone.clone(),
            weight: new.weight,
            replaces: old.clone(),
        },
    }
}

/// A staged change from the wire; `INVALID_ARGUMENT` naming the field when malformed.
fn change_of(c: Option<StagedChange>) -> Result<Change, Status> {
    let c = c.ok_or_else(|| Status::invalid_argument("change: missing"))?;
    let member = || cart_ring::Member {
        node_id: c.node_id.clone(),
        addr: c.addr.clone(),
        weight: if c.weight == 0 { 1 } else { c.weight },
        zone: c.zone.clone(),
    };
    match c.kind.as_str() {
        "join" => Ok(Change::Join(member())),
        "leave" => Ok(Change::Leave {
            node_id: c.node_id.clone(),
        }),
        "replace" if !c.replaces.is_empty() => Ok(Change::Replace {
            old: c.replaces.clone(),
            new: member(),
        }),
        "replace" => Err(Status::invalid_argument(
            "change.replaces: name the node being replaced",
        )),
        other => Err(Status::invalid_argument(format!(
            "change.kind: {other:?} is not join, leave or replace"
        ))),
    }
}

fn pricing_reply(rules: &cart_crdt::pricing::PricingRules) -> PricingReply {
    PricingReply {
        version: rules.version,
        document: if rules.version == 0 {
            String::new()
        } else {
            rules.to_toml()
        },
    }
}

fn shares_of(ring: &Ring) -> BTreeMap<String, f64> {
    ring.shares().into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_membership(&self, _request: Request<GetMembershipRequest>) -> Result<Response<Membership>, Status> {
        let cluster = &self.coordinator.cluster;
        let topology = cluster.topology();
        let read = &topology.read().layout;
        Ok(Response::new(Membership {
            members: read.members.iter().map(member_pb).collect(),
            n: read.n,
            r: read.r,
            w: read.w,
            version: cluster.version(),
            layout_version: read.version,
            degraded: read
                .members
                .iter()
                .filter(|m| cluster.degraded(&m.node_id).is_some())
                .map(|m| m.node_id.clone())
                .collect(),
        }))
    }

    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusReply>, Status> {
        Ok(Response::new(cluster_status(&self.coordinator)))
    }

    async fn show_layout(&self, _request: Request<ShowLayoutRequest>) -> Result<Response<LayoutReply>, Status> {
        Ok(Response::new(self.layout_reply()?))
    }

    async fn stage_change(&self, request: Request<StageChangeRequest>) -> Result<Response<LayoutReply>, Status> {
        self.authorize(&request)?;
        let change = change_of(request.into_inner().change)?;
        self.coordinator.membership.stage(change).await?;
        Ok(Response::new(self.layout_reply()?))
    }

    async fn plan_layout(&self, _request: Request<PlanLayoutRequest>) -> Result<Response<PlanLayoutReply>, Status> {
        let membership = &self.coordinator.membership;
        let topology = self.coordinator.cluster.topology();
        let current = &topology.current;
        let staged = membership.staged()?;
        let next = current
            .layout
            .apply(&staged)
            .map_err(|e| Status::from(NodeError::LayoutRefused { reason: e.to_string() }))?;
        let next_ring = Ring::new(next.members.clone()).map_err(|e| Status::internal(e.to_string()))?;
        let moves = cart_ring::layout::moves(&current.ring, &next_ring, next.n as usize, PLAN_SAMPLES);
        let (local_carts, local_bytes) = self.local_totals()?;
        // Each node holds about n/members of the carts.
        let members = current.layout.members.len().max(1) as f64;
        let scale = members / f64::from(current.layout.n.max(1));
        let cluster_carts = (local_carts as f64 * scale).round() as u64;
        let cluster_bytes = (local_bytes as f64 * scale).round() as u64;
        let per_cart = if local_carts > 0 {
            local_bytes as f64 / local_carts as f64
        } else {
            0.0
        };
        let mut pairs: BTreeMap<(String, String), f64> = moves.pairs;
        pairs.retain(|_, f| *f > 0.0);
        Ok(Response::new(PlanLayoutReply {
            current: Some(layout_info(&current.layout)),
            next: Some(layout_info(&next)),
            staged: staged.iter().map(staged_change).collect(),
            shares_before: shares_of(&current.ring),
            shares_after: shares_of(&next_ring),
            moves: pairs
                .into_iter()
                .map(|((from_node, to_node), fraction)| {
                    let carts = (fraction * cluster_carts as f64).round() as u64;
                    Move {
                        from_node,
                        to_node,
                        fraction,
                        carts,
                        bytes: (carts as f64 * per_cart).round() as u64,
                    }
                })
                .collect(),
            carts_changed: moves.keys_changed,
            cluster_carts,
            cluster_bytes,
        }))
    }

    async fn commit_layout(&self, request: Request<CommitLayoutRequest>) -> Result<Response<LayoutReply>, Status> {
        self.authorize(&request)?;
        self.coordinator.membership.commit().await?;
        Ok(Response::new(self.layout_reply()?))
    }

    async fn discard_staged(&self, request: Request<DiscardStagedRequest>) -> Result<Response<LayoutReply>, Status> {
        self.authorize(&request)?;
        self.coordinator.membership.discard().await?;
        Ok(Response::new(self.layout_reply()?))
    }

    async fn set_pricing(&self, request: Request<SetPricingRequest>) -> Result<Response<PricingReply>, Status> {
        self.authorize(&request)?;
        let rules = self
            .coordinator
            .membership
            .set_pricing(&request.into_inner().document)
            .await?;
        Ok(Response::new(pricing_reply(&rules)))
    }

    async fn get_pricing(&self, _request: Request<GetPricingRequest>) -> Result<Response<PricingReply>, Status> {
        Ok(Response::new(pricing_reply(&self.coordinator.cluster.pricing())))
    }

    async fn local_read(&self, request: Request<LocalReadRequest>) -> Result<Response<LocalReadReply>, Status> {
        let store = &self.coordinator.store;
        let id = CartId::parse(&request.into_inner().cart_id, store.limits()).map_err(NodeError::from)?;
        // The replica alone: no quorum, no hints.
        let cart = store.read(&id)?;
        let state = (*cart != cart_crdt::Cart::default()).then_some(cart);
        let canonical = match &state {
            Some(cart) => cart_crdt::codec::encode(cart).map_err(NodeError::from)?,
            None => Vec::new(),
        };
        Ok(Response::new(LocalReadReply {
            present: state.is_some(),
            quantities: state
                .as_ref()
                .map(|c| c.raw_quantities())
                .unwrap_or_default()
                .into_iter()
                .collect(),
            cart: state.map(|cart| {
                let mut view = cart.view(&id);
                // The replica as stored, with the expiry its own state gives it.
                view.expires_at_ms = store.expiry().expires_at_ms(&id, cart.touched_at_ms()).unwrap_or(0);
                pb::Cart::from(view)
            }),
            canonical,
        }))
    }

    async fn discard_hints(
        &self,
        request: Request<DiscardHintsRequest>,
    ) -> Result<Response<DiscardHintsReply>, Status> {
        self.authorize(&request)?;
        let discarded = self.coordinator.store.discard_hints().await?;
        tracing::warn!(discarded, "hints discarded by an operator");
        Ok(Response::new(DiscardHintsReply { discarded }))
    }
}
