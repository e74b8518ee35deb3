//! `cartd`: run one cartdb node (`cartd run --config FILE`) or a local dev cluster (`cartd dev`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cart_node::clock::SystemClock;
use cart_node::launcher::{ClusterSpec, LocalCluster, READY_MARKER};
use cart_node::storage::Engine;
use cart_node::{Node, NodeConfig};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

#[derive(Parser)]
#[command(name = "cartd", version, about = "cartdb node: a replicated shopping-cart store")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node from a TOML config file (a node file, or a cluster file with --node).
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Which node of a cluster file this is.
        #[arg(long, value_name = "ID")]
        node: Option<String>,
        /// On first start, learn the cluster's layout from this node and wait as a non-member
        /// until an operator adds this node (`cartctl cluster join`).
        #[arg(long, value_name = "HOST:PORT")]
        join: Option<String>,
    },
    /// Start a local cluster of separate `cartd` processes on 127.0.0.1 and stop it on Ctrl-C.
    Dev {
        /// How many nodes to start.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
        nodes: u16,
        /// Port of the first node; the others take the next ports.
        #[arg(long, default_value_t = 7001)]
        base_port: u16,
        /// Folder holding one sub-folder per node (config, log, data).
        #[arg(long, default_value = "./data/dev")]
        data_dir: PathBuf,
        /// TOML put at the top of the generated cluster file (e.g. a `[limits]` table).
        #[arg(long, value_name = "FILE")]
        extra_toml: Option<PathBuf>,
        /// TLS on every node (and mutual TLS between them), with a throwaway CA and node
        /// certificates made under DATA_DIR/tls; clients trust DATA_DIR/tls/ca.pem.
        #[arg(long)]
        tls: bool,
    },
}

/// mimalloc: the node allocates per request (decoded protos, cart entries); glibc malloc took a
/// fifth of a node's CPU in profiles of the storefront benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Errors end the process with one line on stderr (no backtrace) and exit code 1.
fn main() {
    if let Err(e) = run_cli() {
        eprintln!("cartd: {e:#}");
        std::process::exit(1);
    }
}

fn run_cli() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Cmd::Run {
            config: config_path,
            node,
            join,
        } => {
            let mut config = NodeConfig::load(&config_path, node.as_deref())?;
            if join.is_some() && config.cluster.secret.is_empty() {
                bail!(
                    "--join needs the cluster's secret: set [cluster] secret in {}",
                    config_path.display()
                );
            }
            config.join = join;
            runtime(config.worker_threads)?.block_on(run(config))
        }
        Cmd::Dev {
            nodes,
            base_port,
            data_dir,
            extra_toml,
            tls,
        } => runtime(0)?.block_on(dev(nodes, base_port, &data_dir, extra_toml.as_deref(), tls)),
    }
}

/// The multi-threaded runtime, with `workers` threads (0: one per core).
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        builder.worker_threads(workers);
    }
    builder.enable_all().build().context("start tokio runtime")
}

async fn run(mut config: NodeConfig) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data_dir {}", config.data_dir.display()))?;
    let storage = open_storage(config.storage_engine, &config.data_dir)?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("bind {}", config.listen_addr))?;
    let addr = listener.local_addr().context("read bound address")?;
    if config.listen_addr.port() == 0 {
        // Only a cluster of one may ask for port 0: advertise the port actually bound.
        for m in config.cluster.members.iter_mut() {
            m.addr = addr.to_string();
        }
    }
    let http = match config.http_addr {
        Some(http_addr) => Some(
            tokio::net::TcpListener::bind(http_addr)
                .await
                .with_context(|| format!("bind http_addr {http_addr}"))?,
        ),
        None => None,
    };
    let node_id = config.node_id.clone();
    let (data_dir, watermark) = (config.data_dir.clone(), config.min_free_disk_bytes);
    let node = Node::open(config, storage, Arc::new(SystemClock), rand::random()).await?;
    let http = http.map(|listener| {
        let (coordinator, data_dir) = (node.coordinator().clone(), data_dir.clone());
        tokio::spawn(async move {
            if let Err(e) = cart_node::http::serve(listener, coordinator, data_dir).await {
                tracing::error!(error = %e, "the HTTP endpoint stopped");
            }
        })
    });
    // The launcher and tests read this line to learn the bound port.
    println!("cartd {node_id} {READY_MARKER}{addr} (actor {})", node.store().actor());
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    });
    let restart = Arc::new(tokio::sync::Notify::new());
    let watcher = tokio::spawn(watch_storage(
        node.store().health.clone(),
        data_dir,
        watermark,
        restart.clone(),
    ));
    let restarting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = {
        let restarting = restarting.clone();
        async move {
            tokio::select! {
                () = shutdown_signal() => {}
                () = restart.notified() => restarting.store(true, std::sync::atomic::Ordering::SeqCst),
            }
        }
    };
    let served = node.serve(incoming, stop).await;
    watcher.abort();
    if let Some(http) = http {
        http.abort();
    }
    if !restarting.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(served?);
    }
    if let Err(e) = served {
        tracing::warn!(error = %e, "the failed storage engine could not flush on the way out (its unflushed writes are on the other replicas)");
    }
    restart_in_place()
}

/// Fault drill (benchmarks of a slow disk): with this set, SIGUSR1 switches a delay of this many
/// milliseconds before every flush of the storage engine on and off (off at start), so a script
/// can slow one node's disk for a window. Never set in production; the node logs a warning.
const SLOW_FLUSH_ENV: &str = "CARTD_FAULT_SLOW_FLUSH_MS";

fn open_storage(engine: Engine, dir: &Path) -> Result<Arc<dyn cart_node::storage::Storage>> {
    use cart_node::faults::{Fault, FaultyStorage};
    let engine_storage = cart_node::storage::open(engine, dir)?;
    tracing::info!(engine = engine.name(), dir = %dir.display(), "storage open");
    let Ok(raw) = std::env::var(SLOW_FLUSH_ENV) else {
        return Ok(engine_storage);
    };
    let ms: u64 = raw
        .parse()
        .with_context(|| format!("{SLOW_FLUSH_ENV} must be a number of milliseconds, got {raw:?}"))?;
    let mut toggles = signal(SignalKind::user_defined1()).context("listen for SIGUSR1 (the slow-disk drill)")?;
    tracing::warn!(
        ms,
        "fault drill armed: SIGUSR1 switches a delay before every storage flush on and off ({SLOW_FLUSH_ENV})"
    );
    let faulty = Arc::new(FaultyStorage::new(engine_storage));
    let switch = faulty.clone();
    tokio::spawn(async move {
        let mut on = false;
        while toggles.recv().await.is_some() {
            on = !on;
            tracing::warn!(on, ms, "fault drill: slow flushes switched");
            switch.set(on.then_some(Fault::SlowFlush(Duration::from_millis(ms))));
        }
    });
    Ok(faulty)
}

/// Restarts after a storage failure no sooner than this after the last one (a disk that keeps
/// failing must not make the node restart in a loop).
const RESTART_EVERY_MIN: Duration = Duration::from_secs(30);
/// Set on a node restarted in place: when (seconds since the epoch).
const RESTARTED_AT_ENV: &str = "CARTD_RESTARTED_AT";
/// Free space a restart after a storage failure needs at least (the engine writes on open).
const RESTART_FREE_MIN: u64 = 4 << 20;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every second: measures free space on the data directory against the low watermark (below it
/// the node takes no writes), and once the storage engine has failed and space is back, asks for
/// a restart in place: a failed engine stays broken (sled after an I/O error, fjall poisoned),
/// and reopening it is a restart.
async fn watch_storage(
    health: Arc<cart_node::faults::StorageHealth>,
    dir: PathBuf,
    watermark: u64,
    restart: Arc<tokio::sync::Notify>,
) {
    let last_restart = std::env::var(RESTARTED_AT_ENV)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let free = match nix::sys::statvfs::statvfs(&dir) {
            Ok(s) => s.blocks_available().saturating_mul(s.fragment_size()),
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot measure free disk space");
                continue;
            }
        };
        health.free_space(free, watermark);
        if health.engine_failed()
            && free >= watermark.max(RESTART_FREE_MIN)
            && now_secs().saturating_sub(last_restart) >= RESTART_EVERY_MIN.as_secs()
        {
            tracing::warn!(
                free_mib = free >> 20,
                "the storage engine failed and the disk has room again: restarting in place to reopen it"
            );
            restart.notify_one();
            return;
        }
    }
}

/// Replaces this process with a fresh `cartd` with the same arguments (same pid, so a
/// supervisor sees no exit); every file and socket closes on exec. The new process opens the
/// storage as a new incarnation and takes writes again once it is healthy.
fn restart_in_place() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("locate the cartd binary")?;
    tracing::warn!("restarting in place");
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(RESTARTED_AT_ENV, now_secs().to_string())
        .exec();
    bail!("restart in place failed: {err}")
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn dev(nodes: u16, base_port: u16, data_dir: &Path, extra_toml: Option<&Path>, tls: bool) -> Result<()> {
    let bin = std::env::current_exe().context("locate the cartd binary")?;
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("resolve {}", data_dir.display()))?;
    if base_port.checked_add(nodes - 1).is_none() {
        bail!("--base-port {base_port} is too high for {nodes} nodes");
    }
    if base_port.checked_add(1000 + nodes - 1).is_none() {
        bail!("--base-port {base_port} is too high for {nodes} nodes and their HTTP ports (+1000)");
    }
    let mut spec = ClusterSpec::loopback(&data_dir, nodes as usize, base_port)?.with_http(base_port)?;
    if let Some(path) = extra_toml {
        spec.top_toml = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    }
    let tls_flag = if tls {
        spec = spec.with_tls(true)?;
        format!("--tls-ca {} ", spec.tls_ca_file().display())
    } else {
        String::new()
    };
    let mut cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&bin, spec)).await??;
    for (i, (id, addr)) in cluster.spec.nodes.iter().enumerate() {
        let metrics = cluster
            .spec
            .http
            .get(i)
            .map(|h| format!(", metrics http://{h}/metrics"))
            .unwrap_or_default();
        println!(
            "node {id} at {addr} (log {}{metrics})",
            cluster.spec.node_dir(id).join("cartd.log").display()
        );
    }
    let endpoints = cluster.endpoints();
    println!("cluster file {}", cluster.spec.config_path().display());
    println!("cartdb dev cluster up: {}", endpoints.join(","));
    println!(
        "try: cartctl {tls_flag}--endpoint {} status    (Ctrl-C stops every node)",
        endpoints[0]
    );

    tokio::select! {
        () = shutdown_signal() => {}
        () = watch_nodes(&mut cluster) => {}
    }
    let mut clean = true;
    for (id, status) in cluster.terminate_all(Duration::from_secs(15))? {
        println!("node {id} stopped ({status})");
        clean &= status.success();
    }
    if !clean {
        bail!("a node did not stop cleanly; see its log");
    }
    Ok(())
}

/// Reports every node that exits on its own, with the command that starts it again; the other
/// nodes keep serving (staying available when a node dies is what cartdb is for).
async fn watch_nodes(cluster: &mut LocalCluster) {
    let bin = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("cartd"));
    loop {
        match cluster.exited() {
            Ok(Some((id, status))) => {
                println!(
                    "node {id} exited ({status}); the others keep serving. Restart it with:\n  {} run --config {} --node {id} >> {} 2>&1 &",
                    bin.display(),
                    cluster.spec.config_path().display(),
                    cluster.spec.node_dir(&id).join("cartd.log").display()
                );
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check the dev nodes"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
