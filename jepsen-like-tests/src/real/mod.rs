//! The real tier: five `cartd` processes, each in its own network namespace, faults by nft,
//! signals and libfaketime, clients in the bridge namespace.

pub mod netns;
pub mod proxy;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cart_client::{CartClient, ClientOptions, ClientTls, Credentials};
use cart_node::launcher::NodeProcess;
use cart_proto::admin_pb::admin_service_client::AdminServiceClient;
use cart_proto::admin_pb::LocalReadRequest;
use cart_ring::{Member, Ring};
use nix::sys::signal::Signal;

use self::netns::TestNet;
use self::proxy::ProxyNet;
use crate::checker::{self, converged, ReplicaState, Verdict};
use crate::history::{FaultSpan, History, Recorder};
use crate::membership;
use crate::nemesis::{self, Fault, Nemesis, Step, Timing};
use crate::report::{self, RunInfo};
use crate::workload::{self, Process, Recording, RunClock, Workload};

/// Set by SIGINT / SIGTERM (installed by [`run`]); every phase checks it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set [`INTERRUPTED`] instead of killing the harness, so namespaces and
/// processes are always cleaned up.
fn catch_signals() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.context("installing a signal handler")?;
    }
    Ok(())
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Replicas per cart in the harness's cluster (R = W = 2).
pub const N: usize = 3;
/// Port every node listens on (each in its own namespace).
const PORT: u16 = 7000;
/// The cluster secret of harness clusters (in `Net::cluster_toml`).
const SECRET: &str = "cart-jepsen";
/// The API token of `--tls` runs.
const TOKEN: &str = "cart-jepsen-api-token-0001";

/// `--tls`: the tables the nodes' cluster file gets and what every client presents.
#[derive(Clone, Default)]
struct Security {
    tables: String,
    credentials: Credentials,
}

impl Security {
    /// A throwaway CA and node certificates under `DIR/tls`, valid for every address a node is
    /// dialled at; mutual TLS between nodes and one API token.
    fn create(net: &Net, dir: &Path) -> Result<Self> {
        let mut hosts = BTreeSet::new();
        for i in 0..net.nodes() {
            for addr in (0..net.nodes())
                .map(|v| net.peer_addr(v, i))
                .chain([net.client_addr(i)])
            {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h).to_owned();
                hosts.insert(host);
            }
        }
        let names: Vec<String> = (0..net.nodes()).map(Nodes::name).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let pki = cart_node::security::write_dev_pki(&dir.join("tls"), &names, &hosts).map_err(anyhow::Error::msg)?;
        let credentials = Credentials::default()
            .with_tls(ClientTls::from_files(&pki.ca_file, None)?)
            .with_token(TOKEN)?;
        Ok(Security {
            tables: format!("\n{}\n[auth]\ntokens = [\"{TOKEN}\"]\n", pki.tls_toml(true)),
            credentials,
        })
    }
}
/// libfaketime as Debian installs it.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// The longest the harness waits for replicas to converge after the last fault healed.
pub const CONVERGENCE_LIMIT: Duration = Duration::from_secs(90);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub time_limit: Duration,
    pub nemeses: Vec<Nemesis>,
    pub workloads: Vec<Workload>,
    pub seed: u64,
    pub nodes: usize,
    /// Client processes per node and workload.
    pub clients_per_node: usize,
    pub cartd: PathBuf,
    /// Node data, logs and the report go here.
    pub dir: PathBuf,
    /// Use network namespaces when possible (false: always the loopback proxies).
    pub namespaces: bool,
    /// TLS on every connection (mutual between nodes) and an API token on every client call.
    pub tls: bool,
    /// Size of each node's data tmpfs (namespaces tier), MiB.
    pub disk_mb: u32,
}

/// Installs nftables and libfaketime with apt-get when they are missing.
pub fn ensure_packages() -> Result<()> {
    let have_nft = Command::new("nft").arg("--version").output().is_ok();
    if have_nft && Path::new(LIBFAKETIME).exists() {
        return Ok(());
    }
    eprintln!("cart-jepsen: installing nftables and faketime with apt-get");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !apt(&["install", "-y", "-qq", "nftables", "faketime"]) {
        apt(&["update", "-qq"]);
        if !apt(&["install", "-y", "-qq", "nftables", "faketime"]) {
            bail!("apt-get could not install nftables and faketime");
        }
    }
    Ok(())
}

/// The test network: namespaces when this process may create them, else loopback proxies.
pub enum Net {
    Namespaces(TestNet),
    Loopback(ProxyNet),
}

impl Net {
    /// Namespaces when available; otherwise loopback proxies, saying so.
    pub fn create(nodes: usize, allow_namespaces: bool) -> Result<Net> {
        if allow_namespaces && netns::available() {
            ensure_packages()?;
            return Ok(Net::Namespaces(
                TestNet::create(nodes).context("creating the network namespaces")?,
            ));
        }
        let why = if allow_namespaces {
            "network namespaces unavailable (needs root and `ip netns`)"
        } else {
            "--loopback given"
        };
        eprintln!("cart-jepsen: {why}: running on loopback with a fault-injecting TCP proxy per link");
        if Command::new("nft").arg("--version").output().is_err() || !Path::new(LIBFAKETIME).exists() {
            let _ = ensure_packages();
        }
        Ok(Net::Loopback(ProxyNet::create(nodes)?))
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Net::Namespaces(_) => "namespaces",
            Net::Loopback(_) => "loopback-proxy",
        }
    }

    fn nodes(&self) -> usize {
        match self {
            Net::Namespaces(n) => n.nodes(),
            Net::Loopback(p) => p.nodes(),
        }
    }

    /// Where clients (and the checker) reach node `i`.
    fn client_addr(&self, i: usize) -> String {
        match self {
            Net::Namespaces(n) => format!("{}:{PORT}", n.ip(i)),
            Net::Loopback(p) => p.node_addr(i).to_string(),
        }
    }

    /// Node `viewer`'s address for node `i` (its own listen address when equal).
    fn peer_addr(&self, viewer: usize, i: usize) -> String {
        match self {
            Net::Namespaces(_) => self.client_addr(i),
            Net::Loopback(p) => p.link_addr(viewer, i).to_string(),
        }
    }

    /// The start of node `i`'s command line (enter its namespace, if any).
    fn command(&self, i: usize) -> Command {
        match self {
            Net::Namespaces(n) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &n.node_ns(i), "env"]);
                c
            }
            Net::Loopback(_) => Command::new("env"),
        }
    }

    fn partition(&self, blocked: &[(usize, usize)]) -> Result<()> {
        match self {
            Net::Namespaces(n) => n.partition(blocked),
            Net::Loopback(p) => {
                p.partition(blocked);
                Ok(())
            }
        }
    }

    fn loss(&self, percent: u32) -> Result<()> {
        match self {
            Net::Namespaces(n) => n.loss(percent),
            Net::Loopback(p) => {
                p.loss(percent);
                Ok(())
            }
        }
    }

    fn heal(&self) -> Result<()> {
        match self {
            Net::Namespaces(n) => n.heal(),
            Net::Loopback(p) => {
                p.heal();
                Ok(())
            }
        }
    }

    /// The cluster file node `i` reads: every node under its address as node `i` dials it.
    fn cluster_toml(&self, i: usize, dir: &Path) -> String {
        let mut toml = String::from(
            "max_inflight_writes = 4096\nshutdown_grace_ms = 3000\nkeepalive_interval_ms = 2000\n\n\
             [cluster]\nsecret = \"cart-jepsen\"\nn = 3\nr = 2\nw = 2\npeer_timeout_ms = 500\n\
             request_timeout_ms = 1000\nheartbeat_interval_ms = 250\ndown_after_failures = 2\n\
             hint_interval_ms = 250\nanti_entropy_interval_ms = 500\nanti_entropy_keys_per_round = 512\n\n\
             [limits]\nmax_lines_per_cart = 1000\n",
        );
        for j in 0..self.nodes() {
            toml.push_str(&format!(
                "\n[[nodes]]\nnode_id = \"n{}\"\nlisten_addr = \"{}\"\ndata_dir = \"{}\"\n",
                j + 1,
                self.peer_addr(i, j),
                dir.join(format!("n{}", j + 1)).join("data").display()
            ));
        }
        toml
    }
}

/// The five processes and what the nemesis does to them.
struct Nodes {
    net: Net,
    cartd: PathBuf,
    dir: PathBuf,
    procs: Vec<Option<NodeProcess>>,
    paused: BTreeSet<usize>,
    /// Nodes the membership nemesis took out of the layout (they join again at heal).
    left: BTreeSet<usize>,
    /// Nodes whose data directory is a tmpfs of their own (namespaces tier: the disk nemesis
    /// fills it), and those it filled (a filler file, deleted at heal).
    disks: BTreeSet<usize>,
    full: BTreeSet<usize>,
    disk_mb: u32,
    security: Security,
}

/// Lines of a dead node's log the harness prints.
const LOG_TAIL_LINES: usize = 30;

impl Nodes {
    fn name(i: usize) -> String {
        format!("n{}", i + 1)
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(Self::name(i))
    }

    fn clock_file(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("faketime")
    }

    fn set_clock(&self, i: usize, offset_s: i64) -> Result<()> {
        let path = self.clock_file(i);
        std::fs::write(&path, format!("{offset_s:+}\n")).with_context(|| format!("writing {}", path.display()))
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("data")
    }

    fn filler(&self, i: usize) -> PathBuf {
        self.data_dir(i).join("cart-jepsen-filler")
    }

    /// Fills node `i`'s tmpfs to the last byte (its storage then fails with ENOSPC).
    fn fill(&mut self, i: usize) -> Result<()> {
        use std::io::Write;
        if !self.disks.contains(&i) {
            eprintln!("disk nemesis skipped: it needs a tmpfs per node (network namespaces, root)");
            return Ok(());
        }
        let path = self.filler(i);
        let mut file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let block = vec![0u8; 1 << 20];
        while file.write_all(&block).is_ok() {}
        self.full.insert(i);
        Ok(())
    }

    fn start(&mut self, i: usize) -> Result<()> {
        std::fs::create_dir_all(self.node_dir(i))?;
        if matches!(self.net, Net::Namespaces(_)) && !self.disks.contains(&i) {
            let data = self.data_dir(i);
            std::fs::create_dir_all(&data)?;
            let mounted = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={}m", self.disk_mb), "tmpfs"])
                .arg(&data)
                .status()
                .with_context(|| format!("mounting a tmpfs on {}", data.display()))?;
            if mounted.success() {
                self.disks.insert(i);
            } else {
                eprintln!("no tmpfs for {}: the disk nemesis skips it", Self::name(i));
            }
        }
        if !self.clock_file(i).exists() {
            self.set_clock(i, 0)?;
        }
        let config = self.node_dir(i).join("cluster.toml");
        std::fs::write(&config, self.net.cluster_toml(i, &self.dir) + &self.security.tables)?;
        let mut command = self.net.command(i);
        if Path::new(LIBFAKETIME).exists() {
            command.arg(format!("LD_PRELOAD={LIBFAKETIME}"));
        }
        command
            .arg(format!("FAKETIME_TIMESTAMP_FILE={}", self.clock_file(i).display()))
            .arg("FAKETIME_DONT_FAKE_MONOTONIC=1")
            .arg("FAKETIME_CACHE_DURATION=1")
            .arg("RUST_LOG=warn,cart_node=info")
            .arg(&self.cartd)
            .args(["run", "--node", &Self::name(i), "--config"])
            .arg(&config);
        let process = NodeProcess::start_command(command, &Self::name(i), &self.node_dir(i))
            .with_context(|| format!("starting {}", Self::name(i)))?;
        self.procs[i] = Some(process);
        Ok(())
    }

    fn signal(&mut self, i: usize, signal: Signal) -> Result<()> {
        if let Some(p) = self.procs[i].as_mut() {
            p.signal(signal)?;
        }
        Ok(())
    }

    fn apply(&mut self, fault: &Fault) -> Result<()> {
        match fault {
            Fault::Partition { blocked, .. } => self.net.partition(blocked),
            Fault::Loss { percent } => self.net.loss(*percent),
            Fault::Kill(nodes) => {
                for &i in nodes {
                    if let Some(mut p) = self.procs[i].take() {
                        p.kill9()?;
                    }
                }
                Ok(())
            }
            Fault::Pause(nodes) => {
                for &i in nodes {
                    self.signal(i, Signal::SIGSTOP)?;
                    self.paused.insert(i);
                }
                Ok(())
            }
            Fault::Skew(skews) => skews.iter().try_for_each(|&(i, s)| self.set_clock(i, s)),
            // Real disks cannot be made to fail on demand: here every disk fault is a full disk
            // (the other kinds run in the simulation).
            Fault::Disk { node, .. } => self.fill(*node),
            Fault::Leave(i) => {
                let change = membership::Change::Leave {
                    node_id: Self::name(*i),
                };
                if self.change_membership(*i, &change)? {
                    self.left.insert(*i);
                }
                Ok(())
            }
        }
    }

    /// Commits a membership change through the other nodes (namespaces only: the loopback
    /// fallback gives each node its own proxy address for every peer, which one cluster-wide
    /// layout cannot hold). Whether it was committed.
    fn change_membership(&self, node: usize, change: &membership::Change) -> Result<bool> {
        if !matches!(self.net, Net::Namespaces(_)) {
            eprintln!("membership nemesis skipped: it needs network namespaces (run as root)");
            return Ok(false);
        }
        let endpoints: Vec<String> = (0..self.procs.len())
            .filter(|j| *j != node)
            .map(|j| self.net.client_addr(j))
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let connect = cart_client::tcp_connect();
        match runtime.block_on(membership::apply(
            &endpoints,
            SECRET,
            change,
            &connect,
            &self.security.credentials,
        )) {
            Ok(_) => Ok(true),
            Err(e) => {
                eprintln!("membership nemesis: {change:?} not committed: {e}");
                Ok(false)
            }
        }
    }

    /// Undoes every fault: rules flushed, paused nodes continued, clocks reset, dead nodes
    /// restarted.
    fn heal_all(&mut self) -> Result<()> {
        self.net.heal()?;
        for i in std::mem::take(&mut self.left) {
            let change = membership::Change::Join {
                node_id: Self::name(i),
                addr: self.net.client_addr(i),
            };
            if !self.change_membership(i, &change)? {
                self.left.insert(i);
            }
        }
        for i in std::mem::take(&mut self.paused) {
            self.signal(i, Signal::SIGCONT)?;
        }
        for i in std::mem::take(&mut self.full) {
            let path = self.filler(i);
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        for i in 0..self.procs.len() {
            self.set_clock(i, 0)?;
            if self.procs[i].is_none() {
                self.start(i)?;
            }
        }
        Ok(())
    }

    /// Nodes whose process has exited on its own (none should: a full disk is met by a restart
    /// in place), each with its exit status and the end of its log.
    fn exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, p) in self.procs.iter_mut().enumerate() {
            let Some(p) = p.as_mut() else { continue };
            if let Ok(Some(status)) = p.try_wait() {
                let log = std::fs::read_to_string(p.log_path()).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n    ");
                out.push(format!(
                    "{} exited ({status}); its log ends:\n    {tail}",
                    Self::name(i)
                ));
            }
        }
        out
    }

    fn stop_all(&mut self) {
        for p in self.procs.iter_mut().filter_map(Option::as_mut) {
            let _ = p.signal(Signal::SIGCONT);
            let _ = p.terminate(Duration::from_secs(5));
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop_all();
        for i in std::mem::take(&mut self.disks) {
            let _ = Command::new("umount").arg("-l").arg(self.data_dir(i)).status();
        }
    }
}

/// Carries out the schedule on its own thread; heals everything at the end or when stopped.
fn nemesis_thread(
    mut nodes: Nodes,
    steps: Vec<Step>,
    clock: RunClock,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Nodes, Result<()>)> {
    std::thread::spawn(move || {
        let began = Instant::now();
        let names: Vec<String> = (0..nodes.procs.len()).map(Nodes::name).collect();
        let sleep_until = |at: Instant| {
            while Instant::now() < at && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50).min(at.saturating_duration_since(Instant::now())));
            }
        };
        let mut result = Ok(());
        for step in &steps {
            sleep_until(began + step.start);
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let start_us = clock.now_us();
            eprintln!(
                "cart-jepsen: {:>6.1}s {} {}",
                start_us as f64 / 1e6,
                step.fault.nemesis().name(),
                step.fault.describe(&names)
            );
            if let Err(e) = nodes.apply(&step.fault) {
                result = Err(e);
                break;
            }
            sleep_until(began + step.start + step.hold);
            let healed = nodes.heal_all();
            recorder.fault(FaultSpan {
                nemesis: step.fault.nemesis().name().into(),
                detail: step.fault.describe(&names),
                start_us,
                end_us: clock.now_us(),
            });
            if let Err(e) = healed {
                result = Err(e);
                break;
            }
        }
        let healed = nodes.heal_all();
        (nodes, result.and(healed))
    })
}

fn client_options(credentials: &Credentials) -> ClientOptions {
    ClientOptions {
        credentials: credentials.clone(),
        request_timeout: Duration::from_millis(1500),
        connect_timeout: Duration::from_millis(500),
        max_attempts: 2,
        ring_aware: false,
        ..ClientOptions::default()
    }
}

/// Processes per workload whose client fails over (besides those attached to each node).
pub const FAILOVER_CLIENTS: usize = 2;

/// A client as `cart-client` is by default: every node, owners first, writes retried on the
/// next node with their request id.
fn failover_options(credentials: &Credentials) -> ClientOptions {
    ClientOptions {
        credentials: credentials.clone(),
        request_timeout: Duration::from_millis(1500),
        connect_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    }
}

/// Every owner's stored state of every cart, through the admin API's LocalRead.
async fn read_replicas(
    ring: &Ring,
    carts: &BTreeSet<String>,
    deadline: Instant,
    credentials: &Credentials,
) -> Result<Vec<ReplicaState>> {
    let mut admins = std::collections::BTreeMap::new();
    for m in ring.members() {
        let channel = credentials
            .endpoint(&m.addr)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        admins.insert(m.node_id.clone(), AdminServiceClient::new(channel));
    }
    let mut out = Vec::new();
    for cart in carts {
        if Instant::now() >= deadline || interrupted() {
            bail!("no time left to read every replica");
        }
        for owner in ring.preference_list(cart.as_bytes(), N) {
            let Some(admin) = admins.get_mut(&owner.node_id) else {
                continue;
            };
            let mut request = tonic::Request::new(LocalReadRequest { cart_id: cart.clone() });
            credentials.authorize(&mut request);
            let reply = admin
                .local_read(request)
                .await
                .with_context(|| format!("LocalRead {cart} on {}", owner.node_id))?
                .into_inner();
            out.push(ReplicaState {
                cart: cart.clone(),
                node: owner.node_id.clone(),
                present: reply.present,
                canonical: reply.canonical,
                quantities: reply.quantities.into_iter().collect(),
            });
        }
    }
    Ok(out)
}

/// Polls the owners until they agree or [`CONVERGENCE_LIMIT`] passes; returns the last complete
/// reading. One reading more is allowed past the limit, so a slow last pass still gives a verdict.
async fn await_convergence(
    ring: &Ring,
    carts: &BTreeSet<String>,
    credentials: &Credentials,
) -> Result<(Vec<ReplicaState>, Duration)> {
    let began = Instant::now();
    let mut last = None;
    while began.elapsed() < CONVERGENCE_LIMIT && !interrupted() {
        match read_replicas(ring, carts, began + CONVERGENCE_LIMIT, credentials).await {
            Ok(states) if converged(&states) => return Ok((states, began.elapsed())),
            Ok(states) => last = Some(states),
            Err(e) => eprintln!("cart-jepsen: waiting for replicas: {e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if interrupted() {
        bail!("interrupted");
    }
    let states = match last {
        Some(states) => states,
        None => read_replicas(ring, carts, Instant::now() + CONVERGENCE_LIMIT, credentials).await?,
    };
    Ok((states, began.elapsed()))
}

/// The result of a run.
pub struct RunResult {
    pub verdict: Verdict,
    pub summary: String,
    pub history: History,
}

/// Runs the whole thing: namespaces, cluster, workloads under faults, heal, convergence, check.
/// Must be called before any tokio runtime exists (it moves the thread into the bridge
/// namespace and builds its own runtime there).
pub fn run(opts: &Options) -> Result<RunResult> {
    // Set on SIGINT/SIGTERM (copied from the signal flag) or when a phase fails: everything stops.
    let stop = Arc::new(AtomicBool::new(false));
    if opts.workloads.contains(&Workload::Expiry) {
        bail!("the expiry workload runs in the simulation (`cart-jepsen simulate`), where guest carts live seconds");
    }
    catch_signals()?;
    // Node data from an earlier run would show up as phantom items and counters out of range.
    if std::fs::read_dir(&opts.dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!("the report folder {} is not empty: give a new one", opts.dir.display());
    }
    std::fs::create_dir_all(&opts.dir)?;
    let net = Net::create(opts.nodes, opts.namespaces)?;
    if let Net::Namespaces(n) = &net {
        n.enter_bridge()?;
    }
    let members: Vec<Member> = (0..opts.nodes)
        .map(|i| Member {
            node_id: Nodes::name(i),
            addr: net.client_addr(i),
            weight: 1,
            zone: String::new(),
        })
        .collect();
    let ring = Ring::new(members)?;
    let security = if opts.tls {
        Security::create(&net, &opts.dir)?
    } else {
        Security::default()
    };
    let mut nodes = Nodes {
        security,
        net,
        cartd: opts.cartd.clone(),
        dir: opts.dir.clone(),
        procs: (0..opts.nodes).map(|_| None).collect(),
        paused: BTreeSet::new(),
        left: BTreeSet::new(),
        disks: BTreeSet::new(),
        full: BTreeSet::new(),
        disk_mb: opts.disk_mb,
    };
    for i in 0..opts.nodes {
        if interrupted() {
            bail!("interrupted");
        }
        nodes.start(i)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mode = nodes.net.mode();
    let mut nodes = Some(nodes);
    let mut nemesis = None;
    let result = runtime.block_on(drive(opts, mode, &ring, &stop, &mut nodes, &mut nemesis));
    // On any early return the nemesis thread still holds the nodes: stop it, take them back, and
    // let them (and the namespaces) drop here, never leaving a process or namespace behind.
    if let Some(handle) = nemesis.take() {
        stop.store(true, Ordering::SeqCst);
        if let Ok((held, _)) = handle.join() {
            drop(held);
        }
    }
    drop(nodes);
    result
}

async fn drive(
    opts: &Options,
    mode: &str,
    ring: &Ring,
    stop: &Arc<AtomicBool>,
    nodes: &mut Option<Nodes>,
    nemesis: &mut Option<std::thread::JoinHandle<(Nodes, Result<()>)>>,
) -> Result<RunResult> {
    let credentials = nodes
        .as_ref()
        .map(|n| n.security.credentials.clone())
        .unwrap_or_default();
    {
        let stop = stop.clone();
        // Ends with the runtime; wakes ten times a second.
        tokio::spawn(async move {
            while !interrupted() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!("cart-jepsen: interrupted; healing and cleaning up");
            stop.store(true, Ordering::SeqCst);
        });
    }
    let recorder = Recorder::default();
    let clock = RunClock::now();
    let addrs: Vec<String> = ring.members().iter().map(|m| m.addr.clone()).collect();
    if opts.workloads.contains(&Workload::Quantity) {
        let client = CartClient::connect_with(&addrs, client_options(&credentials)).await?;
        let rec = Recording {
            recorder: recorder.clone(),
            clock,
            process: 0,
            node: "setup".into(),
            workload: Workload::Quantity,
            failover: true,
        };
        workload::setup_quantity(&client, &rec, stop)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let steps = nemesis::schedule(opts.seed, &opts.nemeses, opts.nodes, opts.time_limit, Timing::REAL);
    let until = tokio::time::Instant::now() + opts.time_limit;
    let held = nodes.take().context("nodes already taken")?;
    *nemesis = Some(nemesis_thread(held, steps, clock, recorder.clone(), stop.clone()));
    let mut tasks = Vec::new();
    let named: Vec<(String, String)> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (Nodes::name(i), a.clone()))
        .collect();
    for p in workload::plan(&named, &opts.workloads, opts.clients_per_node, FAILOVER_CLIENTS) {
        let options = if p.failover {
            failover_options(&credentials)
        } else {
            client_options(&credentials)
        };
        let client = CartClient::connect_with(&p.targets, options).await?;
        let process = Process {
            recording: Recording {
                recorder: recorder.clone(),
                clock,
                process: p.id,
                node: p.node,
                workload: p.workload,
                failover: p.failover,
            },
            client,
            seed: opts.seed.wrapping_mul(1_000_003).wrapping_add(p.id as u64),
            until,
            think: Duration::from_millis(10),
            stop: stop.clone(),
            checkout_carts: p.checkout_carts,
            checkout_index: p.checkout_index,
        };
        tasks.push(tokio::spawn(process.run()));
    }
    for task in tasks {
        task.await?;
    }
    let handle = nemesis.take().context("nemesis thread missing")?;
    let (held, healed) = tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the nemesis thread panicked"))?;
    let held = nodes.insert(held);
    healed.context("healing the cluster")?;
    let dead = held.exited();
    if !dead.is_empty() {
        bail!("a node died during the run:\n{}", dead.join("\n"));
    }
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    eprintln!("cart-jepsen: all faults healed; sending writes whose outcome stayed unknown again");
    {
        let client = CartClient::connect_with(&addrs, failover_options(&credentials)).await?;
        workload::resolve_unknown(&client, &recorder, clock).await;
    }
    eprintln!("cart-jepsen: waiting for replicas to converge");
    let history = recorder.history();
    let carts: BTreeSet<String> = history.ops.iter().map(|o| o.cart.clone()).collect();
    let waited = await_convergence(ring, &carts, &credentials).await;
    if !matches!(&waited, Ok((finals, _)) if converged(finals)) {
        for line in nodes.as_mut().map(Nodes::exited).unwrap_or_default() {
            eprintln!("cart-jepsen: {line}");
        }
    }
    let (finals, waited) = waited?;
    eprintln!(
        "cart-jepsen: {} after {:.1} s",
        if converged(&finals) {
            "converged"
        } else {
            "NOT converged"
        },
        waited.as_secs_f64()
    );
    let verdict = checker::check(&history, &finals);
    let info = RunInfo {
        mode: mode.into(),
        seed: opts.seed,
        nodes: opts.nodes,
        nemeses: opts.nemeses.iter().map(|n| n.name().to_string()).collect(),
        workloads: opts.workloads.iter().map(|w| w.name().to_string()).collect(),
        time_limit_s: opts.time_limit.as_secs(),
    };
    let summary = report::summary(&info, &verdict);
    report::write_all(&opts.dir, &info, &history, &verdict, &summary)?;
    Ok(RunResult {
        verdict,
        summary,
        history,
    })
}
