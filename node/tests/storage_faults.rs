//! A node whose disk fills up, with real `cartd` processes: n3's data directory is a 48 MiB
//! tmpfs (mounted by the test; needs root), filled to the last byte while clients write. Writes
//! through every node keep succeeding (the others take them), `status` shows n3 degraded, and
//! once space returns n3 restarts itself in place, takes writes again and catches up. A second
//! test drives n3 below its low-space watermark instead: no writes stored there, none failed,
//! writes again once space returns (no restart), and a clean stop.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cart_client::{CartClient, ItemSnapshot};
use cart_node::launcher::{ClusterSpec, LocalCluster};
use cart_proto::admin_pb::admin_service_client::AdminServiceClient;
use cart_proto::admin_pb::{ClusterStatusRequest, LocalReadRequest};

/// Unmounts the tmpfs however the test ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A `size_mb` tmpfs at `dir`, unmounted when dropped.
fn tmpfs(dir: &Path, size_mb: u32) -> Mount {
    std::fs::create_dir_all(dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    Mount(dir.to_owned())
}

fn is_root() -> bool {
    // /proc/self/status: "Uid:\treal\teffective\t…".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Fills the file system at `dir` (a file of zeros until `No space left on device`).
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 1 << 16];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

/// Why `node`'s storage takes no writes, as the node at `addr` sees it (`None`: no answer, e.g.
/// while a node restarts).
async fn degraded(addr: SocketAddr, node: &str) -> Option<String> {
    let mut admin = AdminServiceClient::connect(format!("http://{addr}")).await.ok()?;
    let status = admin.cluster_status(ClusterStatusRequest {}).await.ok()?.into_inner();
    status.nodes.into_iter().find(|n| n.node_id == node).map(|n| n.degraded)
}

async fn held_by(addr: SocketAddr, cart: &str) -> bool {
    common::admin(addr)
        .await
        .local_read(LocalReadRequest { cart_id: cart.into() })
        .await
        .is_ok_and(|r| r.into_inner().present)
}

/// Three nodes, n3's data on a 48 MiB tmpfs; `top_toml` and `cluster_toml` tune the nodes.
/// `None` when not root (the tmpfs needs root; CI runs as root, the namespace harness needs it
/// too).
struct Setup {
    dir: tempfile::TempDir,
    data: PathBuf,
    cluster: LocalCluster,
    addrs: [SocketAddr; 3],
    // Last: unmounted after the cluster stopped.
    _mount: Mount,
}

fn setup(top_toml: &str, cluster_toml: &str) -> Option<Setup> {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = ClusterSpec::loopback(dir.path(), 3, 0).unwrap();
    spec.top_toml = top_toml.into();
    spec.cluster_toml = cluster_toml.into();
    let data = spec.node_dir("n3").join("data");
    let mount = tmpfs(&data, 48);
    let cluster = LocalCluster::start(common::cartd(), spec).unwrap_or_else(|e| panic!("{e}"));
    let addrs = [0, 1, 2].map(|i| common::addr(&cluster, i));
    Some(Setup {
        dir,
        data,
        cluster,
        addrs,
        _mount: mount,
    })
}

fn mug() -> ItemSnapshot {
    ItemSnapshot::new("Mug", 1299, "EUR")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_one_node_fails_no_write_and_the_node_recovers_without_an_operator() {
    // Watermark off: the engine itself meets ENOSPC (the harder path: sled stays broken until
    // reopened). Anti-entropy every second, so n3 catches up quickly afterwards.
    let Some(setup) = setup("min_free_disk_mb = 0\n", "anti_entropy_interval_ms = 1000\n") else {
        return;
    };
    let (dir, data, addrs) = (setup.dir.path(), &setup.data, setup.addrs);
    // Every client enters through n3, so every write n3 coordinates meets its full disk.
    let through_n3: CartClient = common::client(addrs[2]).await;
    let through_all = CartClient::connect(addrs.map(|a| a.to_string())).await.unwrap();

    let filler = fill(data);
    let mut acked = Vec::new();
    for i in 0..300 {
        let cart = format!("user:full-{i}");
        let client = if i % 2 == 0 { &through_n3 } else { &through_all };
        match client.add_item(&cart, "sku-1", 1, mug()).await {
            Ok(_) => acked.push(cart),
            Err(e) => panic!("write {i} failed while n3's disk was full: {e}"),
        }
    }
    let reason = degraded(addrs[0], "n3").await.unwrap_or_default();
    assert!(
        reason.contains("No space left") || reason.contains("os error 28"),
        "n1 does not see n3 degraded: {reason:?}"
    );
    assert!(
        !degraded(addrs[2], "n3").await.unwrap_or_default().is_empty(),
        "n3 does not say it is degraded"
    );

    // Clients learn it too (the membership version changed), and try n3 last.
    let membership = through_all.refresh_membership().await.unwrap();
    assert_eq!(membership.degraded, vec!["n3".to_string()]);

    std::fs::remove_file(&filler).unwrap();
    // n3 restarts itself in place (same process id) and takes writes again.
    let back = common::eventually(Duration::from_secs(60), || async move {
        degraded(addrs[2], "n3").await.is_some_and(|d| d.is_empty())
            && degraded(addrs[0], "n3").await.is_some_and(|d| d.is_empty())
    })
    .await;
    assert!(back, "n3 did not recover within 60 s of space returning");
    let after = common::client(addrs[2]).await;
    after.add_item("user:after", "sku-1", 1, mug()).await.unwrap();
    // Acknowledged at W = 2, which may not have waited for n3: its store takes it soon after.
    let stored = common::eventually(Duration::from_secs(10), || held_by(addrs[2], "user:after")).await;
    assert!(stored, "n3 did not store a write after it recovered");

    // Every acknowledged add is on n3 again (anti-entropy), and on the others all along.
    let converged = common::eventually(Duration::from_secs(90), || {
        let acked = acked.clone();
        async move {
            for cart in &acked {
                if !held_by(addrs[2], cart).await {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(converged, "n3 did not catch up with the writes it missed");
    for cart in &acked {
        assert!(held_by(addrs[0], cart).await || held_by(addrs[1], cart).await);
    }
    let log = std::fs::read_to_string(dir.join("n3").join("cartd.log")).unwrap();
    assert!(log.contains("restarting in place"), "n3 did not say it restarted");
}

/// The low-space watermark: below `min_free_disk_mb` n3 takes no writes (before its disk is
/// full; writes go on through the others), and takes them again as soon as space returns, with
/// no restart; a stop while degraded this way is still clean (exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_watermark_a_node_stops_taking_writes_and_resumes_when_space_returns() {
    let Some(mut setup) = setup("min_free_disk_mb = 24\n", "") else {
        return;
    };
    let (data, addrs) = (setup.data.clone(), setup.addrs);
    let client = CartClient::connect(addrs.map(|a| a.to_string())).await.unwrap();
    client.add_item("user:before", "sku-1", 1, mug()).await.unwrap();

    // Leave about 16 MiB free: under the watermark, far from full.
    let filler = data.join("filler");
    let free = nix::sys::statvfs::statvfs(&data).unwrap();
    let free_bytes = free.blocks_available() * free.fragment_size();
    std::fs::write(&filler, vec![0u8; (free_bytes - (16 << 20)) as usize]).unwrap();
    let low = common::eventually(Duration::from_secs(10), || async move {
        degraded(addrs[0], "n3")
            .await
            .is_some_and(|d| d.contains("min_free_disk_mb"))
    })
    .await;
    assert!(
        low,
        "n3 not degraded below the watermark: {:?}",
        degraded(addrs[0], "n3").await
    );
    for i in 0..50 {
        client
            .add_item(&format!("user:low-{i}"), "sku-1", 1, mug())
            .await
            .unwrap_or_else(|e| panic!("write {i} failed while n3 was below its watermark: {e}"));
    }
    assert!(
        !held_by(addrs[2], "user:low-0").await,
        "n3 stored a write below its watermark"
    );

    std::fs::remove_file(&filler).unwrap();
    let back = common::eventually(Duration::from_secs(10), || async move {
        degraded(addrs[0], "n3").await.is_some_and(|d| d.is_empty())
    })
    .await;
    assert!(back, "n3 still degraded after space returned");
    let log = std::fs::read_to_string(setup.dir.path().join("n3").join("cartd.log")).unwrap();
    assert!(!log.contains("restarting in place"), "a low watermark needs no restart");

    // A clean stop (the engine never failed): exit 0.
    let status = setup.cluster.terminate(2, Duration::from_secs(15)).unwrap();
    assert!(status.success(), "n3 stopped with {status}");
}
