//! `cart-jepsen`: cartdb's partition-injection harness (DESIGN §8, tiers 3 and 4).
//!
//! Contract:
//! - Workloads ([`workload`]) run through `cart-client`, each client process attached to one node,
//!   and record every operation as ok / fail / unknown with start and end times ([`history`]).
//! - Faults are drawn from a seed ([`nemesis`]) and always heal before the final phase.
//! - The [`checker`] is a pure function of the history and of every owner replica's final state:
//!   acknowledged adds lost, removed items back, phantom items, counters outside the pn-counter
//!   range, and divergent replicas must all be 0.
//! - Two tiers carry out the same workloads and checks: [`real`] (cartd processes in Linux network
//!   namespaces, nft, signals, libfaketime) and [`sim`] (a whole cluster in one process under
//!   turmoil, deterministic by seed).
//! - [`report`] prints a Jepsen-style summary and writes a self-contained HTML report.

pub mod checker;
pub mod history;
pub mod membership;
pub mod nemesis;
pub mod real;
pub mod report;
pub mod sim;
pub mod simulate;
pub mod workload;
