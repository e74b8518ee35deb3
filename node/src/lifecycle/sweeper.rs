//! The expiry sweeper: pages through this node's replicas and deletes the expired ones
//! (`CartStore::sweep_page`). Expiry is decided from each cart's own state, so replicas sweep
//! independently and agree; an expired copy that arrives later is dropped on arrival.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::coordinator::Coordinator;

/// Carts looked at per page; the sweeper sleeps between pages so it never holds a worker long.
pub const SWEEP_PAGE: usize = 256;
/// Pause between two pages of one pass.
const PAGE_PAUSE: Duration = Duration::from_millis(20);

/// Runs a pass every `sweep_interval` until `stop` turns true.
pub async fn run(coordinator: Arc<Coordinator>, mut stop: watch::Receiver<bool>) {
    let interval = coordinator.cluster.config.sweep_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let mut after: Option<Vec<u8>> = None;
        let mut swept = 0usize;
        loop {
            if *stop.borrow() {
                return;
            }
            match coordinator.store.sweep_page(after.as_deref(), SWEEP_PAGE).await {
                Ok((Some(last), n)) => {
                    swept += n;
                    after = Some(last);
                }
                Ok((None, n)) => {
                    swept += n;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "expiry sweep stopped; the next pass starts over");
                    break;
                }
            }
            tokio::time::sleep(PAGE_PAUSE).await;
        }
        if swept > 0 {
            tracing::info!(swept, "expired carts deleted");
        }
    }
}
