//! A storefront in another language: `client/tests/python/pricing_check.py` drives a real 3-node
//! cluster through grpcio stubs generated from `proto/*.proto`. The Python packages are pinned
//! in `client/tests/python/requirements.txt` and installed from PyPI into a venv under the
//! target directory the first time (python3 with venv and pip is on the machine).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python with the pinned grpcio packages.
fn python() -> PathBuf {
    common::python_venv("pyenv-grpcio", &repo().join("client/tests/python/requirements.txt"))
}

#[test]
fn a_python_grpcio_storefront_gets_the_predicted_pricing_summary() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::start_cluster(dir.path(), 3, "heartbeat_interval_ms = 200");
    let nodes: Vec<String> = (0..3).map(|i| common::addr(&cluster, i).to_string()).collect();
    let out = Command::new(python)
        .arg(repo().join("client/tests/python/pricing_check.py"))
        .arg(repo().join("proto/proto"))
        .arg(repo().join("cluster-config/pricing.toml"))
        .arg(&cluster.spec.secret)
        .args(&nodes)
        .output()
        .expect("run pricing_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pricing_check.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.starts_with("ok "), "{stdout}");
}
