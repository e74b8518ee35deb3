//! Smoke test of the simulation tier: a 5-node cluster under turmoil, one client adding 20 items
//! while one owner is partitioned from another and a third crashes and restarts. Every
//! acknowledged add must be in the final read, the owners' replicas must converge to identical
//! canonical bytes, and the same seed must give the same outcomes.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cart_client::ItemSnapshot;
use cart_jepsen::sim::{sim_client, sim_client_options, SimCluster, SimOptions};

const CART: &str = "user:sim-smoke";
const ADDS: usize = 20;
/// Simulated time between two adds.
const ADD_GAP: Duration = Duration::from_millis(150);
/// How long (simulated) the owners get to converge after the client is done.
const CONVERGE_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ack,
    Fail(String),
}

#[derive(Debug, Clone)]
enum Fault {
    Partition(String, String),
    Repair(String, String),
    Crash(String),
    Bounce(String),
}

struct Run {
    outcomes: Vec<Outcome>,
    /// Product ids of the final read.
    read: Vec<String>,
    /// Each owner's canonical replica once converged.
    replicas: Vec<(String, Vec<u8>)>,
    /// Simulated time when the client finished, and when the owners had converged.
    client_done: Duration,
    converged: Duration,
    wall: Duration,
}

fn schedule(owners: &[String]) -> Vec<(Duration, Fault)> {
    let ms = Duration::from_millis;
    let (first, second, third) = (owners[0].clone(), owners[1].clone(), owners[2].clone());
    // The first owner is where the client sends its adds: crashing it cuts writes in flight.
    vec![
        (ms(400), Fault::Partition(second.clone(), third.clone())),
        (ms(905), Fault::Crash(first.clone())),
        (ms(1_800), Fault::Bounce(first)),
        (ms(2_400), Fault::Repair(second, third)),
    ]
}

fn apply(cluster: &mut SimCluster, fault: &Fault) {
    match fault {
        Fault::Partition(a, b) => cluster.partition(a, b),
        Fault::Repair(a, b) => cluster.repair(a, b),
        Fault::Crash(h) => cluster.crash(h),
        Fault::Bounce(h) => cluster.bounce(h),
    }
}

fn run(seed: u64) -> Run {
    let wall = Instant::now();
    let mut cluster = SimCluster::new(seed, 5, SimOptions::default()).expect("a simulated cluster");
    let owners = cluster.owners(CART);
    assert_eq!(owners.len(), 3, "N = 3");
    let endpoints = cluster.endpoints();
    let outcomes = Rc::new(RefCell::new(Vec::new()));
    let read = Rc::new(RefCell::new(Vec::new()));
    {
        let (outcomes, read) = (outcomes.clone(), read.clone());
        cluster.sim.client("client", async move {
            // Request ids numbered, not random: the replicas hold them, and a replay must match.
            let options = cart_client::ClientOptions {
                request_id_prefix: Some("smoke".into()),
                ..sim_client_options()
            };
            let client = sim_client(&endpoints, options).await?;
            for i in 0..ADDS {
                let snapshot = ItemSnapshot::new(format!("item {i}"), 100 + i as u64, "EUR");
                let outcome = match client.add_item(CART, &format!("sku-{i:02}"), 1, snapshot).await {
                    Ok(_) => Outcome::Ack,
                    Err(e) => Outcome::Fail(format!("{:?}", e.code())),
                };
                outcomes.borrow_mut().push(outcome);
                tokio::time::sleep(ADD_GAP).await;
            }
            let view = client.get_cart(CART).await?;
            *read.borrow_mut() = view.lines.into_iter().map(|l| l.product_id).collect();
            Ok(())
        });
    }

    let mut faults = schedule(&owners).into_iter().peekable();
    loop {
        while let Some((_, fault)) = faults.next_if(|(at, _)| cluster.sim.elapsed() >= *at) {
            apply(&mut cluster, &fault);
        }
        if cluster.sim.step().unwrap_or_else(|e| panic!("seed {seed}: {e}")) {
            break;
        }
    }
    // Whatever did not happen yet heals now (the client was quick).
    for (_, fault) in faults {
        apply(&mut cluster, &fault);
    }
    let client_done = cluster.sim.elapsed();

    // Convergence wait: the nodes keep running until every owner holds the same canonical bytes.
    let canonical = |cluster: &SimCluster| -> Vec<(String, Option<Vec<u8>>)> {
        owners
            .iter()
            .map(|h| {
                (
                    h.clone(),
                    cluster.canonical_cart(h, CART).expect("a replica that decodes"),
                )
            })
            .collect()
    };
    let deadline = client_done + CONVERGE_MAX;
    let replicas = loop {
        let replicas = canonical(&cluster);
        let first = &replicas[0].1;
        if first.is_some() && replicas.iter().all(|(_, r)| r == first) {
            break replicas;
        }
        assert!(
            cluster.sim.elapsed() < deadline,
            "seed {seed}: owners did not converge within {CONVERGE_MAX:?}: {:?}",
            replicas
                .iter()
                .map(|(h, r)| (h, r.as_ref().map(Vec::len)))
                .collect::<Vec<_>>()
        );
        for _ in 0..100 {
            cluster.sim.step().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
    };
    let converged = cluster.sim.elapsed();
    let outcomes = outcomes.borrow().clone();
    let read = read.borrow().clone();
    Run {
        outcomes,
        read,
        replicas: replicas.into_iter().map(|(h, r)| (h, r.unwrap_or_default())).collect(),
        client_done,
        converged,
        wall: wall.elapsed(),
    }
}

fn check(seed: u64, run: &Run) {
    assert_eq!(run.outcomes.len(), ADDS, "seed {seed}: every add has an outcome");
    for (i, outcome) in run.outcomes.iter().enumerate() {
        let product = format!("sku-{i:02}");
        if *outcome == Outcome::Ack {
            assert!(
                run.read.contains(&product),
                "seed {seed}: acknowledged add of {product} is missing from the final read {:?}",
                run.read
            );
        }
    }
    let first = &run.replicas[0].1;
    for (host, bytes) in &run.replicas {
        assert_eq!(
            bytes, first,
            "seed {seed}: owner {host} differs from {}",
            run.replicas[0].0
        );
    }
}

fn report(seed: u64, run: &Run) {
    let acks = run.outcomes.iter().filter(|o| **o == Outcome::Ack).count();
    let fails: Vec<&String> = run
        .outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Fail(code) => Some(code),
            Outcome::Ack => None,
        })
        .collect();
    eprintln!(
        "seed {seed}: {acks}/{ADDS} acked (failed: {fails:?}), {} lines read, client done at {:?}, converged at {:?} (simulated); wall {:?}",
        run.read.len(),
        run.client_done,
        run.converged,
        run.wall
    );
}

#[test]
fn acknowledged_adds_survive_a_partition_and_a_crash_and_owners_converge() {
    for seed in [1, 2, 3] {
        let run = run(seed);
        report(seed, &run);
        check(seed, &run);
    }
}

#[test]
fn the_same_seed_gives_the_same_outcomes() {
    let seed = 42;
    let (a, b) = (run(seed), run(seed));
    report(seed, &a);
    report(seed, &b);
    check(seed, &a);
    assert_eq!(
        a.outcomes, b.outcomes,
        "seed {seed}: ack/fail sequence differs between two runs"
    );
    assert_eq!(a.read, b.read, "seed {seed}: final read differs between two runs");
    assert_eq!(
        a.replicas, b.replicas,
        "seed {seed}: converged replicas differ between two runs"
    );
    assert_eq!(
        (a.client_done, a.converged),
        (b.client_done, b.converged),
        "seed {seed}: timeline differs between two runs"
    );
}
