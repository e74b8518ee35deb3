//! The command line (a stable interface: scripts and later tooling call it).
//!
//! `cart-bench --profile NAME --duration SECONDS --concurrency C [--rate OPS_PER_S]
//!  --target cartdb=HOST:PORT,HOST:PORT… | redis=redis://HOST:PORT[?wait=N[&wait_timeout_ms=T]]
//!  --json FILE [--carts N] [--distribution zipf|uniform|sequential] [--ops N] [--seed N]
//!  [--no-progress] [--redis-connections N] [--cart-lines N (with --profile add-to-size)]
//!  [--window START,END]`

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::error::BenchError;
use crate::profile::Profile;
use crate::redis_target::DEFAULT_REDIS_CONNECTIONS;
use crate::runner::{RunPlan, DEFAULT_DRAIN_TIMEOUT};
use crate::stats::Window;
use crate::target::{ConnectOptions, TargetSpec};
use crate::workload::{CartPicker, KeyDistribution, WorkloadSpec};

/// Load generator for cartdb (and Redis as a cart store): closed or open loop, HDR latency per
/// operation, JSON report.
#[derive(Debug, Clone, Parser)]
#[command(name = "cart-bench", version, about)]
pub struct Args {
    /// Operation mix.
    #[arg(long, value_enum)]
    pub profile: Profile,
    /// How long to issue load, in seconds (fractions allowed).
    #[arg(long, value_name = "SECONDS")]
    pub duration: f64,
    /// Closed loop: concurrent workers. Open loop: the bound on requests in flight.
    #[arg(long, value_name = "C")]
    pub concurrency: usize,
    /// Open loop at this many operations per second overall; without it, a closed loop.
    #[arg(long, value_name = "OPS_PER_S")]
    pub rate: Option<f64>,
    /// System under test, `cartdb=HOST:PORT[,HOST:PORT…]` or
    /// `redis=redis://HOST:PORT[?wait=N[&wait_timeout_ms=T]]` (`?wait=N`: every write is followed
    /// by `WAIT N T`, T 1000 ms by default, in its round trip, and fewer than N replicas is the
    /// error WAIT_TIMEOUT); repeat to run targets one after another.
    #[arg(long = "target", value_name = "KIND=HOST:PORT,…", required = true, value_parser = parse_target)]
    pub targets: Vec<TargetSpec>,
    /// Where to write the JSON report (parent folders are created).
    #[arg(long, value_name = "FILE")]
    pub json: PathBuf,
    /// Size of the cart population `user:bench-0 … user:bench-<N-1>`.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub carts: u64,
    /// How carts are drawn from the population (zipf: θ = 0.99).
    #[arg(long, value_enum, default_value_t = KeyDistribution::Zipf)]
    pub distribution: KeyDistribution,
    /// Stop once N operations have been issued in all (open loop: N sends scheduled); the run
    /// still ends at `--duration` at the latest. `--profile add --distribution sequential --carts N
    /// --ops N` writes each cart exactly once: a preload.
    #[arg(long, value_name = "N")]
    pub ops: Option<u64>,
    /// Seed of the operation streams (random when absent; the report records it).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// No progress bar (there is none anyway when stdout is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// How long requests still in flight at the deadline may take before they count as abandoned.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_DRAIN_TIMEOUT.as_secs_f64())]
    pub drain_timeout: f64,
    /// Multiplexed connections a Redis target opens (requests use them round robin).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_REDIS_CONNECTIONS)]
    pub redis_connections: usize,
    /// `--profile add-to-size` only (and required by it): lines the measured cart
    /// `user:size-<N>` holds. It is pre-filled before the run; cartdb refuses more than its
    /// `max_lines_per_cart` (200 by default, at most 2000).
    #[arg(long, value_name = "N")]
    pub cart_lines: Option<u32>,
    /// `START,END` in seconds from the start: requests due in that stretch (e.g. while a node
    /// is paused) are also reported apart from the rest (`window` in the JSON).
    #[arg(long, value_name = "START,END")]
    pub window: Option<String>,
    /// cartdb: turn the client's hedging off (it is on by default, as in `cart-client`).
    #[arg(long)]
    pub no_hedge: bool,
    /// cartdb: hedge writes too (`ClientOptions::hedge_writes`, off by default).
    #[arg(long, conflicts_with = "no_hedge")]
    pub hedge_writes: bool,
    /// cartdb: a unary gRPC call per request instead of the client's pipeline streams
    /// (`ClientOptions::pipeline`, on by default).
    #[arg(long)]
    pub unary: bool,
    /// cartdb targets: TLS (`--tls-ca`) and the bearer token (`--token`).
    #[command(flatten)]
    pub security: cart_client::SecurityArgs,
    /// Threads the load generator runs on: 1 (the default) a single-threaded runtime, with no
    /// hand-offs between threads (against the multi-threaded one it cut the load generator's CPU
    /// per operation to 0.7–0.8× for cartdb and for Redis, closed and open loop, and raised
    /// Redis's throughput: bench/README.md); 0 tokio's multi-threaded runtime with one worker
    /// per core; N > 1 that many workers.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,
}

fn parse_target(raw: &str) -> Result<TargetSpec, String> {
    TargetSpec::parse(raw).map_err(|e| e.to_string())
}

/// `START,END` seconds, START < END.
fn parse_window(raw: &str) -> Result<Window, BenchError> {
    let invalid = |reason: &str| BenchError::InvalidOption {
        option: "--window",
        reason: format!("{reason} (got {raw:?}; expected START,END in seconds)"),
    };
    let (start, end) = raw.split_once(',').ok_or_else(|| invalid("needs two numbers"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or_else(|| invalid("each bound must be a non-negative number of seconds"))
    };
    let (start, end) = (parse(start)?, parse(end)?);
    if start >= end {
        return Err(invalid("START must be less than END"));
    }
    Ok(Window { start, end })
}

fn seconds(option: &'static str, value: f64) -> Result<Duration, BenchError> {
    let invalid = |reason: &str| BenchError::InvalidOption {
        option,
        reason: reason.to_owned(),
    };
    let d = Duration::try_from_secs_f64(value).map_err(|_| invalid("must be a non-negative number of seconds"))?;
    Ok(d)
}

impl Args {
    /// Checks the values and turns them into a run plan.
    pub fn plan(&self, seed: u64) -> Result<RunPlan, BenchError> {
        let duration = seconds("--duration", self.duration)?;
        if duration.is_zero() {
            return Err(BenchError::InvalidOption {
                option: "--duration",
                reason: "must be more than 0".into(),
            });
        }
        if self.concurrency == 0 {
            return Err(BenchError::InvalidOption {
                option: "--concurrency",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(BenchError::InvalidOption {
                    option: "--rate",
                    reason: "must be a positive number".into(),
                });
            }
        }
        if self.ops == Some(0) {
            return Err(BenchError::InvalidOption {
                option: "--ops",
                reason: "must be at least 1".into(),
            });
        }
        if self.redis_connections == 0 {
            return Err(BenchError::InvalidOption {
                option: "--redis-connections",
                reason: "must be at least 1".into(),
            });
        }
        let cart_lines = match (self.profile, self.cart_lines) {
            (Profile::AddToSize, Some(n)) if n >= 1 => n,
            (Profile::AddToSize, _) => {
                return Err(BenchError::InvalidOption {
                    option: "--cart-lines",
                    reason: "--profile add-to-size needs --cart-lines N with N at least 1".into(),
                })
            }
            (_, Some(_)) => {
                return Err(BenchError::InvalidOption {
                    option: "--cart-lines",
                    reason: "only --profile add-to-size takes it".into(),
                })
            }
            (_, None) => 0,
        };
        Ok(RunPlan {
            workload: WorkloadSpec {
                profile: self.profile,
                carts: CartPicker::new(self.distribution, self.carts)?,
                cart_lines,
            },
            duration,
            max_ops: self.ops,
            concurrency: self.concurrency,
            rate_per_s: self.rate,
            seed,
            drain_timeout: seconds("--drain-timeout", self.drain_timeout)?,
            window: self.window.as_deref().map(parse_window).transpose()?,
        })
    }

    /// How targets are connected.
    pub fn connect_options(&self) -> Result<ConnectOptions, BenchError> {
        Ok(ConnectOptions {
            redis_connections: self.redis_connections,
            hedge: !self.no_hedge,
            hedge_writes: self.hedge_writes,
            pipeline: !self.unary,
            credentials: self.security.credentials().map_err(|e| BenchError::InvalidOption {
                option: "--tls-ca / --token",
                reason: e.to_string(),
            })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec![
            "cart-bench",
            "--profile",
            "add",
            "--duration",
            "20",
            "--concurrency",
            "64",
        ];
        argv.extend_from_slice(&["--target", "cartdb=127.0.0.1:17401", "--json", "out.json"]);
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
    }

    #[test]
    fn the_documented_command_line_parses() {
        let args = parse(&[]).expect("parses");
        assert_eq!(args.profile, Profile::Add);
        assert_eq!(args.carts, 10_000);
        assert_eq!(args.distribution, KeyDistribution::Zipf);
        assert_eq!(args.rate, None);
        assert!(!args.no_progress);
        let plan = args.plan(1).expect("valid");
        assert_eq!(plan.duration, Duration::from_secs(20));
        assert_eq!(plan.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(plan.max_ops, None);
        assert_eq!(args.threads, 1, "one thread by default");
        assert_eq!(parse(&["--threads", "0"]).expect("parses").threads, 0);
        let preload = parse(&["--distribution", "sequential", "--carts", "1000000", "--ops", "1000000"])
            .expect("parses")
            .plan(1)
            .expect("valid");
        assert_eq!(preload.max_ops, Some(1_000_000));

        let args = parse(&[
            "--rate",
            "2000",
            "--carts",
            "50",
            "--distribution",
            "uniform",
            "--seed",
            "9",
            "--no-progress",
        ])
        .expect("parses");
        assert_eq!(args.rate, Some(2000.0));
        assert_eq!(
            (args.carts, args.distribution, args.seed, args.no_progress),
            (50, KeyDistribution::Uniform, Some(9), true)
        );

        let args = parse(&["--target", "cartdb=127.0.0.1:1,127.0.0.1:2"]).expect("parses");
        assert_eq!(args.targets.len(), 2);
        assert_eq!(args.targets[1].endpoints.len(), 2);

        for profile in ["storefront", "black-friday", "read-heavy"] {
            let mut argv = vec![
                "cart-bench",
                "--profile",
                profile,
                "--duration",
                "1",
                "--concurrency",
                "1",
            ];
            argv.extend_from_slice(&["--target", "cartdb=127.0.0.1:1", "--json", "x.json"]);
            assert!(Args::try_parse_from(argv).is_ok(), "{profile}");
        }
    }

    #[test]
    fn redis_targets_and_the_add_to_size_profile_parse() {
        let args = parse(&["--target", "redis=redis://127.0.0.1:17611", "--redis-connections", "2"]).expect("parses");
        assert_eq!(args.targets[1].to_string(), "redis=redis://127.0.0.1:17611");
        assert_eq!(args.targets[1].redis_wait, None);
        assert_eq!(args.connect_options().expect("no TLS files").redis_connections, 2);
        assert_eq!(parse(&[]).expect("parses").redis_connections, DEFAULT_REDIS_CONNECTIONS);
        let waiting = parse(&["--target", "redis=redis://127.0.0.1:17621?wait=1"]).expect("parses");
        assert_eq!(waiting.targets[1].redis_wait.map(|w| w.replicas), Some(1));
        assert!(parse(&["--target", "redis=redis://127.0.0.1:17621?wait=0"]).is_err());

        let mut args = parse(&["--cart-lines", "1000"]).expect("parses");
        args.profile = Profile::AddToSize;
        assert_eq!(args.plan(1).expect("valid").workload.cart_lines, 1_000);
        args.cart_lines = None;
        assert!(args.plan(1).is_err(), "add-to-size needs --cart-lines");
        args.cart_lines = Some(0);
        assert!(args.plan(1).is_err());
    }

    #[test]
    fn nonsense_values_are_refused() {
        assert!(parse(&["--rate", "0"]).expect("parses").plan(1).is_err());
        assert!(parse(&["--rate=-5"]).expect("parses").plan(1).is_err());
        assert!(parse(&["--carts", "0"]).expect("parses").plan(1).is_err());
        assert!(parse(&["--target", "redis=redis://127.0.0.1"]).is_err());
        assert!(parse(&["--target", "mongo=127.0.0.1:27017"]).is_err());
        assert!(parse(&["--profile", "nope"]).is_err());
        assert!(parse(&["--redis-connections", "0"]).expect("parses").plan(1).is_err());
        assert!(parse(&["--ops", "0"]).expect("parses").plan(1).is_err());
        assert!(parse(&["--ops", "-1"]).is_err());
        assert!(
            parse(&["--cart-lines", "10"]).expect("parses").plan(1).is_err(),
            "add takes no --cart-lines"
        );
        let mut args = parse(&[]).expect("parses");
        args.concurrency = 0;
        assert!(args.plan(1).is_err());
        args.concurrency = 1;
        args.duration = 0.0;
        assert!(args.plan(1).is_err());
        args.duration = f64::NAN;
        assert!(args.plan(1).is_err());
    }
}
