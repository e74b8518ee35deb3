//! The node's error type and the one place errors become gRPC statuses.

use cart_crdt::CartError;
use thiserror::Error;
use tonic::Status;

use crate::storage::StorageError;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Cart(#[from] CartError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("node overloaded: {what} in flight (limit {limit}); retry later")]
    Overloaded { what: &'static str, limit: usize },
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        let message = e.to_string();
        match e {
            NodeError::Cart(CartError::InvalidArgument { .. }) => Status::invalid_argument(message),
            NodeError::Cart(CartError::LimitExceeded { .. }) | NodeError::Overloaded { .. } => {
                Status::resource_exhausted(message)
            }
            NodeError::Cart(CartError::NotFound { .. }) => Status::not_found(message),
            NodeError::Cart(
                CartError::Decode { .. } | CartError::Encode { .. } | CartError::UnsupportedFormat { .. },
            ) => Status::data_loss(message),
            NodeError::Storage(_) => Status::internal(message),
        }
    }
}
