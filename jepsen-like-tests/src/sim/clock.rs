//! Simulated wall-clock time for nodes.

use std::time::Duration;

use cart_node::clock::Clock;

/// Unix time (ms) at which every simulation starts: 2023-11-14T22:13:20Z. Fixed, so cart
/// timestamps (and so stored bytes) depend on the seed only.
pub const SIM_EPOCH_MS: u64 = 1_700_000_000_000;

/// A node's clock under turmoil: [`SIM_EPOCH_MS`] plus the simulation's elapsed virtual time.
/// Outside a simulation it stays at the epoch.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    epoch_ms: u64,
}

impl SimClock {
    /// A clock starting at `epoch_ms` when the simulation starts.
    pub fn new(epoch_ms: u64) -> Self {
        SimClock { epoch_ms }
    }
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock::new(SIM_EPOCH_MS)
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let elapsed = turmoil::sim_elapsed().unwrap_or(Duration::ZERO);
        self.epoch_ms
            .saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The wall clock of simulated clients (their write deadlines): the nodes' clock, unskewed.
pub fn sim_now_ms() -> u64 {
    SimClock::default().now_ms()
}
