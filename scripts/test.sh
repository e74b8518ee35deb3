#!/usr/bin/env bash
# The full test command (README "Test"): formatting, lints, then every test of the workspace.
# CI runs exactly this (.ci/run). Anything a test needs from the system is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."

# A test run is a one-shot build: incremental caches would only take disk (several GB).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
