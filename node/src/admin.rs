//! The admin API: membership for ring-aware clients, status for `cartctl status`, and the debug
//! calls tests and operators use (a node's own replica of a cart, discarding hints).

use std::sync::Arc;

use cart_crdt::CartId;
use cart_proto::admin_pb::admin_service_server::AdminService;
use cart_proto::admin_pb::{
    ClusterStatusReply, ClusterStatusRequest, DiscardHintsReply, DiscardHintsRequest, GetMembershipRequest,
    LocalReadReply, LocalReadRequest, Member, Membership, NodeStatus,
};
use cart_proto::pb;
use tonic::{Request, Response, Status};

use crate::coordinator::Coordinator;
use crate::error::NodeError;
use crate::replica::check_secret;

pub struct AdminApi {
    coordinator: Arc<Coordinator>,
}

impl AdminApi {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        AdminApi { coordinator }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_membership(&self, _request: Request<GetMembershipRequest>) -> Result<Response<Membership>, Status> {
        let cluster = &self.coordinator.cluster;
        Ok(Response::new(Membership {
            members: cluster
                .ring
                .members()
                .iter()
                .map(|m| Member {
                    node_id: m.node_id.clone(),
                    addr: m.addr.clone(),
                    weight: m.weight,
                })
                .collect(),
            n: cluster.config.n as u32,
            r: cluster.config.r as u32,
            w: cluster.config.w as u32,
            version: cluster.version,
        }))
    }

    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusReply>, Status> {
        let cluster = &self.coordinator.cluster;
        let shares = cluster.ring.shares();
        let held = self.coordinator.store.hint_counts();
        let nodes = cluster
            .ring
            .members()
            .iter()
            .map(|m| NodeStatus {
                node_id: m.node_id.clone(),
                addr: m.addr.clone(),
                up: cluster.is_up(&m.node_id),
                ring_share: shares.get(m.node_id.as_str()).copied().unwrap_or(0.0),
                hints_held: held.get(&m.node_id).copied().unwrap_or(0) as u64,
            })
            .collect();
        Ok(Response::new(ClusterStatusReply {
            asked_node: cluster.self_id.clone(),
            nodes,
            hint_backlog: held.values().sum::<usize>() as u64,
        }))
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
            cart: state.map(|cart| pb::Cart::from(cart.view(&id))),
            canonical,
        }))
    }

    async fn discard_hints(
        &self,
        request: Request<DiscardHintsRequest>,
    ) -> Result<Response<DiscardHintsReply>, Status> {
        check_secret(self.coordinator.cluster.config.secret.clone())(Request::from_parts(
            request.metadata().clone(),
            Default::default(),
            (),
        ))?;
        let discarded = self.coordinator.store.discard_hints().await?;
        tracing::warn!(discarded, "hints discarded by an operator");
        Ok(Response::new(DiscardHintsReply { discarded }))
    }
}
