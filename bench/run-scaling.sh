#!/usr/bin/env bash
# The same mixed workload against 1, 3 and 5 nodes (the `cartd dev` defaults: N = 3, R = W = 2 on
# 3 and 5 nodes, N = R = W = 1 on one; durable acks), in one run on this machine, closed loop at a
# fixed concurrency, each cluster fresh and alone on the machine while it is measured:
#
#   DURATION=30 CONCURRENCY=64 PROFILE=storefront NODE_COUNTS="1 3 5" bench/run-scaling.sh
#
# Reports: bench/results/scaling-<nodes>.json (cart-bench output in .log beside it); a summary
# table at the end. SKIP_BUILD=1 skips the release build (run-compare.sh has just done it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source bench/cluster.sh
cleanup() {
    stop_child
    stop_cluster
}
on_exit cleanup

DURATION=${DURATION:-30}
CONCURRENCY=${CONCURRENCY:-64}
PROFILE=${PROFILE:-storefront}
NODE_COUNTS=${NODE_COUNTS:-"1 3 5"}
SEED=${SEED:-7}
if [[ -z "${SKIP_BUILD:-}" ]]; then
    run_child cargo build --release -p cart-node -p cart-bench
fi
mkdir -p bench/results
summary=()
for nodes in $NODE_COUNTS; do
    start_cluster "$nodes" 17501
    json="bench/results/scaling-$nodes.json"
    echo "cart-bench: $PROFILE, ${DURATION}s, concurrency $CONCURRENCY against $nodes node(s) (output: ${json%.json}.log)"
    if ! run_child "$BIN_DIR/cart-bench" --profile "$PROFILE" --duration "$DURATION" \
        --concurrency "$CONCURRENCY" --target "cartdb=$CLUSTER_ENDPOINTS" --json "$json" --no-progress \
        --seed "$SEED" >"${json%.json}.log" 2>&1; then
        echo "cart-bench failed against $nodes node(s); its output:" >&2
        cat "${json%.json}.log" >&2
        exit 1
    fi
    stop_cluster
    summary+=("$nodes=$json")
done

echo
echo "cartdb scaling on $(nproc) cores (client and every node share them)"
python3 bench/summarize.py scaling "${summary[@]}"
