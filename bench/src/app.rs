//! One invocation of `cart-bench`: check the arguments, run every target in turn, print the
//! tables, write the JSON.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use crate::cli::Args;
use crate::error::BenchError;
use crate::profile::Profile;
use crate::report::{BenchReport, HedgeReport, TargetReport};
use crate::runner::{self, Progress, RunPlan};
use crate::target::{AnyTarget, ConnectOptions, Outcome, Target, TargetSpec};
use crate::workload::{cart_id, prefill_ops, size_cart_id, Op};

/// Pre-fill AddItems in flight at once (they hit one cart, which a node serialises anyway).
const PREFILL_CONCURRENCY: usize = 16;

/// Runs the whole benchmark. Returns the report (already printed and written to `--json`).
pub async fn run(args: Args) -> Result<BenchReport> {
    // A random seed is kept below 2^53 so JSON readers that use doubles keep it exact.
    let seed = args.seed.unwrap_or_else(|| rand::random::<u64>() >> 11);
    let plan = args.plan(seed)?;
    let show_progress = !args.no_progress && std::io::stdout().is_terminal();
    println!("{}", describe(&args, &plan));

    let mut report = BenchReport {
        profile: args.profile,
        duration_s: plan.duration.as_secs_f64(),
        concurrency: plan.concurrency,
        rate: plan.rate_per_s,
        carts: args.carts,
        distribution: args.distribution,
        seed,
        ops: plan.max_ops,
        cart_lines: (args.profile == Profile::AddToSize).then_some(plan.workload.cart_lines),
        targets: Vec::new(),
    };
    let connect = args.connect_options()?;
    for spec in &args.targets {
        let target_report = run_target(spec, connect.clone(), plan.clone(), show_progress).await?;
        print_target(&target_report);
        report.targets.push(target_report);
    }
    write_json(&args.json, &report)?;
    println!("report written to {}", args.json.display());
    Ok(report)
}

fn describe(args: &Args, plan: &RunPlan) -> String {
    let mode = match plan.rate_per_s {
        Some(rate) => format!("open loop at {rate} ops/s, at most {} in flight", plan.concurrency),
        None => format!("closed loop, {} workers", plan.concurrency),
    };
    let carts = match args.profile {
        Profile::AddToSize => format!(
            "one cart {} of {} lines, +1 on a random existing line",
            size_cart_id(plan.workload.cart_lines),
            plan.workload.cart_lines
        ),
        _ => format!("{} carts ({:?})", args.carts, args.distribution),
    };
    let length = match plan.max_ops {
        Some(ops) => format!("{ops} ops (at most {} s)", plan.duration.as_secs_f64()),
        None => format!("{} s", plan.duration.as_secs_f64()),
    };
    format!(
        "cart-bench: profile {}, {length}, {mode}, {carts}, seed {}",
        args.profile.name(),
        plan.seed
    )
}

async fn run_target(
    spec: &TargetSpec,
    options: ConnectOptions,
    plan: RunPlan,
    show_progress: bool,
) -> Result<TargetReport> {
    let label = spec.to_string();
    let target = Arc::new(AnyTarget::connect_with(spec, options).await?);
    preflight(&*target, &label).await?;
    if plan.workload.profile == Profile::AddToSize {
        prefill(&target, plan.workload.cart_lines, &label).await?;
    }
    let progress = Arc::new(Progress::default());
    let bar = show_progress.then(|| progress_bar(plan.duration, &label, Arc::clone(&progress)));
    let result = runner::run(target.clone(), plan.clone(), progress).await;
    if let Some((bar, ticker)) = bar {
        ticker.abort();
        bar.finish_and_clear();
    }
    let mut report = TargetReport::new(
        label,
        &plan.workload.profile.kinds(),
        &result,
        plan.rate_per_s.is_some(),
    );
    report.hedges = target.hedge_stats().map(HedgeReport::of);
    Ok(report)
}

/// One GetCart before the load starts, so an unreachable target fails fast with a clear message.
async fn preflight<T: Target>(target: &T, label: &str) -> Result<(), BenchError> {
    let probe = Op::GetCart { cart_id: cart_id(0) };
    match tokio::time::timeout(Duration::from_secs(10), target.execute(probe)).await {
        Ok(Outcome::Ok | Outcome::NotFound) => Ok(()),
        Ok(Outcome::Error { code, message }) => Err(BenchError::Unreachable {
            target: label.to_owned(),
            reason: format!("{code}: {message}"),
        }),
        Err(_) => Err(BenchError::Unreachable {
            target: label.to_owned(),
            reason: "no answer within 10 s".into(),
        }),
    }
}

/// Fills the `add-to-size` cart with its lines before the timed run; any error stops the run.
async fn prefill<T: Target>(target: &Arc<T>, lines: u32, label: &str) -> Result<()> {
    let started = std::time::Instant::now();
    let mut ops = prefill_ops(lines);
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.len() < PREFILL_CONCURRENCY {
            let Some(op) = ops.next() else { break };
            let target = Arc::clone(target);
            in_flight.spawn(async move { (op.clone(), target.execute(op).await) });
        }
        let Some(done) = in_flight.join_next().await else { break };
        let (op, outcome) = done.context("a pre-fill task panicked")?;
        if outcome != Outcome::Ok {
            bail!(
                "pre-filling {} on {label}: {op:?} answered {outcome:?}",
                size_cart_id(lines)
            );
        }
    }
    println!(
        "{label}: pre-filled {} with {lines} lines in {:.2} s",
        size_cart_id(lines),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn progress_bar(
    duration: Duration,
    label: &str,
    progress: Arc<Progress>,
) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let total_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let bar = ProgressBar::new(total_ms);
    if let Ok(style) = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}") {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_owned());
    let ticker = tokio::spawn({
        let bar = bar.clone();
        async move {
            let start = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let elapsed = start.elapsed();
                let answered = progress.answered.load(Ordering::Relaxed);
                let errors = progress.errors.load(Ordering::Relaxed);
                let rate = answered as f64 / elapsed.as_secs_f64().max(1e-3);
                bar.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX).min(total_ms));
                bar.set_message(format!("{answered} ops, {rate:.0} ops/s, {errors} errors"));
            }
        }
    });
    (bar, ticker)
}

fn print_target(report: &TargetReport) {
    println!();
    println!(
        "target {}: {:.0} ops/s over {:.2} s ({} completed, {} not_found, {} errors, {} dropped)",
        report.target,
        report.ops_per_s,
        report.elapsed_s,
        report.overall.count,
        report.not_found,
        report.errors,
        report.dropped
    );
    println!("{}", report.table());
    if let Some(lag) = &report.schedule_lag {
        println!(
            "open-loop send lag behind schedule: p50 {} p99 {} p99.9 {} max {} (included in the latencies above)",
            crate::report::fmt_us(lag.p50_us),
            crate::report::fmt_us(lag.p99_us),
            crate::report::fmt_us(lag.p999_us),
            crate::report::fmt_us(lag.max_us)
        );
    }
    if let Some(w) = &report.window {
        for (name, s) in [("inside", &w.inside), ("outside", &w.outside)] {
            println!(
                "{name} the window [{} s, {} s): {} completed, {} errors, {} dropped; p50 {} p99 {} p99.9 {} max {}",
                w.start_s,
                w.end_s,
                s.count,
                s.errors,
                s.dropped,
                crate::report::fmt_us(s.p50_us),
                crate::report::fmt_us(s.p99_us),
                crate::report::fmt_us(s.p999_us),
                crate::report::fmt_us(s.max_us)
            );
        }
    }
    if let Some(h) = &report.hedges {
        println!(
            "hedged requests: {} of {} calls ({:.2}% extra requests)",
            h.hedges, h.calls, h.extra_percent
        );
    }
    for (code, count) in &report.error_codes {
        let example = report.error_examples.get(code).map_or("", String::as_str);
        eprintln!("errors {code}: {count} (e.g. {example})");
    }
}

fn write_json(path: &Path, report: &BenchReport) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(report).context("serialise the report")?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// Exit status policy: a run where nothing completed is a failure (the target was not served).
pub fn check_completed(report: &BenchReport) -> Result<()> {
    for t in &report.targets {
        if t.overall.count == 0 {
            bail!("no operation completed against {}", t.target);
        }
    }
    Ok(())
}
