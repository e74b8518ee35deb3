//! Acknowledged writes survive `kill -9`; SIGTERM shuts a node down cleanly.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cart_client::{CartClient, ClientOptions, ItemSnapshot};

const WRITERS: usize = 64;
/// Each writer owns one cart and stops before the line limit.
const ADDS_PER_WRITER: usize = 150;
/// SIGKILL once this many adds are acknowledged: well inside the load.
const KILL_AFTER_ACKS: usize = 1_500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_add_survives_kill_9_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = common::start_node(dir.path());
    let options = ClientOptions {
        max_attempts: 1,
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let client = CartClient::connect_with([common::addr(&node, 0).to_string()], options)
        .await
        .unwrap();
    let acked: Arc<Mutex<BTreeSet<(usize, usize)>>> = Arc::default();
    let acks = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, acked, acks, failures) = (client.clone(), acked.clone(), acks.clone(), failures.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..ADDS_PER_WRITER {
                let snapshot = ItemSnapshot::new(format!("item {i}"), 100 + i as u64, "EUR");
                match client
                    .add_item(&format!("user:w{w}"), &format!("sku-{i}"), 1, snapshot)
                    .await
                {
                    Ok(_) => {
                        acked.lock().unwrap().insert((w, i));
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        // The node is gone: this add's outcome is unknown; stop this writer.
                        failures.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }));
    }
    while acks.load(Ordering::SeqCst) < KILL_AFTER_ACKS {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    node.kill9(0).unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= KILL_AFTER_ACKS);
    assert!(
        failures.load(Ordering::SeqCst) > 0,
        "the kill should land while writers are still adding"
    );
    assert!(
        acked.len() < WRITERS * ADDS_PER_WRITER,
        "the kill should land before the load ends"
    );

    node.restart(0).unwrap();
    let client = common::client(common::addr(&node, 0)).await;
    let mut lost = Vec::new();
    for w in 0..WRITERS {
        let cart = client.get_cart(&format!("user:w{w}")).await.unwrap();
        let present: BTreeSet<String> = cart
            .lines
            .iter()
            .filter(|l| l.quantity == 1)
            .map(|l| l.product_id.clone())
            .collect();
        lost.extend(
            acked
                .iter()
                .filter(|(aw, i)| *aw == w && !present.contains(&format!("sku-{i}")))
                .copied(),
        );
    }
    println!("acknowledged adds: {}, lost after kill -9: {}", acked.len(), lost.len());
    assert!(lost.is_empty(), "acknowledged adds lost after kill -9: {lost:?}");
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = common::start_node(dir.path());
    let client = common::client(common::addr(&node, 0)).await;
    client
        .add_item("user:carol", "sku-1", 3, ItemSnapshot::new("Mug", 1299, "EUR"))
        .await
        .unwrap();
    let status = node.terminate(0, Duration::from_secs(15)).unwrap();
    assert!(status.success(), "cartd exited with {status}");
    let log = std::fs::read_to_string(node.spec.node_dir("n1").join("cartd.log")).unwrap();
    assert!(log.contains("storage flushed"), "no clean shutdown in the log:\n{log}");

    node.restart(0).unwrap();
    let cart = common::client(common::addr(&node, 0))
        .await
        .get_cart("user:carol")
        .await
        .unwrap();
    assert_eq!(cart.lines[0].quantity, 3);
}

#[tokio::test]
async fn a_bad_config_file_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "node_id = \"n1\"\nlisten_addr = \"127.0.0.1:0\"\ndata_dir = \"d\"\n[limits]\nmax_quantity = 0\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cartd"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("max_quantity") && stderr.contains("bad.toml"),
        "{stderr}"
    );
}
