//! Quorum reads and writes over the cart's replicas (DESIGN §6).
//!
//! Write: a node outside the cart's preference list forwards the operation to an owner (only
//! owners apply operations: a CRDT actor must keep its whole causal history for a cart, which a
//! stand-in node could not). The owner applies it locally and durably, sends the write's delta
//! (a small cart state) to the other targets in parallel (down owners replaced by fallbacks
//! holding a hint), and answers once W replicas (itself included) have persisted it. Stragglers
//! finish in the background; a target that fails leaves a hint here for its owner.
//!
//! Read: any node asks R targets (itself first), answers with the merge of R replies, and
//! repairs owners whose state differed once all replies are in. When this node holds the cart,
//! the others get a digest read: they send their cart only if its context differs from ours.

use std::sync::Arc;

use cart_crdt::{codec, Cart, CartError, CartId, CartOp, Context};
use cart_proto::hedge::{HedgeBudget, HedgeDelay, Outliers};
use cart_proto::replica_pb::{CoordinateRequest, ReadReply as PeerReadReply, ReadRequest, ReplicateRequest};
use cart_proto::{CartRequest, Consistency};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::Status;

use crate::cluster::{Cluster, Plan, Target};
use crate::error::NodeError;
use crate::membership::Membership;
use crate::store::{CartStore, Written};

/// What a refusal to coordinate a forwarded write for a cart the node does not own says (see
/// `NodeError::NotOwner`).
pub const NOT_OWNER: &str = "is not an owner of";

/// Replication and repair calls running in the background at most; beyond it, new ones wait.
pub const BACKGROUND_CALLS_MAX: usize = 4096;

pub struct Coordinator {
    pub store: Arc<CartStore>,
    pub cluster: Arc<Cluster>,
    pub membership: Arc<Membership>,
    /// The last anti-entropy exchange with each peer.
    pub anti_entropy: crate::anti_entropy::Stats,
    background: Arc<Semaphore>,
    /// Peer reads: how long they take (the hedge delay), what hedging may add, and the peers
    /// set aside for being slow (read from last).
    pub read_tail: ReadTail,
}

/// Hedged peer reads (see [`cart_proto::hedge`]): a read that has fewer than R replies after
/// the p99 of recent peer reads asks one more replica.
pub struct ReadTail {
    pub delay: HedgeDelay,
    pub budget: HedgeBudget,
    pub outliers: Outliers,
    /// Reads coordinated, and hedges sent.
    pub reads: std::sync::atomic::AtomicU64,
    pub hedges: std::sync::atomic::AtomicU64,
}

/// How long read repair waits before it looks again at an owner that differed from the merge
/// (writes still being replicated to it land meanwhile, and then nothing needs shipping).
const REPAIR_RECHECK_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Extra peer reads hedging may add (fraction of reads), and its burst.
const READ_HEDGE_BUDGET: f64 = 0.05;
const READ_HEDGE_BURST: f64 = 50.0;

impl ReadTail {
    fn new(peer_timeout: std::time::Duration) -> Self {
        use std::time::Duration;
        ReadTail {
            delay: HedgeDelay::new(Duration::from_millis(10), Duration::from_millis(1), peer_timeout / 2),
            budget: HedgeBudget::new(READ_HEDGE_BUDGET, READ_HEDGE_BURST),
            outliers: Outliers::default(),
            reads: Default::default(),
            hedges: Default::default(),
        }
    }
}

/// Whether a failed call says the node could not be reached or did not answer (as opposed to an
/// answer refusing the request).
fn unreachable(status: &Status) -> bool {
    use tonic::Code::*;
    matches!(status.code(), Unavailable | Unknown | Cancelled | DeadlineExceeded)
}

/// The nodes a request already uses; a fallback is reserved here so that two failing owners of
/// one request never count the same stand-in twice.
#[derive(Clone)]
struct Taken(Arc<std::sync::Mutex<Vec<String>>>);

impl Taken {
    fn new(targets: &[Target]) -> Self {
        Taken(Arc::new(std::sync::Mutex::new(
            targets.iter().map(|t| t.node_id.clone()).collect(),
        )))
    }

    /// Picks a node with `pick` (given the nodes in use) and marks it used.
    fn reserve(&self, pick: impl FnOnce(&[String]) -> Option<String>) -> Option<String> {
        let mut taken = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let chosen = pick(&taken)?;
        taken.push(chosen.clone());
        Some(chosen)
    }
}

/// This node's own state of a cart being read, and its context encoded: what turns the reads
/// of the other replicas into digest reads (a replica with the same context answers
/// "unchanged" instead of shipping the cart).
#[derive(Clone)]
struct Known {
    cart: Arc<Cart>,
    context: Arc<Vec<u8>>,
}

/// A read in progress: who was asked, who is left to ask if one fails.
struct Reads {
    known: Option<Known>,
    id: CartId,
    r: usize,
    asked: usize,
    spare: Vec<Target>,
    taken: Taken,
    tx: mpsc::Sender<ReadReply>,
    rx: mpsc::Receiver<ReadReply>,
    owners: Vec<String>,
    /// Peers asked that have not replied yet.
    pending: Vec<String>,
}

/// A write on its way to the other replicas: its delta, the context the delta was built on,
/// and the whole cart (read and encoded only if some target needs it).
///
/// It does not hold the cart the write made: a write holding it until W replicas answered made
/// the next write of the same cart copy the whole cart (a hot cart's history is tens of KB).
/// The whole cart is this replica's current one, which holds the write and maybe later ones.
struct Outgoing {
    /// Only owners count toward W (a checkout: a later checkout's read must see it).
    strict: bool,
    delta: Arc<Vec<u8>>,
    deps: Arc<Vec<u8>>,
    store: Arc<CartStore>,
    whole: std::sync::OnceLock<Arc<Vec<u8>>>,
}

impl Outgoing {
    /// This replica's cart, which holds the write.
    fn cart(&self, id: &CartId) -> Result<Arc<Cart>, NodeError> {
        self.store.read(id)
    }

    fn whole(&self, id: &CartId) -> Result<Arc<Vec<u8>>, NodeError> {
        if let Some(whole) = self.whole.get() {
            return Ok(whole.clone());
        }
        let whole = Arc::new(codec::encode(&*self.cart(id)?)?);
        Ok(self.whole.get_or_init(|| whole).clone())
    }
}

/// The outcome of a replicate request queued on a peer's batcher.
type Queued = oneshot::Receiver<Result<(), Status>>;

/// One replica's answer to a read.
struct ReadReply {
    target: Target,
    state: Result<Option<Arc<Cart>>, NodeError>,
}

impl Coordinator {
    pub fn new(store: Arc<CartStore>, cluster: Arc<Cluster>) -> Arc<Self> {
        Arc::new(Coordinator {
            membership: Arc::new(Membership::new(store.clone(), cluster.clone())),
            anti_entropy: crate::anti_entropy::Stats::default(),
            read_tail: ReadTail::new(cluster.config.peer_timeout),
            store,
            cluster,
            background: Arc::new(Semaphore::new(BACKGROUND_CALLS_MAX)),
        })
    }

    fn quorum(&self, asked: Option<u32>, default: usize, field: &'static str) -> Result<usize, NodeError> {
        let n = self.cluster.config.n;
        match asked {
            None => Ok(default),
            Some(q) if (1..=n as u32).contains(&q) => Ok(q as usize),
            Some(value) => Err(NodeError::BadQuorum { field, value, n }),
        }
    }

    /// Applies a client operation with write quorum W and returns the resulting cart.
    pub async fn write(self: &Arc<Self>, req: &CartRequest) -> Result<Arc<Cart>, NodeError> {
        self.write_as(req, false, Arc::clone).await
    }

    /// [`Coordinator::write`], answering with `shape` of the resulting cart (a reply built from
    /// it), called as soon as the write is applied here: the cart is not held while the other
    /// replicas answer, so the next write of it need not copy it. A write another node forwarded
    /// here (`forwarded`) that this node's storage cannot take is refused (`Degraded`, nothing
    /// applied) for the forwarder to try the next owner, never forwarded again (no loop between
    /// sick owners).
    pub async fn write_as<T>(
        self: &Arc<Self>,
        req: &CartRequest,
        forwarded: bool,
        shape: impl FnOnce(&Arc<Cart>) -> T,
    ) -> Result<T, NodeError> {
        let w = self.quorum(req.consistency.w, self.cluster.config.w, "consistency.w")?;
        self.quorum(req.consistency.r, self.cluster.config.r, "consistency.r")?;
        if !self.cluster.is_owner(&req.cart_id) {
            return Ok(shape(&self.forward(req).await?));
        }
        // A checkout is strict: it first catches up from a majority of the cart's replicas, and
        // it is acknowledged by W owners (stand-ins holding hints do not count), so the read of
        // any later checkout sees it and refuses a version that predates it.
        let strict = matches!(req.op, CartOp::Checkout { .. });
        // A refresh skips products this replica does not hold: it first catches up from a
        // majority too, so a line another owner took a moment ago is refreshed as well.
        if strict || matches!(req.op, CartOp::RefreshItems { .. }) {
            let majority = Consistency {
                r: Some((self.cluster.config.n / 2 + 1) as u32),
                w: None,
            };
            let merged = self.read(&req.cart_id, majority).await?;
            if let Err(e) = self.store.merge(&req.cart_id, (*merged).clone()).await {
                tracing::warn!(cart_id = %req.cart_id, error = %e, "checkout catch-up not stored");
            }
        }
        // The delta goes into each up owner's replicate queue while the cart's lock is held, so
        // deltas reach every peer in the order they were applied (one batch in flight per peer).
        let mut plan = self.cluster.write_plan(&req.cart_id);
        plan.skip_down(w);
        let mut queued = Vec::new();
        let id = &req.cart_id;
        let applied = match self.apply_in_time(req, &plan, &mut queued) {
            // This replica may lag behind what the client saw (a quorum read elsewhere): an op
            // on something it does not hold yet (remove, set, adjust, save, move, coupon
            // remove) first catches up from a read quorum, then runs once more.
            Err(NodeError::Cart(CartError::NotFound { .. })) => {
                // At least one other replica besides this one, whatever R the client asked for.
                let n = self.cluster.config.n;
                let r = req.consistency.r.map_or(self.cluster.config.r, |r| r as usize);
                let catch_up = Consistency {
                    r: Some(r.max(2).min(n) as u32),
                    w: None,
                };
                let merged = self.read(id, catch_up).await?;
                match self.store.merge(id, (*merged).clone()).await {
                    Ok(_) => self.apply_in_time(req, &plan, &mut queued),
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        let written = match applied {
            Ok(written) => written,
            // Refused by this node's storage before anything was applied (it is degraded, or the
            // write failed): a sick replica never fails a write another owner can take. The same
            // for a deadline this node's clock says has passed: another owner's clock decides
            // (a node whose clock runs ahead does not refuse what the others would take).
            Err(e @ (NodeError::Degraded { .. } | NodeError::Storage(_) | NodeError::DeadlinePassed { .. })) => {
                if forwarded {
                    return Err(e);
                }
                return match self.forward(req).await {
                    Ok(cart) => Ok(shape(&cart)),
                    // No other owner (a cluster of one): this node's "deadline passed, nothing
                    // applied" is the answer, not "no replica reachable".
                    Err(NodeError::NoReplica { .. }) if matches!(e, NodeError::DeadlinePassed { .. }) => Err(e),
                    Err(other) => Err(other),
                };
            }
            Err(e) => return Err(e),
        };
        let shaped = shape(&written.cart);
        drop(written.cart);
        let outgoing = Arc::new(Outgoing {
            strict,
            delta: written.delta,
            deps: written.deps,
            store: self.store.clone(),
            whole: std::sync::OnceLock::new(),
        });
        // Applied here and queued for the others; if this replica cannot make it durable, W
        // other replicas must (the write is acknowledged only once W replicas persisted it).
        let local = match self.store.durable().await {
            Ok(()) => 1,
            Err(e) => {
                tracing::warn!(cart_id = %id, error = %e, "this replica could not persist a write: the other replicas must take W");
                0
            }
        };
        self.replicate(&req.cart_id, &outgoing, w - local, local, plan, queued)
            .await?;
        Ok(shaped)
    }

    /// Applies the write here and queues its delta for the other owners (`queued`), unless the
    /// client's deadline has passed by this node's clock. The check sits right before the apply
    /// (no await between them): a node that was paused or cut off while the request waited
    /// never applies it after the client gave up on it.
    fn apply_in_time(
        &self,
        req: &CartRequest,
        plan: &Plan,
        queued: &mut Vec<(String, Queued)>,
    ) -> Result<Written, NodeError> {
        if let Some(deadline_ms) = req.deadline_ms {
            let now_ms = self.store.now_ms();
            if now_ms > deadline_ms {
                return Err(NodeError::DeadlinePassed {
                    header: cart_proto::DEADLINE_HEADER,
                    deadline_ms,
                    late_ms: now_ms - deadline_ms,
                });
            }
        }
        let id = &req.cart_id;
        self.store
            .apply_with(id, &req.op, req.request, |w| *queued = self.queue_delta(plan, id, w))
    }

    /// Queues the write's delta on the replicate batcher of every other owner that is up (called
    /// with the cart's lock held, so deltas queue in write order); the outcomes it could queue.
    fn queue_delta(&self, plan: &Plan, id: &CartId, written: &Written) -> Vec<(String, Queued)> {
        let owners = plan.targets.iter().filter(|t| t.hint_for.is_none()).map(|t| &t.node_id);
        owners
            .chain(plan.extras.iter().filter(|e| self.cluster.is_up(e)))
            .filter(|node| **node != self.cluster.self_id)
            .filter_map(|node| {
                let request = ReplicateRequest {
                    cart_id: id.to_string(),
                    state: written.delta.to_vec(),
                    hint_for: String::new(),
                    deps: written.deps.to_vec(),
                };
                let outcome = self.cluster.peer(node)?.try_replicate(request)?;
                Some((node.clone(), outcome))
            })
            .collect()
    }

    /// Sends the write to every other target; returns once `needed` of them persisted it, or
    /// fails with the count when the deadline passes first.
    async fn replicate(
        self: &Arc<Self>,
        id: &CartId,
        outgoing: &Arc<Outgoing>,
        needed: usize,
        local: usize,
        plan: Plan,
        mut queued: Vec<(String, Queued)>,
    ) -> Result<(), NodeError> {
        let taken = Taken::new(&plan.targets);
        // New owners while carts move into a new layout: sent in the background, never counted.
        for extra in plan.extras.iter().filter(|e| **e != self.cluster.self_id) {
            let Ok(permit) = self.background.clone().try_acquire_owned() else {
                self.hint_locally(extra, id, outgoing).await;
                continue;
            };
            let early = queued
                .iter()
                .position(|(node, _)| node == extra)
                .map(|at| queued.swap_remove(at).1);
            let target = Target {
                node_id: extra.clone(),
                hint_for: None,
            };
            // Fallbacks an extra reserves must not be taken from the write's own owners.
            let taken = Taken::new(&[]);
            let (me, id, outgoing) = (self.clone(), id.clone(), outgoing.clone());
            tokio::spawn(async move {
                me.send_state(&target, &id, &outgoing, early, &taken).await;
                drop(permit);
            });
        }
        let mut remote: Vec<Target> = plan
            .targets
            .into_iter()
            .filter(|t| t.node_id != self.cluster.self_id)
            .collect();
        // Down owners left out of the plan: called after all if this replica could not persist
        // the write (too few usable targets then), else hinted without a call.
        for owner in plan.hinted {
            if remote.len() < needed {
                remote.push(Target {
                    node_id: owner,
                    hint_for: None,
                });
            } else {
                let Ok(permit) = self.background.clone().try_acquire_owned() else {
                    self.hint_locally(&owner, id, outgoing).await;
                    continue;
                };
                let (me, id, outgoing) = (self.clone(), id.clone(), outgoing.clone());
                tokio::spawn(async move {
                    me.hint_locally(&owner, &id, &outgoing).await;
                    drop(permit);
                });
            }
        }
        if remote.is_empty() && needed == 0 {
            return Ok(());
        }
        let deadline_at = tokio::time::Instant::now() + self.cluster.config.request_timeout;
        let (tx, mut rx) = mpsc::channel(remote.len().max(1));
        for target in remote {
            let permit = tokio::time::timeout_at(deadline_at, self.background.clone().acquire_owned()).await;
            let Ok(Ok(permit)) = permit else {
                // Too much replication in flight to even start this one: keep a hint instead.
                let owner = target.hint_for.as_deref().unwrap_or(&target.node_id);
                self.hint_locally(owner, id, outgoing).await;
                continue;
            };
            let early = match queued.iter().position(|(node, _)| *node == target.node_id) {
                Some(at) if target.hint_for.is_none() => Some(queued.swap_remove(at).1),
                _ => None,
            };
            let (me, id, outgoing, tx, taken) = (self.clone(), id.clone(), outgoing.clone(), tx.clone(), taken.clone());
            tokio::spawn(async move {
                let ok = me.send_state(&target, &id, &outgoing, early, &taken).await;
                let _ = tx.send(ok).await;
                drop(permit);
            });
        }
        drop(tx);
        let mut acked = 0;
        let deadline = tokio::time::sleep_until(deadline_at);
        tokio::pin!(deadline);
        while acked < needed {
            tokio::select! {
                biased; // fixed branch order: deterministic under simulation
                reply = rx.recv() => match reply {
                    Some(true) => acked += 1,
                    Some(false) => {}
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        if acked >= needed {
            return Ok(());
        }
        let down: Vec<&str> = plan
            .owners
            .iter()
            .filter(|o| !self.cluster.is_up(o))
            .map(String::as_str)
            .collect();
        self.store.metrics.quorum_failed("write");
        Err(NodeError::QuorumNotReached {
            verb: "acknowledged",
            acked: acked + local,
            required: needed + local,
            detail: format!(
                "owners {}; down: {}",
                plan.owners.join(","),
                if down.is_empty() { "none".into() } else { down.join(",") }
            ),
        })
    }

    /// Replicates to one target: an owner gets the delta, or the whole cart when it answers that
    /// it lacks writes the delta was built on; a stand-in always gets the whole cart (a hint
    /// must be complete). If an owner turns out unreachable, a free fallback stands in (and
    /// counts); failing that, this node keeps a hint for the owner (which does not count).
    async fn send_state(
        &self,
        target: &Target,
        id: &CartId,
        outgoing: &Outgoing,
        early: Option<Queued>,
        taken: &Taken,
    ) -> bool {
        let owner = target.hint_for.as_deref().unwrap_or(&target.node_id);
        let sent = match &target.hint_for {
            None => {
                let delta = match early {
                    // Queued while the write held the cart's lock: its outcome.
                    Some(outcome) => {
                        let outcome = async {
                            outcome
                                .await
                                .unwrap_or_else(|_| Err(Status::unavailable("batch dropped")))
                        };
                        self.settle(&target.node_id, outcome).await
                    }
                    None => {
                        self.call_replicate(&target.node_id, id, &outgoing.delta, &outgoing.deps, None)
                            .await
                    }
                };
                match delta {
                    Err(status) if status.code() == tonic::Code::FailedPrecondition => match outgoing.whole(id) {
                        // The replica lacks writes the delta was built on (reordered or lost).
                        Ok(whole) => {
                            tracing::debug!(target = %target.node_id, cart_id = %id, "sending the whole cart");
                            self.call_replicate(&target.node_id, id, &whole, &[], None).await
                        }
                        Err(e) => Err(Status::from(e)),
                    },
                    other => other,
                }
            }
            Some(owner) => match outgoing.whole(id) {
                Ok(whole) => self.call_replicate(&target.node_id, id, &whole, &[], Some(owner)).await,
                Err(e) => Err(Status::from(e)),
            },
        };
        let Err(status) = sent else {
            // A stand-in's hint keeps the write, but does not count for a strict one.
            return target.hint_for.is_none() || !outgoing.strict;
        };
        tracing::debug!(target = %target.node_id, code = ?status.code(), "replicate failed");
        if target.hint_for.is_none() && unreachable(&status) {
            if let Some(fallback) = taken.reserve(|t| self.cluster.fallback_for(id, t)) {
                if let Ok(whole) = outgoing.whole(id) {
                    if self
                        .call_replicate(&fallback, id, &whole, &[], Some(owner))
                        .await
                        .is_ok()
                    {
                        return !outgoing.strict;
                    }
                }
            }
        }
        self.hint_locally(owner, id, outgoing).await;
        false
    }

    async fn call_replicate(
        &self,
        node: &str,
        id: &CartId,
        bytes: &[u8],
        deps: &[u8],
        hint_for: Option<&str>,
    ) -> Result<(), Status> {
        let peer = self
            .cluster
            .peer(node)
            .ok_or_else(|| Status::internal(format!("unknown peer {node}")))?;
        let request = ReplicateRequest {
            cart_id: id.to_string(),
            state: bytes.to_vec(),
            hint_for: hint_for.unwrap_or_default().to_owned(),
            deps: deps.to_vec(),
        };
        self.settle(node, peer.replicate(request)).await
    }

    /// Waits (within the request deadline) for a replicate call's outcome and records it for the
    /// failure detector.
    async fn settle(
        &self,
        node: &str,
        outcome: impl std::future::Future<Output = Result<(), Status>>,
    ) -> Result<(), Status> {
        let result = self.cluster.within(self.cluster.config.request_timeout, outcome).await;
        self.cluster.record(node, result.as_ref().map(|_| ()));
        result
    }

    /// Keeps the whole cart as a hint for `owner` (a hint must never be a bare delta).
    async fn hint_locally(&self, owner: &str, id: &CartId, outgoing: &Outgoing) {
        let cart = match outgoing.cart(id) {
            Ok(cart) => Arc::unwrap_or_clone(cart),
            Err(e) => {
                tracing::error!(owner, cart_id = %id, error = %e, "cannot read the cart to keep a hint");
                return;
            }
        };
        let stored = self
            .store
            .add_hint(owner, id, cart, self.cluster.config.hints_max)
            .await;
        match stored {
            Ok(true) => {}
            Ok(false) => tracing::warn!(owner, cart_id = %id, "hint store full; anti-entropy will repair this owner"),
            Err(e) => tracing::error!(owner, cart_id = %id, error = %e, "cannot store hint"),
        }
    }

    /// Hands the operation to the first owner that answers.
    async fn forward(&self, req: &CartRequest) -> Result<Arc<Cart>, NodeError> {
        self.store.metrics.forwarded.inc();
        let op = codec::encode_op(&req.op)?;
        // Other owners only (this one, when it forwards, cannot take the write), healthy first.
        let owners: Vec<String> = self
            .cluster
            .owners(&req.cart_id)
            .into_iter()
            .filter(|o| *o != self.cluster.self_id)
            .collect();
        let mut tried = Vec::new();
        let mut late = None;
        for owner in owners
            .iter()
            .filter(|o| self.cluster.takes_writes(o))
            .chain(owners.iter().filter(|o| !self.cluster.takes_writes(o)))
        {
            let Some(peer) = self.cluster.peer(owner) else { continue };
            let mut request = tonic::Request::new(CoordinateRequest {
                cart_id: req.cart_id.to_string(),
                op: op.clone(),
                r: req.consistency.r.unwrap_or(0),
                w: req.consistency.w.unwrap_or(0),
                from_node: self.cluster.self_id.clone(),
                request_id: req.request.map(|r| r.0.to_be_bytes().to_vec()).unwrap_or_default(),
                deadline_ms: req.deadline_ms.unwrap_or(0),
            });
            // The owner needs its own quorum deadline plus the hop.
            request.set_timeout(self.cluster.config.request_timeout + self.cluster.config.peer_timeout);
            let limit = self.cluster.config.request_timeout + self.cluster.config.peer_timeout;
            match self.cluster.within(limit, peer.client().coordinate(request)).await {
                Ok(reply) => {
                    self.cluster.record(owner, Ok(()));
                    return Ok(Arc::new(codec::decode(&reply.into_inner().state)?));
                }
                Err(status) if status.code() == tonic::Code::Unavailable && !cart_proto::outcome_unknown(&status) => {
                    self.cluster.record(owner, Err(&status));
                    tried.push(format!("{owner}: {}", status.message()));
                }
                // Past the deadline by that owner's clock: not applied there; the next owner's
                // clock decides, and if every owner says so, that is the answer.
                Err(status) if cart_proto::outcome_none(&status) => {
                    tried.push(format!("{owner}: {}", status.message()));
                    late = Some(status);
                }
                // While a layout change spreads, the owner may route by another version and
                // refuse before applying anything: the next owner is asked.
                Err(status)
                    if status.code() == tonic::Code::FailedPrecondition && status.message().contains(NOT_OWNER) =>
                {
                    tried.push(format!("{owner}: {}", status.message()));
                }
                // The owner ran the operation and refused it, or its outcome is unknown: say so.
                Err(status) => return Err(NodeError::Remote(status)),
            }
        }
        if let Some(status) = late {
            return Err(NodeError::Remote(status));
        }
        Err(NodeError::NoReplica {
            cart_id: req.cart_id.to_string(),
            detail: tried.join("; "),
        })
    }

    /// Reads the cart with read quorum R: asks R targets (this node first when it is one), asks
    /// the next target for each that fails, answers with the merge of R replies.
    pub async fn read(self: &Arc<Self>, id: &CartId, consistency: Consistency) -> Result<Arc<Cart>, NodeError> {
        let r = self.quorum(consistency.r, self.cluster.config.r, "consistency.r")?;
        self.quorum(consistency.w, self.cluster.config.w, "consistency.w")?;
        let plan = self.cluster.plan(id);
        let taken = Taken::new(&plan.targets);
        let mut targets = plan.targets;
        // This node first, peers down or set aside for being slow last (they become spares).
        let tail = &self.read_tail;
        targets.sort_by_cached_key(|t| {
            (
                t.node_id != self.cluster.self_id,
                !self.cluster.is_up(&t.node_id) || tail.outliers.try_later(&t.node_id),
            )
        });
        tail.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tail.budget.earn();
        let spare = targets.split_off(r.min(targets.len()));
        let (tx, rx) = mpsc::channel(self.cluster.topology().members().len().max(1));
        let asked = targets.len();
        let pending: Vec<String> = targets
            .iter()
            .filter(|t| t.node_id != self.cluster.self_id)
            .map(|t| t.node_id.clone())
            .collect();
        let mut known = None;
        for target in targets {
            if target.node_id != self.cluster.self_id {
                self.ask(target, id, &tx, known.as_ref());
                continue;
            }
            // This node first (sorted so), read once in place: its reply, and, when it holds the
            // cart, the context that turns the other reads into digest reads. Not an expired
            // copy: `gather` drops it, so replies must stand without it (a catch-up rebuilt from
            // it would lack what it had removed before it expired).
            let state = self.store.read_with_hints(id);
            if let Ok(Some(cart)) = state
                .as_ref()
                .map(|s| s.as_ref().filter(|c| !self.store.expired(id, c)))
            {
                known = Some(Known {
                    context: Arc::new(codec::encode_context(cart.context())?),
                    cart: cart.clone(),
                });
            }
            let _ = tx.try_send(ReadReply { target, state });
        }
        let (answer_tx, answer_rx) = oneshot::channel();
        let me = self.clone();
        let reads = Reads {
            known,
            id: id.clone(),
            r,
            asked,
            spare,
            taken,
            tx,
            rx,
            owners: plan.owners,
            pending,
        };
        tokio::spawn(async move { me.gather(reads, answer_tx).await });
        let result = match tokio::time::timeout(self.cluster.config.request_timeout, answer_rx).await {
            Ok(Ok(result)) => result,
            _ => Err(NodeError::QuorumNotReached {
                verb: "answered",
                acked: 0,
                required: r,
                detail: "the read timed out".into(),
            }),
        };
        if let Err(NodeError::QuorumNotReached { .. }) = &result {
            self.store.metrics.quorum_failed("read");
        }
        result
    }

    /// Starts one peer's read (this node is read in place by [`Coordinator::read`]; spares and
    /// fallbacks are always other nodes).
    fn ask(self: &Arc<Self>, target: Target, id: &CartId, tx: &mpsc::Sender<ReadReply>, known: Option<&Known>) {
        debug_assert_ne!(target.node_id, self.cluster.self_id);
        let (me, id, tx, known) = (self.clone(), id.clone(), tx.clone(), known.cloned());
        tokio::spawn(async move {
            let state = me.call_read(&target.node_id, &id, known).await;
            let _ = tx.send(ReadReply { target, state }).await;
        });
    }

    /// One peer's state of the cart: `known`'s cart itself when the peer says its context is the
    /// same (a digest read), rebuilt from `known`'s cart when the peer answers with a catch-up.
    async fn call_read(&self, node: &str, id: &CartId, known: Option<Known>) -> Result<Option<Arc<Cart>>, NodeError> {
        let known_context = known.as_ref().map(|k| k.context.to_vec()).unwrap_or_default();
        let began = tokio::time::Instant::now();
        let result = self.peer_read(node, id, known_context, known.is_some()).await;
        match &result {
            Ok(_) => self.read_tail.delay.record(began.elapsed()),
            Err(_) => {
                self.read_tail
                    .outliers
                    .slow(node, self.cluster.topology().members().len());
            }
        }
        let reply = result?;
        match known {
            Some(known) if reply.unchanged => return Ok(Some(known.cart)),
            // What this node lacks and the dots of the rest: the peer's copy, rebuilt here.
            Some(known) if !reply.catch_up.is_empty() => {
                let catch_up = codec::decode_catch_up(&reply.catch_up)?;
                return Ok(Some(Arc::new(known.cart.rebuild(catch_up, known.cart.context())?)));
            }
            None if !reply.catch_up.is_empty() => {
                return Err(NodeError::Cart(cart_crdt::CartError::Decode {
                    reason: format!("{node} sent a catch-up for a read that asked for none"),
                }))
            }
            _ => {}
        }
        // Empty, or `behind`: nothing to merge; either way the owner differs from the merge and
        // is repaired.
        if reply.state.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(codec::decode(&reply.state)?)))
    }

    /// One `ReplicaService.Read` of `node` (a digest read when `known_context` is not empty, which
    /// a catch-up may answer when `catch_up`), within the peer timeout; the outcome feeds the
    /// failure detector.
    async fn peer_read(
        &self,
        node: &str,
        id: &CartId,
        known_context: Vec<u8>,
        catch_up: bool,
    ) -> Result<PeerReadReply, NodeError> {
        let peer = self.cluster.peer(node).ok_or_else(|| NodeError::Config {
            reason: format!("unknown peer {node}"),
        })?;
        let call = peer.read(ReadRequest {
            cart_id: id.to_string(),
            known_context,
            catch_up,
        });
        let result = self.cluster.within(self.cluster.config.peer_timeout, call).await;
        self.cluster.record(node, result.as_ref().map(|_| ()));
        result.map_err(NodeError::Remote)
    }

    /// Whether `node`'s copy of the cart still lacks something `merged` holds, by a digest read
    /// (not counted in the read statistics hedging uses). An owner that caught up or moved ahead
    /// needs no repair; one that is unreachable is left to hints and anti-entropy.
    async fn still_behind(&self, node: &str, id: &CartId, merged: &Context) -> bool {
        let Ok(context) = codec::encode_context(merged) else {
            return false;
        };
        // Only the owner's context matters here: a catch-up carries it without the request
        // records a whole hot cart would bring (an owner without catch-ups sends the cart).
        let Ok(reply) = self.peer_read(node, id, context, true).await else {
            return false;
        };
        if reply.unchanged {
            return false;
        }
        if !reply.catch_up.is_empty() {
            return codec::decode_catch_up(&reply.catch_up).is_ok_and(|now| !now.context().covers(merged));
        }
        if reply.state.is_empty() {
            return true; // behind, or holds nothing
        }
        codec::decode(&reply.state).is_ok_and(|now| !now.context().covers(merged))
    }

    /// Merges replies; answers as soon as `r` replicas replied, then waits for the rest (up to
    /// the deadline) and repairs every owner whose state differs from the merge.
    async fn gather(self: Arc<Self>, mut reads: Reads, answer: oneshot::Sender<Result<Arc<Cart>, NodeError>>) {
        let mut merged: Option<Arc<Cart>> = None;
        let mut replies: Vec<(Target, Option<Arc<Cart>>)> = Vec::new();
        let mut failures = Vec::new();
        let mut answer = Some(answer);
        let mut outstanding = reads.asked;
        let deadline = tokio::time::sleep(self.cluster.config.request_timeout);
        tokio::pin!(deadline);
        let tail = &self.read_tail;
        let (mut hedged, mut budget_left) = (false, true);
        while outstanding > 0 {
            // Fewer than R replies after the usual time: one more replica is asked.
            let may_hedge = budget_left && answer.is_some() && !reads.spare.is_empty();
            let hedge = tokio::time::sleep(tail.delay.delay());
            let reply = tokio::select! {
                biased; // fixed branch order: deterministic under simulation
                reply = reads.rx.recv() => reply,
                () = &mut deadline => None,
                () = hedge, if may_hedge => {
                    if tail.budget.spend() {
                        tail.hedges.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let target = reads.spare.remove(0);
                        reads.pending.push(target.node_id.clone());
                        self.ask(target, &reads.id, &reads.tx, reads.known.as_ref());
                        outstanding += 1;
                        hedged = true;
                    } else {
                        budget_left = false; // spares now only stand in for failures
                    }
                    continue;
                }
            };
            let Some(reply) = reply else { break };
            outstanding -= 1;
            reads.pending.retain(|n| *n != reply.target.node_id);
            match reply.state {
                Ok(state) => {
                    // An expired copy is no copy: it is not merged, and its owner gets repaired.
                    let state = state.filter(|cart| !self.store.expired(&reads.id, cart));
                    if let Some(cart) = &state {
                        merged = Some(match merged.take() {
                            // Replicas usually agree: merge only when this one has news.
                            Some(m) if Arc::ptr_eq(&m, cart) || m.covers(cart) => m,
                            // A copy ahead of all before it (a lagging coordinator): no merge,
                            // no copy of a whole cart.
                            Some(m) if cart.covers(&m) => cart.clone(),
                            Some(m) => {
                                let mut m = Arc::unwrap_or_clone(m);
                                m.merge((**cart).clone());
                                Arc::new(m)
                            }
                            None => cart.clone(),
                        });
                    }
                    replies.push((reply.target, state));
                }
                Err(e) => {
                    failures.push(format!("{}: {e}", reply.target.node_id));
                    // Another owner first; a fallback (which holds only hints) when none is left.
                    let next = if reads.spare.is_empty() {
                        let owner = reply.target.hint_for.unwrap_or(reply.target.node_id);
                        reads
                            .taken
                            .reserve(|t| self.cluster.fallback_for(&reads.id, t))
                            .map(|node_id| Target {
                                node_id,
                                hint_for: Some(owner),
                            })
                    } else {
                        Some(reads.spare.remove(0))
                    };
                    if let Some(target) = next {
                        self.ask(target, &reads.id, &reads.tx, reads.known.as_ref());
                        outstanding += 1;
                    }
                }
            }
            if replies.len() >= reads.r {
                if let Some(tx) = answer.take() {
                    let _ = tx.send(Ok(merged.clone().unwrap_or_default()));
                    // Peers a hedge overtook were slower than a replica asked after them.
                    if hedged {
                        for node in &reads.pending {
                            tail.outliers.slow(node, self.cluster.topology().members().len());
                        }
                    } else {
                        for (target, _) in &replies {
                            tail.outliers.good(&target.node_id);
                        }
                    }
                }
            }
        }
        if let Some(tx) = answer.take() {
            let _ = tx.send(Err(NodeError::QuorumNotReached {
                verb: "answered",
                acked: replies.len(),
                required: reads.r,
                detail: if failures.is_empty() {
                    format!("owners {}", reads.owners.join(","))
                } else {
                    failures.join("; ")
                },
            }));
            return;
        }
        // Dynamo's measure of divergence: how many distinct versions this read met.
        // A replica holding nothing is a version of its own.
        let mut versions: Vec<Option<&Context>> = Vec::new();
        for state in replies
            .iter()
            .map(|(_, state)| state.as_ref().map(|cart| cart.context()))
        {
            if !versions.contains(&state) {
                versions.push(state);
            }
        }
        self.store.metrics.read_versions.observe(versions.len() as f64);
        if let Some(merged) = merged {
            self.repair(&reads.id, merged, replies).await;
        }
    }

    /// Read repair: send the merged state to every owner that answered with something else.
    async fn repair(&self, id: &CartId, merged: Arc<Cart>, replies: Vec<(Target, Option<Arc<Cart>>)>) {
        // Owners asked (not stand-ins) whose cart is not the merge.
        let stale: Vec<Target> = replies
            .into_iter()
            .filter(|(t, state)| {
                t.hint_for.is_none()
                    && !state
                        .as_ref()
                        .is_some_and(|c| Arc::ptr_eq(c, &merged) || c.context() == merged.context())
            })
            .map(|(t, _)| t)
            .collect();
        if stale.is_empty() {
            return; // the usual case: every owner asked already holds the merge
        }
        self.store.metrics.read_repairs.inc_by(stale.len() as u64);
        let context = merged.context().clone();
        // The merge is usually this node's own cached cart: held over the wait below, it would
        // make the next write of the cart copy it whole. It is taken from the store again when
        // needed (the store then holds at least the merge).
        let mut merged = Some(merged).filter(|m| !self.store.read(id).is_ok_and(|local| Arc::ptr_eq(&local, m)));
        let mut bytes = None;
        for target in stale {
            if target.node_id == self.cluster.self_id {
                tracing::debug!(cart_id = %id, "read repair of this node");
                let Some(m) = &merged else { continue };
                if let Err(e) = self.store.merge(id, (**m).clone()).await {
                    tracing::warn!(cart_id = %id, error = %e, "local read repair failed");
                }
                continue;
            }
            let Ok(_permit) = self.background.try_acquire() else {
                continue; // busy: anti-entropy converges it
            };
            // An owner behind only by writes still on their way (the usual case under load)
            // catches up by itself: look again after a moment with a digest read, and ship the
            // whole cart only if it still differs.
            // (The background permit is held across the wait: repairs are bounded with the other
            // background calls.)
            tokio::time::sleep(REPAIR_RECHECK_AFTER).await;
            if !self.still_behind(&target.node_id, id, &context).await {
                continue;
            }
            if bytes.is_none() {
                let cart = match merged.take() {
                    Some(m) => m,
                    None => match self.store.read(id) {
                        Ok(local) => local,
                        Err(_) => return,
                    },
                };
                let Ok(encoded) = codec::encode(&cart) else {
                    return;
                };
                bytes = Some(encoded);
            }
            tracing::debug!(cart_id = %id, node = %target.node_id, "read repair");
            if let Some(bytes) = &bytes {
                let _ = self.call_replicate(&target.node_id, id, bytes, &[], None).await;
            }
        }
    }
}
