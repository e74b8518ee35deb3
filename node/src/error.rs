//! The node's error type and the one place errors become gRPC statuses.

use cart_crdt::CartError;
use thiserror::Error;
use tonic::Status;

use crate::storage::StorageError;

/// How a node whose storage does not take writes starts its refusals (peers recognise it).
pub const DEGRADED: &str = "node storage degraded";

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Cart(#[from] CartError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("node overloaded: {what} in flight (limit {limit}); retry later")]
    Overloaded { what: &'static str, limit: usize },
    #[error("invalid {field}: {value} must be between 1 and n = {n}")]
    BadQuorum { field: &'static str, value: u32, n: usize },
    /// Fewer replicas than the quorum answered in time. The write may still have been applied
    /// by those that did (and will spread): its outcome is unknown to the client.
    #[error("only {acked} of the {required} replicas needed {verb} in time ({detail})")]
    QuorumNotReached {
        verb: &'static str,
        acked: usize,
        required: usize,
        detail: String,
    },
    #[error("no replica of {cart_id} is reachable ({detail})")]
    NoReplica { cart_id: String, detail: String },
    /// A peer answered with this status (for a forwarded request): passed through as is.
    #[error("{}", .0.message())]
    Remote(Status),
    #[error("peer sent a bad message: {reason}")]
    BadPeerMessage { reason: String },
    #[error("this node holds hints_max = {limit} hints already")]
    HintsFull { limit: usize },
    /// A delta arrived before writes it was built on: the sender must ship the whole cart.
    #[error("replica of {cart_id} lacks writes the delta was built on; send the whole cart")]
    MissingHistory { cart_id: String },
    #[error("{node} is not an owner of {cart_id}; check that every node has the same membership")]
    NotOwner { node: String, cart_id: String },
    #[error("internal call without the cluster secret ({header})")]
    Unauthenticated { header: &'static str },
    #[error("configuration: {reason}")]
    Config { reason: String },
    /// This node's storage does not take writes now; nothing was applied (another owner can).
    #[error("{DEGRADED}: {reason}")]
    Degraded { reason: String },
    #[error("anti-entropy digests are being rebuilt; ask again later")]
    Rebuilding,
    #[error("membership change refused: {reason}")]
    LayoutRefused { reason: String },
    #[error("membership change lost a race: {reason}")]
    LayoutConflict { reason: String },
    #[error("change not committed: {reason}")]
    NoMajority { reason: String },
    /// A pricing document refused whole (the key and why).
    #[error(transparent)]
    Pricing(#[from] cart_crdt::pricing::PricingError),
    #[error("pricing rules not set: {reason}")]
    PricingConflict { reason: String },
    /// The client's deadline for this write passed before any owner began it (by their clocks):
    /// it was not applied and never will be.
    #[error("the write's deadline ({header} {deadline_ms}) passed {late_ms} ms before this node could begin it; nothing was applied")]
    DeadlinePassed {
        header: &'static str,
        deadline_ms: u64,
        late_ms: u64,
    },
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        let message = e.to_string();
        match e {
            NodeError::Cart(CartError::InvalidArgument { .. }) | NodeError::BadQuorum { .. } => {
                Status::invalid_argument(message)
            }
            NodeError::Cart(CartError::LimitExceeded { .. }) | NodeError::Overloaded { .. } => {
                Status::resource_exhausted(message)
            }
            NodeError::Cart(CartError::NotFound { .. }) => Status::not_found(message),
            NodeError::Cart(CartError::Stale { .. }) => Status::failed_precondition(message),
            NodeError::Cart(
                CartError::Decode { .. } | CartError::Encode { .. } | CartError::UnsupportedFormat { .. },
            ) => Status::data_loss(message),
            NodeError::QuorumNotReached { verb, .. } => {
                let mut status = Status::unavailable(message);
                if verb == "acknowledged" {
                    // The write is durable on this node and spreading: retrying it could apply it
                    // twice.
                    status.metadata_mut().insert(
                        cart_proto::OUTCOME_HEADER,
                        tonic::metadata::MetadataValue::from_static("unknown"),
                    );
                }
                status
            }
            NodeError::NoReplica { .. } => Status::unavailable(message),
            NodeError::Remote(status) => status,
            NodeError::BadPeerMessage { .. } => Status::invalid_argument(message),
            NodeError::HintsFull { .. } => Status::resource_exhausted(message),
            NodeError::NotOwner { .. } | NodeError::MissingHistory { .. } => Status::failed_precondition(message),
            NodeError::Unauthenticated { .. } => Status::unauthenticated(message),
            NodeError::LayoutRefused { .. } => Status::failed_precondition(message),
            NodeError::LayoutConflict { .. } | NodeError::PricingConflict { .. } => Status::aborted(message),
            NodeError::Pricing(_) => Status::invalid_argument(message),
            NodeError::NoMajority { .. } | NodeError::Rebuilding => Status::unavailable(message),
            // A storage fault is this node's, not the request's: another owner can take it.
            NodeError::Degraded { .. } => Status::unavailable(message),
            NodeError::Storage(_) => Status::unavailable(format!("{DEGRADED}: {message}")),
            NodeError::Config { .. } => Status::internal(message),
            NodeError::DeadlinePassed { .. } => {
                let mut status = Status::deadline_exceeded(message);
                status.metadata_mut().insert(
                    cart_proto::OUTCOME_HEADER,
                    tonic::metadata::MetadataValue::from_static(cart_proto::OUTCOME_NONE),
                );
                status
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_missed_its_quorum_says_its_outcome_is_unknown() {
        let write = Status::from(NodeError::QuorumNotReached {
            verb: "acknowledged",
            acked: 1,
            required: 2,
            detail: String::new(),
        });
        assert_eq!(write.code(), tonic::Code::Unavailable);
        assert!(write.message().contains("1 of the 2"), "{write:?}");
        assert!(
            cart_proto::outcome_unknown(&write),
            "a retry elsewhere could apply it twice"
        );

        let read = Status::from(NodeError::QuorumNotReached {
            verb: "answered",
            acked: 1,
            required: 2,
            detail: String::new(),
        });
        assert_eq!(read.code(), tonic::Code::Unavailable);
        assert!(!cart_proto::outcome_unknown(&read), "reads are safe to retry");
        let unreached = Status::from(NodeError::NoReplica {
            cart_id: "user:x".into(),
            detail: String::new(),
        });
        assert!(!cart_proto::outcome_unknown(&unreached));
    }

    #[test]
    fn a_write_past_its_deadline_says_it_was_not_applied() {
        let late = Status::from(NodeError::DeadlinePassed {
            header: cart_proto::DEADLINE_HEADER,
            deadline_ms: 1_000,
            late_ms: 5,
        });
        assert_eq!(late.code(), tonic::Code::DeadlineExceeded);
        assert!(cart_proto::outcome_none(&late), "{late:?}");
        assert!(!cart_proto::outcome_unknown(&late));
        assert!(late.message().contains("x-cartdb-deadline-ms 1000"), "{late:?}");
    }
}
