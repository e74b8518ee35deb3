use thiserror::Error;

/// Everything a cart operation, validation or decode can refuse. Each variant names the field
/// (as spelled in the public API) so callers can map it to a precise status.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CartError {
    /// The input is malformed: wrong format, out of range, empty.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The input is well formed but would take the cart past a documented limit.
    #[error("limit exceeded for {field}: {reason}")]
    LimitExceeded { field: &'static str, reason: String },
    /// The operation names something the cart does not hold.
    #[error("{field}: {reason}")]
    NotFound { field: &'static str, reason: String },
    /// The request was built on a state that has moved on in a way it cannot follow (a
    /// checkout of a version older than another checkout).
    #[error("{field}: {reason}")]
    Stale { field: &'static str, reason: String },
    /// Stored bytes that cannot be decoded.
    #[error("cannot decode stored cart: {reason}")]
    Decode { reason: String },
    /// A cart that cannot be encoded (should not happen for in-memory values).
    #[error("cannot encode cart: {reason}")]
    Encode { reason: String },
    /// Stored bytes written by an unknown format version.
    #[error("unsupported cart format version {version}")]
    UnsupportedFormat { version: u8 },
}

impl CartError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        CartError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
    pub(crate) fn limit(field: &'static str, reason: impl Into<String>) -> Self {
        CartError::LimitExceeded {
            field,
            reason: reason.into(),
        }
    }
    pub(crate) fn not_found(field: &'static str, reason: impl Into<String>) -> Self {
        CartError::NotFound {
            field,
            reason: reason.into(),
        }
    }
}
