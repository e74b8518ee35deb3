//! The deterministic-simulation tier in CI: `CART_JEPSEN_SIM_SEEDS` seeds (200 unless set), each
//! a whole 5-node cluster under turmoil with every simulated nemesis and both workloads. A failing
//! seed is printed with its replay command. And the proof that the checker has teeth: a build
//! whose merge is last-writer-wins fails.

use std::process::Command;

use cart_jepsen::simulate::{self, SimRun};

fn seeds() -> String {
    std::env::var("CART_JEPSEN_SIM_SEEDS").unwrap_or_else(|_| "200".into())
}

fn cart_jepsen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cart-jepsen"))
        .args(args)
        .output()
        .expect("run cart-jepsen")
}

#[test]
fn simulation_seeds_all_valid() {
    // Each seed in a fresh process, two at a time: exactly what `sim --seed N` replays.
    let out = cart_jepsen(&["sim", "--seed", "0", "--seeds", &seeds(), "--jobs", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "simulation seeds failed: {stderr}");
    assert!(stdout.contains("lost acknowledged adds: 0"), "{stdout}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

#[test]
fn a_seed_replays_its_schedule_and_workload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut runs = Vec::new();
    for run in ["a", "b"] {
        let report = dir.path().join(run);
        let out = cart_jepsen(&["sim", "--seed", "7", "--report", report.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let history = std::fs::read_to_string(report.join("seed-7").join("history.jsonl")).expect("history");
        runs.push(history);
    }
    let faults = |h: &str| -> Vec<String> {
        h.lines()
            .filter(|l| l.contains(r#""type":"fault""#))
            .map(String::from)
            .collect()
    };
    assert!(!faults(&runs[0]).is_empty(), "seed 7 injected no fault");
    assert_eq!(
        faults(&runs[0]),
        faults(&runs[1]),
        "the fault schedule differs between replays"
    );
    // The operations match too, unless CPU contention shifted a message by a tick (turmoil's
    // per-host clocks start from the real clock): report how far they agree.
    let (a, b): (Vec<&str>, Vec<&str>) = (runs[0].lines().collect(), runs[1].lines().collect());
    let same = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    println!("replay agreed on {same} of {} history lines", a.len());
    assert!(same > 10, "the replay diverged at once");
}

#[test]
fn a_bad_seed_argument_is_refused() {
    let out = cart_jepsen(&["sim", "--nemesis", "meteor"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown nemesis"));
}

#[test]
fn last_writer_wins_merge_loses_acknowledged_adds() {
    // The whole simulated cluster runs on this thread, so the sabotage stays inside it.
    cart_crdt::sabotage::set_lww(true);
    let mut lost = Vec::new();
    for seed in 0..4 {
        let result = simulate::run(&SimRun::ci(seed)).expect("run");
        lost.push(result.verdict.lost_items.len());
        assert!(
            !result.verdict.valid,
            "seed {seed}: the checker passed a last-writer-wins store"
        );
    }
    cart_crdt::sabotage::set_lww(false);
    assert!(lost.iter().all(|n| *n > 0), "lost acknowledged adds per seed: {lost:?}");
}
