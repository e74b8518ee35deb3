//! The `cartctl` binary itself: exit codes and messages (no node needed).

use std::process::Command;

#[test]
fn exits_non_zero_with_the_status_message_when_no_node_answers() {
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cartctl"))
        .args(["--endpoint", &port.to_string(), "cart", "get", "user:x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: Unavailable"), "{stderr}");
}

#[test]
fn rejects_malformed_arguments_before_calling_anyone() {
    let out = Command::new(env!("CARGO_BIN_EXE_cartctl"))
        .args([
            "cart",
            "add",
            "user:x",
            "sku-1",
            "--name",
            "Mug",
            "--price",
            "-5",
            "--currency",
            "EUR",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--price"));
}
