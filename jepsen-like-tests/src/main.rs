//! `cart-jepsen`: runs cartdb under faults and checks the history (see the crate docs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
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
        /// kill, pause, clock, loss; or `all`, or `none`.
        #[arg(long, default_value = "all")]
        nemesis: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// cart-set, quantity or all.
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
        #[arg(long, default_value_t = 8)]
        time_limit: u64,
        /// partition-halves, isolate, bridge, majorities-ring, kill, pause (clock and loss are
        /// real-tier only), or all.
        #[arg(long, default_value = "all")]
        nemesis: String,
        #[arg(long, default_value = "all")]
        workload: String,
        /// Write the history, summary and HTML report of each failing seed (and of a single
        /// replayed seed) here.
        #[arg(long)]
        report: Option<PathBuf>,
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
            };
            let result = real::run(&opts, Arc::new(AtomicBool::new(false)))?;
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
        } => {
            let nemeses = Nemesis::parse_list(&nemesis).map_err(anyhow::Error::msg)?;
            let workloads = Workload::parse_list(&workload).map_err(anyhow::Error::msg)?;
            let started = std::time::Instant::now();
            let mut failed = Vec::new();
            let mut lost = 0;
            for s in seed..seed.saturating_add(seeds) {
                let opts = SimRun {
                    active: Duration::from_secs(time_limit),
                    nemeses: nemeses.clone(),
                    workloads: workloads.clone(),
                    ..SimRun::ci(s)
                };
                let result = simulate::run(&opts).map_err(anyhow::Error::msg)?;
                lost += result.verdict.lost_items.len();
                if seeds == 1 {
                    println!("{}", result.summary());
                }
                if !result.verdict.valid {
                    eprintln!(
                        "seed {s} FAILED (replay: cart-jepsen sim --seed {s})\n{}",
                        result.summary()
                    );
                    failed.push(s);
                }
                if let Some(dir) = &report {
                    if seeds == 1 || !result.verdict.valid {
                        let dir = dir.join(format!("seed-{s}"));
                        report::write_all(&dir, &result.info, &result.history, &result.verdict, &result.summary())?;
                    }
                }
            }
            println!(
                "simulation: {seeds} seeds from {seed}, {} failed {failed:?}, {:.1} s",
                failed.len(),
                started.elapsed().as_secs_f64()
            );
            println!("lost acknowledged adds: {lost}");
            Ok(failed.is_empty())
        }
    }
}
