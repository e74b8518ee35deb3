//! The short run of `cart-micro` that CI does: it builds its cart, runs every operation and
//! writes a JSON report with a percentile per operation (no timing is asserted).

use std::process::Command;

#[test]
fn cart_micro_measures_every_operation() {
    let json = std::env::temp_dir().join(format!("cart-micro-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_cart-micro"))
        .args(["--lines", "12", "--iterations", "50", "--requests", "40", "--json"])
        .arg(&json)
        .output()
        .expect("cart-micro runs");
    assert!(
        output.status.success(),
        "cart-micro failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report written")).expect("report is JSON");
    let _ = std::fs::remove_file(&json);
    assert_eq!(report["lines"], 12);
    assert!(
        report["encoded_bytes"].as_u64().is_some_and(|b| b > 12 * 50),
        "a 12-line cart encodes to more than 600 bytes"
    );
    assert_eq!(
        report["request_records"],
        12 + 40,
        "one record per add and per --requests write"
    );
    assert!(
        report["catch_up_bytes"].as_u64() < report["encoded_bytes"].as_u64(),
        "a catch-up one write behind is smaller than the whole state: {report}"
    );
    for op in [
        "view",
        "encode",
        "decode",
        "clone",
        "apply",
        "merge_delta",
        "catch_up",
        "rebuild",
    ] {
        let p50 = report["ops"][op]["p50_us"].as_f64();
        assert!(p50.is_some_and(|us| us > 0.0), "{op} has a p50: {report}");
    }
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("merge_delta"),
        "the table lists every operation:\n{table}"
    );
}

#[test]
fn cart_micro_refuses_a_cart_of_no_lines() {
    let output = Command::new(env!("CARGO_BIN_EXE_cart-micro"))
        .args(["--lines", "0"])
        .output()
        .expect("cart-micro runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--lines"));
}
