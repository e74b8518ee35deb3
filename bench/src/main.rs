//! `cart-bench`: see the library docs (`cart_bench`) for what it measures and how.

use std::process::ExitCode;

use cart_bench::app;
use cart_bench::cli::Args;
use clap::Parser;

/// mimalloc, as in `cartd`: the load generator shares the cores with what it measures, and
/// glibc malloc was a seventh of its CPU (decoded cart replies) in profiles of the storefront
/// benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    // The client's own diagnostics (hedges, retries) on stderr, e.g. RUST_LOG=cart_client=debug.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let mut builder = match args.threads {
        0 => tokio::runtime::Builder::new_multi_thread(),
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async { app::run(args).await.and_then(|report| app::check_completed(&report)) });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
