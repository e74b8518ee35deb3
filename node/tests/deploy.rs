//! The deployment files: the systemd unit passes `systemd-analyze verify`, the Kubernetes
//! manifests pass a schema validator (kubernetes-validate from PyPI, in a venv under the target
//! directory), and the ConfigMap's cluster file loads as each of its nodes, with the secret
//! from the file the manifest mounts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/cartd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/cartd run"), "{unit}");
    // verify also checks that the binary exists: point it at the one this test built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cartd.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/cartd", env!("CARGO_BIN_EXE_cartd"))).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And it fails on a broken unit (the check can fail).
    std::fs::write(&path, unit.replace("/usr/local/bin/cartd", "/nonexistent/cartd")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a unit whose binary is missing must not verify");
}

/// The venv's python with kubernetes-validate.
fn validator() -> PathBuf {
    common::python_venv("pyenv-k8s", &repo().join("deploy/k8s/requirements.txt"))
}

fn validate(python: &Path, manifest: &Path) -> std::process::Output {
    Command::new(python)
        .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", "1.31"])
        .arg(manifest)
        .output()
        .unwrap()
}

#[test]
fn the_kubernetes_manifests_validate_and_their_cluster_file_loads() {
    let manifest = repo().join("deploy/k8s/cartdb.yaml");
    let python = validator();
    let out = validate(&python, &manifest);
    assert!(
        out.status.success(),
        "kubernetes-validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&manifest).unwrap();
    for kind in ["StatefulSet", "PodDisruptionBudget", "ConfigMap", "Service"] {
        assert!(text.contains(&format!("kind: {kind}")), "no {kind}");
    }
    // The validator refuses a broken manifest (the check can fail).
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        text.replace("maxUnavailable: 1", "maxUnavailable: 1\n  minAvalable: 2"),
    )
    .unwrap();
    assert!(
        !validate(&python, &broken).status.success(),
        "a misspelt field must not validate"
    );

    // The ConfigMap's cluster.toml, as every pod loads it (secret from the mounted file).
    let toml: String = text
        .split("  cluster.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "change-me-to-a-long-random-string\n").unwrap();
    // SAFETY-free in edition 2021; this test binary runs no other test that reads it.
    std::env::set_var(cart_node::config::SECRET_FILE_ENV, &secret);
    for node in ["cartdb-0", "cartdb-1", "cartdb-2"] {
        let config = cart_node::config::NodeConfig::parse(&toml, Path::new("cluster.toml"), Some(node))
            .unwrap_or_else(|e| panic!("{node}: {e}"));
        assert_eq!(config.cluster.secret, "change-me-to-a-long-random-string");
        assert_eq!(config.cluster.members.len(), 3);
        let me = config.cluster.members.iter().find(|m| m.node_id == node).unwrap();
        assert_eq!(me.addr, format!("{node}.cartdb:7001"));
        assert_eq!(config.http_addr.map(|a| a.port()), Some(8001));
    }
    std::env::remove_var(cart_node::config::SECRET_FILE_ENV);
}
