//! The test network: one Linux network namespace per node, joined by a bridge that lives in a
//! namespace of its own (where the harness's clients run too). Every address exists only inside
//! these namespaces; deleting them on drop removes veths, bridge and nft rules with them.
//!
//! Faults are nft rules in each node's namespace (table `inet cartj`, chain `input`): `ip saddr
//! {…} drop` for partitions, `numgen random mod 100 < P drop` for packet loss.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// The nodes' subnet (inside the namespaces only).
const SUBNET: [u8; 3] = [10, 77, 0];
/// The bridge namespace's own address (the clients').
const BRIDGE_HOST: u8 = 254;

/// Runs a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `nft -f -` with `script` inside namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())
        .context("writing the nft script")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!("nft in {ns} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Namespaces whose names start `cj<pid>-`, from runs whose process is gone (a harness killed
/// with -9 could not clean up).
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix("cj").and_then(|r| r.split('-').next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            kill_inside(name);
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// kill -9 every process still inside namespace `name` (a cartd a killed harness left behind).
fn kill_inside(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    let me = std::process::id() as i32;
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        // The harness itself lives in its bridge namespace.
        if let Some(pid) = pid.parse::<i32>().ok().filter(|p| *p != me) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Whether this process may create namespaces (root, `ip netns` works).
pub fn available() -> bool {
    let probe = format!("cj{}-probe", std::process::id());
    let ok = run("ip", &["netns", "add", &probe]).is_ok();
    if ok {
        let _ = run("ip", &["netns", "del", &probe]);
    }
    ok
}

/// The namespaces of one run. Dropping it deletes them all.
pub struct TestNet {
    prefix: String,
    nodes: usize,
    created: Vec<String>,
}

impl TestNet {
    /// Creates the bridge namespace and `nodes` node namespaces, wired and addressed, each with
    /// an empty nft filter table.
    pub fn create(nodes: usize) -> Result<TestNet> {
        remove_stale();
        let mut net = TestNet {
            prefix: format!("cj{}", std::process::id()),
            nodes,
            created: Vec::new(),
        };
        let br = net.bridge_ns();
        net.add_ns(&br)?;
        run("ip", &["-n", &br, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        let bridge_addr = format!("{}/24", net.addr(BRIDGE_HOST));
        run("ip", &["-n", &br, "addr", "add", &bridge_addr, "dev", "br0"])?;
        run("ip", &["-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let ns = net.node_ns(i);
            net.add_ns(&ns)?;
            let (inner, outer) = ("eth0".to_string(), format!("vb{i}"));
            run(
                "ip",
                &[
                    "link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &outer, "netns", &br,
                ],
            )?;
            let addr = format!("{}/24", net.ip(i));
            run("ip", &["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            run("ip", &["-n", &ns, "link", "set", &inner, "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            run("ip", &["-n", &br, "link", "set", &outer, "master", "br0"])?;
            run("ip", &["-n", &br, "link", "set", &outer, "up"])?;
            nft(
                &ns,
                "table inet cartj {\n chain input { type filter hook input priority 0; policy accept; }\n}\n",
            )?;
        }
        Ok(net)
    }

    fn add_ns(&mut self, name: &str) -> Result<()> {
        run("ip", &["netns", "add", name])?;
        self.created.push(name.to_owned());
        Ok(())
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host)
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Node `i`'s address (node 0 is .1).
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.addr(i as u8 + 1)
    }

    pub fn node_ns(&self, i: usize) -> String {
        format!("{}-n{}", self.prefix, i + 1)
    }

    pub fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// Moves the calling thread into the bridge namespace: sockets it (and threads it spawns
    /// afterwards) opens reach the nodes, and nothing else.
    pub fn enter_bridge(&self) -> Result<()> {
        let path = format!("/run/netns/{}", self.bridge_ns());
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        setns(&file, CloneFlags::CLONE_NEWNET).context("setns into the bridge namespace")?;
        Ok(())
    }

    /// Installs a symmetric partition: no packet between the nodes of each pair.
    pub fn partition(&self, blocked: &[(usize, usize)]) -> Result<()> {
        for i in 0..self.nodes {
            let peers: Vec<String> = blocked
                .iter()
                .filter_map(|&(a, b)| match (a == i, b == i) {
                    (true, _) => Some(self.ip(b).to_string()),
                    (_, true) => Some(self.ip(a).to_string()),
                    _ => None,
                })
                .collect();
            if !peers.is_empty() {
                let rule = format!("add rule inet cartj input ip saddr {{ {} }} drop\n", peers.join(", "));
                nft(&self.node_ns(i), &rule)?;
            }
        }
        Ok(())
    }

    /// Every node drops `percent`% of the packets it receives.
    pub fn loss(&self, percent: u32) -> Result<()> {
        for i in 0..self.nodes {
            let rule = format!("add rule inet cartj input numgen random mod 100 < {percent} drop\n");
            nft(&self.node_ns(i), &rule)?;
        }
        Ok(())
    }

    /// Removes every partition and loss rule.
    pub fn heal(&self) -> Result<()> {
        for i in 0..self.nodes {
            nft(&self.node_ns(i), "flush chain inet cartj input\n")?;
        }
        Ok(())
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for name in self.created.iter().rev() {
            kill_inside(name);
            if let Err(e) = run("ip", &["netns", "del", name]) {
                eprintln!("cart-jepsen: could not delete namespace {name}: {e:#}");
            }
        }
    }
}
