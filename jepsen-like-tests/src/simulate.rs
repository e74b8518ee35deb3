//! The simulation tier: the same workloads, schedule and checker as the real tier, with the
//! whole cluster inside one turmoil simulation ([`crate::sim::SimCluster`]), so one seed gives
//! one run. Faults: the four partition shapes, kill (crash + bounce on the surviving in-memory
//! storage), pause (every message to and from the node held, then released) and membership (a
//! node leaves the layout, joins again at heal, through the admin API). Clock skew and packet
//! loss exist only in the real tier.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::checker::{self, ExpiryRule, ReplicaState, Verdict};
use crate::history::{FaultSpan, History, Recorder};
use crate::membership;
use crate::nemesis::{self, DiskFault, Fault, Nemesis, Step, Timing};
use crate::report::{self, RunInfo};
use crate::sim::{sim_client, sim_client_options, SimCluster, SimOptions, SIM_SECRET};
use crate::workload::{self, Process, Recording, RunClock, Workload};
use cart_client::ClientOptions;
use cart_node::faults::Fault as StorageFault;

/// The faults the simulation can carry out: all but clock skew and packet loss.
pub fn sim_nemeses() -> Vec<Nemesis> {
    nemesis::ALL
        .into_iter()
        .filter(|n| !matches!(n, Nemesis::Clock | Nemesis::Loss))
        .collect()
}

/// Sub-second to seconds faults for simulated time.
pub const SIM_TIMING: Timing = Timing {
    quiet: (Duration::from_millis(300), Duration::from_millis(1500)),
    hold: (Duration::from_millis(500), Duration::from_millis(3000)),
};

/// A client attached to one node: every call goes there, and that node coordinates (or forwards
/// to an owner), so each owner node coordinates writes of its own clients concurrently.
fn attached(name: &str) -> ClientOptions {
    ClientOptions {
        ring_aware: false,
        max_attempts: 2,
        request_id_prefix: Some(name.to_owned()),
        ..sim_client_options()
    }
}

/// A client as `cart-client` is by default: every node, the cart's owners first, writes retried
/// on the next node with their request id.
fn failing_over(name: &str) -> ClientOptions {
    ClientOptions {
        request_id_prefix: Some(name.to_owned()),
        ..sim_client_options()
    }
}

/// Processes per workload that fail over (besides `clients_per_node` attached to each node).
pub const FAILOVER_CLIENTS: usize = 1;

/// One simulated run.
#[derive(Debug, Clone)]
pub struct SimRun {
    pub seed: u64,
    pub nodes: usize,
    /// Simulated seconds of workload under faults.
    pub active: Duration,
    pub nemeses: Vec<Nemesis>,
    pub workloads: Vec<Workload>,
    pub clients_per_node: usize,
    pub think: Duration,
    /// Simulated time allowed for convergence after the active phase.
    pub convergence_limit: Duration,
}

impl SimRun {
    /// The CI default for `seed`: 5 nodes, 6 s of faults, every simulated nemesis and workload.
    pub fn ci(seed: u64) -> SimRun {
        SimRun {
            seed,
            nodes: 5,
            active: Duration::from_secs(6),
            nemeses: sim_nemeses(),
            workloads: vec![
                Workload::CartSet,
                Workload::Quantity,
                Workload::Merge,
                Workload::Checkout,
                Workload::Expiry,
            ],
            clients_per_node: 1,
            think: Duration::from_millis(50),
            convergence_limit: Duration::from_secs(20),
        }
    }
}

/// What a simulated run produced.
pub struct SimResult {
    /// Layout versions committed during the run (the membership nemesis's leaves and rejoins).
    pub layout_changes: u64,
    pub verdict: Verdict,
    pub history: History,
    pub converged: bool,
    pub info: RunInfo,
}

impl SimResult {
    pub fn summary(&self) -> String {
        let mut out = report::summary(&self.info, &self.verdict);
        out.push_str(&format!("layout changes committed: {}\n", self.layout_changes));
        out
    }
}

/// How guest carts expire in the simulation, seen at `now`.
fn expiry_rule(options: &SimOptions, now: Duration) -> ExpiryRule {
    ExpiryRule {
        guest_ttl_us: options.guest_ttl.as_micros() as u64,
        skew_us: options.clock_skew.as_micros() as u64,
        sweep_us: options.sweep_interval.as_micros() as u64,
        end_us: now.as_micros() as u64,
    }
}

fn replicas(cluster: &SimCluster, carts: &BTreeSet<String>) -> Result<Vec<ReplicaState>, String> {
    let mut out = Vec::new();
    for cart in carts {
        for host in cluster.owners(cart) {
            let replica = cluster.replica(&host, cart).map_err(|e| e.to_string())?;
            let (canonical, quantities) = match &replica {
                Some(c) => (
                    cart_crdt::codec::encode(c).map_err(|e| format!("{host} {cart}: {e}"))?,
                    c.raw_quantities(),
                ),
                None => Default::default(),
            };
            out.push(ReplicaState {
                cart: cart.clone(),
                node: host,
                present: replica.is_some(),
                canonical,
                quantities,
            });
        }
    }
    Ok(out)
}

/// Carries out (or undoes) one fault on the simulated cluster. `step` names the fault's
/// operator client (a membership change runs as a client of the cluster).
fn apply(cluster: &mut SimCluster, fault: &Fault, heal: bool, clients: &[String], step: usize) {
    let hosts = cluster.hosts().to_vec();
    match fault {
        Fault::Partition { blocked, .. } => {
            for &(a, b) in blocked {
                if heal {
                    cluster.repair(&hosts[a], &hosts[b]);
                } else {
                    cluster.partition(&hosts[a], &hosts[b]);
                }
            }
        }
        Fault::Kill(nodes) => {
            for &i in nodes {
                if heal {
                    cluster.bounce(&hosts[i]);
                } else {
                    cluster.crash(&hosts[i]);
                }
            }
        }
        Fault::Pause(nodes) => {
            for &i in nodes {
                for other in hosts.iter().chain(clients).filter(|h| **h != hosts[i]) {
                    if heal {
                        cluster.sim.release(hosts[i].as_str(), other.as_str());
                    } else {
                        cluster.sim.hold(hosts[i].as_str(), other.as_str());
                    }
                }
            }
        }
        Fault::Leave(node) => {
            let node_id = hosts[*node].clone();
            let change = match heal {
                false => membership::Change::Leave { node_id },
                true => match cluster.config(&node_id) {
                    Ok(config) => membership::Change::Join {
                        addr: config.listen_addr.to_string(),
                        node_id,
                    },
                    Err(_) => return,
                },
            };
            // Staged and committed on the other nodes (the leaving one hands over, not decides).
            let endpoints: Vec<String> = cluster
                .endpoints()
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i != node)
                .map(|(_, e)| e)
                .collect();
            let name = format!("operator-{step}-{}", if heal { "join" } else { "leave" });
            cluster.sim.client(name.as_str(), async move {
                let connect = crate::sim::sim_client_connector();
                if let Err(e) = membership::apply(&endpoints, SIM_SECRET, &change, &connect, &Default::default()).await
                {
                    tracing::warn!(?change, error = %e, "membership nemesis: change not committed");
                }
                Ok(())
            });
        }
        Fault::Disk { node, fault } => {
            let host = &hosts[*node];
            let Ok(disk) = cluster.disk(host) else { return };
            if !heal {
                disk.set(Some(match fault {
                    DiskFault::NoSpace => StorageFault::NoSpace,
                    DiskFault::WriteError => StorageFault::WriteError,
                    DiskFault::FlushError => StorageFault::FlushError,
                    DiskFault::SlowFlush => StorageFault::SlowFlush(Duration::from_millis(300)),
                    DiskFault::LyingFlush => StorageFault::LyingFlush,
                }));
                return;
            }
            // The disk works again; the node restarts on it (as `cartd` does once its storage
            // recovers): after a lying flush, as after a power loss, without what it never kept.
            cluster.crash(host);
            if *fault == DiskFault::LyingFlush {
                if let Err(e) = disk.crash() {
                    tracing::warn!(error = %e, "disk nemesis: could not undo the lost writes");
                }
            }
            disk.set(None);
            cluster.bounce(host);
        }
        // Not simulated: filtered out of sim schedules.
        Fault::Skew(_) | Fault::Loss { .. } => {}
    }
}

/// Runs one seed to the end and checks it.
pub fn run(opts: &SimRun) -> Result<SimResult, String> {
    let simulated = sim_nemeses();
    let nemeses: Vec<Nemesis> = opts.nemeses.iter().copied().filter(|n| simulated.contains(n)).collect();
    let sim_options = SimOptions {
        simulation_duration: opts.active + opts.convergence_limit + Duration::from_secs(30),
        ..SimOptions::default()
    };
    let mut cluster = SimCluster::new(opts.seed, opts.nodes, sim_options.clone()).map_err(|e| e.to_string())?;
    let endpoints = cluster.endpoints();
    let recorder = Recorder::default();
    let stop = Arc::new(AtomicBool::new(false));
    let setup_done = Arc::new(AtomicBool::new(!opts.workloads.contains(&Workload::Quantity)));
    let converged_flag = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();

    if !setup_done.load(Ordering::SeqCst) {
        let (recorder, endpoints, done) = (recorder.clone(), endpoints.clone(), setup_done.clone());
        clients.push("setup".to_string());
        cluster.sim.client("setup", async move {
            let client = sim_client(&endpoints, sim_client_options()).await?;
            let rec = Recording {
                recorder,
                clock: RunClock::now(),
                process: 0,
                node: "setup".into(),
                workload: Workload::Quantity,
                failover: true,
            };
            // A setup that cannot finish leaves the quantity processes idle (checked: 0 lines).
            if workload::setup_quantity(&client, &rec, &AtomicBool::new(false))
                .await
                .is_ok()
            {
                done.store(true, Ordering::SeqCst);
            }
            Ok(())
        });
    }
    let nodes: Vec<(String, String)> = cluster.hosts().iter().cloned().zip(endpoints.iter().cloned()).collect();
    let plan = workload::plan(&nodes, &opts.workloads, opts.clients_per_node, FAILOVER_CLIENTS);
    for p in plan {
        let (id, targets, node, failover, kind) = (p.id, p.targets, p.node, p.failover, p.workload);
        let name = format!("c{id}");
        clients.push(name.clone());
        let prefix = name.clone();
        let (recorder, stop, setup_done) = (recorder.clone(), stop.clone(), setup_done.clone());
        let (active, think) = (opts.active, opts.think);
        let seed = opts.seed.wrapping_mul(1_000_003).wrapping_add(id as u64);
        let (checkout_carts, index) = (p.checkout_carts, p.checkout_index);
        cluster.sim.client(name.as_str(), async move {
            let clock = RunClock::now();
            let until = Instant::now() + active.saturating_sub(clock.elapsed());
            while kind == Workload::Quantity && !setup_done.load(Ordering::SeqCst) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let options = if failover {
                failing_over(&prefix)
            } else {
                attached(&prefix)
            };
            let client = sim_client(&targets, options).await?;
            let process = Process {
                recording: Recording {
                    recorder,
                    clock,
                    process: id,
                    node,
                    workload: kind,
                    failover,
                },
                client,
                seed,
                until,
                think,
                stop,
                checkout_carts,
                checkout_index: index,
            };
            process.run().await;
            Ok(())
        });
    }
    // After the faults: writes whose outcome stayed unknown are sent again with their ids.
    let healed = Arc::new(AtomicBool::new(false));
    let resolved = Arc::new(AtomicBool::new(false));
    {
        let (recorder, endpoints, healed, resolved) =
            (recorder.clone(), endpoints.clone(), healed.clone(), resolved.clone());
        clients.push("resolver".into());
        let limit = opts.active + opts.convergence_limit;
        cluster.sim.client("resolver", async move {
            let clock = RunClock::now();
            while !healed.load(Ordering::SeqCst) && clock.elapsed() < limit {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let client = sim_client(&endpoints, failing_over("resolver")).await?;
            workload::resolve_unknown(&client, &recorder, clock).await;
            resolved.store(true, Ordering::SeqCst);
            Ok(())
        });
    }
    {
        let flag = converged_flag.clone();
        cluster.sim.client("checker", async move {
            // Bounded by the outer loop, which sets the flag by `active + convergence_limit`.
            while !flag.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(())
        });
    }

    let steps: Vec<Step> = nemesis::schedule(opts.seed, &nemeses, opts.nodes, opts.active, SIM_TIMING);
    let names = cluster.hosts().to_vec();
    // (at, step index, heal?)
    let mut events: Vec<(Duration, usize, bool)> = steps
        .iter()
        .enumerate()
        .flat_map(|(i, s)| [(s.start, i, false), (s.start + s.hold, i, true)])
        .collect();
    events.sort();
    let mut next_event = 0;
    let mut started_us = vec![0u64; steps.len()];
    let mut carts: Option<BTreeSet<String>> = None;
    let mut last_check = Duration::ZERO;
    let mut converged = false;
    loop {
        let done = cluster
            .sim
            .step()
            .map_err(|e| format!("seed {}: simulation failed: {e}", opts.seed))?;
        let now = cluster.sim.elapsed();
        while next_event < events.len() && events[next_event].0 <= now {
            let (_, i, heal) = events[next_event];
            apply(&mut cluster, &steps[i].fault, heal, &clients, i);
            if heal {
                recorder.fault(FaultSpan {
                    nemesis: steps[i].fault.nemesis().name().into(),
                    detail: steps[i].fault.describe(&names),
                    start_us: started_us[i],
                    end_us: now.as_micros() as u64,
                });
            } else {
                started_us[i] = now.as_micros() as u64;
            }
            next_event += 1;
        }
        if now >= opts.active + Duration::from_secs(1) && next_event == events.len() {
            healed.store(true, Ordering::SeqCst);
        }
        let settled = now >= opts.active + Duration::from_secs(2)
            && next_event == events.len()
            && (resolved.load(Ordering::SeqCst) || now >= opts.active + opts.convergence_limit);
        if settled && !converged_flag.load(Ordering::SeqCst) && now >= last_check + Duration::from_millis(200) {
            last_check = now;
            let history = recorder.history();
            let carts = carts.get_or_insert_with(|| history.ops.iter().map(|o| o.cart.clone()).collect());
            // Carts that may have expired are deleted by each sweeper in its time, not converged:
            // they are checked on their own.
            let rule = expiry_rule(&sim_options, now);
            let live: BTreeSet<String> = carts
                .iter()
                .filter(|c| !checker::possibly_expired_cart(&history, rule, c))
                .cloned()
                .collect();
            let states = replicas(&cluster, &live)?;
            converged = checker::converged(&states);
            if converged || now >= opts.active + opts.convergence_limit {
                converged_flag.store(true, Ordering::SeqCst);
            }
        }
        if done {
            break;
        }
    }
    let history = recorder.history();
    let carts: BTreeSet<String> = history.ops.iter().map(|o| o.cart.clone()).collect();
    let finals = replicas(&cluster, &carts)?;
    let expiry = expiry_rule(&sim_options, cluster.sim.elapsed());
    let verdict = checker::check_with(&history, &finals, Some(expiry));
    let info = RunInfo {
        mode: "simulation".into(),
        seed: opts.seed,
        nodes: opts.nodes,
        nemeses: nemeses.iter().map(|n| n.name().to_string()).collect(),
        workloads: opts.workloads.iter().map(|w| w.name().to_string()).collect(),
        time_limit_s: opts.active.as_secs(),
    };
    Ok(SimResult {
        layout_changes: cluster.layout_version().saturating_sub(1),
        verdict,
        history,
        converged,
        info,
    })
}
