//! The README's run command: `cartd dev` starts 3 separate `cartd` processes that replicate, and
//! SIGTERM (what Ctrl-C's SIGINT also does) stops them all cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cart_client::ItemSnapshot;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartd_dev_runs_three_replicating_nodes_and_stops_them_all() {
    let dir = tempfile::tempdir().unwrap();
    // Three gRPC ports and the three HTTP ports 1000 above them.
    let base = loop {
        let base = cart_node::launcher::free_ports(3).unwrap();
        if (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + 1000 + i)).is_ok()) {
            break base;
        }
    };
    let mut dev = Command::new(common::cartd())
        .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let endpoints = loop {
        let line = lines.next().expect("cartd dev ended early").unwrap();
        if let Some(rest) = line.strip_prefix("cartdb dev cluster up: ") {
            break rest.split(',').map(str::to_owned).collect::<Vec<_>>();
        }
        assert!(Instant::now() < deadline, "no 'cluster up' line");
    };
    assert_eq!(endpoints.len(), 3, "three nodes by default: {endpoints:?}");

    let first = common::client(endpoints[0].parse().unwrap()).await;
    first
        .add_item("user:dev", "sku-1", 2, ItemSnapshot::new("Mug", 1299, "EUR"))
        .await
        .unwrap();
    let last = common::client(endpoints[2].parse().unwrap()).await;
    assert_eq!(last.get_cart("user:dev").await.unwrap().lines[0].quantity, 2);
    // Every node's metrics on HTTP port gRPC + 1000 (7001 → 8001 with the defaults); the
    // client sent the add to one of them (the cart's coordinator).
    let mut adds = 0;
    for i in 0..3 {
        use std::io::{Read, Write};
        let mut http = std::net::TcpStream::connect(("127.0.0.1", base + 1000 + i)).unwrap();
        write!(
            http,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        http.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        adds += text
            .matches(r#"cartdb_requests_total{op="add_item",code="OK"} 1"#)
            .count();
    }
    assert_eq!(adds, 1, "one add counted by the node that took it");

    kill(Pid::from_raw(dev.id() as i32), Signal::SIGTERM).unwrap();
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = dev.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < stop_deadline, "cartd dev did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "cartd dev exited with {status}");
    let stopped: Vec<String> = lines
        .map_while(Result::ok)
        .filter(|l| l.contains("stopped (exit status: 0)"))
        .collect();
    assert_eq!(stopped.len(), 3, "every node stops cleanly: {stopped:?}");
    for e in &endpoints {
        assert!(
            std::net::TcpStream::connect(e).is_err(),
            "{e} still accepts connections"
        );
    }
}

/// The `cartd dev` node processes (children of any of the launcher's threads), with their
/// command lines.
fn children(pid: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            out.push((child, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_dev_node_leaves_the_other_two_serving_writes() {
    let dir = tempfile::tempdir().unwrap();
    // Three gRPC ports and the three HTTP ports 1000 above them.
    let base = loop {
        let base = cart_node::launcher::free_ports(3).unwrap();
        if (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + 1000 + i)).is_ok()) {
            break base;
        }
    };
    // Each node on one request thread (`worker_threads`, as for nodes sharing a small machine).
    let extra = dir.path().join("extra.toml");
    std::fs::write(&extra, "worker_threads = 1\n").unwrap();
    let mut dev = Command::new(common::cartd())
        .args(["dev", "--base-port", &base.to_string(), "--extra-toml"])
        .arg(&extra)
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let endpoints = loop {
        let line = lines.next().expect("cartd dev ended early").unwrap();
        if let Some(rest) = line.strip_prefix("cartdb dev cluster up: ") {
            break rest.split(',').map(str::to_owned).collect::<Vec<_>>();
        }
    };
    let nodes = children(dev.id());
    assert_eq!(nodes.len(), 3, "three node processes: {nodes:?}");
    // kill -9 n3 (the third endpoint).
    let (n3, _) = nodes
        .iter()
        .find(|(_, cmd)| cmd.contains("--node n3"))
        .expect("n3 runs");
    kill(Pid::from_raw(*n3), Signal::SIGKILL).unwrap();
    let reported = loop {
        let line = lines.next().expect("cartd dev ended early").unwrap();
        if line.contains("exited") {
            break line;
        }
    };
    assert!(
        reported.contains("node n3 exited") && reported.contains("the others keep serving"),
        "{reported}"
    );
    assert!(dev.try_wait().unwrap().is_none(), "the launcher must keep running");

    // cartctl against the two survivors still writes (W = 2 of the two that are left).
    for endpoint in &endpoints[..2] {
        let argv = [
            "cartctl",
            "--endpoint",
            endpoint,
            "cart",
            "add",
            "user:survivor",
            "sku-1",
        ];
        let argv = argv
            .iter()
            .chain(&["--name", "Mug", "--price", "1299", "--currency", "EUR"]);
        let cli = <cart_client::cli::Cli as clap::Parser>::try_parse_from(argv).unwrap();
        let out = cart_client::cli::run(cli).await;
        assert!(out.is_ok(), "{endpoint}: {out:?}");
    }
    let first = common::client(endpoints[0].parse().unwrap()).await;
    assert_eq!(first.get_cart("user:survivor").await.unwrap().lines[0].quantity, 2);

    kill(Pid::from_raw(dev.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dev.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "cartd dev did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}
