//! README "Running on several machines", as written: three network namespaces stand in for the
//! machines `cart-a.internal`, `cart-b.internal` and `cart-c.internal` (names resolved through
//! `/etc/netns/NS/hosts`, which `ip netns exec` mounts over `/etc/hosts`), each running one
//! `cartd` from the README's own cluster file, the secret from `CARTDB_CLUSTER_SECRET_FILE`.
//! A fourth namespace (the bridge between them) plays the operator's machine and runs the real
//! `cartctl` against the machines' names, reads `/metrics`, and sees a write made while n3 was
//! down reach n3 after its restart.
//!
//! Root only (network namespaces): skipped with a message otherwise. Everything it creates
//! (namespaces `sm<pid>-…`, `/etc/netns/sm<pid>-…`, processes) is removed on drop, also when it
//! fails; leftovers of a run killed with -9 are removed by the next run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cart_jepsen::real::netns;
use cart_node::launcher::NodeProcess;
use serde_json::Value;

/// The README section this test runs.
const HEADING: &str = "## Running on several machines";
/// The machines of the README's cluster file: node id, host name, suffix of its namespace.
const MACHINES: [(&str, &str, &str); 3] = [
    ("n1", "cart-a.internal", "a"),
    ("n2", "cart-b.internal", "b"),
    ("n3", "cart-c.internal", "c"),
];
/// The machines' subnet (inside the namespaces only); the bridge (operator) namespace is .254.
const SUBNET: &str = "10.77.1";
/// Bound of every `cartctl` call (its own deadline per attempt is 2 s).
const CARTCTL_TIMEOUT: Duration = Duration::from_secs(20);

/// A binary of the workspace next to `cart-jepsen`, built when missing (`cargo test -p
/// cart-jepsen` alone does not build other packages' binaries).
fn workspace_bin(package: &str, bin: &str) -> Result<PathBuf> {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_cart-jepsen")).with_file_name(bin);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--bin", bin])
            .status()
            .context("running cargo build")?;
        ensure!(status.success(), "building {bin} failed");
    }
    Ok(path)
}

/// The ```toml block of the README section [`HEADING`].
fn readme_cluster_file(readme: &str) -> Result<String> {
    let mut lines = readme.lines().skip_while(|l| l.trim_end() != HEADING);
    ensure!(lines.next().is_some(), "README has no section {HEADING:?}");
    let section: Vec<&str> = lines.take_while(|l| !l.starts_with("## ")).collect();
    let start = section
        .iter()
        .position(|l| l.trim() == "```toml")
        .with_context(|| format!("README section {HEADING:?} has no ```toml block"))?;
    let block: Vec<&str> = section[start + 1..]
        .iter()
        .take_while(|l| l.trim() != "```")
        .copied()
        .collect();
    ensure!(
        start + 1 + block.len() < section.len(),
        "the ```toml block of {HEADING:?} is not closed"
    );
    Ok(block.join("\n") + "\n")
}

/// Completes the README's file as its comment says (`# … n2 on cart-b.internal, n3 on
/// cart-c.internal`): the n2 and n3 entries are the n1 entry with the node id and the host name
/// substituted (its comment-only lines left out). Beyond that completion the ONLY change is
/// `data_dir`, replaced in every entry by `data_dirs[k]` (the README's `/var/lib/cartdb/data` is
/// one folder, and all three "machines" share this host's file system).
fn complete_cluster_file(readme_toml: &str, data_dirs: &[PathBuf]) -> Result<String> {
    let parts: Vec<&str> = readme_toml.split("[[nodes]]").collect();
    let (head, entries) = parts.split_first().context("empty cluster file")?;
    let entries: Vec<String> = match entries {
        [n1] => {
            ensure!(
                n1.contains("node_id = \"n1\"") && n1.contains(MACHINES[0].1),
                "the README's [[nodes]] entry is no longer n1 on {}: update this test's completion",
                MACHINES[0].1
            );
            let n1 = n1.to_string();
            // The copies leave out the entry's comment-only lines (the "… n2 on" note).
            let copy: String = n1
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect();
            let mut entries = vec![n1];
            for (id, host, _) in &MACHINES[1..] {
                entries.push(
                    copy.replace("node_id = \"n1\"", &format!("node_id = \"{id}\""))
                        .replace(MACHINES[0].1, host),
                );
            }
            entries
        }
        // Should the README one day list every node, it is used as it stands.
        all if all.len() == MACHINES.len() => all.iter().map(|e| e.to_string()).collect(),
        other => bail!("the README's cluster file has {} [[nodes]] entries", other.len()),
    };
    let mut out = head.to_string();
    for (entry, dir) in entries.iter().zip(data_dirs) {
        let mut replaced = 0;
        let lines: Vec<String> = entry
            .lines()
            .map(|line| {
                let key = line.split('=').next().unwrap_or("").trim();
                if key == "data_dir" && line.contains('=') {
                    replaced += 1;
                    let path = toml_string(&dir.display().to_string());
                    format!("data_dir = {path} # the test's only change to the README's file")
                } else {
                    line.to_owned()
                }
            })
            .collect();
        ensure!(
            replaced == 1,
            "a [[nodes]] entry has {replaced} data_dir lines:\n{entry}"
        );
        out += "[[nodes]]";
        out += &lines.join("\n");
        out += "\n";
    }
    Ok(out)
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The namespaces, their `/etc/netns` folders and whatever runs inside: all removed on drop.
struct Machines {
    prefix: String,
    /// Namespaces created, in order (the bridge first).
    namespaces: Vec<String>,
    /// `/etc/netns/NS` folders written.
    etc_dirs: Vec<PathBuf>,
    /// Whether this run created `/etc/netns` itself (removed again when left empty).
    created_etc_netns: bool,
}

const ETC_NETNS: &str = "/etc/netns";

impl Machines {
    fn create() -> Result<Machines> {
        remove_stale();
        let mut m = Machines {
            prefix: format!("sm{}", std::process::id()),
            namespaces: Vec::new(),
            etc_dirs: Vec::new(),
            created_etc_netns: false,
        };
        let br = m.bridge_ns();
        m.add_ns(&br)?;
        netns::run("ip", &["-n", &br, "link", "set", "lo", "up"])?;
        netns::run("ip", &["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        netns::run(
            "ip",
            &["-n", &br, "addr", "add", &format!("{SUBNET}.254/24"), "dev", "br0"],
        )?;
        netns::run("ip", &["-n", &br, "link", "set", "br0", "up"])?;
        for (i, (_, _, suffix)) in MACHINES.iter().enumerate() {
            let ns = m.machine_ns(suffix);
            m.add_ns(&ns)?;
            let outer = format!("v{suffix}");
            netns::run(
                "ip",
                &[
                    "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &outer, "netns", &br,
                ],
            )?;
            netns::run(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{}/24", ip(i)), "dev", "eth0"],
            )?;
            netns::run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            netns::run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            netns::run("ip", &["-n", &br, "link", "set", &outer, "master", "br0"])?;
            netns::run("ip", &["-n", &br, "link", "set", &outer, "up"])?;
        }
        // Every namespace, the operator's too, resolves the three machine names.
        let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (i, (_, host, _)) in MACHINES.iter().enumerate() {
            hosts += &format!("{} {host}\n", ip(i));
        }
        m.created_etc_netns = !Path::new(ETC_NETNS).exists();
        for ns in m.namespaces.clone() {
            let dir = Path::new(ETC_NETNS).join(&ns);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            m.etc_dirs.push(dir.clone());
            std::fs::write(dir.join("hosts"), &hosts).with_context(|| format!("writing {}/hosts", dir.display()))?;
        }
        Ok(m)
    }

    fn add_ns(&mut self, name: &str) -> Result<()> {
        netns::run("ip", &["netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        Ok(())
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    fn machine_ns(&self, suffix: &str) -> String {
        format!("{}-cart-{suffix}", self.prefix)
    }

    /// `ip netns exec NS PROGRAM`: the program sees the namespace's network and `/etc/hosts`.
    fn exec(&self, ns: &str, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }
}

/// Node `i`'s address.
fn ip(i: usize) -> String {
    format!("{SUBNET}.{}", i + 1)
}

impl Drop for Machines {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            kill_inside(ns);
            if let Err(e) = netns::run("ip", &["netns", "del", ns]) {
                eprintln!("several_machines: could not delete namespace {ns}: {e:#}");
            }
        }
        for dir in &self.etc_dirs {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                eprintln!("several_machines: could not remove {}: {e}", dir.display());
            }
        }
        if self.created_etc_netns {
            // Fails (and stays) if a parallel run has its folders there.
            let _ = std::fs::remove_dir(ETC_NETNS);
        }
    }
}

/// kill -9 every process inside namespace `ns`.
fn kill_inside(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    let me = std::process::id() as i32;
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Some(pid) = pid.parse::<i32>().ok().filter(|p| *p != me) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The pid in a name `sm<pid>-…` of this test, if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix("sm")?.split_once('-')?.0.parse().ok()
}

/// Namespaces and `/etc/netns` folders of runs whose process is gone (killed with -9).
fn remove_stale() {
    let gone = |name: &str| owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if gone(name) {
                kill_inside(name);
                let _ = netns::run("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(ETC_NETNS) {
        for entry in entries.flatten() {
            if gone(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// What a bounded command printed.
struct Output {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs `command` for at most `timeout` (killed after that: an error).
fn run_bounded(mut command: Command, timeout: Duration) -> Result<Output> {
    let described = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {described}"))?;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().context("stdout")?));
    let stderr = drain(Box::new(child.stderr.take().context("stderr")?));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{described} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        success: status.success(),
        status: status.to_string(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// The test's view of the three machines and the operator.
struct Cluster {
    machines: Machines,
    cartd: PathBuf,
    cartctl: PathBuf,
    config: PathBuf,
    secret_file: PathBuf,
    dir: PathBuf,
}

impl Cluster {
    /// `cartd run --config FILE --node ID` on machine `i`, as a systemd unit would start it: the
    /// secret from the file `CARTDB_CLUSTER_SECRET_FILE` names.
    fn start(&self, i: usize) -> Result<NodeProcess> {
        let (id, _, suffix) = MACHINES[i];
        let mut command = self.machines.exec(&self.machines.machine_ns(suffix), &self.cartd);
        command
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--node", id])
            .env_remove("CARTDB_CLUSTER_SECRET")
            .env("CARTDB_CLUSTER_SECRET_FILE", &self.secret_file);
        let node = NodeProcess::start_command(command, id, &self.dir.join(id))
            .with_context(|| format!("starting {id} in namespace {}", self.machines.machine_ns(suffix)))?;
        println!("{id} ready on {} (pid {})", MACHINES[i].1, node.pid());
        Ok(node)
    }

    /// `cartctl ARGS` on the operator's machine; an error unless it exits 0.
    fn cartctl(&self, args: &[&str]) -> Result<String> {
        let out = self.cartctl_output(args)?;
        ensure!(
            out.success,
            "cartctl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    /// `cartctl --endpoint cart-a.internal:7001 cart add user:alice ARGS…`.
    fn add_through_cart_a(&self, args: &[&str]) -> Result<String> {
        let head = ["--endpoint", "cart-a.internal:7001", "cart", "add", "user:alice"];
        self.cartctl(&head.iter().chain(args).copied().collect::<Vec<_>>())
    }

    fn cartctl_output(&self, args: &[&str]) -> Result<Output> {
        let mut command = self.machines.exec(&self.machines.bridge_ns(), &self.cartctl);
        command.args(args).env_remove("CARTDB_SECRET");
        run_bounded(command, CARTCTL_TIMEOUT)
    }

    /// `GET http://HOST:PORT/PATH` from the operator's machine (the bridge namespace, which
    /// resolves the machines' names): Python's urllib, as an operator's `curl` would; the body.
    fn http_get(&self, host_port_path: &str) -> Result<String> {
        let mut command = self.machines.exec(&self.machines.bridge_ns(), Path::new("python3"));
        command.args([
            "-c",
            "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
            &format!("http://{host_port_path}"),
        ]);
        let out = run_bounded(command, Duration::from_secs(20))?;
        ensure!(
            out.success,
            "GET http://{host_port_path} failed ({}):\n{}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }
}

/// The lines of a cart as `cartctl --json cart get` prints it: `(product, quantity, name)`.
fn cart_lines(json: &str) -> Result<Vec<(String, u64, String)>> {
    let cart: Value = serde_json::from_str(json).with_context(|| format!("not a cart: {json}"))?;
    let lines = cart["lines"]
        .as_array()
        .with_context(|| format!("no lines in {json}"))?;
    Ok(lines
        .iter()
        .map(|l| {
            (
                l["product_id"].as_str().unwrap_or("").to_owned(),
                l["quantity"].as_u64().unwrap_or(0),
                l["snapshot"]["name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

#[test]
fn the_readme_cluster_file_runs_on_three_machines() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { nix::libc::geteuid() } != 0 {
        eprintln!("SKIPPED several_machines: needs root (network namespaces)");
        return Ok(());
    }
    if !netns::available() {
        eprintln!("SKIPPED several_machines: `ip netns` is unavailable");
        return Ok(());
    }
    let began = Instant::now();
    // CART_SEVERAL_MACHINES_README=FILE runs another copy (to try an edit before making it).
    let readme_path = match std::env::var_os("CART_SEVERAL_MACHINES_README") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    };
    println!("cluster file from {}", readme_path.display());
    let readme = std::fs::read_to_string(&readme_path).with_context(|| format!("reading {}", readme_path.display()))?;
    let readme_toml = readme_cluster_file(&readme)?;
    let cartd = workspace_bin("cart-node", "cartd")?;
    let cartctl = workspace_bin("cart-client", "cartctl")?;

    let dir = tempfile::tempdir()?;
    let data_dirs: Vec<PathBuf> = MACHINES
        .iter()
        .map(|(id, _, _)| dir.path().join(id).join("data"))
        .collect();
    let text = complete_cluster_file(&readme_toml, &data_dirs)?;
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, &text)?;
    println!("cluster file (README's, completed):\n{text}");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "several-machines-secret\n")?;

    let cluster = Cluster {
        machines: Machines::create()?,
        cartd,
        cartctl,
        config,
        secret_file,
        dir: dir.path().to_owned(),
    };
    // Declared after the cluster: dropped (killed) first.
    let mut nodes: Vec<Option<NodeProcess>> = Vec::new();
    for i in 0..MACHINES.len() {
        nodes.push(Some(cluster.start(i)?));
    }

    // The tour's first write, through cart-a; read back through cart-b.
    cluster.add_through_cart_a(&[
        "sku-1",
        "--name",
        "Mug",
        "--price",
        "1299",
        "--currency",
        "EUR",
        "--qty",
        "2",
    ])?;
    let got = cluster.cartctl(&[
        "--endpoint",
        "cart-b.internal:7001",
        "--json",
        "cart",
        "get",
        "user:alice",
    ])?;
    let lines = cart_lines(&got)?;
    ensure!(
        lines == [("sku-1".to_owned(), 2, "Mug".to_owned())],
        "cart-b shows {lines:?}"
    );
    let table = cluster.cartctl(&["--endpoint", "cart-b.internal:7001", "cart", "get", "user:alice"])?;
    ensure!(table.contains("25.98 EUR"), "cartctl cart get shows:\n{table}");

    // Status through cart-c: three nodes up at their advertised names (heartbeats may take a
    // moment to mark every peer up).
    let expected: Vec<(String, String)> = MACHINES
        .iter()
        .map(|(id, host, _)| (id.to_string(), format!("{host}:7001")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = cluster.cartctl(&["--endpoint", "cart-c.internal:7001", "--json", "status"])?;
        let parsed: Value = serde_json::from_str(&status).with_context(|| format!("status: {status}"))?;
        let rows = parsed["nodes"].as_array().cloned().unwrap_or_default();
        let mut seen: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
                (s("node_id"), s("addr"))
            })
            .collect();
        seen.sort();
        ensure!(seen == expected, "status lists {seen:?}, not {expected:?}:\n{status}");
        ensure!(
            parsed["asked_node"] == "n3",
            "cart-c.internal:7001 is not n3:\n{status}"
        );
        if rows.iter().all(|r| r["up"] == true) {
            println!("status through cart-c: n1, n2, n3 up at cart-{{a,b,c}}.internal:7001");
            break;
        }
        ensure!(Instant::now() < deadline, "not every node up after 15 s:\n{status}");
        std::thread::sleep(Duration::from_millis(250));
    }

    // Metrics on the HTTP address.
    let metrics = cluster.http_get("cart-a.internal:8001/metrics")?;
    ensure!(
        metrics.contains("# TYPE cartdb_storage_bytes gauge") && metrics.contains("cartdb_carts_cached "),
        "GET http://cart-a.internal:8001/metrics:\n{metrics}"
    );
    println!(
        "GET http://cart-a.internal:8001/metrics: {} metric lines",
        metrics.lines().filter(|l| l.starts_with("cartdb_")).count()
    );

    // n3's machine dies; a write through n1 still reaches W = 2.
    let mut n3 = nodes[2].take().context("n3 runs")?;
    n3.kill9()?;
    drop(n3);
    println!("n3 killed");
    cluster.add_through_cart_a(&["sku-2", "--name", "Tea", "--price", "450", "--currency", "EUR"])?;
    println!("write through n1 acknowledged with n3 down");

    // n3 comes back and gets the write (hinted handoff or anti-entropy).
    nodes[2] = Some(cluster.start(2)?);
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(30);
    loop {
        let out = cluster.cartctl_output(&[
            "--endpoint",
            "cart-c.internal:7001",
            "--json",
            "cart",
            "get",
            "user:alice",
            "--local",
        ])?;
        let lines = match out.success {
            true => cart_lines(&out.stdout).unwrap_or_default(),
            false => Vec::new(),
        };
        if lines.iter().any(|(product, _, _)| product == "sku-2") {
            println!(
                "n3 holds the write {:.1} s after its restart: {lines:?}",
                restarted.elapsed().as_secs_f64()
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "n3 lacks sku-2 30 s after its restart; last answer ({}):\n{}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    for (i, node) in nodes.iter_mut().enumerate() {
        if let Some(status) = node.as_mut().and_then(|n| n.try_wait().ok().flatten()) {
            bail!("{} exited on its own ({status})", MACHINES[i].0);
        }
    }
    drop(nodes);
    drop(cluster);
    println!("several machines: passed in {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}
