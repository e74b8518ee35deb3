//! The deterministic-simulation tier in CI: `CART_JEPSEN_SIM_SEEDS` seeds (200 unless set), in
//! four shards so the two cores share them, each a whole 5-node cluster under turmoil with every
//! simulated nemesis and both workloads. A failing seed is printed with its replay command.
//! And the proof that the checker has teeth: a build whose merge is last-writer-wins fails.

use cart_jepsen::simulate::{self, SimRun};

const SHARDS: u64 = 4;

fn seeds() -> u64 {
    std::env::var("CART_JEPSEN_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

fn shard(index: u64) {
    let mut failed = Vec::new();
    let mut ran = 0;
    for seed in (index..seeds()).step_by(SHARDS as usize) {
        let result = simulate::run(&SimRun::ci(seed)).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(
            result.history.ops.len() > 100,
            "seed {seed}: only {} operations",
            result.history.ops.len()
        );
        if !result.verdict.valid {
            eprintln!(
                "seed {seed} FAILED; replay: cargo run -p cart-jepsen -- sim --seed {seed}\n{}",
                result.summary()
            );
            failed.push(seed);
        }
        ran += 1;
    }
    assert!(ran > 0 || seeds() <= index);
    assert!(
        failed.is_empty(),
        "simulation seeds failed: {failed:?} (replay one with `cargo run -p cart-jepsen -- sim --seed N`)"
    );
}

#[test]
fn simulation_seeds_shard_0() {
    shard(0);
}

#[test]
fn simulation_seeds_shard_1() {
    shard(1);
}

#[test]
fn simulation_seeds_shard_2() {
    shard(2);
}

#[test]
fn simulation_seeds_shard_3() {
    shard(3);
}

#[test]
fn one_seed_replays_identically() {
    let a = simulate::run(&SimRun::ci(7)).expect("run");
    let b = simulate::run(&SimRun::ci(7)).expect("run");
    assert_eq!(a.history, b.history, "seed 7 ran differently twice");
}

#[test]
fn last_writer_wins_merge_loses_acknowledged_adds() {
    // The whole simulated cluster runs on this thread, so the sabotage stays inside it.
    cart_crdt::sabotage::set_lww(true);
    let mut lost = Vec::new();
    for seed in 0..4 {
        let result = simulate::run(&SimRun::ci(seed)).expect("run");
        eprintln!("{}", result.summary());
        lost.push(result.verdict.lost_items.len());
        assert!(
            !result.verdict.valid,
            "seed {seed}: the checker passed a last-writer-wins store"
        );
    }
    cart_crdt::sabotage::set_lww(false);
    assert!(lost.iter().all(|n| *n > 0), "lost acknowledged adds per seed: {lost:?}");
}
