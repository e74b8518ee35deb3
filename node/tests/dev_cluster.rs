//! The README's run command: `cartd dev` starts 3 separate `cartd` processes that replicate, and
//! SIGTERM (what Ctrl-C's SIGINT also does) stops them all cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cart_client::ItemSnapshot;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Three consecutive free ports.
fn free_base_port() -> u16 {
    for _ in 0..50 {
        let base = cart_node::launcher::free_port().unwrap();
        if base < 65000 && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no three consecutive free ports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartd_dev_runs_three_replicating_nodes_and_stops_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
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
