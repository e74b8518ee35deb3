//! The real tier in CI: a short `cart-jepsen run` with every nemesis against five cartd
//! processes in network namespaces (root only; the harness installs nftables and faketime), and
//! a shorter one with TLS on every connection (`--tls`). The two run one after the other.

use std::path::PathBuf;
use std::process::Command;

fn cartd() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_cart-jepsen")).with_file_name("cartd");
    if !path.exists() {
        // `cargo test -p cart-jepsen` alone does not build other packages' binaries.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "cart-node", "--bin", "cartd"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building cartd failed");
    }
    path
}

/// One real-tier run at a time: each takes five processes and the machine's two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn all_nemeses_on_real_namespaces_lose_nothing() {
    let time_limit = std::env::var("CART_JEPSEN_CI_SECONDS").unwrap_or_else(|_| "60".into());
    run_and_check(&["--time-limit", &time_limit, "--nemesis", "all", "--seed", "42"], 3);
}

#[test]
fn a_tls_cluster_under_faults_loses_nothing() {
    run_and_check(&["--tls", "--time-limit", "30", "--nemesis", "all", "--seed", "7"], 2);
}

/// Runs `cart-jepsen run ARGS…` and checks its verdict, that at least `min_faults` faults were
/// injected, and that nothing was left behind.
fn run_and_check(args: &[&str], min_faults: usize) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(env!("CARGO_BIN_EXE_cart-jepsen"))
        .arg("run")
        .args(args)
        .arg("--report")
        .arg(dir.path())
        .arg("--cartd")
        .arg(cartd())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cart-jepsen");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for cart-jepsen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "cart-jepsen failed ({})", out.status);
    assert!(stdout.contains("lost acknowledged adds: 0"), "{stdout}");
    assert!(stdout.contains("valid: true"), "{stdout}");
    let history = std::fs::read_to_string(dir.path().join("history.jsonl")).expect("history");
    let faults = history.lines().filter(|l| l.contains(r#""type":"fault""#)).count();
    assert!(faults >= min_faults, "only {faults} faults injected");
    let ops = history.lines().filter(|l| l.contains(r#""type":"op""#)).count();
    assert!(ops > 500, "only {ops} operations");
    assert!(dir.path().join("report.html").exists());
    if args.contains(&"--tls") {
        let config = std::fs::read_to_string(dir.path().join("n1/cluster.toml")).expect("n1's cluster file");
        assert!(
            config.contains("[tls]") && config.contains("peer_mtls = true") && config.contains("[auth]"),
            "{config}"
        );
    }
    // Nothing left behind.
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let prefix = format!("cj{pid}-");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&prefix),
        "namespaces {prefix}* left behind"
    );
}
