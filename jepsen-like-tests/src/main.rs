//! `cart-jepsen`: runs cartdb under faults and checks the history (see the crate docs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use cart_jepsen::nemesis::Nemesis;
use cart_jepsen::simulate::{self, SimRun};
use cart_jepsen::workload::Workload;
use cart_jepsen::{real, report};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cart-jepsen", about = "cartdb's partition-injection harness")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run real cartd processes in network namespaces under faults, then check the history.
    Run {
        /// Seconds of workload under faults (every fault heals by then).
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        /// Faults: a comma-separated list of partition-halves, isolate, bridge, majorities-ring,
        /// kill, pause, clock, loss, membership, disk (a full tmpfs; namespaces only); or `all`, or
        /// `none`.
        #[arg(long, default_value = "all")]
        nemesis: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// cart-set, quantity, merge, checkout (comma-separated), or all.
        #[arg(long, default_value = "all")]
        workload: String,
        /// Where the history, summary and HTML report go (default: a new folder under
        /// target/jepsen).
        #[arg(long)]
        report: Option<PathBuf>,
        /// The cartd binary (default: next to this one).
        #[arg(long)]
        cartd: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Client processes per node and workload.
        #[arg(long, default_value_t = 2)]
        clients_per_node: usize,
        /// Use loopback with a fault-injecting proxy per link even where namespaces work.
        #[arg(long)]
        loopback: bool,
        /// Size of each node's data tmpfs in the namespaces tier, in MiB (the `disk` nemesis
        /// fills it). sled's log grows about 0.2 MiB/s per node under this workload without
        /// faults and faster with them: a 10-minute run needs 1024.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(64..=8192))]
        disk_mb: u32,
        /// TLS on every connection (a throwaway CA under REPORT/tls; mutual TLS between the
        /// nodes) and an API token on every client call.
        #[arg(long)]
        tls: bool,
    },
    /// Run seeds of the deterministic simulation (a whole cluster in this process under
    /// turmoil); `--seed N` alone replays one seed.
    Sim {
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// How many consecutive seeds to run.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Simulated seconds of workload under faults per seed.
        #[arg(long, default_value_t = 6)]
        time_limit: u64,
        /// partition-halves, isolate, bridge, majorities-ring, kill, pause, membership, disk
        /// (clock and loss are real-tier only), or all.
        #[arg(long, default_value = "all")]
        nemesis: String,
        #[arg(long, default_value = "all")]
        workload: String,
        /// Write the history, summary and HTML report of the seed (of each failing seed when
        /// several run) here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Seeds run in parallel (each in a fresh process, so a failing seed replays exactly as
        /// `--seed N` alone); default: the number of cores.
        #[arg(long)]
        jobs: Option<usize>,
        /// With --report: write only if the seed fails.
        #[arg(long, hide = true)]
        failures_only: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cart-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Cmd::Run {
            time_limit,
            nemesis,
            seed,
            workload,
            report,
            cartd,
            nodes,
            clients_per_node,
            loopback,
            disk_mb,
            tls,
        } => {
            let nemeses = Nemesis::parse_list(&nemesis).map_err(anyhow::Error::msg)?;
            let workloads = Workload::parse_list(&workload).map_err(anyhow::Error::msg)?;
            let cartd = match cartd {
                Some(path) => path,
                None => std::env::current_exe()
                    .context("locating this binary")?
                    .with_file_name("cartd"),
            };
            anyhow::ensure!(
                cartd.exists(),
                "no cartd at {} (build it with `cargo build -p cart-node`, or pass --cartd)",
                cartd.display()
            );
            anyhow::ensure!((3..=9).contains(&nodes), "--nodes must be between 3 and 9");
            let dir = match report {
                Some(dir) => dir,
                None => PathBuf::from("target/jepsen").join(format!(
                    "run-{}-seed{seed}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                )),
            };
            let dir = std::path::absolute(&dir).context("report folder")?;
            let opts = real::Options {
                time_limit: Duration::from_secs(time_limit),
                nemeses,
                workloads,
                seed,
                nodes,
                clients_per_node,
                cartd,
                dir: dir.clone(),
                namespaces: !loopback,
                tls,
                disk_mb,
            };
            let result = real::run(&opts)?;
            println!("{}", result.summary);
            println!("report: {}", dir.join("report.html").display());
            Ok(result.verdict.valid)
        }
        Cmd::Sim {
            seed,
            seeds,
            time_limit,
            nemesis,
            workload,
            report,
            jobs,
            failures_only,
        } => {
            let nemeses = Nemesis::parse_list(&nemesis).map_err(anyhow::Error::msg)?;
            let workloads = Workload::parse_list(&workload).map_err(anyhow::Error::msg)?;
            if seeds != 1 {
                let args = SimArgs {
                    time_limit,
                    nemesis: &nemesis,
                    workload: &workload,
                    report: report.as_deref(),
                };
                return sim_many(seed, seeds, jobs, &args);
            }
            // In the simulation guest carts live seconds: `all` includes the expiry workload.
            let mut workloads = workloads;
            if workload.split(',').any(|w| w.trim() == "all") && !workloads.contains(&Workload::Expiry) {
                workloads.push(Workload::Expiry);
            }
            let opts = SimRun {
                active: Duration::from_secs(time_limit),
                nemeses,
                workloads,
                ..SimRun::ci(seed)
            };
            let result = simulate::run(&opts).map_err(anyhow::Error::msg)?;
            println!("{}", result.summary());
            if let Some(dir) = &report {
                if !failures_only || !result.verdict.valid {
                    let dir = dir.join(format!("seed-{seed}"));
                    report::write_all(&dir, &result.info, &result.history, &result.verdict, &result.summary())?;
                    println!("report: {}", dir.join("report.html").display());
                }
            }
            if !result.verdict.valid {
                eprintln!("seed {seed} FAILED (replay: cart-jepsen sim --seed {seed})");
            }
            Ok(result.verdict.valid)
        }
    }
}

/// The options a multi-seed run passes on to each seed's process.
struct SimArgs<'a> {
    time_limit: u64,
    nemesis: &'a str,
    workload: &'a str,
    report: Option<&'a std::path::Path>,
}

/// Runs `seeds` seeds from `first`, each in a fresh `cart-jepsen sim --seed N` process (the
/// simulation is deterministic per process: tokio's task ids are process-wide), `jobs` at a time.
fn sim_many(first: u64, seeds: u64, jobs: Option<usize>, args: &SimArgs) -> Result<bool> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    let started = std::time::Instant::now();
    let mut pending = first..first.saturating_add(seeds);
    let mut running: Vec<(u64, std::process::Child)> = Vec::new();
    let (mut failed, mut lost, mut done) = (Vec::new(), 0u64, 0u64);
    loop {
        while running.len() < jobs {
            let Some(seed) = pending.next() else { break };
            let mut command = std::process::Command::new(&exe);
            command
                .args(["sim", "--seeds", "1", "--seed", &seed.to_string()])
                .args(["--time-limit", &args.time_limit.to_string()])
                .args(["--nemesis", args.nemesis, "--workload", args.workload])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null());
            if let Some(dir) = args.report {
                command.arg("--report").arg(dir).arg("--failures-only");
            }
            running.push((seed, command.spawn().context("starting a seed")?));
        }
        if running.is_empty() {
            break;
        }
        let (seed, child) = running.remove(0);
        let out = child.wait_with_output().context("waiting for a seed")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        lost += stdout
            .lines()
            .find_map(|l| l.strip_prefix("lost acknowledged adds: "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        done += 1;
        if !out.status.success() {
            eprintln!(
                "seed {seed} FAILED ({}); replay: cart-jepsen sim --seed {seed}\n{stdout}",
                out.status
            );
            failed.push(seed);
        }
        if done % 50 == 0 {
            eprintln!("simulation: {done}/{seeds} seeds, {} failed", failed.len());
        }
    }
    println!(
        "simulation: {seeds} seeds from {first}, {} failed {failed:?}, {:.1} s",
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    println!("lost acknowledged adds: {lost}");
    Ok(failed.is_empty())
}
