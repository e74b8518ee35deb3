#!/usr/bin/env bash
# What a loaded but idle cluster costs (anti-entropy with digests kept on write), in one run:
#
#   CARTS=100000 PRELOAD_S=40 IDLE_S=60 bench/run-idle.sh
#
# 1. Builds release; starts a 3-node `cartd dev` cluster on 127.0.0.1:17801-17803 with the
#    default settings (anti-entropy every 10 s) and preloads it: `cart-bench --profile add
#    --distribution uniform` over CARTS carts for PRELOAD_S seconds (closed loop, 64 clients).
# 2. Waits until every node's digests are built (`cartctl status --json`: digests_ready).
# 3. Measures, with no client load at all, the CPU the three nodes use over IDLE_S seconds (user +
#    system from /proc) and prints it as a share of one core, with the carts each node covers,
#    the last anti-entropy exchange each node had, and how many "peer is down" lines the nodes
#    logged during the window (a starved runtime misses heartbeats).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source bench/cluster.sh
cleanup() {
    stop_child
    stop_cluster
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

CARTS=${CARTS:-100000}
PRELOAD_S=${PRELOAD_S:-40}
IDLE_S=${IDLE_S:-60}
PORT=17801
OUT=bench/results/idle
mkdir -p "$OUT"
rm -f "$OUT"/*

run_child cargo build --release -p cart-node -p cart-client -p cart-bench
start_cluster 3 $PORT
echo "preload: $CARTS carts, ${PRELOAD_S}s (output: $OUT/preload.log)"
target/release/cart-bench --target "cartdb=$CLUSTER_ENDPOINTS" --json "$OUT/preload.json" --no-progress --seed 7 \
    --profile add --distribution uniform --carts "$CARTS" --duration "$PRELOAD_S" --concurrency 64 >"$OUT/preload.log" 2>&1
grep '^target ' "$OUT/preload.log" || true

ready() {
    local i
    for i in 0 1 2; do
        target/release/cartctl --endpoint 127.0.0.1:$((PORT + i)) --json status |
            python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["digests_ready"] else 1)' || return 1
    done
}
waited=0
until ready; do
    sleep 1
    waited=$((waited + 1))
    if ((waited > 600)); then echo "digests not built after 600 s" >&2; exit 1; fi
done
sleep 2

PIDS=$(cluster_pids)
down_before=$(cat "$CLUSTER_DIR"/n*/cartd.log | grep -c 'peer is down' || true)
t0=$(cpu_ticks $PIDS)
sleep "$IDLE_S"
t1=$(cpu_ticks $PIDS)
down_after=$(cat "$CLUSTER_DIR"/n*/cartd.log | grep -c 'peer is down' || true)

echo
printf 'idle for %s s after a preload over a key space of %s carts: the 3 nodes used %.2f%% of one core (%s ticks of 1/100 s)\n' \
    "$IDLE_S" "$CARTS" "$(echo "($t1 - $t0) / $IDLE_S" | bc -l)" "$((t1 - t0))"
echo "\"peer is down\" lines logged during the idle window: $((down_after - down_before))"
for i in 0 1 2; do
    target/release/cartctl --endpoint 127.0.0.1:$((PORT + i)) status | grep -E 'anti-entropy digests|cluster as seen'
done
target/release/cartctl --endpoint 127.0.0.1:$PORT status
