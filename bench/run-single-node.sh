#!/usr/bin/env bash
# Single-node AddItem benchmark on loopback: build, start a 1-node dev cluster on 127.0.0.1:17401,
# run the `add` profile closed-loop, stop the cluster.
#
#   DURATION=20 CONCURRENCY=64 bench/run-single-node.sh [extra cart-bench flags…]
#
# The report goes to bench/results/single-node-add.json (ignored by git).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source bench/cluster.sh
on_exit stop_cluster

cargo build --release -p cart-node -p cart-bench
start_cluster 1 17401
mkdir -p bench/results
"$BIN_DIR/cart-bench" --profile add --duration "${DURATION:-20}" --concurrency "${CONCURRENCY:-64}" \
    --target "cartdb=$CLUSTER_ENDPOINTS" --json bench/results/single-node-add.json "$@"
