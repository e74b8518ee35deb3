//! `cart-bench`: the load generator for cartdb and the peer it is compared with (Redis).
//!
//! Contract:
//! - **What it measures.** For one profile (an operation mix over a population of carts drawn
//!   Zipfian or uniform), it drives load for a fixed duration, closed loop (C workers back to back)
//!   or open loop (`--rate`, at most C in flight), and records per operation and overall: count,
//!   not_found, errors, dropped, ops/s and HDR latency percentiles (p50, p95, p99, p99.9, max, in
//!   µs). Open-loop latency runs from each request's *intended* send time, so a stalled target
//!   is not hidden by coordinated omission; a send that finds the in-flight bound full is counted
//!   as dropped, never skipped silently.
//! - **Every loop ends by itself**: issuing stops at the deadline, requests still in flight get a
//!   bounded drain timeout and are counted as `ABANDONED` errors after it.
//! - **It never asserts timings.** Numbers are reported (a table on stdout, JSON to `--json`),
//!   never compared with thresholds; its own tests check counts, proportions and report shape,
//!   using an in-memory target and no network.
//! - **All traffic goes to the given `--target`s** and nowhere else; tests and scripts only name
//!   loopback addresses (`127.0.0.1`).
//! - NOT_FOUND (removing a line or coupon the cart does not hold) is an expected answer in a random
//!   workload: it counts as completed and is reported apart as `not_found`.
//!
//! Layout: [`profile`] (mixes) → [`workload`] (concrete ops) → [`target`] (who serves them:
//! cartdb, or Redis as a storefront would use it, [`redis_target`]) → [`runner`] (closed/open
//! loop, with the [`schedule`] timetable) → [`stats`] (HDR histograms) → [`report`] (table and
//! JSON).
//! [`cli`] and [`app`] are the binary's command line and top level.

pub mod app;
pub mod cli;
pub mod error;
pub mod profile;
pub mod redis_target;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod stats;
pub mod target;
pub mod workload;

pub use error::BenchError;
