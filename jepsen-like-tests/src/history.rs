//! The history of one run: every client operation with its outcome and times, and every fault
//! with the interval it was active. Written as JSONL (one record a line), read back by the
//! checker and the report.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use cart_client::ClientError;
use serde::{Deserialize, Serialize};
use tonic::Code;

/// How an operation ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// Refused by the server before it changed anything (definite).
    Fail,
    /// Timed out, connection lost, or W not reached: it may or may not have taken effect.
    Unknown,
}

impl Outcome {
    /// Classifies a client error. Only refusals that a server gives before applying anything
    /// count as definite failures; every transport or quorum error may have taken effect.
    pub fn of_error(error: &ClientError) -> Outcome {
        match error.code() {
            Some(
                Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::ResourceExhausted
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::Unimplemented,
            ) => Outcome::Fail,
            // OUT_OF_RANGE included: the transport can cut a reply after the server applied it.
            Some(_) => Outcome::Unknown,
            // The server answered OK without a cart: applied.
            None if matches!(error, ClientError::EmptyReply) => Outcome::Unknown,
            // Other client-side errors (bad endpoint, usage) are raised before any call.
            None => Outcome::Fail,
        }
    }
}

/// What an operation was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum OpKind {
    /// Add one unit of a unique item (cart-set), or the line's first `delta` units (quantity).
    Add { item: String, delta: i64 },
    /// Remove an item the client had read.
    Remove { item: String },
    /// Adjust a line's quantity by a signed delta.
    Adjust { item: String, delta: i64 },
    /// Read the cart; `seen` holds the products present (when ok).
    Read { seen: Vec<String> },
    /// Merge a guest cart into this (user) cart at login.
    Merge { guest: String },
    /// Check out the version a read showed: `seen` its products, `ordered` the order's (when ok).
    Checkout { seen: Vec<String>, ordered: Vec<String> },
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub process: usize,
    /// The node this client sends to first.
    pub node: String,
    pub workload: String,
    pub cart: String,
    #[serde(flatten)]
    pub kind: OpKind,
    /// The write's request id: attempts with one id are one request (applied at most once).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub request_id: Option<String>,
    /// Sent by a client that fails over to other nodes (as `cart-client` does by default),
    /// rather than one attached to `node`.
    #[serde(default)]
    pub failover: bool,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Microseconds since the run started.
    pub start_us: u64,
    pub end_us: u64,
}

impl Op {
    pub fn is_write(&self) -> bool {
        !matches!(self.kind, OpKind::Read { .. })
    }

    /// The guest cart a merge wrote besides its user cart.
    pub fn merged_guest(&self) -> Option<&str> {
        match &self.kind {
            OpKind::Merge { guest } => Some(guest),
            _ => None,
        }
    }
}

/// One fault, active from `start_us` until `end_us` (healed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpan {
    pub nemesis: String,
    pub detail: String,
    pub start_us: u64,
    pub end_us: u64,
}

/// A line of the JSONL history.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record {
    Op(Op),
    Fault(FaultSpan),
}

/// Collects operations from many client tasks. Bounded by the run: every client stops at the
/// time limit, so the history holds at most (clients × ops a client can do in that time).
#[derive(Clone, Default)]
pub struct Recorder {
    ops: Arc<Mutex<Vec<Op>>>,
    faults: Arc<Mutex<Vec<FaultSpan>>>,
}

impl Recorder {
    pub fn op(&self, op: Op) {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner).push(op);
    }

    pub fn fault(&self, fault: FaultSpan) {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner).push(fault);
    }

    /// Everything recorded so far, operations sorted by start time.
    pub fn history(&self) -> History {
        let mut ops = self.ops.lock().unwrap_or_else(PoisonError::into_inner).clone();
        ops.sort_by_key(|o| (o.start_us, o.process));
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner).clone();
        faults.sort_by_key(|f| f.start_us);
        History { ops, faults }
    }
}

/// A finished run's operations and faults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Op>,
    pub faults: Vec<FaultSpan>,
}

impl History {
    pub fn write_jsonl(&self, path: &Path) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        let records = self
            .faults
            .iter()
            .cloned()
            .map(Record::Fault)
            .chain(self.ops.iter().cloned().map(Record::Op));
        for record in records {
            serde_json::to_writer(&mut out, &record)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    pub fn read_jsonl(path: &Path) -> std::io::Result<History> {
        let mut history = History::default();
        for (n, line) in std::io::BufReader::new(std::fs::File::open(path)?).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let record: Record = serde_json::from_str(&line)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("line {}: {e}", n + 1)))?;
            match record {
                Record::Op(op) => history.ops.push(op),
                Record::Fault(f) => history.faults.push(f),
            }
        }
        Ok(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trip() {
        let history = History {
            ops: vec![Op {
                process: 3,
                node: "n2".into(),
                workload: "cart-set".into(),
                cart: "guest:set-0".into(),
                kind: OpKind::Read {
                    seen: vec!["p1-0".into()],
                },
                request_id: Some("r-1".into()),
                failover: true,
                outcome: Outcome::Ok,
                error: None,
                start_us: 10,
                end_us: 20,
            }],
            faults: vec![FaultSpan {
                nemesis: "kill".into(),
                detail: "n1".into(),
                start_us: 5,
                end_us: 50,
            }],
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.jsonl");
        history.write_jsonl(&path).expect("write");
        assert_eq!(History::read_jsonl(&path).expect("read"), history);
    }

    #[test]
    fn transport_errors_are_unknown_and_refusals_fail() {
        let status = |code| ClientError::Status {
            code,
            message: String::new(),
            endpoint: String::new(),
        };
        assert_eq!(Outcome::of_error(&status(Code::Unavailable)), Outcome::Unknown);
        assert_eq!(Outcome::of_error(&status(Code::DeadlineExceeded)), Outcome::Unknown);
        assert_eq!(Outcome::of_error(&status(Code::NotFound)), Outcome::Fail);
        assert_eq!(Outcome::of_error(&status(Code::ResourceExhausted)), Outcome::Fail);
    }
}
