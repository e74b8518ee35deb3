#!/usr/bin/env bash
# The full test command (README "Test"): formatting, lints, then every test of the workspace.
# CI runs exactly this (.ci/run). Anything a test needs from the system is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."

# A test run is a one-shot build: incremental caches would only take disk (several GB).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# apt_install PACKAGE: installs a Debian package the tests need (apt-get update only if needed).
apt_install() {
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get install -y -qq "$1" >/dev/null || {
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "$1" >/dev/null
    }
}

# libfaketime: the expiry tests run nodes 100 days in the future (node/tests/lifecycle.rs).
if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]; then
    apt_install faketime
fi
# strace: node/tests/durability.rs counts the fdatasync calls behind acknowledged writes.
if ! command -v strace >/dev/null 2>&1; then
    apt_install strace
fi

# chromium: node/tests/status_page.rs loads each node's status page in headless Chromium.
if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
