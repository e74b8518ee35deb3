//! Deliberate breakage for harness tests (feature `test-broken-merge` only).
//!
//! The switch is per thread: a deterministic simulation runs a whole cluster on one thread, so
//! turning it on there breaks that cluster and leaves tests on other threads alone.

use std::cell::Cell;

thread_local! {
    static LWW: Cell<bool> = const { Cell::new(false) };
}

/// Makes [`crate::Cart::merge`] on this thread keep the state touched last instead of merging.
pub fn set_lww(on: bool) {
    LWW.with(|c| c.set(on));
}

/// Whether merges on this thread are sabotaged.
pub fn lww() -> bool {
    LWW.with(Cell::get)
}
