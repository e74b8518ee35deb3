//! The one error type of the library part of `cart-bench` (the binary wraps it in `anyhow`).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BenchError {
    /// A command-line value that parses but makes no sense (zero duration, zero carts, …).
    #[error("{option}: {reason}")]
    InvalidOption { option: &'static str, reason: String },
    /// A `--target KIND=HOST:PORT,…` value that does not parse.
    #[error("invalid --target {spec:?}: {reason}")]
    InvalidTarget { spec: String, reason: String },
    /// Connecting to a target failed before any load was sent.
    #[error("cannot reach target {target}: {reason}")]
    Unreachable { target: String, reason: String },
    /// Reading or writing the report.
    #[error("{what} {path}: {reason}")]
    Report {
        what: &'static str,
        path: String,
        reason: String,
    },
}
