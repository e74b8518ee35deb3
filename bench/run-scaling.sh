#!/usr/bin/env bash
# The same mixed workload against 1 node and against 3 nodes (N = 3, R = W = 2, durable acks), in
# one run on this machine, closed loop at a fixed concurrency:
#
#   DURATION=30 CONCURRENCY=64 PROFILE=storefront bench/run-scaling.sh
#
# Reports: bench/results/scaling-<nodes>.json; a summary table at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source bench/cluster.sh
trap stop_cluster EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

DURATION=${DURATION:-30}
CONCURRENCY=${CONCURRENCY:-64}
PROFILE=${PROFILE:-storefront}
cargo build --release -p cart-node -p cart-bench
mkdir -p bench/results
for nodes in 1 3; do
    start_cluster "$nodes" 17501
    target/release/cart-bench --profile "$PROFILE" --duration "$DURATION" --concurrency "$CONCURRENCY" \
        --target "cartdb=$CLUSTER_ENDPOINTS" --json "bench/results/scaling-$nodes.json" --no-progress --seed 7
    stop_cluster
done

echo
echo "profile $PROFILE, closed loop, concurrency $CONCURRENCY, ${DURATION}s each, $(nproc) cores"
python3 - "$PROFILE" <<'PY'
import json, sys
rows = []
for nodes in (1, 3):
    with open(f"bench/results/scaling-{nodes}.json") as f:
        t = json.load(f)["targets"][0]
    o = t["overall"]
    rows.append((nodes, t["ops_per_s"], o["p50_us"], o["p99_us"], o["p999_us"], t.get("errors", 0)))
print(f"{'nodes':>5} {'ops/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} {'errors':>6}")
for r in rows:
    print(f"{r[0]:>5} {r[1]:>9.0f} {r[2]:>8} {r[3]:>8} {r[4]:>9} {r[5]:>6}")
print(f"3-node / 1-node throughput: {rows[1][1] / rows[0][1]:.2f}")
PY
