//! The status page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `scripts/test.sh`) loads a node's page, which shows three nodes up; after one node is killed
//! the page (refreshed by its own script from `/status.json`) shows it down. The test saves a
//! screenshot (`target/status-page.png`; the README's `docs/status-page.png` is one of these).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cart_node::launcher::{ClusterSpec, LocalCluster};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium's arguments for a headless run as root in a test (no sandbox, no GPU, a profile of
/// its own), letting the page's scripts run for `budget_ms` of virtual time.
fn chromium(profile: &Path, budget_ms: u32) -> Command {
    let mut c = Command::new(CHROMIUM);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        "--window-size=1280,860",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--virtual-time-budget={budget_ms}"));
    c
}

/// The page's DOM after its scripts ran (`--dump-dom`).
fn dom(url: &str, profile: &Path) -> String {
    let out = chromium(profile, 5000).arg("--dump-dom").arg(url).output().unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The state cell of `node`'s row in the dumped DOM.
fn state_of(dom: &str, node: &str) -> Option<String> {
    let row = dom.split(&format!("<tr data-node=\"{node}\">")).nth(1)?;
    let row = row.split("</tr>").next()?;
    let cell = row.split("class=\"state ").nth(1)?;
    Some(cell.split('"').next()?.to_owned())
}

fn screenshot_path() -> PathBuf {
    // CARGO_TARGET_TMPDIR is target/tmp: the screenshot goes next to it, in the target dir.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("..")
        .join("status-page.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_three_nodes_up_then_a_killed_one_down() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium package"
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec::loopback(dir.path(), 3, 0).unwrap().with_http(0).unwrap();
    let mut cluster = LocalCluster::start(common::cartd(), spec).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{}/", cluster.spec.http[0]);
    let profile = dir.path().join("chromium-profile");

    // Some traffic for the request table.
    let client = common::client(common::addr(&cluster, 0)).await;
    for i in 0..30 {
        let cart = format!("user:page-{i}");
        client
            .add_item(&cart, "sku-1", 1, cart_client::ItemSnapshot::new("Mug", 1299, "EUR"))
            .await
            .unwrap();
        client.get_cart(&cart).await.unwrap();
    }

    let page = tokio::task::spawn_blocking({
        let (url, profile) = (url.clone(), profile.clone());
        move || dom(&url, &profile)
    })
    .await
    .unwrap();
    assert!(
        page.contains("data-source=\"live\""),
        "the page's script did not refresh it: {page}"
    );
    for node in ["n1", "n2", "n3"] {
        assert_eq!(state_of(&page, node).as_deref(), Some("up"), "{node} in {page}");
    }

    cluster.kill9(2).unwrap();
    // The failure detector needs a few missed heartbeats; the page follows on its next refresh.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = tokio::task::spawn_blocking({
            let (url, profile) = (url.clone(), profile.clone());
            move || dom(&url, &profile)
        })
        .await
        .unwrap();
        if state_of(&page, "n3").as_deref() == Some("down") {
            assert_eq!(state_of(&page, "n1").as_deref(), Some("up"), "{page}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "n3 never shown down: {page}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let shot = screenshot_path();
    let out = tokio::task::spawn_blocking({
        let profile = profile.clone();
        let shot = shot.clone();
        move || {
            chromium(&profile, 5000)
                .arg(format!("--screenshot={}", shot.display()))
                .arg(&url)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG: {}", shot.display());
    eprintln!("screenshot: {}", shot.display());
}
