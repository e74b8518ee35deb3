#!/usr/bin/env bash
# The storefront workload on cartdb over 10,000 carts and over a large preloaded store, in one run:
#
#   CARTS=1000000 DURATION=30 CONCURRENCY=64 bench/run-large.sh
#
# 1. Builds release; starts a fresh 3-node `cartd dev` cluster on 127.0.0.1:17641-17643 (N = 3,
#    R = W = 2, durable acks) and runs the storefront closed loop over 10,000 carts (cart-bench's
#    default population, drawn Zipfian, θ = 0.99), CONCURRENCY workers, DURATION seconds, from
#    empty data; stops the cluster.
# 2. A fresh cluster, preloaded with CARTS carts: `cart-bench --profile add --distribution
#    sequential --carts CARTS --ops CARTS --concurrency PRELOAD_CONCURRENCY` adds one line to each
#    of carts 0 … CARTS-1 exactly once and stops when all are sent (at the latest after
#    PRELOAD_MAX_S seconds). Any add that failed, or a preload cut short, fails the script.
# 3. Disk: `du -sb` of the three nodes' data dirs right after the preload, and that divided by
#    CARTS × 3 (N = 3: every node of the three holds a replica of every cart) as bytes per cart
#    per replica (the empty store's size, measured before the preload, is printed beside it).
# 4. The same storefront closed loop (same seed, duration and concurrency) with `--carts CARTS`:
#    Zipf over the whole preloaded population.
# 5. A table of both runs (summarize.py compare: ops/s, p50/p99/p99.9, ratios to the 10k run,
#    CPU per operation of the nodes and of cart-bench).
#
# A full run at the default CARTS=1000000 takes many minutes (the preload alone is CARTS adds);
# CARTS=20000 DURATION=5 checks the script. Results in bench/results/large/ (ignored by git):
# small.json, preload.json and large.json (cart-bench reports; .log and .cpu beside them),
# summary.json (summarize.py summary-json: "closed/10k-carts", "closed/<CARTS>-carts") and
# disk.json (carts, bytes per node, bytes per cart per replica, the empty store's bytes). Every
# process started here is stopped on every exit path, Ctrl-C and failures included; the
# clusters' temp dirs are removed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source bench/cluster.sh
cleanup() {
    stop_child
    stop_cluster
}
on_exit cleanup

CARTS=${CARTS:-1000000}
DURATION=${DURATION:-30}
CONCURRENCY=${CONCURRENCY:-64}
PRELOAD_CONCURRENCY=${PRELOAD_CONCURRENCY:-64}
PRELOAD_MAX_S=${PRELOAD_MAX_S:-3600}
SEED=${SEED:-7}
SMALL_CARTS=10000 # cart-bench's default --carts
PORT=17641
OUT=bench/results/large
REPLICAS=3 # `cartd dev` on 3 nodes: N = 3

if ! [[ $CARTS =~ ^[1-9][0-9]*$ ]]; then
    echo "CARTS must be a positive whole number, got '$CARTS'" >&2
    exit 1
fi
run_child cargo build --release -p cart-node -p cart-bench
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/*.cpu

# measure NAME [cart-bench flags…]: one storefront closed loop against the running cluster, output
# in $OUT/NAME.{json,log}, the CPU of the nodes and of cart-bench in $OUT/NAME.cpu (as in
# run-compare.sh).
measure() {
    local name=$1 server0 client0 pids
    shift
    pids=$(cluster_pids)
    echo "cart-bench $name: storefront, ${DURATION}s, $CONCURRENCY workers $* (output: $OUT/$name.log)"
    server0=$(cpu_ticks $pids)
    children_cpu_ticks
    client0=$CHILDREN_TICKS
    if ! run_child "$BIN_DIR/cart-bench" --profile storefront --duration "$DURATION" \
        --concurrency "$CONCURRENCY" --target "cartdb=$CLUSTER_ENDPOINTS" --json "$OUT/$name.json" \
        --no-progress --seed "$SEED" "$@" >"$OUT/$name.log" 2>&1; then
        echo "cart-bench $name failed; its output:" >&2
        cat "$OUT/$name.log" >&2
        exit 1
    fi
    children_cpu_ticks
    echo "$(($(cpu_ticks $pids) - server0)) $((CHILDREN_TICKS - client0))" >"$OUT/$name.cpu"
    grep '^target ' "$OUT/$name.log" || true
}

# report_field FILE EXPR: a value of a cart-bench report (EXPR over `t`, its first target).
report_field() {
    python3 -c 'import json, sys; t = json.load(open(sys.argv[1]))["targets"][0]; print(eval(sys.argv[2]))' "$1" "$2"
}

echo "== 1. storefront over $SMALL_CARTS carts =="
start_cluster 3 "$PORT"
measure small --carts "$SMALL_CARTS"
stop_cluster

echo
echo "== 2. preload: $CARTS carts, one add each, $PRELOAD_CONCURRENCY at a time (at most ${PRELOAD_MAX_S}s) =="
start_cluster 3 "$PORT"
# data_bytes: du -sb of the three nodes' data dirs, in all.
data_bytes() {
    local n total=0
    for n in 1 2 3; do
        total=$((total + $(du -sb "$CLUSTER_DIR/n$n/data" | cut -f1)))
    done
    echo "$total"
}
empty_bytes=$(data_bytes)
started=$(date +%s.%N)
if ! run_child "$BIN_DIR/cart-bench" --profile add --distribution sequential --carts "$CARTS" --ops "$CARTS" \
    --concurrency "$PRELOAD_CONCURRENCY" --duration "$PRELOAD_MAX_S" --drain-timeout 30 \
    --target "cartdb=$CLUSTER_ENDPOINTS" --json "$OUT/preload.json" --no-progress --seed "$SEED" \
    >"$OUT/preload.log" 2>&1; then
    echo "the preload failed; its output:" >&2
    cat "$OUT/preload.log" >&2
    exit 1
fi
grep '^target ' "$OUT/preload.log" || true
written=$(report_field "$OUT/preload.json" 't["overall"]["count"]')
failed=$(report_field "$OUT/preload.json" 't["errors"]')
if ((written != CARTS || failed != 0)); then
    echo "the preload wrote $written of $CARTS carts ($failed errors, see $OUT/preload.log): not all carts are there" >&2
    exit 1
fi
printf 'preloaded %s carts in %.1f s\n' "$CARTS" "$(echo "$(date +%s.%N) - $started" | bc -l)"

bytes=()
total=0
for n in 1 2 3; do
    b=$(du -sb "$CLUSTER_DIR/n$n/data" | cut -f1)
    bytes+=("$b")
    total=$((total + b))
done
per_cart=$(echo "scale=1; $total / ($CARTS * $REPLICAS)" | bc -l)
echo "disk after the preload: n1 ${bytes[0]} B, n2 ${bytes[1]} B, n3 ${bytes[2]} B (du -sb of each data dir); $total B in all"
echo "  = $per_cart B per cart per replica ($CARTS carts x $REPLICAS replicas, N = 3); the empty store took $empty_bytes B in all before the preload"
printf '{"carts": %s, "replicas": %s, "bytes_per_node": [%s, %s, %s], "bytes_total": %s, "bytes_per_cart_per_replica": %s, "bytes_total_before_preload": %s}\n' \
    "$CARTS" "$REPLICAS" "${bytes[0]}" "${bytes[1]}" "${bytes[2]}" "$total" "$per_cart" "$empty_bytes" >"$OUT/disk.json"

echo
echo "== 3. storefront over the $CARTS preloaded carts =="
measure large --carts "$CARTS"
stop_cluster

echo
echo "== storefront closed loop, $CONCURRENCY workers, 3 nodes, $SMALL_CARTS carts vs $CARTS preloaded carts; $(nproc) cores shared by the client and the nodes =="
python3 bench/summarize.py compare "10k-carts=$OUT/small.json" "$CARTS-carts=$OUT/large.json"
python3 bench/summarize.py summary-json "$OUT/summary.json" \
    "closed:10k-carts=$OUT/small.json" "closed:$CARTS-carts=$OUT/large.json"
echo "disk: $per_cart B per cart per replica after preloading $CARTS carts ($OUT/disk.json)"
